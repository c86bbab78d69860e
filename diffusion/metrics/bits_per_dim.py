"""Bits/dim of integer image data from a model density on [-1, 1]^D: uniform dequantization,
the PF-ODE protocol of score SDE and VDM's ELBO, averaged over draws then over images.

Integer data k in 0..L-1 (D dimensions) is dequantized to x = 2 (k + u) / L - 1, u ~ U[0, 1)
(``dequantize``); with log p(x) in nats of the model density on [-1, 1]^D,

  bpd = -(log p(x) / D + log(2 / L)) / ln 2

(``diffusion.likelihood.bits_per_dim``: the change of variables from [0, L)^D, where the
discrete data's dequantized density lives, to [-1, 1]^D). Song et al. 2021, App. D.2 (score
SDE's run_lib / likelihood.py); Kingma et al. 2021 (VDM) for the ELBO.

The estimators take the model as a callable (``loglik``, ``elbo_fn``), so the driver decides how
it is batched, sharded and compiled, and the tests pass the analytic mixture's exact one.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.elbo import to_bits_per_dim
from diffusion.likelihood import bits_per_dim


def dequantize(levels: np.ndarray, num_levels: int, key: jax.Array, draw: int) -> np.ndarray:
  """Uniform dequantization of integer data k (n, ...) in 0..L-1 to [-1, 1):
  x = 2 (k + u) / L - 1 with u ~ U[0, 1) from fold_in(fold_in(key, draw), i) for image i, so
  draw d of image i does not depend on n, the batch or the device count. float32 (n, ...)."""
  kd = jax.random.fold_in(key, draw)
  shape = levels.shape[1:]
  u = jax.jit(jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(kd, i), shape)))(
      jnp.arange(len(levels)))
  return ((levels.astype(np.float32) + np.asarray(u, np.float32)) * (2.0 / num_levels)
          - 1.0).astype(np.float32)


def mean_and_stderr(per_draw: np.ndarray) -> Tuple[float, float]:
  """per_draw (draws, n): estimates for n items, several draws each. Averages each item's draws
  first, then returns the mean over items and its standard error std(ddof=1) / sqrt(n)
  (0 for n = 1): the draws of an item are not independent items."""
  per_item = np.mean(np.asarray(per_draw, np.float64), axis=0)
  n = len(per_item)
  se = float(np.std(per_item, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
  return float(np.mean(per_item)), se


def bpd_pf_ode(loglik: Callable[[np.ndarray, jax.Array, int], Tuple[np.ndarray, float]],
               levels: np.ndarray, num_levels: int, key: jax.Array,
               draws: int) -> Dict[str, Any]:
  """PF-ODE bits/dim of integer data ``levels`` (n, ...) in 0..L-1 (score SDE's protocol).

  For each draw d < ``draws``: x = ``dequantize(levels, L, k1, d)``, log p(x) (n,) nats and its
  mean NFE from ``loglik(x, fold_in(k2, d), d)`` (the model density on [-1, 1]^D), and
  bpd = -(log p(x) / D + log(2 / L)) / ln 2 (``diffusion.likelihood.bits_per_dim``: the change of
  variables from [0, L)^D, where the discrete data's dequantized density lives, to [-1, 1]^D).
  Returns bpd_pf_ode (mean over images of the mean over draws), its standard error over images,
  the mean NFE and the counts.
  """
  dim = int(np.prod(levels.shape[1:]))
  k_deq, k_probe = jax.random.split(key)
  per_draw, nfes = [], []
  for d in range(int(draws)):
    x = dequantize(levels, num_levels, k_deq, d)
    logp, nfe = loglik(x, jax.random.fold_in(k_probe, d), d)
    per_draw.append(bits_per_dim(np.asarray(logp, np.float64), dim, num_levels=num_levels))
    nfes.append(nfe)
  mean, se = mean_and_stderr(np.stack(per_draw))
  return {"bpd_pf_ode": mean, "bpd_pf_ode_stderr": se, "bpd_pf_ode_nfe": float(np.mean(nfes)),
          "bpd_pf_ode_draws": int(draws), "bpd_points": int(len(levels)),
          "num_levels": int(num_levels), "bits_per_dim": mean}


def bpd_elbo(elbo_fn: Callable[[np.ndarray, jax.Array], Dict[str, np.ndarray]],
             levels: np.ndarray, key: jax.Array) -> Dict[str, Any]:
  """VDM's ELBO in bits/dim of integer data ``levels`` (n, ...): ``elbo_fn(levels, key)`` gives
  the per-image terms in nats ('prior', 'diffusion', 'recon', 'total', each (n,)); each is
  divided by D ln 2. Returns bpd_elbo (the mean of 'total'), its standard error over images and
  the mean of each term."""
  dim = int(np.prod(levels.shape[1:]))
  out = elbo_fn(levels, key)
  bpd = {k: np.asarray(to_bits_per_dim(np.asarray(out[k], np.float64), dim))
         for k in ("prior", "diffusion", "recon", "total")}
  mean, se = mean_and_stderr(bpd["total"][None])
  return {"bpd_elbo": mean, "bpd_elbo_stderr": se,
          "bpd_elbo_prior": float(np.mean(bpd["prior"])),
          "bpd_elbo_diffusion": float(np.mean(bpd["diffusion"])),
          "bpd_elbo_recon": float(np.mean(bpd["recon"]))}
