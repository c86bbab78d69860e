"""Sliced Wasserstein distance between two sample sets, in any dimension.

Definition (Rabin et al., 2011; Bonneel et al., 2015, Eq. 9): for measures mu, nu
on R^d and theta uniform on the unit sphere S^{d-1},

  SW_p(mu, nu) = ( E_theta[ W_p^p(theta#mu, theta#nu) ] )^(1/p),

where theta#mu is the law of <theta, X>, X ~ mu, and W_p is the 1-D
p-Wasserstein distance, W_p^p = int_0^1 |F^{-1}(u) - G^{-1}(u)|^p du with F, G
the 1-D CDFs. The expectation over theta is a Monte Carlo average over
``num_projections`` random directions; the 1-D distances are exact for the
empirical measures. Example: for a pure translation nu = mu(. - m),
W_p(theta#mu, theta#nu) = |<theta, m>| and E<theta, m>^2 = |m|^2 / d, so
SW_2 = |m| / sqrt(d).
"""
from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

KeyOrSeed = Union[int, jax.Array]


def as_key(key_or_seed: KeyOrSeed) -> jax.Array:
  """A jax PRNG key from a non-negative int seed or a key (typed or raw uint32 (2,))."""
  if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
    if key_or_seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {key_or_seed}")
    return jax.random.key(int(key_or_seed))
  if isinstance(key_or_seed, jax.Array):
    if jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
      if key_or_seed.shape == ():
        return key_or_seed
    elif key_or_seed.dtype == jnp.uint32 and key_or_seed.shape == (2,):
      return key_or_seed
  raise ValueError("key_or_seed must be a non-negative int, a scalar jax.random.key or a "
                   f"raw uint32 (2,) PRNGKey, got {key_or_seed!r}")


def as_samples(x, what: str) -> jax.Array:
  """(n, ...) array-like -> (n, d) float32 jax array, trailing axes flattened."""
  x = jnp.asarray(x)
  if x.ndim < 2 or x.shape[0] < 1:
    raise ValueError(f"{what} must have shape (n, d, ...) with n >= 1, got {x.shape}")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"{what} must be real-valued, got dtype {x.dtype}")
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def random_directions(key: jax.Array, num: int, dim: int) -> jax.Array:
  """``num`` directions uniform on the unit sphere S^{dim-1}: (num, dim).

  A standard normal vector divided by its norm is uniform on the sphere.
  """
  z = jax.random.normal(key, (num, dim), dtype=jnp.float32)
  return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def quantile_grid(n: int, m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact coupling of two uniform empirical quantile functions, sizes n and m.

  The quantile function of n sorted atoms is piecewise constant, equal to atom
  ``floor(u n)`` on [i/n, (i+1)/n). Merging the breakpoints {i/n} and {j/m}
  gives intervals on which both are constant, so
  W_p^p = sum_k w_k |xs[ix_k] - ys[iy_k]|^p exactly. Breakpoints are integers
  over the common denominator n m, so no rounding enters.

  Returns (ix (K,), iy (K,), w (K,) float64 summing to 1), K <= n + m - 1.
  """
  cuts = np.union1d(np.arange(0, n + 1, dtype=np.int64) * m,
                    np.arange(0, m + 1, dtype=np.int64) * n)  # In [0, n m].
  lo, hi = cuts[:-1], cuts[1:]
  mid2 = lo + hi  # 2 * midpoint * n * m; the atom index is floor(mid * n).
  ix = mid2 // (2 * m)
  iy = mid2 // (2 * n)
  w = (hi - lo) / float(n * m)
  return ix, iy, w


def _wasserstein_pp_sorted(xs: np.ndarray, ys: np.ndarray, p: float) -> np.ndarray:
  """W_p^p between empirical measures of sorted columns: (n, L), (m, L) -> (L,)."""
  n, m = xs.shape[0], ys.shape[0]
  if n == m:
    return np.mean(np.abs(xs - ys) ** p, axis=0)
  ix, iy, w = quantile_grid(n, m)
  return np.einsum("k,kl->l", w, np.abs(xs[ix] - ys[iy]) ** p)


def _check_p(p: float) -> float:
  if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not (
      1 <= p < np.inf):
    raise ValueError(f"p must be a finite real >= 1, got {p!r}")
  return float(p)


def wasserstein_1d(u, v, p: float = 2.0) -> float:
  """Exact p-Wasserstein distance between two 1-D empirical measures u (n,), v (m,)."""
  p = _check_p(p)
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  if u.ndim != 1 or v.ndim != 1 or u.size < 1 or v.size < 1:
    raise ValueError(f"u and v must be non-empty 1-D arrays, got shapes {u.shape}, {v.shape}")
  wpp = _wasserstein_pp_sorted(np.sort(u)[:, None], np.sort(v)[:, None], p)
  return float(wpp[0]) ** (1.0 / p)


def sliced_wasserstein(x, y, key_or_seed: KeyOrSeed, num_projections: int = 256,
                       p: float = 2.0) -> float:
  """Monte Carlo sliced p-Wasserstein distance SW_p between samples x and y.

  Args:
    x: samples (n, d, ...) (trailing axes are flattened to d).
    y: samples (m, d, ...), same d; m may differ from n.
    key_or_seed: jax PRNG key or int seed for the random directions; the same
      key gives the same directions, so SW(x, y) == SW(y, x).
    num_projections: number L of directions theta, uniform on S^{d-1}.
    p: order, >= 1.

  Returns:
    ( (1/L) sum_l W_p^p(<theta_l, x>, <theta_l, y>) )^(1/p), a Python float,
    with the 1-D W_p exact for the empirical measures (sorted differences when
    n == m, otherwise the merged quantile grid of ``quantile_grid``).
  """
  p = _check_p(p)
  if (isinstance(num_projections, bool) or not isinstance(num_projections, (int, np.integer))
      or num_projections < 1):
    raise ValueError(f"num_projections must be a positive int, got {num_projections!r}")
  x, y = as_samples(x, "x"), as_samples(y, "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
  theta = random_directions(as_key(key_or_seed), int(num_projections), x.shape[1])
  hi = jax.lax.Precision.HIGHEST  # No TF32 / bf16 passes on accelerators.
  # Project on the device; sort on the host in float64 (XLA's CPU sort is
  # ~15x slower than numpy's, and (n, L) is small).
  xs = np.sort(np.asarray(jnp.matmul(x, theta.T, precision=hi), np.float64), axis=0)
  ys = np.sort(np.asarray(jnp.matmul(y, theta.T, precision=hi), np.float64), axis=0)
  wpp = _wasserstein_pp_sorted(xs, ys, p)  # (L,)
  return float(np.mean(wpp)) ** (1.0 / p)
