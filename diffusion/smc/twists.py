"""Twisting functions for SMC on linear inverse problems y = A x0 + noise_std n.

A twist is an object with
  guided: bool                         use grad log phi in the proposal (TDS) or not (bootstrap);
  init_state(B, dtype) -> pytree       per-particle state (empty here; FK potentials carry some);
  value(x, t, m, cond, state, active) -> (log phi_t (B,), state)
                                       log p~_t(y | x_t) from the denoiser's m = x0_hat(x_t);
  final(keys, x, t, m, cond, state, log_phi) -> (x0 (B, ...), log phi_final (B,))
                                       the returned samples and the exact likelihood that replaces
                                       the last twist (``core``: w_final = phi_final / phi_N).

TDS twist (Wu, Trippe, Naesseth, Blei & Cunningham, NeurIPS 2023): approximating
p(x0 | x_t) by N(x0_hat(x_t), r_t^2 I),

  p~_t(y | x_t) = N(y; A x0_hat(x_t), r_t^2 A A^T + noise_std^2 I),

with r_t^2 chosen by ``variance``:
  'pigdm' (default): r_t^2 = sigma_data^2 s^2 / (sigma_data^2 + s^2), s = sigma_t / alpha_t, the
      Pi-GDM variance (Song et al. 2023, eq. 8; ``inverse.pigdm``), exact for data
      N(mu, sigma_data^2 I) (then p~_t = p(y | x_t) exactly); the TDS reference code's
      ``pred_xstart_var_type=2`` (with sigma_data = 1);
  'tds': r_t^2 = sigma_t^2 / alpha_t^2 = (1 - abar_t) / abar_t, the TDS reference code's default
      (``pred_xstart_var_type=1``) for inpainting (sigma_data -> infinity in the formula above).
The TDS reference code drops the normalising constant of its Gaussian twist (it cancels in the
normalised weights within a step, not across steps); here phi is the normalised density, so
log Z_hat estimates log p(y) (the log-determinant and 2 pi terms telescope except at the ends).

Final step (where the twist must become the exact likelihood):
  noise_std > 0: x0 = x0_hat(x_N) (the samplers' final denoise) and phi_final = p(y | x0) =
      N(y; A x0, noise_std^2 I);
  noise_std = 0: the likelihood is a point mass, so the model's last step is taken to be the
      Gaussian emission x0 | x_N ~ N(x0_hat(x_N), r_N^2 I) (r_N ~ sigma(t_min) / alpha: tiny).
      Its evidence of y is exactly phi_N, so phi_final = phi_N (the final weight is 1), and x0 is
      drawn from the emission conditioned on A x0 = y exactly, by Matheron's rule:
      u = x0_hat + r_N z, x0 = u + A^+ (y - A u) = (I - P) u + A^+ y (generalises the TDS
      code's last-step replacement x0[mask] = y, whose weight is the same N(y; A mean, var)
      evidence).
"""
from __future__ import annotations

import math
from typing import Any, Tuple

import jax
import jax.numpy as jnp

from diffusion.inverse.operators import (Colorization, Inpainting, LinearOperator,
                                         MatrixOperator, SuperResolution, _check_nonneg,
                                         _per_sample)
from diffusion.schedules import Schedule

Array = Any
VARIANCES = ("pigdm", "tds")


def _sum_event(v: Array) -> Array:
  return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=-1)


def gram_logdet(op: LinearOperator, r2: Array, noise_var: float, cond, y: Array
                ) -> Tuple[Array, Array]:
  """(log det(r2 A A^T + noise_var I), M) per sample (B,), M the number of observations, for the
  operators of ``diffusion.inverse`` (directions where the matrix is 0, a noiseless rank-deficient
  A, are left out of both, matching ``solve_gram``'s pseudo-inverse there)."""
  bsz = y.shape[0]
  r2 = jnp.broadcast_to(jnp.asarray(r2, y.dtype), (bsz,))
  if isinstance(op, MatrixOperator):
    lam = jnp.asarray(op.gram_eigvals, y.dtype)
    d = r2[:, None] * lam[None] + noise_var
    ok = d > 0
    return (jnp.sum(jnp.where(ok, jnp.log(jnp.where(ok, d, 1.0)), 0.0), axis=-1),
            jnp.sum(ok, axis=-1).astype(y.dtype))
  if isinstance(op, Inpainting):
    mask = jnp.asarray(cond["mask"]).astype(y.dtype)
    m = _sum_event(mask)
    return m * jnp.log(r2 + noise_var), m
  if isinstance(op, Colorization):
    m = jnp.full((bsz,), y[0].size, y.dtype)
    return m * jnp.log(r2 / 3.0 + noise_var), m
  if isinstance(op, SuperResolution):
    m = jnp.full((bsz,), y[0].size, y.dtype)
    return m * jnp.log(r2 / float(op.factor**2) + noise_var), m
  raise TypeError(f"gram_logdet: no log-determinant for operator {op!r}; supported: "
                  "MatrixOperator, Inpainting, Colorization, SuperResolution")


