"""diffusion.metrics.bits_per_dim against exact answers: PF-ODE bits/dim of dequantized integer
data with the exact denoiser of a Gaussian (closed-form density), the dequantization draws, the
per-image standard error, and VDM's ELBO in bits/dim against the entropy of a known
distribution."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, likelihood, schedules
from diffusion.data import images
from diffusion.metrics import bits_per_dim


# -- PF-ODE bits/dim against the closed form --------------------------------------------------------

L_LEVELS, SHAPE, N = 17, (2, 2, 1), 192


def _gaussian_setup():
  """Data: integer levels k whose dequantized values x = 2 (k + u) / L - 1 are scored by a
  model whose density is exactly N(0, S) at t = 0 (a one-component mixture, S full, so that
  Hutchinson's estimator has variance for both probes): its PF-ODE log-density at t_min is
  N(x; 0, alpha^2 S + sigma^2 I), in closed form."""
  dim = int(np.prod(SHAPE))
  q = np.linalg.qr(np.random.default_rng(2).standard_normal((dim, dim)))[0]
  cov = q @ np.diag([0.02, 0.1, 0.3, 0.6]) @ q.T
  gm = analytic.GaussianMixture.create([1.0], np.zeros((1, dim)), cov[None])
  sched = schedules.VP(t_min=1e-5)
  levels = np.random.default_rng(0).integers(0, L_LEVELS, (N, *SHAPE)).astype(np.int32)
  return gm, sched, levels, cov, dim


def _closed_form_bpd(x, sched, cov, dim):
  a, sg = float(sched.alpha(np.float64(sched.t_min))), float(sched.sigma(np.float64(sched.t_min)))
  c = a * a * cov + sg * sg * np.eye(dim)
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  maha = np.einsum("bi,ij,bj->b", flat, np.linalg.inv(c), flat)
  logp = -0.5 * maha - 0.5 * np.linalg.slogdet(2 * math.pi * c)[1]
  # The change of variables [0, L)^D -> [-1, 1]^D: log p_discrete-dequantized = log p + D log(2/L).
  return -(logp / dim + math.log(2.0 / L_LEVELS)) / math.log(2.0)


def _loglik(gm, sched, record=None, **kw):
  """loglik(x, key, draw) of the exact model; appends (x, log p) to ``record``."""
  fn = jax.jit(lambda x, k: likelihood.log_likelihood(
      lambda z, t, c=None: gm.denoiser(sched)(z.reshape(len(z), -1), t, c).reshape(z.shape),
      sched, x, k, **kw))

  def loglik(x, key, draw):
    out = fn(jnp.asarray(x), key)
    if record is not None:
      record.append((x, np.asarray(out["logp"], np.float64)))
    return np.asarray(out["logp"]), float(out["nfe"])

  return loglik


def test_pf_ode_bpd_with_the_exact_divergence_equals_the_closed_form():
  gm, sched, levels, cov, dim = _gaussian_setup()
  key = jax.random.PRNGKey(3)
  out = bits_per_dim.bpd_pf_ode(_loglik(gm, sched, divergence="exact"), levels, L_LEVELS, key, 2)
  k_deq, _ = jax.random.split(key)
  exact = np.mean([_closed_form_bpd(bits_per_dim.dequantize(levels, L_LEVELS, k_deq, d), sched, cov,
                                    dim) for d in range(2)], axis=0)
  assert out["bpd_pf_ode"] == pytest.approx(float(np.mean(exact)), abs=2e-3)
  assert out["bpd_pf_ode_stderr"] == pytest.approx(np.std(exact, ddof=1) / math.sqrt(N), rel=0.05)
  assert out["bpd_pf_ode_draws"] == 2 and out["bpd_points"] == N and out["bpd_pf_ode_nfe"] > 10


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_pf_ode_bpd_hutchinson_is_unbiased(probe):
  """Each probe gives a noisy estimate per image; their mean over images and draws is the
  closed form within its standard error (the estimator is unbiased)."""
  gm, sched, levels, cov, dim = _gaussian_setup()
  key = jax.random.PRNGKey(4)
  draws, record = 4, []
  out = bits_per_dim.bpd_pf_ode(_loglik(gm, sched, record, divergence="hutchinson", probe=probe),
                            levels, L_LEVELS, key, draws)
  assert len(record) == draws
  est = np.stack([likelihood.bits_per_dim(lp, dim, L_LEVELS) for _, lp in record])
  exact = np.stack([_closed_form_bpd(x, sched, cov, dim) for x, _ in record])
  err = est - exact  # per image and draw: the probe's error only (same dequantized x)
  assert out["bpd_pf_ode"] == pytest.approx(float(np.mean(est)), abs=1e-9)
  assert abs(err.mean()) < 4 * err.std() / math.sqrt(err.size) + 2e-3
  assert err.std() > 1e-2  # it really is a stochastic estimate, per image


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_bits_per_dim_constant_gives_log2_levels_for_the_uniform_density(levels):
  """The uniform density on [-1, 1]^D (log p = -D log 2) is the uniform distribution over the
  L levels after dequantization: exactly log2(L) bits/dim."""
  d = 12
  bpd = likelihood.bits_per_dim(np.asarray(-d * math.log(2.0)), d, num_levels=levels)
  assert float(bpd) == pytest.approx(math.log2(levels), rel=1e-9)


# -- dequantization, levels, standard error ---------------------------------------------------------


def test_dequantize_stays_in_its_bin_and_depends_on_seed_draw_and_index_only():
  k = np.random.default_rng(1).integers(0, 256, (10, 3, 3, 3)).astype(np.int32)
  key = jax.random.PRNGKey(0)
  x = bits_per_dim.dequantize(k, 256, key, 0)
  assert x.dtype == np.float32 and x.shape == k.shape
  np.testing.assert_array_equal(np.floor((x.astype(np.float64) + 1) * 128), k)
  np.testing.assert_array_equal(bits_per_dim.dequantize(k[:4], 256, key, 0), x[:4])  # not on n
  assert not np.allclose(bits_per_dim.dequantize(k, 256, key, 1), x)  # another draw
  assert not np.allclose(bits_per_dim.dequantize(k, 256, jax.random.PRNGKey(1), 0), x)


def test_to_levels_inverts_the_exact_grid_and_refuses_dequantized_data():
  k = np.arange(17).reshape(17, 1, 1, 1)
  np.testing.assert_array_equal(images.to_levels(images.to_float(k, 17), 17), k)
  with pytest.raises(ValueError, match="17-level grid"):
    images.to_levels(images.to_float(k, 17, np.full(k.shape, 0.5)), 17)


def test_mean_and_stderr_average_the_draws_of_each_item_first():
  per_draw = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 4.0]])  # items: 2, 2, 2, 4
  mean, se = bits_per_dim.mean_and_stderr(per_draw)
  assert mean == pytest.approx(2.5)
  assert se == pytest.approx(np.std([2, 2, 2, 4], ddof=1) / 2)
  assert bits_per_dim.mean_and_stderr(np.array([[5.0]])) == (5.0, 0.0)


# -- ELBO bits/dim against the entropy -------------------------------------------------------------


def test_elbo_bpd_of_the_exact_denoiser_equals_the_entropy_in_bits():
  """Integer data from a known distribution P on an 8-level grid; with the exact denoiser of
  P (a mixture of point masses at the bin centres) the ELBO is tight: bpd_elbo equals
  -mean log2 P(x) / D within its standard error, and the terms add up."""
  from tests.test_elbo import L, D, _draw, _exact_setup
  grid, w, mixture, _ = _exact_setup()
  x, nll = _draw(grid, w, 2048)
  sched = schedules.VP(t_min=1e-5)
  from diffusion import elbo
  fn = jax.jit(lambda xi, k: elbo.elbo(mixture.denoiser(sched), sched, xi, k, num_levels=L,
                                       num_time_samples=8))
  out = bits_per_dim.bpd_elbo(lambda xi, k: jax.device_get(fn(jnp.asarray(xi), k)), np.asarray(x),
                          jax.random.PRNGKey(0))
  exact = float(np.mean(nll)) / (D * math.log(2.0))
  assert abs(out["bpd_elbo"] - exact) < 4 * out["bpd_elbo_stderr"] + 0.01
  assert out["bpd_elbo"] == pytest.approx(
      out["bpd_elbo_prior"] + out["bpd_elbo_diffusion"] + out["bpd_elbo_recon"], rel=1e-6)
  assert 0 < out["bpd_elbo_stderr"] < 0.1 and out["bpd_elbo_diffusion"] > 1.0
