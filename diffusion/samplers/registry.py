"""The sampler registry: names -> pure sampling functions and their metadata.

A sampler is a pure function

  sampler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0, **hparams)
      -> (x_0, info)

* ``denoise(x_t (B, ...), t (B,), cond) -> x0_hat (B, ...)`` is the denoiser interface of
  ``diffusion.parameterization``; ``schedule`` a ``diffusion.schedules.Schedule``;
* ``x_T`` (B, ...) the starting point at ``time_grid[0]``; ``time_grid`` a decreasing float64
  numpy array (N+1,) of times t_0 = t_max > ... > t_N = t_min, concrete on the host (per-step
  coefficients are computed from it in float64 before tracing);
* ``key`` a PRNG key; sample b draws its noise from ``fold_in(key, sample_offset + b)`` only, so a
  sample does not depend on the batch size or on how a batch is split over devices;
* ``info`` a dict holding at least ``nfe``, the exact number of denoiser calls (each on the whole
  batch).

Each registered sampler declares a ``SamplerInfo``: its kind (deterministic or stochastic), its
theoretical order of convergence (strong order of the ODE solver for deterministic ones, weak order
for stochastic ones), its exact NFE as a function of ``num_steps`` and hyper-parameters, and the
paper it implements. The test-suite (tests/test_samplers.py) is parameterized over the registry, so
a sampler registered here is checked with no new test code.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from diffusion import schedules as schedules_lib
from diffusion.samplers import brownian

Array = Any
SamplerFn = Callable[..., Tuple[Array, Dict[str, Any]]]

# 'consistency': the sampler's ``denoise`` is a consistency function (diffusion.consistency), not
# a denoiser; the registry-wide tests check its NFE and batch invariance only.
# 'flow_map': the sampler's ``denoise`` is a two-time flow map Phi(x_t, t, s, cond) -> x_s
# (diffusion.flow_map.FlowMap); its grid may include the ends t = 0 and alpha = 0 (closed grid).
KINDS = ("deterministic", "stochastic", "consistency", "flow_map")
# Keyword arguments every sampler accepts; not hyper-parameters.
COMMON_ARGS = ("cond", "sample_offset")


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
  """Metadata of a registered sampler.

  Attributes:
    name: registry name.
    fn: the sampling function.
    kind: 'deterministic' (a PF-ODE solver), 'stochastic', 'consistency' (its ``denoise`` is
      a consistency function f(x_t, t, cond) -> x at t_min, e.g. CM's multistep sampler) or
      'flow_map' (its ``denoise`` is a flow map Phi(x_t, t, s, cond) -> x_s).
    order: hparams -> theoretical order (strong order for ODE solvers, weak for SDE samplers; not
      measured for 'consistency' samplers, where it is nominal).
    nfe: (num_steps, hparams) -> exact number of denoiser calls; None for adaptive samplers, whose
      count is only known at run time (``info['nfe']``).
    nfe_per_step: human-readable NFE per step, for the documentation table.
    paper: the paper (and equations / algorithm) it implements.
    variants: hyper-parameter settings the exhaustive (slow) tests sweep; the first is the default
      checked by the fast tests.
    order_grid: the time grid on which the order test measures convergence (see tests).
    check: hparams -> None, raises ValueError on bad hyper-parameter values (types are checked
      against the defaults' by ``validate``).
    pure_noise_start: the sampler's first step is finite from alpha(t_0) = 0 (pure noise: a
      zero-terminal-SNR schedule at t = 1, Lin et al. 2024); the others need alpha > 0 there.
  """
  name: str
  fn: SamplerFn
  kind: str
  order: Callable[[Mapping[str, Any]], float]
  nfe: Optional[Callable[[int, Mapping[str, Any]], int]]
  nfe_per_step: str
  paper: str
  variants: Tuple[Mapping[str, Any], ...] = ({},)
  order_grid: str = "logsnr"
  check: Optional[Callable[[Mapping[str, Any]], None]] = None
  pure_noise_start: bool = False

  @property
  def adaptive(self) -> bool:
    return self.nfe is None

  def defaults(self) -> Dict[str, Any]:
    """The sampler's hyper-parameters and their default values, from its signature."""
    out = {}
    for p in inspect.signature(self.fn).parameters.values():
      if p.kind == p.KEYWORD_ONLY and p.name not in COMMON_ARGS:
        out[p.name] = p.default
    return out

  def resolve(self, hparams: Mapping[str, Any]) -> Dict[str, Any]:
    """Defaults updated with ``hparams``; unknown names raise ValueError listing accepted ones."""
    d = self.defaults()
    bad = sorted(set(hparams) - set(d))
    if bad:
      raise ValueError(f"sampler {self.name!r} has no hyper-parameter(s) {bad}; "
                       f"accepted: {sorted(d)}")
    d.update(hparams)
    return d

  def validate(self, hparams: Mapping[str, Any]) -> Dict[str, Any]:
    """``resolve(hparams)`` with each value checked: its type against the default's (bool for a
    bool default, int but not bool for an int one, a real number for a float one, str for a str
    one; a ``noise`` one against ``brownian.NOISES``), then the sampler's own ``check``. Raises
    TypeError / ValueError naming the bad value."""
    hp = self.resolve(hparams)
    defaults = self.defaults()
    for k, v in hp.items():
      d = defaults[k]
      if isinstance(d, bool):
        ok = isinstance(v, (bool, np.bool_))
      elif isinstance(d, int):
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
      elif isinstance(d, float):
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
            v, (bool, np.bool_))
        if ok and np.isnan(v):
          raise ValueError(f"sampler {self.name!r}: hyper-parameter {k} must not be NaN")
      elif isinstance(d, str):
        ok = isinstance(v, str)
      else:
        ok = True
      if not ok:
        raise TypeError(f"sampler {self.name!r}: hyper-parameter {k} must be a "
                        f"{'real number' if isinstance(d, float) else type(d).__name__} like "
                        f"its default {d!r}, got {v!r} ({type(v).__name__})")
    if "noise" in hp:  # the stochastic engine samplers' noise source (``brownian.py``)
      brownian.check_noise(hp["noise"])
    if self.check is not None:
      self.check(hp)
    return hp


