"""Consistency models: the boundary parameterization, the discretisation, CD / CT losses.

A consistency function f(x_t, t) maps every point of a PF-ODE trajectory to the trajectory's point
at the boundary time t_min (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", CM
below, sec. 3); it has the denoiser's interface ``f(x_t (B, ...), t (B,), cond) -> x0_hat``, so
samplers (``diffusion.samplers.consistency``) and tests call it like a denoiser.

Variables: s = sigma/alpha (EDM's sigma, ``schedule.edm_sigma``) and u = x/alpha, so u = x0 + s z
for every schedule (the conversion of ``parameterization``'s 'edm'); on the EDM schedule (alpha =
1, sigma = t) s = t and u = x. s_min = s(schedule.t_min) is the boundary.

* Boundary parameterization (CM eq. 7 and App. C, with EDM's c_in / c_noise):
    f(x, s) = c_skip(s) u + c_out(s) F(c_in(s) u, c_noise(s)),
    c_skip = sd^2 / ((s - s_min)^2 + sd^2),  c_out = sd (s - s_min) / sqrt(sd^2 + s^2),
    c_in = 1 / sqrt(s^2 + sd^2),  c_noise = log(s) / 4,
  so c_skip(s_min) = 1, c_out(s_min) = 0 and f(x, s_min) = u exactly.
* Discretisation (CM sec. 5 / App. C; Song & Dhariwal 2024, "Improved techniques for training
  consistency models", iCT below, sec. 3.4): the Karras grid of N points
    s_i = (s_min^(1/rho) + i/(N-1) (s_max^(1/rho) - s_min^(1/rho)))^rho,  i = 0..N-1, rho = 7,
  and iCT's exponential curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1,
  K' = floor(K / (log2 floor(s1/s0) + 1)), s0 = 10, s1 = 1280 (iCT sec. 3.4).
* Index distribution (iCT sec. 3.5): p(i) ~ erf((log s_{i+1} - P_mean) / (sqrt2 P_std)) -
  erf((log s_i - P_mean) / (sqrt2 P_std)), i = 0..N-2, P_mean = -1.1, P_std = 2.0; CM samples i
  uniformly.
* Losses (CM eq. 10 for distillation, eq. 9 / Thm. 2 for training; iCT secs. 3.1-3.3):
    L = E_i lambda(s_i) d(f_student(x_{i+1}, s_{i+1}), stopgrad f_target(x_hat_i, s_i)),
  x_{i+1} = x0 + s_{i+1} z (times alpha in the schedule's variables); x_hat_i one teacher ODE step
  from s_{i+1} to s_i (CD), or x0 + s_i z with the same z (CT). lambda = 1 (CM) or
  1 / (s_{i+1} - s_i) (iCT sec. 3.1); d = squared L2 (CM) or pseudo-Huber
  sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(dim) (iCT sec. 3.3). iCT's target is the
  student itself with a stop-gradient (no EMA, iCT sec. 3.2): ``f_target=None``; CM's EMA target
  is a separate callable.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.schedules import Schedule, _bcast, check_int, check_real

Array = Any
ConsistencyFn = Callable[..., Array]  # f(x_t (B, ...), t (B,), cond=None) -> x0_hat (B, ...)
TeacherStep = Callable[..., Array]  # step(x (B, ...), t_from, t_to, cond=None) -> x at t_to
Metric = Callable[[Array, Array], Array]  # d(a (B, ...), b (B, ...)) -> (B,)

METRICS = ("pseudo_huber", "l2")
WEIGHTINGS = ("ict", "uniform")
INDEX_DISTRIBUTIONS = ("lognormal", "uniform")
TRACED_TEACHERS = ("euler", "heun")
PSEUDO_HUBER_SCALE = 0.00054  # iCT sec. 3.3: c = 0.00054 sqrt(d)


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def _positive(name: str, value) -> float:
  v = check_real(name, value)
  if not (math.isfinite(v) and v > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  return v


def _one_of(name: str, value, accepted: Sequence[str]) -> str:
  if value not in accepted:
    raise ValueError(f"unknown {name} {value!r}; accepted: {tuple(accepted)}")
  return value


def sigma_range(schedule: Schedule, sigma_min=None, sigma_max=None) -> Tuple[float, float]:
  """(s_min, s_max) in EDM variables, default s(schedule.t_min), s(schedule.t_max); both must lie
  in the schedule's range with s_min < s_max (ValueError naming the bad value)."""
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  lo = float(schedule.edm_sigma(np.float64(schedule.t_min)))
  hi = float(schedule.edm_sigma(np.float64(schedule.t_max)))
  s_min = lo if sigma_min is None else _positive("sigma_min", sigma_min)
  s_max = hi if sigma_max is None else _positive("sigma_max", sigma_max)
  for name, v in (("sigma_min", s_min), ("sigma_max", s_max)):
    if not lo * (1 - 1e-12) <= v <= hi * (1 + 1e-12):
      raise ValueError(f"{name}={v!r} is outside the {schedule.name} schedule's EDM sigma range "
                       f"[{lo}, {hi}]")
  if not s_min < s_max:
    raise ValueError(f"need sigma_min < sigma_max, got sigma_min={s_min!r}, sigma_max={s_max!r}")
  return s_min, s_max


