"""CFG++ (Chung, Kim, Park, Nam & Ye, "CFG++: Manifold-constrained Classifier Free Guidance for
Diffusion Models", ICLR 2025) as a DDIM sampler.

Why a sampler and not a denoiser transformer: CFG++ renoises with the UNCONDITIONAL noise
estimate while its data estimate is guided,

  x0_l  = x0_u + l (x0_c - x0_u),                 l in [0, 1]         (eq. 10)
  x_t'  = alpha' x0_l + sigma' eps_u,   eps_u = (x_t - alpha x0_u) / sigma   (Alg. 1, DDIM)

so one evaluation must feed two different predictions into the update. Every registered sampler
(``samplers.engine``) uses ONE prediction m = denoise(x, t) both as data and (through
eps = (x - alpha m) / sigma) as noise, so no function of (x_t, t) alone reproduces the step: the
x0 that would (m = (alpha' x0_l - sigma' alpha/sigma x0_u) / (alpha' - sigma' alpha/sigma))
depends on the next time t'. Rather than hook the shared engine, this module runs the paper's
DDIM (eta = 0) form itself (``cfgpp_ddim``); the registered samplers are untouched. For
alpha = 1 - t, sigma = t (rectified flow) DDIM with eta = 0 is the Euler step of the flow ODE,
so this is also CFG++ for Euler flow sampling. Other samplers (multistep, Heun, stochastic) are
refused by ``check_cfgpp_sampler``: the paper gives no unique extension of "renoise with eps_u"
to their multi-evaluation updates.

Exact relation to CFG (used by the tests): the CFG++ step equals the DDIM step of CFG at scale

  w_k = l / (1 - tau_{k+1} / tau_k),        tau = sigma / alpha,

since both are x_t' = alpha' x0_u + sigma' eps_u + c (x0_c - x0_u) with c = alpha' l for CFG++
and c = w (alpha' - sigma' alpha / sigma) for CFG. l = 0 is the unconditional DDIM sampler.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.guidance.base import (Array, Denoiser, _check_finite, check_denoiser,
                                     check_interval, check_null_label, cond_and_uncond,
                                     denoiser_info, in_interval)


def check_weight(weight) -> float:
  lam = _check_finite("weight", weight)
  if not 0.0 <= lam <= 1.0:
    raise ValueError(f"cfgpp: the weight lambda must be in [0, 1] (CFG++, sec. 3; 0: the "
                     f"unconditional sampler), got {weight!r}")
  return lam


def cfgpp_pair(denoise: Denoiser, weight: float, *, null_label: int,
               interval: Optional[Tuple[float, float]] = None):
  """``pair(x, t, cond) -> (x0_data, x0_noise)``: (x0_l, x0_u) of CFG++ from ONE batched call on
  [x; x] (eq. 10; x0_l = x0_u + l (x0_c - x0_u), written to be exactly x0_c at l = 1); outside
  ``interval`` both are the plain conditional x0_c."""
  check_denoiser(denoise)
  lam = check_weight(weight)
  null = check_null_label(null_label)
  interval = check_interval(interval)

  def pair(x, t, cond=None):
    x0_c, x0_u, tb = cond_and_uncond(denoise, x, t, cond, null, "cfgpp guidance")
    x0_l = x0_c + jnp.asarray(lam - 1.0, x0_c.dtype) * (x0_c - x0_u)
    if interval is not None:
      inside = in_interval(tb, interval, x0_c)
      x0_l, x0_u = jnp.where(inside, x0_l, x0_c), jnp.where(inside, x0_u, x0_c)
    return x0_l, x0_u

  return pair


def cfgpp_coefficients(schedule, time_grid) -> Dict[str, np.ndarray]:
  """Per step k (float64, (N,)): x_{k+1} = a_k x_k + d_k x0_l + u_k x0_u with a = sigma'/sigma,
  d = alpha', u = -sigma' alpha / sigma (the checked grid under key 't')."""
  from diffusion.samplers import engine
  t = engine.check_grid(time_grid, schedule, pure_noise_start=True)
  al = np.asarray(schedule.alpha(t), np.float64)
  sg = np.asarray(schedule.sigma(t), np.float64)
  return {"t": t, "a": sg[1:] / sg[:-1], "d": al[1:], "u": -sg[1:] * al[:-1] / sg[:-1]}


def cfgpp_ddim(denoise: Denoiser, schedule, key, x_T: Array, time_grid, *, weight: float,
               null_label: int, cond=None, sample_offset=0, final_denoise: bool = False,
               interval: Optional[Tuple[float, float]] = None) -> Tuple[Array, Dict[str, Any]]:
  """CFG++ DDIM sampling (Chung et al. 2025, Alg. 1, eta = 0), the registry's sampler interface.

    x_{k+1} = alpha_{k+1} x0_l + sigma_{k+1} (x_k - alpha_k x0_u) / sigma_k,
    x0_l = x0_u + l (x0_c - x0_u),  (x0_c, x0_u) from one batched call at (x_k, t_k)

  then, with ``final_denoise``, x <- x0_l at t_N (the step to sigma = 0). The grid may start at
  alpha = 0 (pure noise, as DDIM). Deterministic: ``key`` and ``sample_offset`` are unused (kept
  for the registry's signature). info: nfe (calls, each on a batch of 2B: 'batch_multiplier' 2),
  'network_vjp' False, 'transforms' (..., 'cfgpp').

  Args:
    denoise: conditional denoiser ``(x (B, ...), t (B,), cond) -> x0_hat``; cond holds labels.
    schedule: ``diffusion.schedules.Schedule``.
    x_T: (B, ...) the start at time_grid[0].
    time_grid: decreasing times (N+1,), as the registered samplers take.
    weight: lambda in [0, 1].
    null_label: NULL label (= num_classes).
    cond: labels (B,) or a dict with 'label'.
    final_denoise: the last step to sigma = 0.
    interval: None or (t_lo, t_hi): CFG++ there, the plain conditional DDIM step elsewhere.
  """
  pair = cfgpp_pair(denoise, weight, null_label=null_label, interval=interval)
  if not isinstance(final_denoise, bool):
    raise TypeError(f"cfgpp_ddim: final_denoise must be a bool, got {final_denoise!r}")
  co = cfgpp_coefficients(schedule, time_grid)
  dt = x_T.dtype
  xs = {k: jnp.asarray(v[:-1] if k == "t" else v, dt) for k, v in co.items()}

  def body(x, s):
    x0_l, x0_u = pair(x, jnp.broadcast_to(s["t"], (x.shape[0],)), cond)
    return s["a"] * x + s["d"] * x0_l.astype(dt) + s["u"] * x0_u.astype(dt), None

  x, _ = jax.lax.scan(body, x_T, xs)
  nfe = len(co["t"]) - 1
  if final_denoise:
    x = pair(x, jnp.full((x.shape[0],), co["t"][-1], dt), cond)[0].astype(dt)
    nfe += 1
  base = denoiser_info(denoise)
  info = {"nfe": nfe, "batch_multiplier": 2 * int(base["batch_multiplier"]),
          "network_vjp": bool(base["network_vjp"]),
          "transforms": tuple(base["transforms"]) + ("cfgpp",)}
  return x, info


def check_cfgpp_sampler(sampler: str, hparams: Mapping[str, Any]) -> bool:
  """For drivers: CFG++ runs only as DDIM with eta = 0 (``cfgpp_ddim``). Returns the
  ``final_denoise`` to pass; ValueError naming the refused sampler / hyper-parameter."""
  if sampler != "ddim":
    raise ValueError(f"guidance 'cfgpp' (CFG++) is implemented for the DDIM sampler only (eta = 0; "
                     f"the Euler step for rectified flow), got sampler {sampler!r}: its renoising "
                     f"with the unconditional eps has no single-prediction form")
  bad = sorted(set(hparams) - {"eta", "final_denoise", "noise"})
  if bad:
    raise ValueError(f"cfgpp: unknown DDIM hyper-parameter(s) {bad}")
  if float(hparams.get("eta", 0.0)) != 0.0:
    raise ValueError(f"cfgpp: DDIM eta must be 0 (the deterministic CFG++ of Alg. 1), got "
                     f"eta={hparams['eta']!r}")
  fd = hparams.get("final_denoise", False)
  if not isinstance(fd, bool):
    raise TypeError(f"cfgpp: final_denoise must be a bool, got {fd!r}")
  return fd