_REGISTRY: Dict[str, SamplerInfo] = {}


def register_sampler(name: str,
                     *,
                     kind: str,
                     order: Any,
                     nfe: Optional[Callable[..., int]],
                     nfe_per_step: str,
                     paper: str,
                     variants: Sequence[Mapping[str, Any]] = ({},),
                     order_grid: str = "logsnr",
                     check: Optional[Callable[[Mapping[str, Any]], None]] = None,
                     pure_noise_start: bool = False,
                     fn: Optional[SamplerFn] = None):
  """Registers a sampler under ``name`` (usable as a decorator, or with ``fn=``).

  ``order`` is a number or a function of the resolved hyper-parameters; ``nfe(num_steps, hp)``
  the exact denoiser-call count (None if adaptive); ``check(hp)`` raises ValueError on bad
  hyper-parameter values. The registered function validates its hyper-parameters
  (``SamplerInfo.validate``) on every call, before anything is traced; ``build_sampler`` does so
  when it builds.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  order_fn = order if callable(order) else (lambda hp, o=order: o)

  def wrap(f):
    if name in _REGISTRY:
      raise ValueError(f"sampler {name!r} is registered twice")
    params = inspect.signature(f).parameters
    for a in COMMON_ARGS:
      if a not in params or params[a].kind != inspect.Parameter.KEYWORD_ONLY:
        raise ValueError(f"sampler {name!r} must accept keyword-only argument {a!r}")
    hp_names = [p.name for p in params.values()
                if p.kind == p.KEYWORD_ONLY and p.name not in COMMON_ARGS]

    @functools.wraps(f)
    def checked(*args, **kwargs):
      _REGISTRY[name].validate({k: v for k, v in kwargs.items() if k in hp_names})
      return f(*args, **kwargs)

    _REGISTRY[name] = SamplerInfo(name, checked, kind, order_fn, nfe, nfe_per_step, paper,
                                  tuple(variants), order_grid, check, bool(pure_noise_start))
    return checked

  return wrap(fn) if fn is not None else wrap


def sampler_info(name: str) -> SamplerInfo:
  """The metadata of sampler ``name``; unknown names raise ValueError listing registered ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown sampler {name!r}; registered samplers: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def get_sampler(name: str) -> SamplerFn:
  """The sampling function registered as ``name``."""
  return sampler_info(name).fn


def registered_samplers() -> List[str]:
  """Sorted names of all registered samplers."""
  return sorted(_REGISTRY)


