"""Tests of diffusion/data/toy2d.py against the densities it documents."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from diffusion.data import toy2d

ALL = ("2spirals", "8gaussians", "checkerboard", "moons", "pinwheel", "rings", "swissroll")
WITH_DENSITY = ("8gaussians", "checkerboard", "rings")


def _draw(name, n=20_000, seed=0):
  return toy2d.sample(name, n, np.random.default_rng(seed)).astype(np.float64)


# --- registry and validation ----------------------------------------------


def test_available_lists_every_dataset():
  assert toy2d.available() == ALL
  assert set(toy2d.DATASETS) == set(ALL)
  assert tuple(k for k in ALL if toy2d.has_density(k)) == WITH_DENSITY


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="8gaussians.*checkerboard"):
    toy2d.sample("9gaussians", 10, np.random.default_rng(0))
  with pytest.raises(ValueError, match="unknown toy dataset"):
    toy2d.true_entropy("nope")


@pytest.mark.parametrize("bad_n", [-1, 2.5, True, "3"])
def test_sample_rejects_bad_n(bad_n):
  with pytest.raises(ValueError, match="n must be"):
    toy2d.sample("moons", bad_n, np.random.default_rng(0))


def test_sample_rejects_non_generator():
  with pytest.raises(ValueError, match="Generator"):
    toy2d.sample("moons", 4, 0)
  with pytest.raises(ValueError, match="Generator"):
    toy2d.sample("moons", 4, np.random.RandomState(0))


@pytest.mark.parametrize("name", ALL)
def test_sample_shape_dtype_and_seeding(name):
  x = toy2d.sample(name, 1000, np.random.default_rng(3))
  assert x.shape == (1000, 2) and x.dtype == np.float32
  assert np.all(np.isfinite(x)) and np.all(np.abs(x) < 8)
  np.testing.assert_array_equal(x, toy2d.sample(name, 1000, np.random.default_rng(3)))
  assert not np.array_equal(x, toy2d.sample(name, 1000, np.random.default_rng(4)))
  assert toy2d.sample(name, 0, np.random.default_rng(3)).shape == (0, 2)


# --- samples lie where the documented density puts them -------------------


def test_checkerboard_samples_fill_the_black_squares_uniformly():
  x = _draw("checkerboard", 40_000)
  assert np.all(np.isfinite(toy2d.log_prob("checkerboard", x)))  # All on black squares.
  assert np.all((x >= -4) & (x < 4))
  col, row = np.floor(x[:, 0] / 2).astype(int), np.floor(x[:, 1] / 2).astype(int)
  assert np.all((col + row) % 2 == 0)
  counts = np.bincount((col + 2) * 4 + (row + 2), minlength=16)
  black = [(c + 2) * 4 + (r + 2) for c in range(-2, 2) for r in range(-2, 2)
           if (c + r) % 2 == 0]
  assert len(black) == 8 and counts.sum() == counts[black].sum()
  expected, sd = 40_000 / 8, math.sqrt(40_000 * (1 / 8) * (7 / 8))
  assert np.all(np.abs(counts[black] - expected) < 5 * sd)
  # Uniform within a square: offsets inside their square are U(0, 2)^2.
  offsets = x - 2 * np.floor(x / 2)
  np.testing.assert_allclose(offsets.mean(0), [1, 1], atol=0.02)
  np.testing.assert_allclose(offsets.var(0), [4 / 12, 4 / 12], atol=0.02)
  # And the density is 0 on the white squares.
  assert np.all(np.isneginf(toy2d.log_prob("checkerboard", np.array([[1.0, -1.0], [-3, 3], [3, 0.5]]))))
  assert np.all(np.isneginf(toy2d.log_prob("checkerboard", np.array([[4.5, 0.5], [0.5, -4.5]]))))


def test_8gaussians_clusters_match_the_mixture_parameters():
  n = 40_000
  x = _draw("8gaussians", n)
  weights, means, covs = toy2d.gaussian_mixture_params("8gaussians")
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2 * math.sqrt(2))
  np.testing.assert_allclose(covs, np.broadcast_to(np.eye(2) / 8, (8, 2, 2)))
  np.testing.assert_allclose(weights, np.full(8, 1 / 8))
  nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
  for k in range(8):
    xk = x[nearest == k]
    assert abs(len(xk) / n - 1 / 8) < 5 * math.sqrt((1 / 8) * (7 / 8) / n)
    se = math.sqrt(1 / 8 / len(xk))
    np.testing.assert_allclose(xk.mean(0), means[k], atol=5 * se)
    np.testing.assert_allclose(np.cov(xk.T), np.eye(2) / 8, atol=0.01)


def test_rings_radii_and_noise():
  x = _draw("rings", 40_000)
  r = np.linalg.norm(x, axis=1)
  radii = np.array([0.75, 1.5, 2.25, 3.0])
  ring = np.argmin(np.abs(r[:, None] - radii[None]), axis=1)
  np.testing.assert_allclose(np.bincount(ring) / len(r), np.full(4, 0.25), atol=0.01)
  resid = r - radii[ring]
  # The radial part of N(0, s^2 I) noise has std s (curvature adds O(s^2 / R)).
  assert abs(resid.std() - 0.08) < 0.004
  theta = np.arctan2(x[:, 1], x[:, 0])
  assert stats.kstest(theta, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-4


def _distance_to_half_circle(x, centre, sign):
  """Distance from x (n, 2) to {centre + sign * 2 (cos t, sin t): t in [0, pi]}."""
  d = sign * (x - centre)
  on_arc = d[:, 1] >= 0
  radial = np.abs(np.linalg.norm(d, axis=1) - 2.0)
  ends = np.minimum(np.linalg.norm(d - [2, 0], axis=1), np.linalg.norm(d + [2, 0], axis=1))
  return np.where(on_arc, radial, ends)


def test_moons_lie_on_the_two_arcs():
  x = _draw("moons", 20_000)
  dist = np.minimum(_distance_to_half_circle(x, np.array([-1.0, -0.2]), 1.0),
                    _distance_to_half_circle(x, np.array([1.0, 0.8]), -1.0))
  # The normal part of the N(0, 0.2^2 I) noise: E dist^2 ~ 0.04, a bit less at
  # the ends and where the moons interleave.
  assert 0.03 < np.mean(dist**2) < 0.042
  assert np.max(dist) < 6 * 0.2
  # Half the mass on each moon, by side of the line through both centres.
  upper = _distance_to_half_circle(x, np.array([-1.0, -0.2]), 1.0) < _distance_to_half_circle(
      x, np.array([1.0, 0.8]), -1.0)
  assert abs(upper.mean() - 0.5) < 0.02


def test_swissroll_second_moment():
  x = _draw("swissroll", 40_000)
  a, b = 1.5 * np.pi, 4.5 * np.pi
  e_t2 = (b**3 - a**3) / (3 * (b - a))  # t ~ U(a, b).
  expected = (e_t2 + 2.0) / 25.0  # |x|^2 = (t^2 + 2 t <u, z> + |z|^2) / 25.
  sq = (x**2).sum(1)
  assert abs(sq.mean() - expected) < 5 * sq.std() / math.sqrt(len(sq))


def test_pinwheel_moments_and_symmetry():
  x = _draw("pinwheel", 40_000)
  sq = (x**2).sum(1)  # Rotations keep |f|: |x|^2 = 4 ((1 + 0.3 z1)^2 + (0.1 z2)^2).
  assert abs(sq.mean() - 4 * (1 + 0.09 + 0.01)) < 5 * sq.std() / math.sqrt(len(sq))
  np.testing.assert_allclose(x.mean(0), [0, 0], atol=0.05)  # 5-fold symmetry.


def test_2spirals_second_moment_and_point_symmetry():
  x = _draw("2spirals", 40_000)

  def e(g):  # E g(s) for s = 3 pi sqrt(u), u ~ U(0, 1).
    return integrate.quad(lambda u: g(3 * np.pi * np.sqrt(u)), 0, 1, limit=200)[0]

  # |d|^2 = s^2 + 2 v1 (-s cos s) + 2 v2 (s sin s) + |v|^2, v ~ U(0, 0.5)^2.
  e_d2 = e(lambda s: s**2) + 0.5 * e(lambda s: s * np.sin(s) - s * np.cos(s)) + 2 / 12
  expected = e_d2 / 9 + 2 * 0.01
  sq = (x**2).sum(1)
  assert abs(sq.mean() - expected) < 5 * sq.std() / math.sqrt(len(sq))
  np.testing.assert_allclose(x.mean(0), [0, 0], atol=0.05)  # x -> -x symmetric.


# --- exact densities -------------------------------------------------------


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_log_prob_integrates_to_one(name):
  h = 0.02
  g = np.arange(-6 + h / 2, 6, h)
  xx, yy = np.meshgrid(g, g)
  pts = np.stack([xx.ravel(), yy.ravel()], axis=-1)
  lp = toy2d.log_prob(name, pts)
  assert lp.shape == (len(pts),) and lp.dtype == np.float64
  np.testing.assert_allclose(np.exp(lp).sum() * h * h, 1.0, atol=1e-3)


def test_log_prob_checkerboard_value():
  np.testing.assert_allclose(toy2d.log_prob("checkerboard", np.array([[0.5, 0.5]])),
                             [-math.log(32)])


def test_8gaussians_log_prob_matches_mixture_params():
  weights, means, covs = toy2d.gaussian_mixture_params("8gaussians")
  x = _draw("8gaussians", 500) + np.random.default_rng(1).normal(size=(500, 2))
  ref = np.log(sum(w * stats.multivariate_normal(m, c).pdf(x)
                   for w, m, c in zip(weights, means, covs)))
  np.testing.assert_allclose(toy2d.log_prob("8gaussians", x), ref, rtol=1e-10, atol=1e-10)


def test_rings_log_prob_matches_angular_quadrature():
  x = np.array([[0.0, 0.1], [0.7, 0.2], [-1.5, 0.05], [2.0, -1.0], [0.3, 3.1]])
  s, radii = 0.08, [0.75, 1.5, 2.25, 3.0]
  theta = np.linspace(0, 2 * np.pi, 20_001)[:-1]  # Periodic: the rectangle rule is spectral.
  ref = np.zeros(len(x))
  for r in radii:
    c = r * np.stack([np.cos(theta), np.sin(theta)], -1)
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    ref += 0.25 * np.mean(np.exp(-d2 / (2 * s * s)), axis=1) / (2 * np.pi * s * s)
  np.testing.assert_allclose(toy2d.log_prob("rings", x), np.log(ref), rtol=1e-8)


def test_log_prob_validation():
  with pytest.raises(ValueError, match="no exact density.*8gaussians"):
    toy2d.log_prob("moons", np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
    toy2d.log_prob("8gaussians", np.zeros((3, 3)))
  with pytest.raises(ValueError, match="not a Gaussian mixture"):
    toy2d.gaussian_mixture_params("rings")


def test_entropies():
  assert toy2d.true_entropy("checkerboard") == math.log(32)
  est, se = toy2d.monte_carlo_entropy("checkerboard", 10_000, seed=0)
  assert est == pytest.approx(math.log(32), abs=1e-12) and se < 1e-9
  for name in ("moons", "swissroll", "pinwheel", "2spirals"):
    assert toy2d.true_entropy(name) is None
  # 8gaussians: below ln 8 + H(N(0, I/8)) = 1 + ln(2 pi) (equality only for
  # disjoint components), and "about 2.83 nats".
  h8 = toy2d.true_entropy("8gaussians")
  assert 1 + math.log(2 * math.pi) - 0.02 < h8 < 1 + math.log(2 * math.pi)
  assert abs(h8 - 2.83) < 0.005


@pytest.mark.parametrize("name", ["8gaussians", "rings"])
def test_stored_entropy_is_recomputed_by_monte_carlo(name):
  est, se = toy2d.monte_carlo_entropy(name, 600_000, seed=1)  # Not the stored seed 0.
  assert se < 0.002
  assert abs(est - toy2d.true_entropy(name)) < 0.01
  assert abs(est - toy2d.true_entropy(name)) < 5 * se


# --- deterministic batches -------------------------------------------------


def test_batch_is_a_function_of_seed_and_step():
  b3 = toy2d.batch("moons", 64, seed=7, step=3)
  assert b3.shape == (64, 2) and b3.dtype == np.float32
  np.testing.assert_array_equal(b3, toy2d.batch("moons", 64, seed=7, step=3))
  assert not np.array_equal(b3, toy2d.batch("moons", 64, seed=7, step=4))
  assert not np.array_equal(b3, toy2d.batch("moons", 64, seed=8, step=3))
  big = toy2d.batch("moons", 64, seed=2**40, step=2**33)
  assert not np.array_equal(big, toy2d.batch("moons", 64, seed=0, step=2**33))
  assert not np.array_equal(big, toy2d.batch("moons", 64, seed=2**40, step=0))


def test_iterator_resumes_exactly():
  it = toy2d.iterator("8gaussians", 32, seed=5)
  first = [next(it) for _ in range(6)]
  resumed = toy2d.iterator("8gaussians", 32, seed=5, start_step=4)
  np.testing.assert_array_equal(next(resumed), first[4])
  np.testing.assert_array_equal(next(resumed), first[5])
  # Batch i does not depend on how many batches were drawn before.
  np.testing.assert_array_equal(toy2d.batch("8gaussians", 32, 5, 2), first[2])


def test_process_shards_tile_the_global_batch():
  full = toy2d.batch("rings", 12, seed=1, step=9)
  shards = [toy2d.batch("rings", 12, seed=1, step=9, process_index=i, process_count=3)
            for i in range(3)]
  np.testing.assert_array_equal(np.concatenate(shards), full)
  it = toy2d.iterator("rings", 12, seed=1, start_step=9, process_index=2, process_count=3)
  np.testing.assert_array_equal(next(it), shards[2])


def test_heldout_is_fixed_and_separate_from_training():
  h = toy2d.heldout("swissroll", 64, seed=3)
  np.testing.assert_array_equal(h, toy2d.heldout("swissroll", 64, seed=3))
  for step in range(3):
    assert not np.array_equal(h, toy2d.batch("swissroll", 64, seed=3, step=step))
  assert not np.array_equal(h, toy2d.heldout("swissroll", 64, seed=4))


def test_batch_validation_is_eager():
  with pytest.raises(ValueError, match="seed"):
    toy2d.iterator("moons", 8, seed=-1)
  with pytest.raises(ValueError, match="step"):
    toy2d.iterator("moons", 8, seed=0, start_step=2**64)
  with pytest.raises(ValueError, match="process_count"):
    toy2d.iterator("moons", 8, seed=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    toy2d.iterator("moons", 8, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="batch_size"):
    toy2d.iterator("moons", -8, seed=0)
  with pytest.raises(ValueError, match="unknown toy dataset"):
    toy2d.iterator("moon", 8, seed=0)
