"""Brownian-tree noise: one Brownian path per sample, so one seed is one path at every step count.

With ``noise='brownian_tree'`` (a hyper-parameter of the stochastic engine samplers) the standard
normal z of a step is not a fresh draw but the standardised increment of a Brownian path W over
the step's interval [u_lo, u_hi] of the clock u:

  z = (W(u_hi) - W(u_lo)) / sqrt(u_hi - u_lo),

so the increments over disjoint intervals are independent N(0, 1) (the law of the default noise),
and refining the grid refines the *same* path: the coarse step's z sqrt(du) is exactly the sum of
the fine steps' (Gaines & Lyons 1997; Li et al. 2020, "virtual Brownian tree").

Clock: u = t, the schedule's own time, in which the reverse SDE is written,
dx = [f(t) x - g(t)^2 score] dt + g(t) dW_bar_t (Song et al. 2021, eq. 6). Every sampler that
discretises that SDE (Euler-Maruyama, reverse diffusion, DDPM, SDE-DPM-Solver++(2M), DDIM with
eta = 1, Euler ancestral with eta = 1) is then driven by the same W and converges, as the grid is
refined, to the same strong solution (checked in tests/test_brownian.py): the strong order of each
becomes measurable. The path lives on [0, schedule.t_max].

The path W on the normalised clock v = u / t_max in [0, 1] is Levy's construction (the virtual
Brownian tree), a deterministic function of the sample's path key and v:

  W(v) = v xi_0 + sum_{k < depth} 2^{-k/2} / 2 hat(2^k v - j_k) xi_{2^k + j_k}
         + sqrt((v - s)(e - v) / l) xi_{2^depth + j_depth},

j_k = floor(2^k v) the level-k dyadic interval [s, e] holding v (length l = 2^-k), hat(y) = 1 -
|2 y - 1| on [0, 1]: W(1) = xi_0, each level's midpoint is the Brownian-bridge mean of its ends
plus sqrt(l) / 2 xi, and below the last level the bridge between the two level-``depth`` ends (the
last term, diffrax's 'sqrt' spline). Node xi_i = normal(fold_in(path_key, i)). The law is exactly
Brownian at any set of points no two of which share a leaf (a level-``depth`` interval,
t_max 2^-depth long): ``increment_terms`` refuses steps shorter than two leaves. Levels, node
indices and weights are computed on the host in float64 from the concrete grid, so the same time
gives bit-identical weights on every grid; the device only sums ``weights[i] * xi_{ids[i]}``.
Cost: about 2 (depth + 1) normal draws per noise draw (depth 30: ~60; the default noise draws 1).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

NOISES = ("independent", "brownian_tree")
DEPTH = 30  # tree levels: leaves t_max 2^-30 long; node ids < 2^31 (fold_in takes uint32)
MIN_LEAVES = 2  # a noise interval must span at least this many leaves (endpoints in distinct ones)


def check_noise(noise) -> str:
  """``noise`` checked against NOISES (ValueError naming the value and the accepted ones)."""
  if not isinstance(noise, str) or noise not in NOISES:
    raise ValueError(f"noise={noise!r}; accepted: {NOISES} ('independent': a fresh normal per "
                     f"draw, the default; 'brownian_tree': increments of one Brownian path per "
                     f"sample, diffusion/samplers/brownian.py)")
  return noise


def point_terms(v: float, depth: int = DEPTH) -> Dict[int, float]:
  """{node id: weight} with W(v) = sum weight * xi_id, for v in [0, 1] (see the module docstring);
  float64, zero weights left out."""
  v = float(v)
  if not 0.0 <= v <= 1.0:
    raise ValueError(f"brownian tree: normalised time v={v!r} outside [0, 1]")
  out: Dict[int, float] = {0: v} if v > 0 else {}
  for k in range(depth + 1):
    n = 2**k
    j = min(int(math.floor(v * n)), n - 1)
    y = v * n - j  # position in the level-k interval, in [0, 1]
    if k < depth:
      w = 0.5 * math.sqrt(1.0 / n) * (1.0 - abs(2.0 * y - 1.0))
    else:  # the bridge inside the leaf, variance (v - s)(e - v) / l = l y (1 - y)
      w = math.sqrt(max(y * (1.0 - y), 0.0) / n)
    if w != 0.0:
      out[n + j] = out.get(n + j, 0.0) + w
  return out


def increment_terms(u_hi: float, u_lo: float, t_max: float,
                    depth: int = DEPTH) -> Dict[int, float]:
  """{node id: weight} of z = (W(u_hi) - W(u_lo)) / sqrt(u_hi - u_lo) on the clock u in
  [0, t_max]; 0 <= u_lo < u_hi <= t_max and u_hi - u_lo >= MIN_LEAVES leaves (t_max 2^-depth),
  else ValueError."""
  u_hi, u_lo, t_max = float(u_hi), float(u_lo), float(t_max)
  if not (t_max > 0 and 0.0 <= u_lo < u_hi <= t_max):
    raise ValueError(f"brownian tree: a noise interval must satisfy 0 <= u_lo < u_hi <= t_max = "
                     f"{t_max}, got [u_lo, u_hi] = [{u_lo}, {u_hi}]")
  leaf = t_max * 2.0**-depth
  if u_hi - u_lo < MIN_LEAVES * leaf:
    raise ValueError(f"brownian tree: a step of length {u_hi - u_lo:.3g} in t is shorter than "
                     f"{MIN_LEAVES} leaves of the tree ({leaf:.3g} each, depth {depth}); its "
                     f"increment would not have the Brownian law. Use fewer steps")
  a, b = point_terms(u_hi / t_max, depth), point_terms(u_lo / t_max, depth)
  scale = 1.0 / math.sqrt((u_hi - u_lo) / t_max)
  out = dict(a)
  for i, w in b.items():
    out[i] = out.get(i, 0.0) - w
  return {i: w * scale for i, w in out.items() if w != 0.0}


def row_tables(intervals, t_max: float, depth: int = DEPTH) -> Tuple[np.ndarray, np.ndarray]:
  """(ids (R, M) uint32, weights (R, M) float64) for R rows' noise intervals (None: the row draws
  no noise on this channel: all weights 0), M the largest term count; a row's unused entries
  have weight 0."""
  terms = [{} if iv is None else increment_terms(iv[0], iv[1], t_max, depth) for iv in intervals]
  m = max([len(t) for t in terms] + [1])
  ids = np.zeros((len(terms), m), np.uint32)
  wts = np.zeros((len(terms), m), np.float64)
  for r, t in enumerate(terms):
    for i, (node, w) in enumerate(sorted(t.items())):
      ids[r, i], wts[r, i] = node, w
  return ids, wts


def path_normal(path_key: Array, ids: Array, weights: Array, shape, dtype) -> Array:
  """sum_{i < M} weights[i] normal(fold_in(path_key, ids[i]), shape): one sample's z (padded
  entries have weight 0). The M draws are made at once (one batched generator call, fast on any
  backend; transient memory M x the sample's size)."""
  ids = jnp.asarray(ids)
  xi = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(path_key, i), shape, dtype))(ids)
  return jnp.tensordot(jnp.asarray(weights).astype(dtype), xi, axes=1)


def per_sample_path_normal(keys: Array, channel: int, ids: Array, weights: Array, shape,
                           dtype) -> Array:
  """z (B, *shape): sample b's standardised increment of its path ``channel`` (path key
  fold_in(keys[b], channel); channel 0 feeds the evaluation point's z, 1 the update's z')."""
  return jax.vmap(lambda k: path_normal(jax.random.fold_in(k, channel), ids, weights, shape,
                                        dtype))(keys)
