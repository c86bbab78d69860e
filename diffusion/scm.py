"""Continuous-time consistency models on TrigFlow (sCM; Lu & Song 2024, "Simplifying, Stabilizing
and Scaling Continuous-Time Consistency Models", arXiv 2410.11081).

TrigFlow (sec. 3; schedule 'trigflow', parameterization 'trigflow'): data x0 of std sigma_d,
z ~ N(0, sigma_d^2 I), t in (0, pi/2),

  x_t   = cos t x0 + sin t z,         dx_t/dt = cos t z - sin t x0      (the interpolant)
  f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, c_noise(t)),   c_noise(t) = t

f is the consistency function (f(x, 0) = x); the PF-ODE is dx_t/dt = sigma_d F for a diffusion
model, and the velocity of a denoiser D on TrigFlow is (cos t x_t - D) / sin t.

The continuous-time consistency loss (sec. 4, eq. 8 and Algorithm 1). With F^- the network with
stop-gradient parameters and dF^-/dt its total time derivative along the PF-ODE, taken by one
``jax.jvp`` of (x, t) -> F^-(x, t) with tangents (dx_t/dt, 1):

  g   = -cos^2 t (sigma_d F^- - dx_t/dt) - r cos t sin t (x_t + sigma_d dF^-/dt)
        (= cos t df^-/dt at r = 1; r = min(1, step / H) the tangent warm-up, sec. 4.2)
  g  <- g / (||g|| + c)                                                  (tangent normalisation)
  L   = E_t [ ||F_theta - F^- - g||^2 / D / e^{u(t)} + u(t) ]            (adaptive weighting)

u(t) is the network's learned log-variance head (the paper's w = -u; EDM2's form, as the 'edm2'
loss, ``losses.uncertainty_weighted``); 'uniform' drops it (L = E ||F - F^- - g||^2 / D). Time:
tau ~ N(P_mean, P_std^2), t = arctan(e^tau / sigma_d) (sec. 4.3; CIFAR-10 P_mean = -1.0,
P_std = 1.4). The gradient of L at F_theta = F^- is -2 g / D per sample: training pushes F along
the normalised tangent, and it vanishes exactly where f is consistent (g = 0).

dx_t/dt is cos t z - sin t x0 for consistency training (sCT; one sample of the conditional
velocity) or a teacher's PF-ODE velocity for distillation (sCD). The teacher may be any denoiser
on any schedule (alpha_T, sigma_T) of the same data: at TrigFlow time t its time t' has the same
logSNR, lambda_T(t') = -2 log(sigma_d tan t), where x'_{t'} = alpha_T(t') x0 + sigma_T(t') eps is
(alpha_T(t') / cos t) x_t (because sigma_T(t') / alpha_T(t') = sigma_d tan t = sin t sigma_d /
cos t). So x0_hat = D_T((alpha_T(t') / cos t) x_t, t') and, from x_t = cos t x0 + sigma_d sin t
eps with eps_hat = (x_t - cos t x0_hat) / (sigma_d sin t),

  dx_t/dt = -sin t x0_hat + sigma_d cos t eps_hat = (cos t x_t - x0_hat) / sin t.

Where this differs from the paper: t is clipped to the schedule's [t_min, t_max] (EDM's range
by default; the paper leaves it in (0, pi/2)); ``prior_weighting`` (1 / (sigma_d tan t), off by
default) is offered as open implementations do; the loss is averaged over the batch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffusion import losses
from diffusion.schedules import Schedule, _bcast

Array = Any
WEIGHTINGS = ("adaptive", "uniform")
# The paper's CIFAR-10 defaults (sec. 4 and App. G): time distribution, tangent normalisation c.
P_MEAN, P_STD, TANGENT_C = -1.0, 1.4, 0.1


def _check_trigflow(schedule: Schedule) -> float:
  if schedule.name != "trigflow":
    raise ValueError(f"sCM works on the 'trigflow' schedule, got {schedule.name!r}")
  return float(schedule.sigma_data)


def sample_time(key, batch: int, schedule: Schedule, p_mean: float = P_MEAN,
                p_std: float = P_STD) -> Array:
  """t (batch,) = arctan(e^tau / sigma_d), tau ~ N(p_mean, p_std^2), clipped to [t_min, t_max]
  (sCM sec. 4.3: log(sigma_d tan t) = tau is EDM's log-normal noise level)."""
  sd = _check_trigflow(schedule)
  if not p_std > 0:
    raise ValueError(f"p_std must be > 0, got {p_std!r}")
  tau = p_mean + p_std * jax.random.normal(key, (batch,))
  return jnp.clip(jnp.arctan(jnp.exp(tau) / sd), schedule.t_min, schedule.t_max)


def tangent_ratio(step, warmup_steps: int) -> Array:
  """r = min(1, step / H) (tangent warm-up, sec. 4.2); H = 0: r = 1 from the first step."""
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
  if warmup_steps == 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(warmup_steps))


