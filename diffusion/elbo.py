"""The continuous-time variational bound (ELBO) on the NLL of discrete data, as VDM defines it.

Kingma et al. 2021 (Variational Diffusion Models), sec. 3-4: for data x with D dimensions of L
discrete levels, placed at the bin centres c_k = 2 (k + 1/2) / L - 1 in [-1, 1] (the means of
the uniform dequantization 2 (k + u) / L - 1 that the training data use),

  -log p(x) <= L_prior + L_diffusion + L_recon                                   (VDM eq. 11)

  L_prior     = KL( q(z_1 | x) || N(0, s^2 I) ),  q(z_1 | x) = N(alpha_1 x, sigma_1^2 I),
                the prior N(0, s^2 I) of the schedule (s = ``schedule.prior_std()``);
  L_diffusion = 1/2 int_{lambda_1}^{lambda_0} e^lambda E_eps || x - x0_hat(z_lambda) ||^2 dlambda
                (VDM eq. 17 with the change of variables to the logSNR lambda, sec. 4.2);
  L_recon     = E_{z_0 ~ q(z_0 | x)} [ -log p(x | z_0) ],  with VDM's factorized decoder
                p(x_d = k | z_0) = softmax_k( -(z_0,d - alpha_0 c_k)^2 / (2 sigma_0^2) ),

where index 0 is the likelihood's t_min (lambda_0 = logsnr(t_min), the largest logSNR) and 1 is
t_max. The diffusion term is estimated by Monte Carlo with lambda uniform on [lambda_1, lambda_0]
(the importance sampling that makes its integrand nearly constant, VDM App. F) and, per batch,
VDM's low-discrepancy stratification of u (App. I.1) or antithetic pairs; every per-example
estimate stays unbiased. Results are in nats per example; ``to_bits_per_dim`` converts.
The bound holds for any schedule (VP, sub-VP, VE, EDM, ...) through its (alpha, sigma).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.losses import unit_uniforms
from diffusion.schedules import Schedule

Array = Any

TIME_SAMPLINGS = ("uniform", "stratified", "antithetic")


def bin_centers(x_int: Array, num_levels: int) -> Array:
  """Integer data in 0..L-1 -> bin centres 2 (k + 1/2) / L - 1 in (-1, 1), float32."""
  return (jnp.asarray(x_int, jnp.float32) + 0.5) * (2.0 / num_levels) - 1.0


def prior_kl(x: Array, schedule: Schedule, t_max: float) -> Array:
  """KL( N(alpha_1 x, sigma_1^2 I) || N(0, s^2 I) ) in nats, x (B, ...) -> (B,).

  Per dimension: 1/2 [ (sigma_1^2 + alpha_1^2 x^2) / s^2 - 1 - log(sigma_1^2 / s^2) ].
  """
  a, s = float(schedule.alpha(np.float64(t_max))), float(schedule.sigma(np.float64(t_max)))
  var_p = schedule.prior_std() ** 2
  flat = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
  per_dim = 0.5 * ((s * s + a * a * flat**2) / var_p - 1.0 - math.log(s * s / var_p))
  return jnp.sum(per_dim, axis=-1)


def reconstruction_nll(x_int: Array, z0: Array, num_levels: int, alpha0: float,
                       sigma0: float) -> Array:
  """-log p(x | z_0) of VDM's factorized decoder in nats: x_int, z0 (B, ...) -> (B,).

  p(x_d = k | z_0) = softmax over the L levels of -(z_0,d - alpha_0 c_k)^2 / (2 sigma_0^2).
  """
  levels = bin_centers(jnp.arange(num_levels), num_levels)  # (L,)
  z = jnp.reshape(z0, (z0.shape[0], -1)).astype(jnp.float32)[..., None]  # (B, D, 1)
  logits = -jnp.square(z - alpha0 * levels) / (2.0 * sigma0 * sigma0)  # (B, D, L)
  logp = jax.nn.log_softmax(logits, axis=-1)
  k = jnp.reshape(jnp.asarray(x_int, jnp.int32), (x_int.shape[0], -1))[..., None]
  return -jnp.sum(jnp.take_along_axis(logp, k, axis=-1)[..., 0], axis=-1)


def _check(num_levels, num_time_samples, time_sampling, t_min, t_max, schedule):
  if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) \
      or num_levels < 2:
    raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
  if isinstance(num_time_samples, bool) or not isinstance(num_time_samples, (int, np.integer)) \
      or num_time_samples < 1:
    raise ValueError(f"num_time_samples must be a positive int, got {num_time_samples!r}")
  if time_sampling not in TIME_SAMPLINGS:
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
  if not (math.isfinite(t_min) and math.isfinite(t_max)
          and schedule.t_min <= t_min < t_max <= schedule.t_max):
    raise ValueError(f"need schedule.t_min ({schedule.t_min}) <= t_min < t_max <= schedule.t_max "
                     f"({schedule.t_max}), got t_min={t_min!r}, t_max={t_max!r}")


def elbo(denoise: Callable[..., Array],
         schedule: Schedule,
         x_int: Array,
         key,
         *,
         num_levels: int = 256,
         cond: Optional[Array] = None,
         t_min: Optional[float] = None,
         t_max: Optional[float] = None,
         num_time_samples: int = 1,
         time_sampling: str = "stratified") -> Dict[str, Array]:
  """VDM's continuous-time bound on -log p(x) for integer data x_int (B, ...) in 0..L-1.

  Args:
    denoise: ``denoise(z_t (B, ...), t (B,), cond) -> x0_hat``, on the [-1, 1] data scale.
    schedule: the forward process; ``t_min`` / ``t_max`` (default: the schedule's) are the ends
      of the diffusion term (the reconstruction is taken at t_min, the prior at t_max).
    num_time_samples: Monte Carlo draws of (lambda, eps) per example for the diffusion term.
    time_sampling: how the u in lambda = lambda_1 + u (lambda_0 - lambda_1) are drawn across the
      batch: 'uniform', 'stratified' (VDM's low-discrepancy sampler) or 'antithetic'.

  Returns a dict of (B,) arrays in nats: 'prior', 'diffusion', 'recon' and their sum 'total'.
  """
  t0 = float(schedule.t_min if t_min is None else t_min)
  t1 = float(schedule.t_max if t_max is None else t_max)
  _check(num_levels, num_time_samples, time_sampling, t0, t1, schedule)
  x = bin_centers(x_int, num_levels)
  b = x.shape[0]
  lam0, lam1 = float(schedule.logsnr(np.float64(t0))), float(schedule.logsnr(np.float64(t1)))
  a0, s0 = float(schedule.alpha(np.float64(t0))), float(schedule.sigma(np.float64(t0)))
  k_rec, k_diff = jax.random.split(key)

  z0 = a0 * x + s0 * jax.random.normal(k_rec, x.shape, x.dtype)
  recon = reconstruction_nll(x_int, z0, num_levels, a0, s0)

  def one_draw(k):
    ku, ke = jax.random.split(k)
    lam = lam1 + (lam0 - lam1) * unit_uniforms(ku, b, time_sampling)
    t = jnp.clip(schedule.t_from_logsnr(lam), t0, t1).astype(x.dtype)
    z = schedule.marginal(x, jax.random.normal(ke, x.shape, x.dtype), t)
    err = jnp.sum(jnp.square(denoise(z, t, cond) - x).reshape(b, -1), axis=-1)
    return 0.5 * (lam0 - lam1) * jnp.exp(lam) * err

  diffusion = jnp.mean(jax.vmap(one_draw)(jax.random.split(k_diff, num_time_samples)), axis=0)
  prior = prior_kl(x, schedule, t1)
  return {"prior": prior, "diffusion": diffusion, "recon": recon,
          "total": prior + diffusion + recon}


def to_bits_per_dim(nats: Array, dim: int) -> Array:
  """Nats per example of discrete data -> bits per dimension: nats / (D ln 2)."""
  return nats / (dim * math.log(2.0))