def logsnr_clip(schedule, t_min, t_max, logsnr_min, logsnr_max):
  """(t_min, t_max) clipped so that logSNR stays within [logsnr_min, logsnr_max] (None: no clip).

  t_min / t_max (None: the schedule's) must satisfy schedule.t_min <= t_min < t_max <=
  schedule.t_max (``schedules.check_time_range``); logsnr_min / logsnr_max must be finite."""
  t_min, t_max = schedules_lib.check_time_range(schedule, t_min, t_max)
  for name, v in (("logsnr_min", logsnr_min), ("logsnr_max", logsnr_max)):
    if v is not None and not math.isfinite(schedules_lib.check_real(name, v)):
      raise ValueError(f"{name} must be a finite number or None, got {v!r}")
  if logsnr_min is not None:
    t_max = min(t_max, float(schedule.t_from_logsnr(np.float64(logsnr_min))))
  if logsnr_max is not None:
    t_min = max(t_min, float(schedule.t_from_logsnr(np.float64(logsnr_max))))
  if not t_max > t_min:
    raise ValueError(f"empty time range after logSNR clipping: t_min={t_min}, t_max={t_max} "
                     f"(logsnr_min={logsnr_min}, logsnr_max={logsnr_max})")
  return t_min, t_max


def _sampling_grid(info: SamplerInfo, schedule, num_steps, grid, rho, t_min, t_max, logsnr_min,
                   logsnr_max, time_grid) -> np.ndarray:
  """The checked decreasing time grid of ``build_sampler``'s arguments (see there)."""
  from diffusion.samplers import engine
  from diffusion.samplers import grids as grids_lib
  if time_grid is not None:
    given = {k: v for k, v in dict(grid=grid, rho=rho, t_min=t_min, t_max=t_max,
                                   logsnr_min=logsnr_min, logsnr_max=logsnr_max).items()
             if v is not None}
    if given:
      raise ValueError(f"time_grid is given explicitly, so {sorted(given)} must not be "
                       f"(they define the grid built when time_grid is None); got {given}")
    grid_t = engine.check_grid(time_grid, schedule, closed=info.kind == "flow_map",
                               pure_noise_start=info.pure_noise_start)
    if num_steps is not None and schedules_lib.check_int("num_steps", num_steps) != len(grid_t) - 1:
      raise ValueError(f"num_steps={num_steps!r} does not match the explicit time_grid of "
                       f"{len(grid_t)} times ({len(grid_t) - 1} steps); pass one or the other")
    return grid_t
  if num_steps is None:
    raise ValueError("build_sampler needs num_steps (an int >= 1) or an explicit time_grid")
  num_steps = schedules_lib.check_int("num_steps", num_steps)
  t_min, t_max = logsnr_clip(schedule, t_min, t_max, logsnr_min, logsnr_max)
  grid_t = grids_lib.time_grid(schedule, num_steps, "karras" if grid is None else grid,
                               t_min=t_min, t_max=t_max, rho=7.0 if rho is None else rho,
                               sampler=info.name)
  return engine.check_grid(grid_t, schedule, closed=info.kind == "flow_map",
                           pure_noise_start=info.pure_noise_start)


def sampling_grid(sampler: str, schedule: schedules_lib.Schedule, num_steps: Optional[int] = None,
                  grid: Optional[str] = None, rho: Optional[float] = None,
                  t_min: Optional[float] = None, t_max: Optional[float] = None,
                  logsnr_min: Optional[float] = None, logsnr_max: Optional[float] = None,
                  time_grid: Optional[Any] = None) -> np.ndarray:
  """The checked decreasing time grid (N+1,) that ``build_sampler(sampler, schedule, ...)`` with
  the same arguments samples on (for samplers outside the registry that share its grids, e.g.
  ``diffusion.inverse``'s DPS / DAPS / DDRM and ``guidance.cfgpp_ddim``)."""
  return _sampling_grid(sampler_info(sampler), schedule, num_steps, grid, rho, t_min, t_max,
                        logsnr_min, logsnr_max, time_grid)


