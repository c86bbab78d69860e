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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from diffusion import schedules as schedules_lib

Array = Any
SamplerFn = Callable[..., Tuple[Array, Dict[str, Any]]]

KINDS = ("deterministic", "stochastic")
# Keyword arguments every sampler accepts; not hyper-parameters.
COMMON_ARGS = ("cond", "sample_offset")


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
  """Metadata of a registered sampler.

  Attributes:
    name: registry name.
    fn: the sampling function.
    kind: 'deterministic' (a PF-ODE solver) or 'stochastic'.
    order: hparams -> theoretical order (strong order for ODE solvers, weak for SDE samplers).
    nfe: (num_steps, hparams) -> exact number of denoiser calls; None for adaptive samplers, whose
      count is only known at run time (``info['nfe']``).
    nfe_per_step: human-readable NFE per step, for the documentation table.
    paper: the paper (and equations / algorithm) it implements.
    variants: hyper-parameter settings the exhaustive (slow) tests sweep; the first is the default
      checked by the fast tests.
    order_grid: the time grid on which the order test measures convergence (see tests).
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
                     fn: Optional[SamplerFn] = None):
  """Registers a sampler under ``name`` (usable as a decorator, or with ``fn=``).

  ``order`` is a number or a function of the resolved hyper-parameters; ``nfe(num_steps, hp)``
  the exact denoiser-call count (None if adaptive).
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
    _REGISTRY[name] = SamplerInfo(name, f, kind, order_fn, nfe, nfe_per_step, paper,
                                  tuple(variants), order_grid)
    return f

  return wrap(fn) if fn is not None else wrap


def _import_all():
  # Importing the family modules registers their samplers.
  from diffusion.samplers import dpm_solver, multistep, ode, sde  # noqa: F401


def sampler_info(name: str) -> SamplerInfo:
  """The metadata of sampler ``name``; unknown names raise ValueError listing registered ones."""
  _import_all()
  if name not in _REGISTRY:
    raise ValueError(f"unknown sampler {name!r}; registered samplers: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def get_sampler(name: str) -> SamplerFn:
  """The sampling function registered as ``name``."""
  return sampler_info(name).fn


def registered_samplers() -> List[str]:
  """Sorted names of all registered samplers."""
  _import_all()
  return sorted(_REGISTRY)


def logsnr_clip(schedule, t_min, t_max, logsnr_min, logsnr_max):
  """(t_min, t_max) clipped so that logSNR stays within [logsnr_min, logsnr_max] (None: no clip)."""
  t_min = schedule.t_min if t_min is None else float(t_min)
  t_max = schedule.t_max if t_max is None else float(t_max)
  if logsnr_min is not None:
    t_max = min(t_max, float(schedule.t_from_logsnr(np.float64(logsnr_min))))
  if logsnr_max is not None:
    t_min = max(t_min, float(schedule.t_from_logsnr(np.float64(logsnr_max))))
  if not t_max > t_min:
    raise ValueError(f"empty time range after logSNR clipping: t_min={t_min}, t_max={t_max} "
                     f"(logsnr_min={logsnr_min}, logsnr_max={logsnr_max})")
  return t_min, t_max


def build_sampler(sampler: str,
                  schedule: schedules_lib.Schedule,
                  num_steps: int,
                  grid: str = "karras",
                  rho: float = 7.0,
                  t_min: Optional[float] = None,
                  t_max: Optional[float] = None,
                  logsnr_min: Optional[float] = None,
                  logsnr_max: Optional[float] = None,
                  jit: bool = True,
                  **hparams) -> Callable[..., Tuple[Array, Dict[str, Any]]]:
  """Builds ``fn(denoise, key, x_T, cond=None, sample_offset=0) -> (x_0, info)``.

  The time grid (``grids.time_grid(schedule, num_steps, grid, t_min, t_max, rho)``, (N+1,): the
  kinds of ``schedules.time_grid`` plus 'logsnr_power[:kappa]') is built once here; ``logsnr_min``
  / ``logsnr_max`` clip its ends to that logSNR range (t_max <= t(logsnr_min), t_min >=
  t(logsnr_max)); ``hparams`` are checked against the sampler's signature (unknown names raise a
  ValueError listing the accepted ones). With ``jit`` the returned function is one ``jax.jit``
  (``denoise`` is a static argument: pass the same callable to reuse the compilation).
  """
  info = sampler_info(sampler)
  hp = info.resolve(hparams)
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
  from diffusion.samplers import grids as grids_lib
  t_min, t_max = logsnr_clip(schedule, t_min, t_max, logsnr_min, logsnr_max)
  grid_t = grids_lib.time_grid(schedule, int(num_steps), grid, t_min=t_min, t_max=t_max, rho=rho)
  fn = functools.partial(info.fn, schedule=schedule, time_grid=grid_t, **hp)

  def run(denoise, key, x_T, cond=None, sample_offset=0):
    return fn(denoise, key=key, x_T=x_T, cond=cond, sample_offset=sample_offset)

  if jit:
    run = jax.jit(run, static_argnums=0)
  return run
