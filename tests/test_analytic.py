"""The analytic Gaussian mixture: the ground truth everything else is checked against."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic as A
from diffusion import parameterization as P
from diffusion import schedules as S


@pytest.fixture(scope="module")
def x64():
  with jax.enable_x64(True):
    yield


SCHEDS = [S.VP(), S.VE(), S.EDM(), S.SubVP()]


@pytest.mark.parametrize("dim,full", [(2, True), (5, False), (64, True)])
@pytest.mark.parametrize("sched", SCHEDS, ids=lambda s: s.name)
def test_score_is_gradient_of_log_density(sched, dim, full, x64):
  gm = A.random_mixture(1, dim, 3, full_cov=full)
  t = 0.05 * sched.t_max
  x = gm.sample(jax.random.PRNGKey(0), 6, t, sched, jnp.float64)
  auto = jax.vmap(jax.grad(lambda y: gm.log_prob(y[None], t, sched)[0]))(x)
  np.testing.assert_allclose(gm.score(x, t, sched), auto, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDS, ids=lambda s: s.name)
def test_denoiser_satisfies_tweedie(sched, x64):
  gm = A.random_mixture(2, 4, 3)
  t = jnp.linspace(sched.t_min * 2, sched.t_max * 0.5, 8)
  x = gm.sample(jax.random.PRNGKey(1), 8, t, sched, jnp.float64)
  via_score = P.x0_from_score(gm.score(x, t, sched), x, t, sched)
  np.testing.assert_allclose(gm.denoise(x, t, schedule=sched), via_score, rtol=1e-7, atol=1e-7)


def test_denoiser_is_the_posterior_mean_by_monte_carlo():
  # E[x0 | x_t] estimated by self-normalised importance sampling of x0 ~ p_0, weights N(x_t; a x0, s^2).
  gm, sched = A.random_mixture(3, 2, 3), S.VP()
  t = 0.4
  x = gm.sample(jax.random.PRNGKey(2), 4, t, sched)
  x0s = gm.sample0(jax.random.PRNGKey(3), 400_000)
  a, s = float(sched.alpha(t)), float(sched.sigma(t))
  logw = -0.5 * jnp.sum((x[:, None] - a * x0s[None])**2, -1) / s**2
  w = jax.nn.softmax(logw, axis=1)
  mc = w @ x0s
  np.testing.assert_allclose(gm.denoise(x, t, schedule=sched), mc, atol=0.02)


def test_log_prob_normalised_and_samples_match_moments():
  gm, sched = A.random_mixture(4, 2, 3), S.VP()
  t = 0.3
  g = np.linspace(-6, 6, 401)
  xx = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
  mass = float(jnp.sum(jnp.exp(gm.log_prob(xx, t, sched)))) * (g[1] - g[0])**2
  assert abs(mass - 1) < 1e-3
  x = gm.sample(jax.random.PRNGKey(5), 200_000, t, sched)
  a, s = float(sched.alpha(t)), float(sched.sigma(t))
  np.testing.assert_allclose(x.mean(0), a * gm.mean(), atol=0.01)
  np.testing.assert_allclose(np.cov(np.asarray(x).T), a * a * gm.covariance() + s * s * np.eye(2),
                             atol=0.02)


def test_create_validates_shapes():
  with pytest.raises(ValueError, match="weights"):
    A.GaussianMixture.create([0.5, 0.6], np.zeros((2, 2)), np.ones(2))
  with pytest.raises(ValueError, match="covs must be"):
    A.GaussianMixture.create([0.5, 0.5], np.zeros((2, 2)), np.ones((3, 3)))