def training_velocity(x0: Array, z: Array, t: Array) -> Array:
  """dx_t/dt = cos t z - sin t x0 of x_t = cos t x0 + sin t z (sCT's velocity), t (B,)."""
  tb = _bcast(t, x0)
  return jnp.cos(tb) * z - jnp.sin(tb) * x0


def teacher_velocity(denoise: Callable[..., Array], teacher_schedule: Schedule,
                     schedule: Schedule, x_t: Array, t: Array, cond=None) -> Array:
  """The TrigFlow PF-ODE velocity dx_t/dt = (cos t x_t - x0_hat) / sin t of a teacher denoiser
  on ``teacher_schedule`` (any; module docstring): x0_hat = D_T((alpha_T(t') / cos t) x_t, t'),
  t' = teacher_schedule.t_from_logsnr(logsnr(t)). x_t (B, ...), t (B,)."""
  _check_trigflow(schedule)
  t_teacher = teacher_schedule.t_from_logsnr(schedule.logsnr(t))
  scale = teacher_schedule.alpha(t_teacher) / jnp.cos(t)
  x0_hat = denoise(_bcast(scale, x_t) * x_t, t_teacher, cond)
  tb = _bcast(t, x_t)
  return (jnp.cos(tb) * x_t - x0_hat) / jnp.sin(tb)


def tangent(f_minus: Array, df_dt: Array, x_t: Array, dxt_dt: Array, t: Array,
            sigma_data: float, ratio=1.0) -> Array:
  """g = -cos^2 t (sigma_d F^- - dx_t/dt) - r cos t sin t (x_t + sigma_d dF^-/dt) (B, ...) (the
  module docstring; cos t df^-/dt at r = 1), F^- = ``f_minus`` and dF^-/dt = ``df_dt``."""
  tb = _bcast(t, x_t)
  c, s = jnp.cos(tb), jnp.sin(tb)
  return (-c * c * (sigma_data * f_minus - dxt_dt)
          - ratio * c * s * (x_t + sigma_data * df_dt))


def normalize_tangent(g: Array, c: float = TANGENT_C) -> Array:
  """g / (||g|| + c) per example (the norm over all but the leading axis; sec. 4.2)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)), keepdims=True))
  return g / (norm + c)


def scm_loss(student: Callable[..., Any], frozen: Callable[..., Array], x0: Array, key,
             schedule: Schedule, *, velocity: Optional[Callable[..., Array]] = None,
             ratio=1.0, tangent_c: float = TANGENT_C, p_mean: float = P_MEAN,
             p_std: float = P_STD, weighting: str = "adaptive", prior_weighting: bool = False,
             t: Optional[Array] = None, z: Optional[Array] = None):
  """The sCM loss (module docstring) -> (scalar, aux {'per_example', 't', 'logvar'?}).

  student(x_t, t) -> F (B, ...) ('uniform') or (F, u (B,)) ('adaptive'): the trained network in
    x-space (F(x_t / sigma_d, c_noise(t)) composed by the caller).
  frozen(x_t, t) -> F^-: the same network with stop-gradient parameters (and the same dropout);
    differentiated by ``jax.jvp`` in (x_t, t).
  velocity(x_t, t) -> dx_t/dt: a teacher's (``teacher_velocity``; sCD); None: sCT's
    cos t z - sin t x0.
  ratio: the tangent warm-up r; t, z: fixed times (B,) and noise (tests; None: drawn from key).
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown sCM weighting {weighting!r}; accepted: {WEIGHTINGS}")
  if not tangent_c > 0:
    raise ValueError(f"tangent_c must be > 0, got {tangent_c!r}")
  sd = _check_trigflow(schedule)
  k_t, k_z = jax.random.split(key)
  if t is None:
    t = sample_time(k_t, x0.shape[0], schedule, p_mean, p_std)
  t = t.astype(x0.dtype)
  if z is None:
    z = sd * jax.random.normal(k_z, x0.shape, x0.dtype)
  tb = _bcast(t, x0)
  x_t = jnp.cos(tb) * x0 + jnp.sin(tb) * z
  dxt_dt = training_velocity(x0, z, t) if velocity is None else velocity(x_t, t)
  dxt_dt = jax.lax.stop_gradient(dxt_dt)
  f_minus, df_dt = jax.jvp(frozen, (x_t, t), (dxt_dt, jnp.ones_like(t)))
  f_minus, df_dt = jax.lax.stop_gradient(f_minus), jax.lax.stop_gradient(df_dt)
  g = normalize_tangent(tangent(f_minus, df_dt, x_t, dxt_dt, t, sd, ratio), tangent_c)
  out = student(x_t, t)
  f_theta, logvar = out if weighting == "adaptive" else (out, None)
  err = jnp.mean(jnp.square(f_theta - f_minus - g), axis=tuple(range(1, x0.ndim)))
  if prior_weighting:
    err = err / (sd * jnp.tan(t))
  aux = {"t": t}
  if logvar is not None:
    per_example = losses.uncertainty_weighted(err, logvar)
    aux["logvar"] = logvar
  else:
    per_example = err
  aux["per_example"] = per_example
  return jnp.mean(per_example), aux