def build_sampler(sampler: str,
                  schedule: schedules_lib.Schedule,
                  num_steps: Optional[int] = None,
                  grid: Optional[str] = None,
                  rho: Optional[float] = None,
                  t_min: Optional[float] = None,
                  t_max: Optional[float] = None,
                  logsnr_min: Optional[float] = None,
                  logsnr_max: Optional[float] = None,
                  jit: bool = True,
                  time_grid: Optional[Any] = None,
                  **hparams) -> Callable[..., Tuple[Array, Dict[str, Any]]]:
  """Builds ``fn(denoise, key, x_T, cond=None, sample_offset=0) -> (x_0, info)``.

  The time grid (N+1,) is either built once here, ``grids.time_grid(schedule, num_steps, grid,
  t_min, t_max, rho)`` (grid: the kinds of ``schedules.time_grid`` plus 'logsnr_power[:kappa]',
  default 'karras'; rho default 7), with ``logsnr_min`` / ``logsnr_max`` clipping its ends to that
  logSNR range (t_max <= t(logsnr_min), t_min >= t(logsnr_max)); or given as ``time_grid``, a
  decreasing array of at least 2 finite times in the schedule's [t_min, t_max], and then none of
  grid / rho / t_min / t_max / logsnr_min / logsnr_max may be given, and ``num_steps``, if given,
  must equal len(time_grid) - 1. ``hparams`` are checked against the sampler's signature
  (unknown names raise a ValueError listing the accepted ones) and values
  (``SamplerInfo.validate``). All checks run here, before anything is traced. With ``jit`` the
  returned function is one ``jax.jit`` (``denoise`` is a static argument: pass the same callable
  to reuse the compilation), and the info of a transformed denoiser (``diffusion.guidance``:
  batch multiplier, back-propagation through the network) is merged into the returned info;
  without ``jit`` the function may run inside the caller's trace, so the caller reads it with
  ``guidance.denoiser_info``.
  """
  info = sampler_info(sampler)
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  hp = info.validate(hparams)
  grid_t = _sampling_grid(info, schedule, num_steps, grid, rho, t_min, t_max, logsnr_min,
                          logsnr_max, time_grid)
  fn = functools.partial(info.fn, schedule=schedule, time_grid=grid_t, **hp)

  def run(denoise, key, x_T, cond=None, sample_offset=0):
    return fn(denoise, key=key, x_T=x_T, cond=cond, sample_offset=sample_offset)

  if not jit:
    return run
  jitted = jax.jit(run, static_argnums=0)

  def run_jitted(denoise, key, x_T, cond=None, sample_offset=0):
    x0, out = jitted(denoise, key, x_T, cond, sample_offset)
    if getattr(denoise, "info", None):  # a transformed denoiser: report what a call costs
      from diffusion.guidance import denoiser_info
      out = dict(out, **denoiser_info(denoise))
    return x0, out

  return run_jitted


def build_inverter(sampler: str,
                   schedule: schedules_lib.Schedule,
                   num_steps: Optional[int] = None,
                   grid: Optional[str] = None,
                   rho: Optional[float] = None,
                   t_min: Optional[float] = None,
                   t_max: Optional[float] = None,
                   logsnr_min: Optional[float] = None,
                   logsnr_max: Optional[float] = None,
                   jit: bool = True,
                   time_grid: Optional[Any] = None,
                   **hparams) -> Callable[..., Tuple[Array, Dict[str, Any]]]:
  """Builds ``fn(denoise, x, cond=None) -> (x_T, info)``: inversion of ``x`` at the grid's lowest
  time to its highest by a deterministic sampler run toward the noise (DDIM inversion, Song et al.
  2021 sec. 4.3 / Dhariwal & Nichol 2021, and the same for every fixed-step PF-ODE solver).

  The grid is the one ``build_sampler`` builds from the same arguments (or the decreasing
  ``time_grid`` given), traversed from t_N up to t_0 = t_max with the sampler's own update rule,
  so sampling the result with ``build_sampler(same arguments)`` retraces it (the cycle error is
  the two solves' discretisation errors; ``diffusion.flow_map.exact_flow_map`` is the exact
  inversion). Refused: stochastic, consistency and flow-map samplers, adaptive ones, DDIM with
  eta != 0 and ``final_denoise=True`` (a step to sigma = 0 has no inverse); ``final_denoise``
  defaults to False. info: {'nfe'}."""
  info = sampler_info(sampler)
  if info.kind != "deterministic" or info.adaptive:
    raise ValueError(f"sampler {sampler!r} ({'adaptive' if info.adaptive else info.kind}) cannot "
                     f"invert; the fixed-step deterministic samplers can: "
                     f"{[n for n in registered_samplers() if _invertible(sampler_info(n))]}")
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  if "final_denoise" in info.defaults():
    hparams = {"final_denoise": False, **hparams}
  hp = info.validate(hparams)
  if hp.get("final_denoise"):
    raise ValueError("final_denoise=True (a step to sigma = 0) has no inverse: leave it False")
  if hp.get("eta", 0.0) != 0.0:
    raise ValueError(f"eta={hp['eta']!r} makes DDIM stochastic; inversion needs eta=0")
  grid_t = _sampling_grid(info, schedule, num_steps, grid, rho, t_min, t_max, logsnr_min,
                          logsnr_max, time_grid)
  from diffusion.samplers import engine
  fn = functools.partial(info.fn, schedule=schedule, time_grid=np.ascontiguousarray(grid_t[::-1]),
                         **hp)

  def run(denoise, x, cond=None):
    with engine.inverting():
      return fn(denoise, key=jax.random.PRNGKey(0), x_T=x, cond=cond, sample_offset=0)

  return jax.jit(run, static_argnums=0) if jit else run


def _invertible(info: SamplerInfo) -> bool:
  return info.kind == "deterministic" and not info.adaptive
