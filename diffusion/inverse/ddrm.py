"""Denoising diffusion restoration models, DDRM (Kawar, Elad, Ermon & Song, NeurIPS 2022)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.inverse import common
from diffusion.inverse.operators import LinearOperator, _check_nonneg
from diffusion.samplers import engine
from diffusion.samplers.engine import alpha_sigma

INITS = ("paper", "x_T")


def ddrm_sampler(op: LinearOperator, *, noise_std: float = 0.0, eta: float = 0.85,
                 eta_b: float = 1.0, final_denoise: bool = True, init: str = "paper"):
  """DDRM (Kawar et al. 2022, eq. 7-8) as a sampler ``fn(denoise, schedule, key, x_T, time_grid,
  *, cond=None, sample_offset=0) -> (x0, info)`` (the registry's signature; cond['y'] the
  observation y = A x0 + noise_std n, 'mask' for inpainting, optionally 'label').

  In the spectral space of A = U S V^T (``op.svd_parts``: xbar = V^T x, s_i the singular values,
  ybar_i = (U^T y)_i / s_i where s_i > 0) and the variables of the variance-exploding process
  x / alpha_t = x0 + sigma_t eps (sigma_t = sigma(t) / alpha(t)), each step t -> t' of the grid
  evaluates x0_hat = D(x_t, t) once (xbar_0 = V^T x0_hat, ebar = (xbar_t - xbar_0) / sigma_t)
  and draws every spectral coordinate i of x_{t'} independently (eq. 8, z ~ N(0, 1)):

    s_i = 0 (unobserved):         xbar_0 + sqrt(1 - eta^2) sigma_t' ebar + eta sigma_t' z
    s_i sigma_t' < noise_std:     xbar_0 + sqrt(1 - eta^2) sigma_t' (ybar - xbar_0) s_i / noise_std
                                  + eta sigma_t' z
    s_i sigma_t' >= noise_std:    (1 - eta_b) xbar_0 + eta_b ybar
                                  + sqrt(sigma_t'^2 - eta_b^2 noise_std^2 / s_i^2) z

  then x_{t'} = alpha_t' V xbar_{t'}. ``final_denoise``: one more step, t_N -> sigma = 0 (alpha
  = 1): there every spectral coordinate is xbar_0, except the noiseless observed ones,
  (1 - eta_b) xbar_0 + eta_b ybar (= ybar for eta_b = 1: A x0 = y exactly). NFE = N (+1), no
  back-propagation. Start (``init='paper'``, eq. 7): x_T's coordinates with s_i sigma_T >
  noise_std are replaced by ybar_i + sqrt(sigma_T^2 - noise_std^2 / s_i^2) eps_i, eps = V^T x_T /
  prior_std (so the randomness is x_T's), the others kept; ``init='x_T'`` keeps x_T as it is.
  Noise: sample b's step i draws normal(fold_in(fold_in(key, sample_offset + b), i)) in the
  spectral basis (V orthonormal: the same law as in pixels), so samples do not depend on their
  batch.

  With an oracle denoiser (x0_hat = the true x0) every x_t is distributed as N(alpha_t x0,
  sigma_t^2 I) given x0 (averaged over y and the noise) whatever eta, eta_b (the paper's
  construction, tested), and the final step returns x0 exactly.

  Differences from the reference code (github.com/bahjat-kawar/ddrm,
  ``efficient_generalized_steps``): its case boundaries are strict (s sigma' > noise_std and <),
  so at sigma' = 0 a noiseless observed coordinate falls into the unobserved case and ends at
  xbar_0, not at ybar; here eq. 8's cases are used (A x0 = y exactly when eta_b = 1). Its start
  divides by sigma_T instead of multiplying by alpha_T (the same as sigma_T -> infinity). Its
  defaults: eta = 0.85, eta_b = 1 (the defaults here).
  """
  op = common.check_op(op)
  noise_std = _check_nonneg("noise_std", noise_std)
  eta = _check_nonneg("eta", eta)
  eta_b = _check_nonneg("eta_b", eta_b)
  if eta > 1.0:
    raise ValueError(f"eta must be in [0, 1] (the noise fraction of eq. 8), got {eta!r}")
  if eta_b > 1.0:
    raise ValueError(f"eta_b must be in [0, 1], got {eta_b!r}")
  if not isinstance(final_denoise, (bool, np.bool_)):
    raise TypeError(f"final_denoise must be a bool, got {final_denoise!r}")
  final_denoise = bool(final_denoise)
  common.check_choice("init", init, INITS)

  def sampler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
    t = common.check_call(denoise, schedule, x_T, time_grid, cond, op)
    try:
      op.svd_parts(tuple(x_T.shape), cond)
    except NotImplementedError as e:
      raise ValueError(f"DDRM needs the operator's SVD (svd_parts): {e}") from None
    n = len(t) - 1
    a, s = alpha_sigma(schedule, t)
    ve = s / a
    times, a_now, ve_now = list(t[:n]), list(a[:n]), list(ve[:n])
    a_next, ve_next = list(a[1:]), list(ve[1:])
    if final_denoise:
      times.append(t[n])
      a_now.append(a[n])
      ve_now.append(ve[n])
      a_next.append(1.0)
      ve_next.append(0.0)
    dt = np.dtype(x_T.dtype)
    arr = lambda v: np.asarray(v, np.float64).astype(dt)
    xs = dict(t=arr(times), a=arr(a_now), ve=arr(ve_now), a_next=arr(a_next),
              ve_next=arr(ve_next), i=np.arange(len(times)))
    start = dict(a=arr(a[0]), ve=arr(ve[0]), prior_std=arr(schedule.prior_std()))
    hp = dict(noise_std=arr(noise_std), eta=arr(eta), eta_b=arr(eta_b))
    x = _run(denoise, op, init, x_T, xs, start, hp, key, sample_offset, cond)
    return x, common.info("ddrm", denoise, len(times), network_vjp=False)

  sampler.hparams = dict(method="ddrm", noise_std=noise_std, eta=eta, eta_b=eta_b,
                         final_denoise=final_denoise, init=init)
  return sampler


def ddrm_nfe(num_steps: int, final_denoise: bool = True) -> int:
  """Denoiser calls of ``ddrm_sampler`` on N steps."""
  return int(num_steps) + int(bool(final_denoise))


def ddrm_step(cx, c0, ybar, sv, z, ve, ve_next, noise_std, eta, eta_b):
  """Eq. 8 on spectral coordinates (B, D): cx = V^T x_t / alpha_t, c0 = V^T x0_hat, ybar, the
  singular values sv (0: unobserved) and z ~ N(0, I); ve, ve_next the VE noise levels sigma_t,
  sigma_t' (ve_next may be 0). Returns V^T x_t' / alpha_t'."""
  obs = sv > 0
  sv_safe = jnp.where(obs, sv, 1.0)
  keep = jnp.sqrt(1.0 - eta * eta)
  unobserved = c0 + keep * ve_next * (cx - c0) / ve + eta * ve_next * z
  after = c0 + keep * ve_next * sv * (ybar - c0) / jnp.maximum(noise_std, 1e-30) \
      + eta * ve_next * z
  before = (1.0 - eta_b) * c0 + eta_b * ybar + jnp.sqrt(jnp.maximum(
      ve_next**2 - (eta_b * noise_std / sv_safe)**2, 0.0)) * z
  return jnp.where(obs, jnp.where(sv * ve_next < noise_std, after, before), unobserved)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(denoise, op, init, x_T, xs, start, hp, key, sample_offset, cond):
  dt = x_T.dtype
  den = common.inner(denoise, cond)
  parts = op.svd_parts(tuple(x_T.shape), cond)
  sv = parts.s.astype(dt)
  obs = sv > 0
  ybar = jnp.where(obs, parts.ut_y.astype(dt) / jnp.where(obs, sv, 1.0), 0.0)
  sy, eta, eta_b = hp["noise_std"], hp["eta"], hp["eta_b"]
  keys = engine.sample_keys(key, x_T.shape[0], sample_offset)
  x = x_T
  if init == "paper":
    c = parts.vt(x_T / start["a"])
    eps = parts.vt(x_T) / start["prior_std"]
    big = obs & (sv * start["ve"] > sy)
    rem = jnp.sqrt(jnp.maximum(start["ve"]**2 - (sy / jnp.where(obs, sv, 1.0))**2, 0.0))
    x = start["a"] * parts.v(jnp.where(big, ybar + rem * eps, c))

  def body(x, s):
    x0 = den(x, engine.bt(s["t"], x)).astype(dt)
    cx, c0 = parts.vt(x / s["a"]), parts.vt(x0)
    z = common.normal(keys, s["i"], cx)
    cn = ddrm_step(cx, c0, ybar, sv, z, s["ve"], s["ve_next"], sy, eta, eta_b)
    return s["a_next"] * parts.v(cn), None

  x, _ = jax.lax.scan(body, x, xs)
  return x