def gaussian_log_likelihood(op: LinearOperator, x0: Array, r2: Array, noise_var: float, cond
                            ) -> Array:
  """log N(y; A x0, r2 A A^T + noise_var I) per sample (B,), y = cond['y']."""
  y = jnp.asarray(cond["y"]).astype(x0.dtype)
  resid = y - op.apply(x0, cond)
  quad = _sum_event(resid * op.solve_gram(resid, r2, noise_var, cond))
  logdet, m = gram_logdet(op, r2, noise_var, cond, y)
  return -0.5 * (quad + logdet + m * math.log(2.0 * math.pi))


class Twist:
  """Base: no twist (phi = 1 until the final exact likelihood, which subclasses define)."""
  guided = False

  def init_state(self, batch: int, dtype) -> dict:
    return {}

  def value(self, x, t, m, cond, state, active):
    return jnp.zeros((x.shape[0],), x.dtype), state

  def final(self, keys, x, t, m, cond, state, log_phi):
    raise NotImplementedError


class LinearGaussianTwist(Twist):
  """The TDS twist p~_t(y | x_t) = N(y; A x0_hat, r_t^2 A A^T + noise_std^2 I) (module doc).

  ``guided``: True for TDS's twisted proposal (one VJP through the denoiser per step), False for
  the bootstrap proposal with twisted weights (no VJP). ``twist=False``: phi = 1 for t > 0, i.e.
  plain importance sampling from the unconditional model weighted by the final likelihood (the
  'no twist' baseline; ``guided`` must then be False).
  """

  def __init__(self, op: LinearOperator, schedule: Schedule, *, noise_std: float = 0.0,
               variance: str = "pigdm", sigma_data: float = 1.0, guided: bool = True,
               twist: bool = True):
    if not isinstance(op, LinearOperator):
      raise TypeError(f"op must be a diffusion.inverse operator, got {op!r}")
    if not isinstance(schedule, Schedule):
      raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
    if variance not in VARIANCES:
      raise ValueError(f"unknown twist variance {variance!r}; accepted: {VARIANCES}")
    if guided and not twist:
      raise ValueError("guided=True needs twist=True (the proposal follows the twist's gradient)")
    self.op, self.schedule, self.variance = op, schedule, variance
    self.noise_var = _check_nonneg("noise_std", noise_std) ** 2
    self.sd2 = _check_nonneg("sigma_data", sigma_data, positive=True) ** 2
    self.guided, self.twist = bool(guided), bool(twist)

  def r2(self, t: Array) -> Array:
    """r_t^2 (B,) of ``variance``."""
    s2 = (self.schedule.sigma(t) / self.schedule.alpha(t)) ** 2
    if self.variance == "tds":
      return s2
    return self.sd2 * s2 / (self.sd2 + s2)

  def value(self, x, t, m, cond, state, active):
    if not self.twist:
      return jnp.zeros((x.shape[0],), x.dtype), state
    return gaussian_log_likelihood(self.op, m, self.r2(t), self.noise_var, cond), state

  def final(self, keys, x, t, m, cond, state, log_phi):
    if self.noise_var > 0:
      return m, gaussian_log_likelihood(self.op, m, jnp.zeros_like(t), self.noise_var, cond)
    # Noiseless: the Gaussian emission N(m, r_N^2 I) conditioned on A x0 = y (module doc).
    r2 = self.r2(t)
    z = jax.vmap(lambda kk: jax.random.normal(kk, m.shape[1:], m.dtype))(keys)
    u = m + _per_sample(jnp.sqrt(r2), m) * z
    y = jnp.asarray(cond["y"]).astype(m.dtype)
    # = u + A^+ (y - A u), written (I - P) u + A^+ y so that A x0 = y holds to round-off of y,
    # not of u (a diverging u, |u| ~ 1e4 in float32, otherwise loses y entirely)
    x0 = u - self.op.project(u, cond) + self.op.pinv(y, cond)
    if self.twist:
      return x0, log_phi
    # No twist: phi_N = 1, and phi_final is the emission's evidence N(y; A m, r_N^2 A A^T).
    return x0, gaussian_log_likelihood(self.op, m, r2, 0.0, cond)
