"""The exact two-time flow map of the PF-ODE (diffusion.flow_map) against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, flow_map, schedules


def _gaussian(lam, mu):
  return analytic.GaussianMixture.create([1.0], [mu], [lam])


@pytest.mark.parametrize("sched_name", ["vp", "rectified_flow", "edm"])
def test_flow_map_of_a_gaussian_is_the_closed_form(sched_name):
  # Data N(mu, diag(lam)): in u = x / alpha, u(tau) - mu = (u(tau0) - mu) sqrt((lam + tau^2) /
  # (lam + tau0^2)) per coordinate.
  sched = schedules.get_schedule(sched_name)
  lam, mu = np.array([0.3, 2.0]), np.array([0.5, -1.0])
  gm = _gaussian(lam, mu)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2), jnp.float64) * 2
    t = jnp.array([0.9, 0.5, 0.3, 0.7, 0.2], jnp.float64) * sched.t_max
    s = jnp.array([0.1, 0.0, 0.3, 0.35, 0.01], jnp.float64) * sched.t_max
    out = np.asarray(flow_map.exact_flow_map(gm.denoiser(sched), sched, x, t, s))
    tau = lambda v: np.maximum(np.asarray(sched.edm_sigma(v)), flow_map.TAU_FLOOR)
    a = lambda v: np.asarray(sched.alpha(v))
    t_, s_ = np.asarray(t), np.asarray(s)
    u0 = np.asarray(x) / a(t_)[:, None]
    ratio = np.sqrt((lam + tau(s_)[:, None] ** 2) / (lam + tau(t_)[:, None] ** 2))
    want = (mu + (u0 - mu) * ratio) * a(s_)[:, None]
  np.testing.assert_allclose(out, want, rtol=1e-8, atol=1e-9)


def test_flow_map_composes_on_a_mixture():
  # Phi(t -> s) = Phi(r -> s) o Phi(t -> r), and s = t is the identity.
  sched = schedules.get_schedule("rectified_flow")
  gm = analytic.random_mixture(0, 3)
  with jax.enable_x64(True):
    den = gm.denoiser(sched)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3), jnp.float64)
    t, r, s = 0.95, 0.4, 0.0
    direct = flow_map.exact_flow_map(den, sched, x, t, s)
    mid = flow_map.exact_flow_map(den, sched, x, t, r)
    two = flow_map.exact_flow_map(den, sched, mid, r, s)
    same = flow_map.exact_flow_map(den, sched, x, 0.5, 0.5)
  np.testing.assert_allclose(np.asarray(two), np.asarray(direct), rtol=1e-8, atol=1e-8)
  np.testing.assert_allclose(np.asarray(same), np.asarray(x), rtol=0, atol=1e-12)


def test_average_velocity_tends_to_the_velocity():
  sched = schedules.get_schedule("rectified_flow")
  gm = analytic.random_mixture(2, 2)
  with jax.enable_x64(True):
    den = gm.denoiser(sched)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 2), jnp.float64)
    v = flow_map.velocity(den, sched, x, 0.6)
    at_t = flow_map.exact_average_velocity(den, sched, x, 0.6, 0.6)
    near = flow_map.exact_average_velocity(den, sched, x, 0.6 - 1e-4, 0.6)
  np.testing.assert_array_equal(np.asarray(at_t), np.asarray(v))
  np.testing.assert_allclose(np.asarray(near), np.asarray(v), atol=1e-3)


def test_flow_map_refuses_negative_times_and_inverts_toward_the_noise():
  sched = schedules.get_schedule("vp")
  gm = _gaussian(np.ones(2), np.zeros(2))
  with pytest.raises(ValueError, match="t, s >= 0"):
    flow_map.exact_flow_map(gm.denoiser(sched), sched, jnp.zeros((2, 2)), 0.3, -0.5)
  gm = _gaussian(np.asarray([0.05, 0.3]), np.asarray([1.0, -0.5]))
  with jax.enable_x64(True):  # s > t: the map toward the noise inverts the map toward the data
    x = jnp.asarray([[0.3, -1.2], [2.0, 0.5]], jnp.float64)
    up = flow_map.exact_flow_map(gm.denoiser(sched), sched, x, 0.2, 0.9)
    back = flow_map.exact_flow_map(gm.denoiser(sched), sched, up, 0.9, 0.2)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), rtol=1e-8, atol=1e-8)
    assert float(jnp.max(jnp.abs(up - x))) > 0.1
  with pytest.raises(ValueError, match="shape"):
    flow_map.exact_flow_map(gm.denoiser(sched), sched, jnp.zeros((2, 2)), jnp.ones(3), 0.0)