# ------------------------------------------------------------------------------------------------
# Boundary parameterization (CM eq. 7, App. C)
# ------------------------------------------------------------------------------------------------


def boundary_coefficients(s: Array, sigma_min: float, sigma_data: float = 0.5):
  """(c_skip, c_out) at EDM sigma s (any shape) for the boundary s_min (CM App. C):
  c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = sd (s - s_min) / sqrt(sd^2 + s^2)."""
  sd, d = sigma_data, s - sigma_min
  return sd * sd / (d * d + sd * sd), sd * d / jnp.sqrt(sd * sd + s * s)


def make_consistency_fn(apply_fn: Callable[..., Array],
                        schedule: Schedule,
                        sigma_data: float = 0.5,
                        sigma_min: Optional[float] = None) -> ConsistencyFn:
  """Wraps a network ``apply_fn(x_in, c_noise (B,), cond) -> F`` into
  ``f(x_t, t, cond=None) -> x0_hat`` = c_skip(s) x/alpha + c_out(s) F(c_in(s) x/alpha, log(s)/4)
  with s = sigma(t)/alpha(t) (CM eq. 7; EDM's c_in and c_noise, Karras et al. 2022 Table 1), so
  that f(x, t_min) = x / alpha(t_min) exactly. ``sigma_min`` defaults to s(schedule.t_min)."""
  sd = _positive("sigma_data", sigma_data)
  s_min, _ = sigma_range(schedule, sigma_min, None)

  def f(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    tb = _bcast(t, x)
    s = schedule.edm_sigma(tb)
    u = x / schedule.alpha(tb)
    c_skip, c_out = boundary_coefficients(s, s_min, sd)
    c_noise = (0.25 * jnp.log(schedule.edm_sigma(t))).astype(jnp.float32)
    out = apply_fn(u / jnp.sqrt(s * s + sd * sd), c_noise, cond).astype(x.dtype)
    return c_skip * u + c_out * out

  return f


# ------------------------------------------------------------------------------------------------
# Discretisation: Karras grid, iCT curriculum, index distribution
# ------------------------------------------------------------------------------------------------


def karras_sigmas(num_scales: int, sigma_min: float, sigma_max: float,
                  rho: float = 7.0) -> np.ndarray:
  """The increasing EDM-sigma grid (N,), s_0 = s_min < ... < s_{N-1} = s_max, of CM sec. 5 /
  App. C: s_i = (s_min^(1/rho) + i/(N-1) (s_max^(1/rho) - s_min^(1/rho)))^rho, float64."""
  n = check_int("num_scales", num_scales, minimum=2)
  lo, hi, r = (_positive(k, v) for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max),
                                             ("rho", rho)))
  if not lo < hi:
    raise ValueError(f"need sigma_min < sigma_max, got sigma_min={lo!r}, sigma_max={hi!r}")
  i = np.arange(n, dtype=np.float64) / (n - 1)
  s = (lo**(1 / r) + i * (hi**(1 / r) - lo**(1 / r)))**r
  s[0], s[-1] = lo, hi
  return s


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
  """iCT's exponential curriculum (sec. 3.4): N(k) = min(s0 2^floor(k / K'), s1) + 1 with
  K' = floor(K / (log2 floor(s1 / s0) + 1)), k = ``step`` in [0, K), K = ``total_steps``."""
  k = check_int("step", step, minimum=0)
  big_k = check_int("total_steps", total_steps)
  s0 = check_int("s0", s0)
  s1 = check_int("s1", s1)
  if s1 < s0:
    raise ValueError(f"need s1 >= s0, got s0={s0}, s1={s1}")
  k_prime = math.floor(big_k / (math.log2(s1 // s0) + 1))
  if k_prime < 1:
    raise ValueError(f"total_steps={big_k} is too small for the curriculum s0={s0}, s1={s1} "
                     f"(K' = floor(K / (log2 floor(s1/s0) + 1)) = {k_prime} < 1)")
  return int(min(s0 * 2**(k // k_prime), s1) + 1)


def traced_num_scales(step: Array, total_steps: int, curriculum: str = "ict", s0: int = 10,
                      s1: int = 1280) -> Array:
  """``ict_num_scales`` / ``cm_num_scales`` of a traced ``step`` (int32 scalar), for a train step
  compiled once; equal to the host functions at every step (tests/test_consistency.py)."""
  big_k = check_int("total_steps", total_steps)
  s0, s1 = check_int("s0", s0), check_int("s1", s1)
  k = jnp.asarray(step, jnp.float32)
  if curriculum == "ict":
    ict_num_scales(0, big_k, s0, s1)  # checks K' >= 1
    k_prime = math.floor(big_k / (math.log2(s1 // s0) + 1))
    n = jnp.minimum(s0 * 2.0**jnp.floor(k / k_prime), s1) + 1
  elif curriculum == "cm":
    n = jnp.ceil(jnp.sqrt(k / big_k * ((s1 + 1)**2 - s0**2) + s0**2) - 1) + 1
  else:
    raise ValueError(f"unknown curriculum {curriculum!r}; accepted: ('ict', 'cm')")
  return n.astype(jnp.int32)


def max_num_scales(total_steps: int, curriculum: str = "ict", s0: int = 10, s1: int = 1280
                   ) -> int:
  """The largest N of the curriculum over steps 0 .. total_steps - 1."""
  fn = ict_num_scales if curriculum == "ict" else cm_num_scales
  return max(fn(total_steps - 1, total_steps, s0, s1), fn(0, total_steps, s0, s1))


def cm_num_scales(step: int, total_steps: int, s0: int = 2, s1: int = 150) -> int:
  """CM's curriculum for CT (App. C, the function N(k)):
  N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1."""
  k = check_int("step", step, minimum=0)
  big_k = check_int("total_steps", total_steps)
  s0, s1 = check_int("s0", s0), check_int("s1", s1)
  return int(math.ceil(math.sqrt(k / big_k * ((s1 + 1)**2 - s0**2) + s0**2) - 1) + 1)


def index_probs(sigmas: np.ndarray, distribution: str = "lognormal", p_mean: float = -1.1,
                p_std: float = 2.0) -> np.ndarray:
  """p(i), i = 0..N-2, over the N-1 intervals of the increasing grid ``sigmas`` (N,): 'lognormal'
  (iCT sec. 3.5) p(i) ~ erf((log s_{i+1} - P_mean)/(sqrt2 P_std)) - erf((log s_i - P_mean)/(sqrt2
  P_std)); 'uniform' (CM). float64, sums to 1."""
  _one_of("index distribution", distribution, INDEX_DISTRIBUTIONS)
  s = np.asarray(sigmas, np.float64)
  if s.ndim != 1 or s.shape[0] < 2 or not np.all(np.diff(s) > 0) or not s[0] > 0:
    raise ValueError(f"sigmas must be a positive increasing 1-D grid of >= 2 values, got {s}")
  if distribution == "uniform":
    return np.full(s.shape[0] - 1, 1.0 / (s.shape[0] - 1))
  check_real("p_mean", p_mean)
  p_std = _positive("p_std", p_std)
  from scipy.special import erf as np_erf
  c = np_erf((np.log(s) - p_mean) / (math.sqrt(2) * p_std))
  w = np.diff(c)
  return w / w.sum()


def sample_indices(key, batch: int, probs: np.ndarray) -> Array:
  """(B,) int32 indices i with P(i) = probs[i]."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  return jax.random.categorical(key, logits, shape=(batch,)).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def pseudo_huber_c(dim: int) -> float:
  """iCT's c = 0.00054 sqrt(d) (sec. 3.3), d the data dimension (0.03 for CIFAR-10)."""
  return PSEUDO_HUBER_SCALE * math.sqrt(check_int("dim", dim))


def _check_metric(metric) -> None:
  """A name of METRICS, or a callable d(a, b) -> (B,) (e.g. LPIPS, diffusion.metrics.lpips)."""
  if not callable(metric):
    _one_of("metric", metric, METRICS)


def distance(a: Array, b: Array, metric="pseudo_huber", c: Optional[float] = None) -> Array:
  """d(a, b) per sample, (B, ...) x 2 -> (B,): 'l2' ||a - b||^2 (CM), 'pseudo_huber'
  sqrt(||a - b||^2 + c^2) - c (iCT sec. 3.3), c default 0.00054 sqrt(dim); a callable
  metric(a, b) -> (B,) is used as is (CM's LPIPS: ``diffusion.metrics.lpips.make_distance``)."""
  _check_metric(metric)
  if callable(metric):
    return metric(a, b)
  sq = jnp.sum(jnp.reshape((a - b)**2, (a.shape[0], -1)), axis=-1)
  if metric == "l2":
    return sq
  dim = int(np.prod(a.shape[1:]))
  c = pseudo_huber_c(dim) if c is None else _positive("c", c)
  return jnp.sqrt(sq + c * c) - c


# ------------------------------------------------------------------------------------------------
# Teacher ODE steps
# ------------------------------------------------------------------------------------------------


def traced_teacher_step(method: str, schedule: Schedule, denoise: Callable[..., Array]
                        ) -> TeacherStep:
  """One Euler or Heun step of the PF-ODE in EDM variables, du/ds = (u - D(x, t)) / s (Karras et
  al. 2022, eq. 4 and Alg. 1), with times that may be traced and differ per sample:
  ``step(x (B, ...), t_from (B,) or (), t_to, cond=None) -> x at t_to``. For concrete times it
  equals the registry's 'euler' / 'heun' (final_denoise=False) on the grid [t_from, t_to]
  (tests/test_consistency.py); the registry's samplers need host grids, so this is what CD uses
  with a per-sample (traced) index."""
  _one_of("teacher method", method, TRACED_TEACHERS)

  def step(x, t_from, t_to, cond=None):
    b = x.shape[0]
    t0 = jnp.broadcast_to(jnp.asarray(t_from, x.dtype), (b,))
    t1 = jnp.broadcast_to(jnp.asarray(t_to, x.dtype), (b,))
    t0b, t1b = _bcast(t0, x), _bcast(t1, x)
    a0, a1 = schedule.alpha(t0b), schedule.alpha(t1b)
    s0, s1 = schedule.edm_sigma(t0b), schedule.edm_sigma(t1b)
    u = x / a0
    d0 = (u - denoise(x, t0, cond)) / s0
    u1 = u + (s1 - s0) * d0
    if method == "heun":
      d1 = (u1 - denoise(a1 * u1, t1, cond)) / s1
      u1 = u + 0.5 * (s1 - s0) * (d0 + d1)
    return a1 * u1

  return step


def teacher_step_from_sampler(name: str, schedule: Schedule, teacher_denoise: Callable[..., Array],
                              **hparams) -> TeacherStep:
  """A teacher step from any registered deterministic sampler: ``step(x, t_from, t_to, cond)``
  runs ``build_sampler(name, schedule, time_grid=[t_from, t_to], jit=False)`` (with
  final_denoise=False where the sampler has it). Time grids are host arrays: t_from / t_to must be
  concrete scalars (or concrete (B,) arrays with one value), so with a per-sample index use
  ``traced_teacher_step`` or ``consistency_distillation_loss(..., index=int)``."""
  from diffusion.samplers import build_sampler, sampler_info
  info = sampler_info(name)
  if info.kind != "deterministic":
    raise ValueError(f"the teacher step needs a deterministic sampler (a PF-ODE solver); "
                     f"{name!r} is {info.kind}")
  hp = dict(hparams)
  if "final_denoise" in info.defaults():
    hp.setdefault("final_denoise", False)
  info.validate(hp)

  def concrete(name_, t):
    if isinstance(t, jax.core.Tracer):
      raise TypeError(f"teacher_step_from_sampler({name!r}): {name_} is traced; the registry's "
                      f"samplers need concrete host time grids. Use traced_teacher_step("
                      f"'euler'|'heun', ...) or a fixed index")
    v = np.unique(np.asarray(t, np.float64))
    if v.size != 1:
      raise ValueError(f"teacher_step_from_sampler({name!r}): {name_} must be one time for the "
                       f"whole batch, got {v}")
    return float(v[0])

  def step(x, t_from, t_to, cond=None):
    grid = np.array([concrete("t_from", t_from), concrete("t_to", t_to)])
    f = build_sampler(name, schedule, time_grid=grid, jit=False, **hp)
    out, _ = f(teacher_denoise, jax.random.PRNGKey(0), x, cond=cond)
    return out

  return step


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def _loss_setup(schedule, num_scales, sigma_min, sigma_max, rho, index_distribution, weighting,
                metric):
  _one_of("weighting", weighting, WEIGHTINGS)
  _check_metric(metric)
  lo, hi = sigma_range(schedule, sigma_min, sigma_max)
  sig = karras_sigmas(num_scales, lo, hi, rho)
  probs = index_probs(sig, index_distribution)
  t_grid = np.asarray(schedule.t_from_edm_sigma(sig), np.float64)
  t_grid[0] = float(schedule.t_from_edm_sigma(np.float64(lo)))
  return sig, probs, t_grid


def traced_grid(schedule: Schedule, num_scales: Array, max_scales: int, *,
                sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                rho: float = 7.0, index_distribution: str = "lognormal", p_mean: float = -1.1,
                p_std: float = 2.0, dtype=jnp.float32) -> Tuple[Array, Array, Array]:
  """The Karras grid and index distribution of ``karras_sigmas`` / ``index_probs`` for a traced
  number of scales N <= ``max_scales`` (a curriculum inside one compiled step):
  (sigmas (max_scales,), times (max_scales,), index logits (max_scales - 1,)); entries past N
  are padding, and the logits of intervals i >= N - 1 are -inf (never drawn)."""
  m = check_int("max_scales", max_scales, minimum=2)
  _one_of("index distribution", index_distribution, INDEX_DISTRIBUTIONS)
  lo, hi = sigma_range(schedule, sigma_min, sigma_max)
  r = _positive("rho", rho)
  n = jnp.asarray(num_scales, jnp.int32)
  i = jnp.arange(m)
  frac = i.astype(dtype) / (n - 1).astype(dtype)
  s = (lo**(1 / r) + frac * (hi**(1 / r) - lo**(1 / r)))**r
  s = jnp.where(i == 0, lo, jnp.where(i >= n - 1, hi, s)).astype(dtype)
  t = schedule.t_from_edm_sigma(s)
  t = jnp.where(i == 0, float(schedule.t_from_edm_sigma(np.float64(lo))), t).astype(dtype)
  if index_distribution == "uniform":
    logits = jnp.zeros((m - 1,), dtype)
  else:
    c = jax.scipy.special.erf((jnp.log(s) - p_mean) / (math.sqrt(2) * _positive("p_std", p_std)))
    logits = jnp.log(jnp.maximum(c[1:] - c[:-1], 1e-30))
  return s, t, jnp.where(i[:-1] < n - 1, logits, -jnp.inf)


def _grid_and_index(key, x0, schedule, num_scales, max_scales, index, sigma_min, sigma_max, rho,
                    index_distribution, weighting, metric):
  """(sigmas, times, i, fixed): the Karras grid of the loss (host arrays; or traced, padded to
  ``max_scales``, when num_scales is traced) and the interval index, ``index`` for the whole
  batch (fixed) or drawn per sample (B,) from the index distribution."""
  fixed = index is not None
  if isinstance(num_scales, jax.Array) or max_scales is not None:  # a traced curriculum
    if fixed or max_scales is None:
      raise ValueError("a traced num_scales needs max_scales (the curriculum's largest N) and "
                       "a drawn index (index=None)")
    _one_of("weighting", weighting, WEIGHTINGS)
    _check_metric(metric)
    sig, t_grid, logits = traced_grid(schedule, num_scales, max_scales, sigma_min=sigma_min,
                                      sigma_max=sigma_max, rho=rho,
                                      index_distribution=index_distribution, dtype=x0.dtype)
    i = jax.random.categorical(key, logits, shape=(x0.shape[0],)).astype(jnp.int32)
    return sig, t_grid, i, False
  sig, probs, t_grid = _loss_setup(schedule, num_scales, sigma_min, sigma_max, rho,
                                   index_distribution, weighting, metric)
  if not fixed:
    return sig, t_grid, sample_indices(key, x0.shape[0], probs), False
  i = check_int("index", index, minimum=0)
  if i > len(sig) - 2:
    raise ValueError(f"index={i} is out of range for num_scales={len(sig)} (0..{len(sig) - 2})")
  return sig, t_grid, i, True


def _pair_loss(f_student, f_target, x0, z, x_hat_fn, i, sig, t_grid, schedule, weighting,
               metric, c, cond, fixed):
  """The shared part of CD and CT: (loss, aux)."""
  dt = x0.dtype
  if fixed:
    s_lo, s_hi = float(sig[i]), float(sig[i + 1])
    t_lo = jnp.full((x0.shape[0],), t_grid[i], dt)
    t_hi = jnp.full((x0.shape[0],), t_grid[i + 1], dt)
    t_lo_host, t_hi_host = np.float64(t_grid[i]), np.float64(t_grid[i + 1])
    s_lo_b, s_hi_b = jnp.full((x0.shape[0],), s_lo, dt), jnp.full((x0.shape[0],), s_hi, dt)
  else:
    sg, tg = jnp.asarray(sig, dt), jnp.asarray(t_grid, dt)
    s_lo_b, s_hi_b, t_lo, t_hi = sg[i], sg[i + 1], tg[i], tg[i + 1]
    t_lo_host, t_hi_host = t_lo, t_hi
  a_hi = _bcast(schedule.alpha(t_hi), x0)
  x_hi = a_hi * (x0 + _bcast(s_hi_b, x0) * z)
  x_lo = x_hat_fn(x_hi, t_hi_host, t_lo_host, s_lo_b)
  target = jax.lax.stop_gradient((f_target or f_student)(x_lo, t_lo, cond))
  pred = f_student(x_hi, t_hi, cond)
  d = distance(pred, target, metric, c)
  w = 1.0 / (s_hi_b - s_lo_b) if weighting == "ict" else jnp.ones_like(s_hi_b)
  loss = jnp.mean(w * d)
  return loss, {"index": i, "sigma": s_hi_b, "distance": d, "weight": w}


def consistency_distillation_loss(f_student: ConsistencyFn,
                                  f_target: Optional[ConsistencyFn],
                                  teacher_step: TeacherStep,
                                  x0: Array,
                                  key,
                                  schedule: Schedule,
                                  num_scales: int,
                                  *,
                                  cond=None,
                                  index: Optional[int] = None,
                                  sigma_min: Optional[float] = None,
                                  sigma_max: Optional[float] = None,
                                  rho: float = 7.0,
                                  index_distribution: str = "uniform",
                                  weighting: str = "uniform",
                                  metric: Union[str, Metric] = "l2",
                                  c: Optional[float] = None) -> Tuple[Array, Dict[str, Array]]:
  """Consistency distillation (CM eq. 10, Alg. 2): (mean loss, aux).

  x0 (B, ...) data; i ~ p(i) per sample (``index_distribution``; or ``index`` fixed for the
  batch, e.g. to use ``teacher_step_from_sampler``, which needs concrete times);
  z ~ N(0, I); x_{i+1} = alpha(t_{i+1}) (x0 + s_{i+1} z);
  x_hat_i = teacher_step(x_{i+1}, t_{i+1}, t_i, cond) (one PF-ODE step of the teacher);
  loss = mean_b lambda(s_i) d(f_student(x_{i+1}, t_{i+1}), stopgrad f_target(x_hat_i, t_i)).
  ``f_target`` None: the student itself under stop-gradient (iCT sec. 3.2); else e.g. an EMA copy
  (CM). Defaults are CM's (uniform index, lambda = 1, squared L2); iCT's are 'lognormal', 'ict',
  'pseudo_huber'; ``metric`` may also be a callable d(a, b) -> (B,) (CM's LPIPS, see
  ``distance``). The grid is ``karras_sigmas(num_scales, s_min, s_max, rho)`` in EDM sigma,
  default s_min / s_max from the schedule's ends. aux: index (B,), sigma s_{i+1} (B,), per-sample
  distance (B,) and weight (B,).
  """
  if not callable(teacher_step):
    raise TypeError(f"teacher_step must be callable (x, t_from, t_to, cond) -> x, "
                    f"got {teacher_step!r}")
  k_i, k_z = jax.random.split(key)
  sig, t_grid, i, fixed = _grid_and_index(
      k_i, x0, schedule, num_scales, None, index, sigma_min, sigma_max, rho, index_distribution,
      weighting, metric)
  z = jax.random.normal(k_z, x0.shape, x0.dtype)
  x_hat = lambda x_hi, t_hi, t_lo, s_lo: teacher_step(x_hi, t_hi, t_lo, cond)
  return _pair_loss(f_student, f_target, x0, z, x_hat, i, sig, t_grid, schedule, weighting,
                    metric, c, cond, fixed)


def consistency_training_loss(f_student: ConsistencyFn,
                              f_target: Optional[ConsistencyFn],
                              x0: Array,
                              key,
                              schedule: Schedule,
                              num_scales: int,
                              *,
                              cond=None,
                              index: Optional[int] = None,
                              sigma_min: Optional[float] = None,
                              sigma_max: Optional[float] = None,
                              rho: float = 7.0,
                              index_distribution: str = "lognormal",
                              weighting: str = "ict",
                              metric: Union[str, Metric] = "pseudo_huber",
                              c: Optional[float] = None,
                              max_scales: Optional[int] = None) -> Tuple[Array, Dict[str, Array]]:
  """Consistency training, no teacher (CM eq. 9 / Alg. 3; iCT sec. 3): as
  ``consistency_distillation_loss`` with x_hat_i = alpha(t_i) (x0 + s_i z), the same z (the
  one-sample estimate of the score, CM Thm. 2). Defaults are iCT's (log-normal index, lambda =
  1/(s_{i+1} - s_i), pseudo-Huber, ``f_target=None`` = stop-gradient of the student); with
  num_scales from ``ict_num_scales(step, total_steps)``, or traced (``traced_num_scales``, one
  compiled step for the whole curriculum) with ``max_scales`` its largest value (``traced_grid``).
  aux as ``consistency_distillation_loss``'s, plus num_scales () (float32).
  """
  k_i, k_z = jax.random.split(key)
  sig, t_grid, i, fixed = _grid_and_index(
      k_i, x0, schedule, num_scales, max_scales, index, sigma_min, sigma_max, rho,
      index_distribution, weighting, metric)
  z = jax.random.normal(k_z, x0.shape, x0.dtype)

  def x_hat(x_hi, t_hi, t_lo, s_lo):
    return _bcast(schedule.alpha(jnp.asarray(t_lo, x0.dtype)), x0) * (x0 + _bcast(s_lo, x0) * z)

  loss, aux = _pair_loss(f_student, f_target, x0, z, x_hat, i, sig, t_grid, schedule, weighting,
                         metric, c, cond, fixed)
  return loss, dict(aux, num_scales=jnp.asarray(num_scales, jnp.float32))


# ------------------------------------------------------------------------------------------------
# A consistency function from a denoiser (PF-ODE integration): the exact one for exact denoisers
# ------------------------------------------------------------------------------------------------


def _rk4_log_sigma(denoise, schedule: Schedule, x, t, log_s_end, n: int, cond):
  """u = x/alpha(t) carried from log s(t) to ``log_s_end`` ((B,) or scalar) by n RK4 steps of
  du/dr = u - D(alpha u, t(e^r)), r = log s, uniform in r per sample. Returns u at the end."""
  dt = x.dtype
  b = x.shape[0]
  t = jnp.broadcast_to(jnp.asarray(t, dt), (b,))
  r0 = jnp.log(schedule.edm_sigma(t))
  h = (jnp.broadcast_to(jnp.asarray(log_s_end, dt), (b,)) - r0) / n

  def vf(u, r):
    tt = schedule.t_from_edm_sigma(jnp.exp(r))
    return u - denoise(_bcast(schedule.alpha(tt), u) * u, tt, cond).astype(dt)

  def body(u, k):
    r, hb = r0 + k * h, _bcast(h, u)
    k1 = vf(u, r)
    k2 = vf(u + 0.5 * hb * k1, r + 0.5 * h)
    k3 = vf(u + 0.5 * hb * k2, r + 0.5 * h)
    k4 = vf(u + hb * k3, r + h)
    return u + hb / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), None

  u, _ = jax.lax.scan(body, x / _bcast(schedule.alpha(t), x), jnp.arange(n, dtype=dt))
  return u


def ode_consistency_fn(denoise: Callable[..., Array], schedule: Schedule, num_steps: int = 64,
                       sigma_min: Optional[float] = None) -> ConsistencyFn:
  """f(x, t, cond) = the PF-ODE solution at s_min from (x, t), by ``num_steps`` classical RK4
  steps in r = log s on u = x/alpha (du/dr = u - D(alpha u, t(s)); Karras et al. 2022, eq. 4 with
  ds = s dr), uniform in r from each sample's own (possibly traced) start, so f(x, t_min) = u
  exactly. Returns u at s_min, i.e. x_{t_min} / alpha(t_min) (= x_{t_min} on VE/EDM schedules).
  With the analytic mixture's exact denoiser this is the exact consistency function (to the RK4
  error, O(num_steps^-4); 2e-7 at 256 steps on the 2-D test mixture); with a trained denoiser it
  is the teacher's own consistency function."""
  n = check_int("num_steps", num_steps)
  s_min, _ = sigma_range(schedule, sigma_min, None)

  def f(x, t, cond=None):
    return _rk4_log_sigma(denoise, schedule, x, t, math.log(s_min), n, cond)

  return f


def rk4_teacher_step(denoise: Callable[..., Array], schedule: Schedule,
                     num_steps: int = 16) -> TeacherStep:
  """A high-accuracy teacher step with traced per-sample times: ``num_steps`` RK4 steps in
  r = log s from t_from to t_to (as ``ode_consistency_fn``), ``step(x, t_from, t_to, cond)``."""
  n = check_int("num_steps", num_steps)

  def step(x, t_from, t_to, cond=None):
    t1 = jnp.broadcast_to(jnp.asarray(t_to, x.dtype), (x.shape[0],))
    u = _rk4_log_sigma(denoise, schedule, x, t_from, jnp.log(schedule.edm_sigma(t1)), n, cond)
    return _bcast(schedule.alpha(t1), u) * u

  return step
