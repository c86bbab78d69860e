"""Progressive distillation of a deterministic DDIM sampler (Salimans & Ho 2022).

A student denoiser learns to do in ONE DDIM step what the teacher does in TWO; repeating with the
student as the next teacher halves the number of sampling steps per round (Salimans & Ho 2022,
"Progressive Distillation for Fast Sampling of Diffusion Models", Alg. 2). With the denoiser
interface ``denoise(x_t, t, cond) -> x0_hat`` (diffusion.parameterization) and
x_t = alpha_t x0 + sigma_t eps:

  DDIM step t -> s (Song et al. 2021a, eq. 12, eta = 0; Salimans & Ho 2022, eq. 8):
    x_s = alpha_s x0_hat + sigma_s (x_t - alpha_t x0_hat) / sigma_t

  Distillation target (Salimans & Ho 2022, Alg. 2): two teacher steps t -> t' -> t'' give
  x_{t''}; the student's x0 target x~ is the x0_hat for which ONE DDIM step t -> t'' lands there:
    alpha_{t''} x~ + sigma_{t''} (x_t - alpha_t x~) / sigma_t = x_{t''}
    =>  x~ = (x_{t''} - (sigma_{t''}/sigma_t) x_t) / (alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t)
  The denominator is sigma_{t''} (alpha_{t''}/sigma_{t''} - alpha_t/sigma_t) > 0 because the SNR
  decreases in t. At sigma_{t''} = 0 (t'' = 0 on a VP schedule) it reduces to x_{t''}/alpha_{t''},
  the teacher's two-step end point itself (alpha = 1 there); only sigma_t > 0 is divided by.

  Loss (Alg. 2 and sec. 4): L = E_{i, x0, eps} w(t) || student(x_t, t) - x~ ||^2 with i uniform
  in {1..N}, t = i/N, t' = t - 0.5/N, t'' = t - 1/N, N the student's number of steps. Here
  u = i/N in (0, 1] is mapped affinely onto [t_lo, t_hi] (default the schedule's [t_min, t_max]):
  t = t_lo + u (t_hi - t_lo), so the student's sampling grid is the N-step 'uniform' time grid
  (``schedules.time_grid(schedule, N, 'uniform')``) and its last step ends at t_lo (sigma = 0 when
  the schedule has t_min = 0). Weightings w(t) in x0 units (sec. 4, eq. 9-10):
    'truncated_snr'  max(SNR, 1)                  = max(||x - x_hat||^2, ||eps - eps_hat||^2)
    'snr'            SNR = alpha^2/sigma^2         ||eps - eps_hat||^2 (vanishes as alpha -> 0)
    'v'              (alpha^2 + sigma^2)^2/sigma^2 ||v - v_hat||^2 (= 1 + SNR on VP schedules)
  On a VP schedule (alpha^2 + sigma^2 = 1) the v weight is SNR + 1, so the ratio of the 'v' to
  the 'truncated_snr' weight is (1 + SNR)/max(1, SNR), between 1 and 2: the two losses agree up
  to a factor in [1, 2] (1 at SNR -> 0 and SNR -> inf, 2 at SNR = 1), not a constant.

Rounds: a teacher of N steps trains a student of N/2, which becomes the teacher of the next round
(``round_steps``). Training the student is ``diffusion.training.make_train_step`` with
``loss_fn=make_loss_fn(teacher_denoise, num_student_steps)``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.losses import TimeSampling, loss_weight
from diffusion.schedules import Schedule, _bcast, check_int, check_time_range

Array = Any
Denoiser = Callable[..., Array]

WEIGHTINGS = ("truncated_snr", "snr", "v")


# -- argument checks ------------------------------------------------------------------------------


def _concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def _check_times(schedule: Schedule, **times) -> None:
  """Concrete times (scalars or arrays) must be finite and inside the schedule's [t_min, t_max];
  traced ones cannot be checked here. Raises ValueError naming the bad argument."""
  lo, hi = float(schedule.t_min), float(schedule.t_max)
  for name, t in times.items():
    if not _concrete(t):
      continue
    v = np.asarray(t, np.float64)
    if not (np.all(np.isfinite(v)) and np.all(v >= lo) and np.all(v <= hi)):
      raise ValueError(f"{name} must be finite times in the {schedule.name} schedule's range "
                       f"[t_min, t_max] = [{lo}, {hi}], got {name} in "
                       f"[{np.min(v)}, {np.max(v)}]")


def _check_order(**times) -> None:
  """Concrete times given in decreasing order (t > t_mid > t_next) must be strictly so."""
  names = list(times)
  for a, b in zip(names, names[1:]):
    ta, tb = times[a], times[b]
    if _concrete(ta) and _concrete(tb) and not np.all(np.asarray(ta, np.float64) >
                                                       np.asarray(tb, np.float64)):
      raise ValueError(f"need {a} > {b} (sampling runs from high to low noise), got {a}={ta!r}, "
                       f"{b}={tb!r}")


def check_weighting(weighting: str) -> str:
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown distillation weighting {weighting!r}; available: {WEIGHTINGS}")
  return weighting


# -- the DDIM step and the target -----------------------------------------------------------------


def ddim_step(x0_hat: Array, x_t: Array, t: Array, s: Array, schedule: Schedule) -> Array:
  """One deterministic DDIM step t -> s (Song et al. 2021a, eq. 12 with eta = 0):

    x_s = alpha_s x0_hat + sigma_s (x_t - alpha_t x0_hat) / sigma_t.

  x0_hat, x_t: (B, ...); t, s: scalars or (B,) (traced or concrete), sigma_t > 0; s may have
  sigma_s = 0 (then x_s = alpha_s x0_hat). Concrete times outside the schedule raise ValueError.
  """
  _check_times(schedule, t=t, s=s)
  tb = _bcast(t, x_t)
  a_t, s_t = schedule.alpha(tb), schedule.sigma(tb)
  sb = _bcast(s, x_t)
  a_s, s_s = schedule.alpha(sb), schedule.sigma(sb)
  eps_hat = (x_t - a_t * x0_hat) / s_t
  return a_s * x0_hat + s_s * eps_hat


def x0_for_one_step(x_t: Array, x_s: Array, t: Array, s: Array, schedule: Schedule) -> Array:
  """The x0_hat for which ``ddim_step(x0_hat, x_t, t, s)`` equals x_s (Salimans & Ho 2022,
  Alg. 2): x~ = (x_s - (sigma_s/sigma_t) x_t) / (alpha_s - (sigma_s/sigma_t) alpha_t).

  Needs sigma_t > 0 and SNR(s) > SNR(t) (s < t); sigma_s = 0 gives x_s / alpha_s.
  """
  tb = _bcast(t, x_t)
  a_t, s_t = schedule.alpha(tb), schedule.sigma(tb)
  sb = _bcast(s, x_t)
  a_s, s_s = schedule.alpha(sb), schedule.sigma(sb)
  r = s_s / s_t
  return (x_s - r * x_t) / (a_s - r * a_t)


def teacher_two_steps(teacher_denoise: Denoiser, x_t: Array, t: Array, t_mid: Array,
                      t_next: Array, schedule: Schedule, cond=None) -> Array:
  """x_{t''}: two teacher DDIM steps t -> t_mid -> t_next from x_t (B, ...); times (B,)."""
  x_mid = ddim_step(teacher_denoise(x_t, t, cond), x_t, t, t_mid, schedule)
  return ddim_step(teacher_denoise(x_mid, t_mid, cond), x_mid, t_mid, t_next, schedule)


def distillation_target(teacher_denoise: Denoiser, x_t: Array, t: Array, t_mid: Array,
                        t_next: Array, schedule: Schedule, cond=None) -> Array:
  """The student's x0 target x~ (B, ...) (Salimans & Ho 2022, Alg. 2; module docstring).

  teacher_denoise(x (B, ...), t (B,), cond) -> x0_hat; x_t (B, ...); t > t_mid > t_next, each a
  scalar or (B,), inside the schedule's range; t_next may have sigma = 0, where the target is the
  teacher's two-step end point divided by alpha (= the end point itself on a VP schedule).
  Concrete times are checked (ValueError naming the bad one); traced ones are not.
  """
  _check_times(schedule, t=t, t_mid=t_mid, t_next=t_next)
  _check_order(t=t, t_mid=t_mid, t_next=t_next)
  b = x_t.shape[0]
  t, t_mid, t_next = (jnp.broadcast_to(jnp.asarray(v, x_t.dtype), (b,))
                      for v in (t, t_mid, t_next))
  x_next = teacher_two_steps(teacher_denoise, x_t, t, t_mid, t_next, schedule, cond)
  # sigma_{t''} = 0 needs no special case: the formula divides only by sigma_t > 0 and by
  # alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t > 0, and gives x_{t''} / alpha_{t''} there.
  return x0_for_one_step(x_t, x_next, t, t_next, schedule)


# -- the student's time grid and the loss ---------------------------------------------------------


def student_times(i: Array, num_student_steps: int, t_lo: float, t_hi: float
                  ) -> Tuple[Array, Array, Array]:
  """(t, t_mid, t_next) of grid index i in {1..N}: u = i/N mapped onto [t_lo, t_hi],
  t = t_lo + u (t_hi - t_lo), t_mid = t - 0.5 h, t_next = t - h with h = (t_hi - t_lo)/N (each
  computed from its own u, so t_next = t_lo exactly at i = 1 and t = t_hi at i = N, up to the
  clipping of round-off)."""
  n = num_student_steps
  t, t_mid, t_next = (t_lo + (j / n) * (t_hi - t_lo) for j in (i, i - 0.5, i - 1))
  return jnp.minimum(t, t_hi), t_mid, jnp.maximum(t_next, t_lo)


def distillation_weight(t: Array, schedule: Schedule, weighting: str) -> Array:
  """The x0-space weight w(t) (B,) of ``weighting`` (module docstring; Salimans & Ho 2022,
  sec. 4): 'truncated_snr' max(SNR, 1), 'snr' SNR, 'v' (alpha^2 + sigma^2)^2 / sigma^2."""
  check_weighting(weighting)
  if weighting == "v":
    return loss_weight(t, schedule, "v")
  snr = loss_weight(t, schedule, "eps")
  return jnp.maximum(snr, 1.0) if weighting == "truncated_snr" else snr


def progressive_distillation_loss(student_denoise: Denoiser,
                                  teacher_denoise: Denoiser,
                                  x0: Array,
                                  key,
                                  schedule: Schedule,
                                  num_student_steps: int,
                                  *,
                                  weighting: str = "truncated_snr",
                                  cond=None,
                                  t_min: Optional[float] = None,
                                  t_max: Optional[float] = None,
                                  reduce: str = "mean") -> Tuple[Array, Dict[str, Array]]:
  """Monte Carlo estimate of the progressive distillation loss on a batch x0 (B, ...)
  (Salimans & Ho 2022, Alg. 2):

    i ~ U{1..N}, (t, t', t'') = ``student_times(i, N, t_min, t_max)``, x_t = alpha x0 + sigma eps,
    x~ = ``distillation_target(teacher, x_t, t, t', t'')`` (no gradient),
    L = mean_b w(t) || student(x_t, t, cond) - x~ ||^2   (mean or sum over the non-batch axes).

  t_min / t_max (None: the schedule's) bound the student's grid, checked as in
  ``schedules.check_time_range``. Computed in x0's dtype (at least float32). Returns (scalar loss,
  aux) like ``losses.dsm_loss``: aux['per_example'] (B,), aux['t'] (B,), aux['index'] (B,) int.
  """
  n = check_int("num_student_steps", num_student_steps)
  check_weighting(weighting)
  if reduce not in ("mean", "sum"):
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
  t_lo, t_hi = check_time_range(schedule, t_min, t_max)
  dtype = jnp.promote_types(x0.dtype, jnp.float32)
  x0 = x0.astype(dtype)
  ki, ke = jax.random.split(key)
  b = x0.shape[0]
  i = jax.random.randint(ki, (b,), 1, n + 1)
  t, t_mid, t_next = student_times(i.astype(dtype), n, t_lo, t_hi)
  eps = jax.random.normal(ke, x0.shape, dtype)
  x_t = schedule.marginal(x0, eps, t)
  target = jax.lax.stop_gradient(
      distillation_target(teacher_denoise, x_t, t, t_mid, t_next, schedule, cond))
  pred = student_denoise(x_t, t, cond).astype(dtype)
  sq = jnp.square(pred - target)
  axes = tuple(range(1, x0.ndim))
  err = jnp.mean(sq, axis=axes) if reduce == "mean" else jnp.sum(sq, axis=axes)
  per_example = distillation_weight(t, schedule, weighting) * err
  return jnp.mean(per_example), {"per_example": per_example, "t": t, "index": i}


def make_loss_fn(teacher_denoise: Denoiser, num_student_steps: int, *,
                 t_min: Optional[float] = None, t_max: Optional[float] = None,
                 reduce: str = "mean") -> Callable:
  """Adapter to ``diffusion.training.make_train_step(..., loss_fn=...)``, which calls
  ``loss_fn(denoise, x0, key, schedule, weighting=cfg.weighting,
  time_sampling=cfg.time_sampling, cond=cond, **cfg.loss_opts)``.

  Use ``StepConfig(weighting='truncated_snr' | 'snr' | 'v')`` (anything else raises); times are
  always uniform on the student's grid, so ``time_sampling`` must be 'uniform'. The teacher is
  a fixed function (e.g. a closure over frozen parameters); no gradient flows into it.
  """
  n = check_int("num_student_steps", num_student_steps)

  def loss_fn(denoise, x0, key, schedule, *, weighting="truncated_snr",
              time_sampling="uniform", cond=None):
    method = TimeSampling.of(time_sampling).method
    if method != "uniform":
      raise ValueError(f"progressive distillation samples t uniformly on the student's grid "
                       f"of {n} steps: time_sampling must be 'uniform', got {method!r}")
    if weighting not in WEIGHTINGS:
      raise ValueError(f"unknown distillation weighting {weighting!r} (StepConfig.weighting); "
                       f"available: {WEIGHTINGS}")
    return progressive_distillation_loss(denoise, teacher_denoise, x0, key, schedule, n,
                                         weighting=weighting, cond=cond, t_min=t_min,
                                         t_max=t_max, reduce=reduce)

  return loss_fn


def round_steps(initial_steps: int, rounds: int) -> List[int]:
  """Step counts [N, N/2, ..., N/2^rounds] of the teacher and the students of ``rounds`` rounds.

  initial_steps an int >= 1, rounds an int >= 0, and N divisible by 2^rounds (N a power of two
  times the final count); otherwise TypeError / ValueError naming the value.
  """
  n = check_int("initial_steps", initial_steps)
  r = check_int("rounds", rounds, minimum=0)
  if n % (2**r):
    max_r = (n & -n).bit_length() - 1  # the power of two in n
    raise ValueError(f"initial_steps={n} is not divisible by 2**rounds = {2**r}: each round "
                     f"halves the step count, so initial_steps must be a power of two times the "
                     f"final count; {n} allows at most rounds={max_r}")
  return [n // 2**k for k in range(r + 1)]


def ideal_student(teacher_denoise: Denoiser, schedule: Schedule, num_student_steps: int, *,
                  t_min: Optional[float] = None, t_max: Optional[float] = None) -> Denoiser:
  """The minimiser of the loss: the denoiser x~(x_t, t) of ``distillation_target`` at the
  student's grid times (t, t - h/2, t - h), h = (t_max - t_min)/N (``student_times`` of the index
  i = round((t - t_min)/h)). Its N-step DDIM map on the 'uniform' grid equals the teacher's
  2N-step DDIM map. Meaningful only at the grid times t_min + i h, i = 1..N."""
  n = check_int("num_student_steps", num_student_steps)
  t_lo, t_hi = check_time_range(schedule, t_min, t_max)
  h = (t_hi - t_lo) / n

  def denoise(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    i = jnp.round((t - t_lo) / h)  # the grid index of t
    _, t_mid, t_next = student_times(i, n, t_lo, t_hi)
    return distillation_target(teacher_denoise, x, t, t_mid, t_next, schedule, cond)

  return denoise


def ddim_map(denoise: Denoiser, x: Array, schedule: Schedule, num_steps: int, *,
             t_min: Optional[float] = None, t_max: Optional[float] = None, cond=None) -> Array:
  """The N-step DDIM map from t_max to t_min on the student's grid t_k = t_lo + k h (the
  'uniform' grid), applying ``ddim_step`` N times; x (B, ...). Also allows sigma(t_min) = 0."""
  n = check_int("num_steps", num_steps)
  t_lo, t_hi = check_time_range(schedule, t_min, t_max)
  b = x.shape[0]
  for k in range(n, 0, -1):
    t, _, s = student_times(jnp.full((b,), float(k), x.dtype), n, t_lo, t_hi)
    x = ddim_step(denoise(x, t, cond), x, t, s, schedule)
  return x

