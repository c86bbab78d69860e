"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut
Models", arXiv 2410.12557) as a two-time flow-map network.

Convention. Frans et al. run time from noise (t = 0) to data (t = 1) and condition a shortcut
s(x_t, t, d) on the step size d: x_{t + d} = x_t + d s(x_t, t, d). Here time runs the other way
(rectified flow, t = 1 noise, t = 0 data: x_t = (1 - t) x0 + t eps), and a shortcut is the
average velocity of MeanFlow read at r = t - d (``diffusion.flow_map``):

  s(x_t, t, d) = u(x_t, t - d, t),   x_{t - d} = Phi(x_t, t -> t - d) = x_t - d s(x_t, t, d),

so s points from data to noise (Frans et al.'s s with the sign of their time flipped, at their
time 1 - t). The network is fed c = (t, t - r) = (t, d) ('mean_flow' parameterization); Frans et
al. embed log2 of the step count instead of d (a difference of input encoding only).

Loss (Sec. 3, eq. 5): a fraction k (default 1/4) of the batch gets self-consistency targets,
the rest flow matching:

  self-consistency  d = 2^-j, j uniform in {1 .. log2 M} (d in {1/M .. 1/2}); t on the d-grid,
                    t = i d, i uniform in {2 .. 1/d} (so t - 2d >= 0);
                    x' = x_t - d s(x_t, t, d);  target for the 2d step:
                    s(x_t, t, 2d) <- sg(1/2 s(x_t, t, d) + 1/2 s(x', t - d, d))
  flow matching     d = 0 (r = t), t ~ U(0, 1): s(x_t, t, 0) = u(x_t, t, t) <- eps - x0

(M = 128 steps, k = 1/4: the paper's defaults). The targets use the current parameters under a
stop-gradient (the paper's choice; no EMA target). Squared error averaged over all elements.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

Array = Any
DEFAULTS = dict(max_steps=128, consistency_fraction=0.25)


def _expand(v, x):
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def check_options(*, max_steps: int, consistency_fraction: float) -> int:
  """log2(max_steps) (max_steps a power of two >= 2); ValueError naming a bad option."""
  if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 2 or (
      max_steps & (max_steps - 1)):
    raise ValueError(f"max_steps must be a power of two >= 2 (the finest step 1/max_steps), "
                     f"got {max_steps!r}")
  if not 0.0 <= consistency_fraction <= 1.0:
    raise ValueError(f"consistency_fraction must be in [0, 1], got {consistency_fraction!r}")
  return int(math.log2(max_steps))


def sample_self_consistency_times(key: jax.Array, n: int, max_steps: int) -> Tuple[Array, Array]:
  """(t (n,), d (n,)): d = 2^-j, j uniform in {1 .. log2 max_steps}; t = i d, i uniform in
  {2 .. 1/d} (module docstring)."""
  levels = check_options(max_steps=max_steps, consistency_fraction=0.0)
  k_d, k_t = jax.random.split(key)
  j = jax.random.randint(k_d, (n,), 1, levels + 1)
  d = 2.0 ** (-j.astype(jnp.float32))
  steps = 2 ** j  # 1 / d
  i = 2 + jnp.floor(jax.random.uniform(k_t, (n,)) * (steps - 1)).astype(jnp.int32)
  return i * d, d


def self_consistency_target(u_fn: Callable[..., Array], z: Array, t: Array, d: Array,
                            cond=None) -> Array:
  """sg(1/2 s(z, t, d) + 1/2 s(z', t - d, d)), z' = z - d s(z, t, d), with s(z, t, d) =
  u_fn(z, t - d, t, cond): the target of s(z, t, 2d) (Frans et al. 2024, eq. 5)."""
  s1 = u_fn(z, t - d, t, cond)
  z_mid = z - _expand(d, z) * s1
  s2 = u_fn(z_mid, t - 2.0 * d, t - d, cond)
  return jax.lax.stop_gradient(0.5 * (s1 + s2))


def shortcut_loss(u_fn: Callable[..., Array], x0: Array, key: jax.Array, *, cond=None,
                  max_steps: int = 128, consistency_fraction: float = 0.25,
                  noise: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """The shortcut loss on a batch x0 (B, ...): the first round(k B) samples self-consistency,
  the others flow matching (module docstring); u_fn(z, r, t, cond) the network's average
  velocity. Returns (mean squared error, aux {'mse_consistency', 'mse_flow'})."""
  check_options(max_steps=max_steps, consistency_fraction=consistency_fraction)
  if cond is not None:
    raise ValueError("shortcut_loss trains unconditional models (cond must be None)")
  b = x0.shape[0]
  n_sc = int(round(consistency_fraction * b))
  k_sc, k_fm, k_eps = jax.random.split(key, 3)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype) if noise is None else noise
  t_sc, d = sample_self_consistency_times(k_sc, n_sc, max_steps)
  t_fm = jax.random.uniform(k_fm, (b - n_sc,))
  t = jnp.concatenate([t_sc, t_fm]).astype(x0.dtype)
  r = jnp.concatenate([t_sc - 2.0 * d, t_fm]).astype(x0.dtype)
  z = (1.0 - _expand(t, x0)) * x0 + _expand(t, x0) * eps
  pieces = []
  if n_sc:
    pieces.append(self_consistency_target(u_fn, z[:n_sc], t[:n_sc], d.astype(x0.dtype)))
  pieces.append((eps - x0)[n_sc:])
  target = jnp.concatenate(pieces)
  err = jnp.reshape(u_fn(z, r, t, None) - target, (b, -1)) ** 2
  per = jnp.mean(err, axis=1)
  nan = jnp.asarray(jnp.nan, per.dtype)
  return jnp.mean(per), {
      "mse_consistency": jnp.mean(per[:n_sc]) if n_sc else nan,
      "mse_flow": jnp.mean(per[n_sc:]) if n_sc < b else nan}
