"""Tests of diffusion/metrics: sliced Wasserstein and MMD against exact values."""
import importlib
import math

import jax
import numpy as np
import pytest
from scipy import stats

from diffusion.data import toy2d
from diffusion.metrics import mmd, sliced_wasserstein

# The package exports the functions under the modules' names, so reach the
# modules themselves through importlib.
mmd_lib = importlib.import_module("diffusion.metrics.mmd")
sw_lib = importlib.import_module("diffusion.metrics.sliced_wasserstein")


def _normal(n, d=2, seed=0, shift=0.0):
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32) + shift


# --- sliced Wasserstein ----------------------------------------------------


def test_quantile_grid_is_an_exact_coupling():
  for n, m in [(3, 5), (4, 6), (7, 7), (1, 9)]:
    ix, iy, w = sw_lib.quantile_grid(n, m)
    np.testing.assert_allclose(w.sum(), 1.0)
    assert np.all(w > 0) and len(w) <= n + m - 1
    # Each atom keeps exactly its mass 1/n (resp. 1/m).
    np.testing.assert_allclose(np.bincount(ix, w, minlength=n), np.full(n, 1 / n))
    np.testing.assert_allclose(np.bincount(iy, w, minlength=m), np.full(m, 1 / m))
    assert np.all(np.diff(ix) >= 0) and np.all(np.diff(iy) >= 0)  # Monotone coupling.


def test_one_dimensional_case_is_the_exact_wasserstein_distance():
  # In 1-D every unit direction is +-1, so SW_p = W_p exactly.
  u = np.random.default_rng(0).standard_normal(300)
  v = np.random.default_rng(1).exponential(size=170) + 0.5
  w1 = stats.wasserstein_distance(u, v)
  assert sliced_wasserstein(u[:, None], v[:, None], 0, 8, p=1) == pytest.approx(w1, rel=1e-5)
  assert sw_lib.wasserstein_1d(u, v, p=1) == pytest.approx(w1, rel=1e-5)
  # p = 2 with unequal sizes: repeating atoms gives the same measures, equal sizes.
  ref = math.sqrt(np.mean((np.sort(np.repeat(u, 170)) - np.sort(np.repeat(v, 300))) ** 2))
  assert sliced_wasserstein(u[:, None], v[:, None], 3, 4, p=2) == pytest.approx(ref, rel=1e-5)
  # Equal sizes: sorted differences.
  ref = np.mean(np.abs(np.sort(u[:170]) - np.sort(v)) ** 3) ** (1 / 3)
  assert sw_lib.wasserstein_1d(u[:170], v, p=3) == pytest.approx(ref, rel=1e-5)


def test_translation_gives_norm_over_sqrt_d():
  x = _normal(200)  # y = x + m exactly, so n does not enter; only the directions do.
  m = np.array([1.5, -2.0], np.float32)
  key, num = jax.random.key(11), 4096
  got = sliced_wasserstein(x, x + m, key, num_projections=num)
  # Exact for the drawn directions: W_2 of each projection is |<theta, m>|.
  theta = np.asarray(sw_lib.random_directions(key, num, 2), np.float64)
  assert got == pytest.approx(math.sqrt(np.mean((theta @ m) ** 2)), rel=1e-4)
  # And E <theta, m>^2 = |m|^2 / d: SW_2 = |m| / sqrt(2) = 1.7678 up to MC error.
  assert got == pytest.approx(np.linalg.norm(m) / math.sqrt(2), rel=0.02)
  # p = 1: E|<theta, m>| = |m| * 2 / pi in 2-D.
  got1 = sliced_wasserstein(x, x + m, key, num_projections=num, p=1)
  assert got1 == pytest.approx(np.linalg.norm(m) * 2 / math.pi, rel=0.02)
  # In d = 8 the same translation gives |m| / sqrt(8).
  x8 = _normal(200, d=8)
  m8 = np.arange(8, dtype=np.float32) / 4
  got8 = sliced_wasserstein(x8, x8 + m8, 5, num_projections=num)
  assert got8 == pytest.approx(np.linalg.norm(m8) / math.sqrt(8), rel=0.03)


def test_sw_near_zero_for_same_law_and_growing_with_shift():
  rng = np.random.default_rng(0)
  x, y = toy2d.sample("8gaussians", 3000, rng), toy2d.sample("8gaussians", 3000, rng)
  same = sliced_wasserstein(x, y, 0)
  # Sampling noise only (0.099 here): it shrinks as n grows.
  assert same < 0.12
  assert sliced_wasserstein(x[:500], y[:500], 0) > 1.5 * same
  shifts = [0.25, 0.5, 1.0, 2.0]
  vals = [sliced_wasserstein(x, y + np.float32([s, 0]), 0) for s in shifts]
  assert vals[0] > 1.5 * same and np.all(np.diff(vals) > 0)
  for s, v in zip(shifts[1:], vals[1:]):  # Shift dominates: ~ s / sqrt(2).
    assert v == pytest.approx(s / math.sqrt(2), rel=0.15)


