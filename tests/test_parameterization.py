"""Parameterizations: exact round trips through the denoiser interface."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import parameterization as P
from diffusion import schedules as S

SCHEDS = [S.VP(), S.VE(), S.EDM(), S.SubVP(), S.RectifiedFlow(), S.TrigFlow()]


def _batch(sched, key=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(key), 3)
  x0 = jax.random.normal(k1, (16, 3))
  eps = jax.random.normal(k2, (16, 3))
  t = jax.random.uniform(k3, (16,), minval=sched.t_min * 10, maxval=sched.t_max * 0.9)
  return x0, eps, t, sched.marginal(x0, eps, t)


@pytest.mark.parametrize("sched", SCHEDS, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", P.PARAMETERIZATIONS)
def test_to_x0_inverts_from_x0(kind, sched):
  x0, eps, t, xt = _batch(sched)
  par = P.Parameterization(kind)
  if P.ONLY_ON.get(kind, sched.name) != sched.name:  # trigflow, mean_flow: one schedule only
    with pytest.raises(ValueError, match=f"needs the {P.ONLY_ON[kind]!r} schedule"):
      par.from_x0(x0, xt, t, sched)
    return
  out = par.from_x0(x0, xt, t, sched)
  np.testing.assert_allclose(par.to_x0(out, xt, t, sched), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sched", SCHEDS, ids=lambda s: s.name)
def test_targets_are_the_textbook_quantities(sched):
  x0, eps, t, xt = _batch(sched)
  tb = t[:, None]
  a, s = sched.alpha(tb), sched.sigma(tb)
  close = lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-4)
  close(P.Parameterization("eps").from_x0(x0, xt, t, sched), eps)
  close(P.Parameterization("v").from_x0(x0, xt, t, sched), a * eps - s * x0)
  close(P.Parameterization("score").from_x0(x0, xt, t, sched), -eps / s)
  # velocity of the interpolant x_t = alpha x0 + sigma eps is alpha' x0 + sigma' eps
  close(P.velocity_from_x0(x0, xt, t, sched),
        sched.dalpha_dt(tb) * x0 + sched.dsigma_dt(tb) * eps)


def test_edm_preconditioning_matches_karras_table1():
  sched, sd = S.EDM(), 0.5
  par = P.Parameterization("edm", sigma_data=sd)
  x = jnp.ones((2, 4)) * 3.0
  t = jnp.array([0.3, 7.0])
  x_in, c = par.net_inputs(x, t, sched)
  np.testing.assert_allclose(x_in[:, 0], 3.0 / np.sqrt(np.array([0.3, 7.0])**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c, np.log([0.3, 7.0]) / 4, rtol=1e-6)
  f = jnp.full_like(x, 2.0)
  s = np.array([0.3, 7.0])[:, None]
  expect = sd**2 / (s**2 + sd**2) * 3.0 + s * sd / np.sqrt(s**2 + sd**2) * 2.0
  np.testing.assert_allclose(par.to_x0(f, x, t, sched), np.broadcast_to(expect, (2, 4)), rtol=1e-6)


def test_make_denoiser_with_exact_eps_network_recovers_x0():
  sched = S.VP()
  x0, eps, t, xt = _batch(sched)
  par = P.Parameterization("eps")

  def fake_net(x_in, c, cond):  # returns the true noise: the denoiser must return x0
    return eps

  den = P.make_denoiser(fake_net, sched, par)
  np.testing.assert_allclose(den(xt, t), x0, rtol=1e-4, atol=1e-4)


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match="unknown parameterization 'noise'"):
    P.Parameterization("noise")
  with pytest.raises(ValueError, match="unknown time_input 'sigma'"):
    P.Parameterization("eps", time_input="sigma")
