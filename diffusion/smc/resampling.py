"""Resampling of weighted particles, one group at a time (Douc, Cappe & Moulines 2005).

A group holds K particles with log weights ``log_w`` (K,) (unnormalised); a resampling returns
ancestor indices (K,) in [0, K) such that E[#copies of k] = K w_k (w the normalised weights).
Groups never mix: ``resample_groups`` vmaps one key per group over (G, K) weights.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp

Array = Any


def normalise(log_w: Array) -> Array:
  """log_w - logsumexp(log_w) over the last axis: normalised log weights."""
  return log_w - jax.nn.logsumexp(log_w, axis=-1, keepdims=True)


def ess(log_w: Array) -> Array:
  """Effective sample size 1 / sum_k w_k^2 of (..., K) log weights (normalised here), in [1, K]."""
  lw = normalise(log_w)
  return jnp.exp(-jax.nn.logsumexp(2.0 * lw, axis=-1))


def systematic(key, log_w: Array) -> Array:
  """Systematic resampling (Kitagawa 1996; Carpenter, Clifford & Fearnhead 1999): one uniform u,
  points (u + i) / K, i < K, through the inverse CDF of w. Particle k gets floor(K w_k) or
  ceil(K w_k) copies (the lowest variance of the common schemes). log_w (K,) -> indices (K,)."""
  k = log_w.shape[-1]
  w = jnp.exp(normalise(log_w))
  cdf = jnp.cumsum(w)
  u = (jax.random.uniform(key, (), dtype=w.dtype) + jnp.arange(k, dtype=w.dtype)) / k
  idx = jnp.searchsorted(cdf, u, side="right")
  return jnp.clip(idx, 0, k - 1).astype(jnp.int32)


def multinomial(key, log_w: Array) -> Array:
  """Multinomial resampling: K i.i.d. draws from w. log_w (K,) -> indices (K,)."""
  k = log_w.shape[-1]
  return jax.random.categorical(key, log_w, shape=(k,)).astype(jnp.int32)


RESAMPLERS: Dict[str, Callable[[Any, Array], Array]] = {"systematic": systematic,
                                                          "multinomial": multinomial}


def get(name: str) -> Callable[[Any, Array], Array]:
  if name not in RESAMPLERS:
    raise ValueError(f"unknown resampling {name!r}; accepted: {sorted(RESAMPLERS)}")
  return RESAMPLERS[name]


def resample_groups(fn: Callable[[Any, Array], Array], keys: Array, log_w: Array) -> Array:
  """Ancestors (G, K) of G independent groups: ``fn(keys[g], log_w[g])`` for each g."""
  return jax.vmap(fn)(keys, log_w)
