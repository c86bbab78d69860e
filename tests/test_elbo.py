"""VDM's continuous-time ELBO against exact answers.

Ground truth: a discrete distribution P on the L^D grid of bin centres is a Gaussian mixture with
zero covariances, so diffusion.analytic gives its exact denoiser E[x | z_t]. With the exact
denoiser the reverse process is exact, and the bound is tight up to the prior mismatch
KL(q(z_1) || N(0, s^2 I)) and the decoder's factorization, both negligible here: the mean ELBO
over x ~ P must equal -log P(x) (paired per example, so its mean is the entropy H(P)) within
Monte Carlo noise, and exceed it for another denoiser.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, elbo, schedules

L, D = 8, 2


def _grid_distribution(seed=0):
  """P over the L^D grid (a smooth random density), as (int grid (K, D), weights (K,))."""
  rng = np.random.default_rng(seed)
  grid = np.array(list(itertools.product(range(L), repeat=D)))
  c = (grid + 0.5) * (2.0 / L) - 1.0
  centers = rng.uniform(-0.7, 0.7, (3, D))
  logits = np.logaddexp.reduce(-np.sum((c[:, None] - centers[None]) ** 2, -1) / 0.15, axis=1)
  w = np.exp(logits - logits.max())
  return grid, w / w.sum()


def _exact_setup(seed=0):
  grid, w = _grid_distribution(seed)
  mixture = analytic.GaussianMixture.create(w, (grid + 0.5) * (2.0 / L) - 1.0, np.zeros(len(w)))
  entropy = float(-np.sum(w * np.log(w)))
  return grid, w, mixture, entropy


def _draw(grid, w, n, seed=1):
  """n draws x ~ P (n, D) and their exact -log P(x) (n,)."""
  idx = np.random.default_rng(seed).choice(len(w), size=n, p=w)
  return jnp.asarray(grid[idx]), -np.log(w[idx])


@pytest.mark.parametrize("sched", [schedules.VP(t_min=1e-5), schedules.VE(), schedules.EDM()],
                         ids=["vp", "ve", "edm"])
def test_elbo_of_the_exact_denoiser_equals_the_entropy(sched):
  grid, w, mixture, entropy = _exact_setup()
  x, nll = _draw(grid, w, 4096)
  out = jax.jit(lambda k: elbo.elbo(mixture.denoiser(sched), sched, x, k, num_levels=L,
                                    num_time_samples=32))(jax.random.PRNGKey(0))
  gap = np.asarray(out["total"], np.float64) - nll  # per example: ELBO(x) + log P(x)
  mean, se = gap.mean(), gap.std() / math.sqrt(len(gap))
  assert abs(mean) < 4 * se + 0.01, (mean, se, entropy)
  assert se < 0.05
  assert np.all(np.asarray(out["prior"]) >= 0) and np.mean(out["prior"]) < 1e-3
  assert np.mean(out["recon"]) < 1e-3  # sigma_0 is far below the bin width


def test_elbo_of_a_wrong_denoiser_is_strictly_larger():
  """The bound is a bound: a denoiser that ignores the discreteness costs nats."""
  sched = schedules.VP(t_min=1e-5)
  grid, w, mixture, entropy = _exact_setup()
  smooth = analytic.GaussianMixture.create(mixture.weights, mixture.means,
                                           np.full(len(w), (1.0 / L) ** 2))
  x, nll = _draw(grid, w, 4096)
  out = jax.jit(lambda k: elbo.elbo(smooth.denoiser(sched), sched, x, k, num_levels=L,
                                    num_time_samples=32))(jax.random.PRNGKey(0))
  gap = np.asarray(out["total"], np.float64) - nll
  assert gap.mean() > 10 * gap.std() / math.sqrt(len(gap)) and gap.mean() > 0.1


def test_prior_kl_matches_monte_carlo():
  sched = schedules.VP(beta_max=1.0)  # far from the prior at t_max: a KL of order 1
  x = jnp.asarray([[0.9, -0.5, 0.1], [-1.0, 1.0, 0.0]])
  kl = np.asarray(elbo.prior_kl(x, sched, 1.0))
  a, s, p = float(sched.alpha(1.0)), float(sched.sigma(1.0)), sched.prior_std()
  z = a * np.asarray(x)[:, None] + s * np.random.default_rng(0).standard_normal((2, 400_000, 3))
  log_ratio = (-0.5 * ((z - a * np.asarray(x)[:, None]) / s) ** 2 - math.log(s)
               + 0.5 * (z / p) ** 2 + math.log(p)).sum(-1)
  mc, se = log_ratio.mean(1), log_ratio.std(1) / math.sqrt(log_ratio.shape[1])
  assert np.all(kl > 0.1)
  np.testing.assert_array_less(np.abs(kl - mc), 4 * se + 1e-6)


def test_reconstruction_limits():
  x = jnp.asarray([[0, 3, 7], [5, 5, 1]])
  c = elbo.bin_centers(x, L)
  # Noise far below the bin width: the decoder is certain; far above: uniform over the L levels.
  sharp = elbo.reconstruction_nll(x, c, L, 1.0, 1e-3)
  flat = elbo.reconstruction_nll(x, c, L, 1.0, 1e3)
  np.testing.assert_allclose(sharp, 0.0, atol=1e-5)
  np.testing.assert_allclose(flat, 3 * math.log(L), rtol=1e-5)


def test_bin_centers_are_the_means_of_the_dequantization():
  k = jnp.arange(L)
  np.testing.assert_allclose(elbo.bin_centers(k, L), (2 * (np.arange(L) + 0.5)) / L - 1)
  assert elbo.to_bits_per_dim(jnp.asarray(3 * math.log(2.0)), 3) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_levels": 0}, "num_levels"),
    ({"num_levels": True}, "num_levels"),
    ({"num_time_samples": 0}, "num_time_samples"),
    ({"time_sampling": "sobol"}, "time_sampling"),
    ({"t_min": 0.5, "t_max": 0.1}, "t_min"),
    ({"t_max": 2.0}, "t_max"),
    ({"t_min": float("nan")}, "t_min"),
])
def test_bad_arguments_are_refused(kwargs, match):
  sched = schedules.VP()
  with pytest.raises(ValueError, match=match):
    elbo.elbo(lambda z, t, c: z, sched, jnp.zeros((2, 2), jnp.int32), jax.random.PRNGKey(0),
              **kwargs)
