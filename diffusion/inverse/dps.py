"""Diffusion posterior sampling, DPS (Chung, Kim, McCann, Klasky & Ye, ICLR 2023), as a sampler."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.inverse import common
from diffusion.inverse.operators import LinearOperator, _check_nonneg, _per_sample
from diffusion.samplers import engine
from diffusion.samplers.sde import DDPM_VARIANCES, ddpm_coefs


def dps_sampler(op: LinearOperator, *, zeta: float, variance: str = "posterior",
                final_denoise: bool = True):
  """DPS for y = A x0 + n (Chung et al., ICLR 2023, Alg. 1, Gaussian noise) as a sampler
  ``fn(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0) -> (x0, info)``
  (the registry's signature; ``denoise`` the unconditional or class-conditional inner denoiser,
  cond['y'] the observation, 'mask' for inpainting, optionally 'label').

  Each step t_i -> t_{i+1} of the grid is DDPM's ancestral step (``sde.ddpm_coefs``: the mean of
  q(x_{i+1} | x_i, x0_hat), ``variance`` 'posterior' or 'beta') followed by Alg. 1's line 7,

    x_{i+1} = x'_{i+1} - zeta_i grad_{x_i} ||y - A x0_hat(x_i)||^2,
    zeta_i  = zeta / ||y - A x0_hat(x_i)||                    (the paper's step rule, App. C.2),

  i.e. x_{i+1} = x'_{i+1} + 2 zeta J^T A^T r / ||r||, r = y - A x0_hat, J = d x0_hat / d x_i, one
  ``jax.vjp`` through the denoiser per step (``info['network_vjp']``: a step costs about 3
  network passes). ``final_denoise``: the last step t_N -> sigma = 0 (DDPM's step to x0, x' =
  x0_hat) is taken and corrected the same way, so NFE = N + 1 (N without it). The norm and
  zeta_i are per sample, so a sample does not depend on its batch, and its noise is the
  registered 'ddpm' sampler's (sample b's fold_in(fold_in(key, sample_offset + b), 2 i + 1)):
  with zeta = 0 this is exactly ``ddpm`` (tested).

  Differences from the reference code (github.com/DPS2022/diffusion-posterior-sampling,
  ``PosteriorSampling``): it subtracts ``scale * grad ||r||`` = (scale / 2) grad ||r||^2 / ||r||,
  so its ``scale`` is 2 zeta here (the paper's zeta' is this ``zeta``); its norm is taken over
  the whole batch (it samples batch 1, where the two agree). The observation noise does not
  enter: the paper absorbs 1 / noise_std^2 into zeta, so ``zeta`` is a tuned hyper-parameter,
  per task and per step count (the paper samples with 1000 steps; benchmarks/inverse_mixture.py
  tunes it on a grid for 30 and 100).
  """
  op = common.check_op(op)
  zeta = _check_nonneg("zeta", zeta)
  common.check_choice("variance", variance, DDPM_VARIANCES)
  if not isinstance(final_denoise, (bool, np.bool_)):
    raise TypeError(f"final_denoise must be a bool, got {final_denoise!r}")
  final_denoise = bool(final_denoise)

  def sampler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
    t = common.check_call(denoise, schedule, x_T, time_grid, cond, op)
    n = len(t) - 1
    rows = [ddpm_coefs(schedule, t[i], t[i + 1], variance) for i in range(n)]
    times = list(t[:n])
    if final_denoise:
      rows.append((0.0, 1.0, 0.0))
      times.append(t[n])
    coefs = np.asarray(rows, np.float64)
    dt = np.dtype(x_T.dtype)
    xs = dict(t=np.asarray(times, dt), a=coefs[:, 0].astype(dt), d=coefs[:, 1].astype(dt),
              c=coefs[:, 2].astype(dt), i=np.arange(len(times)))
    x = _run(denoise, op, x_T, xs, jnp.asarray(zeta, dt), key, sample_offset, cond)
    return x, common.info("dps", denoise, len(times), network_vjp=True)

  sampler.hparams = dict(method="dps", zeta=zeta, variance=variance, final_denoise=final_denoise)
  return sampler


def dps_nfe(num_steps: int, final_denoise: bool = True) -> int:
  """Denoiser calls (each with a vector-Jacobian product) of ``dps_sampler`` on N steps."""
  return int(num_steps) + int(bool(final_denoise))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(denoise, op, x_T, xs, zeta, key, sample_offset, cond):
  dt = x_T.dtype
  den = common.inner(denoise, cond)
  y = common.observation(op, cond, dt)
  keys = engine.sample_keys(key, x_T.shape[0], sample_offset)

  def body(x, s):
    tb = engine.bt(s["t"], x)
    x0, vjp = jax.vjp(lambda z: den(z, tb).astype(dt), x)
    r = y - op.apply(x0, cond)
    nrm = jnp.sqrt(jnp.sum(r * r, axis=tuple(range(1, r.ndim))))
    (g,) = vjp(op.adjoint(r, cond).astype(dt))  # J^T A^T r = -grad ||r||^2 / 2
    step = jnp.where(nrm > 0, 2.0 * zeta / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    z = common.normal(keys, 2 * s["i"] + 1, x)
    x = s["a"] * x + s["d"] * x0 + s["c"] * z
    return x + _per_sample(step, x) * g, None

  x, _ = jax.lax.scan(body, x_T, xs)
  return x