def test_sw_symmetry_determinism_and_flattening():
  x, y = _normal(500, d=48, seed=1), _normal(300, d=48, seed=2, shift=0.3)
  a = sliced_wasserstein(x, y, 4)
  assert a == pytest.approx(sliced_wasserstein(y, x, 4), rel=1e-6)
  assert a == sliced_wasserstein(x, y, jax.random.key(4))
  assert a == sliced_wasserstein(x, y, jax.random.PRNGKey(4))
  assert a != sliced_wasserstein(x, y, 5)
  img = sliced_wasserstein(x.reshape(500, 4, 4, 3), y.reshape(300, 4, 4, 3), 4)
  assert img == pytest.approx(a, rel=1e-6)


def test_sw_validation():
  x = _normal(10)
  with pytest.raises(ValueError, match="same dimension"):
    sliced_wasserstein(x, _normal(10, d=3), 0)
  with pytest.raises(ValueError, match="p must be"):
    sliced_wasserstein(x, x, 0, p=0.5)
  with pytest.raises(ValueError, match="num_projections"):
    sliced_wasserstein(x, x, 0, num_projections=0)
  with pytest.raises(ValueError, match="key_or_seed"):
    sliced_wasserstein(x, x, "seed")
  with pytest.raises(ValueError, match="seed must be"):
    sliced_wasserstein(x, x, -3)
  with pytest.raises(ValueError, match=r"shape \(n, d"):
    sliced_wasserstein(x[:, 0], x, 0)


# --- MMD -------------------------------------------------------------------


def _mmd_reference(x, y, bandwidths):
  """Direct float64 U-statistic, Gretton et al. (2012) Eq. 3."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def k(a, b):
    d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
    return sum(np.exp(-d2 / (2 * h * h)) for h in bandwidths)

  n, m = len(x), len(y)
  kxx, kyy = k(x, x), k(y, y)
  return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) /
          (m * (m - 1)) - 2 * k(x, y).mean())


def test_mmd_matches_direct_u_statistic_for_any_chunking():
  x, y = _normal(301, d=3, seed=0), _normal(203, d=3, seed=1, shift=0.2)
  bw = (0.5, 1.0, 3.0)
  ref = _mmd_reference(x, y, bw)
  for chunk in (64, 1024):  # Padded multi-block (with symmetry), single block.
    assert mmd(x, y, bw, chunk_size=chunk) == pytest.approx(ref, abs=2e-6)
  med = mmd_lib.median_distance(x, y)
  ref_default = _mmd_reference(x, y, [med * c for c in mmd_lib.DEFAULT_BANDWIDTH_MULTIPLES])
  assert mmd(x, y) == pytest.approx(ref_default, abs=2e-6)


def test_mmd_is_symmetric():
  x, y = _normal(400, seed=0), _normal(250, seed=1, shift=0.5)
  assert mmd(x, y) == pytest.approx(mmd(y, x), abs=1e-6)
  assert mmd_lib.median_distance(x, y) == mmd_lib.median_distance(y, x)


def test_mmd_of_two_gaussians_matches_closed_form():
  # k = exp(-|a-b|^2 / (2 h^2)), X ~ N(0, s^2 I_d), Y ~ N(delta, s^2 I_d):
  # E k(X, X') = E k(Y, Y') = c := (h^2 / (h^2 + 2 s^2))^(d/2),
  # E k(X, Y) = c exp(-|delta|^2 / (2 (h^2 + 2 s^2))), so
  # MMD^2 = 2 c (1 - exp(-|delta|^2 / (2 (h^2 + 2 s^2)))).
  d, h, n = 2, 1.0, 3000
  delta = np.array([1.0, 0.0], np.float32)
  c = (h * h / (h * h + 2)) ** (d / 2)
  truth = 2 * c * (1 - math.exp(-1.0 / (2 * (h * h + 2))))  # = 0.1024
  got = mmd(_normal(n, seed=0), _normal(n, seed=1, shift=delta), (h,))
  assert got == pytest.approx(truth, abs=0.015)  # ~4 standard errors.


def test_mmd_near_zero_for_same_law_and_growing_with_shift():
  rng = np.random.default_rng(0)
  x, y = toy2d.sample("8gaussians", 2000, rng), toy2d.sample("8gaussians", 2000, rng)
  same = mmd(x, y)
  assert abs(same) < 2e-3
  vals = [mmd(x, y + np.float32([s, 0])) for s in (0.25, 0.5, 1.0, 2.0)]
  assert vals[0] > 5 * abs(same) and np.all(np.diff(vals) > 0)


def test_mmd_validation():
  x = _normal(10)
  with pytest.raises(ValueError, match="n, m >= 2"):
    mmd(x[:1], x)
  with pytest.raises(ValueError, match="same dimension"):
    mmd(x, _normal(10, d=3))
  with pytest.raises(ValueError, match="bandwidths"):
    mmd(x, x, (1.0, -1.0))
  with pytest.raises(ValueError, match="bandwidths"):
    mmd(x, x, ())
  with pytest.raises(ValueError, match="chunk_size"):
    mmd(x, x, chunk_size=0)
  with pytest.raises(ValueError, match="median pairwise distance is 0"):
    mmd(np.zeros((5, 2)), np.zeros((5, 2)))
