"""PF-ODE likelihood with the exact denoiser against the mixture's exact log-density."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic as A
from diffusion import likelihood as L
from diffusion import schedules as S


@pytest.mark.parametrize("sched", [S.VP(), S.VE(), S.SubVP()], ids=lambda s: s.name)
def test_exact_divergence_matches_exact_log_density(sched):
  gm = A.random_mixture(0, 2, 3)
  x = gm.sample0(jax.random.PRNGKey(0), 256)
  out = jax.jit(lambda x: L.log_likelihood(gm.denoiser(sched), sched, x))(x)
  exact = gm.log_prob(x, sched.t_min, sched)
  err = float(jnp.mean(jnp.abs(out["logp"] - exact)))
  assert err < 0.01, err  # the target: within 0.01 nats per point on average
  assert int(out["nfe"]) > 10


def test_hutchinson_is_unbiased():
  sched, gm = S.VP(), A.random_mixture(1, 3, 2)
  x = gm.sample0(jax.random.PRNGKey(0), 128)
  exact = gm.log_prob(x, sched.t_min, sched)
  f = jax.jit(lambda k: L.log_likelihood(gm.denoiser(sched), sched, x, k, divergence="hutchinson",
                                         probe="gaussian")["logp"])
  ests = jnp.stack([f(jax.random.PRNGKey(i)) for i in range(4)])
  # per-point estimates are noisy, their average over points and probes is not biased
  assert abs(float(jnp.mean(ests - exact))) < 0.1
  assert float(jnp.std(ests[0] - exact)) > 1e-3  # it really is a stochastic estimate


def test_bits_per_dim_of_uniform_is_8_bits():
  # the uniform density on [-1, 1]^D has log p = -D log 2: exactly 8 bits/dim for 256 levels
  d = 12
  np.testing.assert_allclose(L.bits_per_dim(jnp.asarray(-d * np.log(2.0)), d), 8.0, rtol=1e-6)


def test_bad_options():
  with pytest.raises(ValueError, match="divergence"):
    L.log_likelihood(lambda x, t, c=None: x, S.VP(), jnp.zeros((2, 2)), divergence="trace")


def counting_denoiser(den):
  """(den with a call counter, counter): an io_callback counts each evaluation, also under
  jax.jvp (one count per primal-and-tangent call, through a custom_jvp)."""
  count = [0]

  def bump():
    count[0] += 1

  @jax.custom_jvp
  def counted(x, t):
    jax.experimental.io_callback(bump, None, ordered=True)
    return den(x, t)

  @counted.defjvp
  def counted_jvp(primals, tangents):
    jax.experimental.io_callback(bump, None, ordered=True)
    return jax.jvp(den, primals, tangents)

  return lambda x, t, cond=None: counted(x, t), count


def test_nfe_is_exact_when_the_first_step_is_rejected():
  """On EDM's t in [0.002, 80] the first step (t_max - t_min) / 64 is rejected; the reported NFE
  is the number of right-hand-side evaluations actually executed."""
  sched, gm = S.EDM(), A.random_mixture(0, 2, 3)
  x = gm.sample0(jax.random.PRNGKey(0), 8)
  den, count = counting_denoiser(lambda x, t: gm.denoiser(sched)(x, t))
  out = jax.jit(lambda x: L.log_likelihood(den, sched, x, jax.random.PRNGKey(1),
                                           divergence="hutchinson", rtol=1e-4, atol=1e-4))(x)
  jax.block_until_ready(out["logp"])
  assert int(out["num_rejected_steps"]) > 0
  assert int(out["nfe"]) == count[0], (int(out["nfe"]), count[0])


@pytest.mark.parametrize("kwargs,err,msg", [
    (dict(t_min=0.5, t_max=0.1), ValueError, "t_min < t_max"),
    (dict(t_max=1.5), ValueError, "t_max must be a finite time"),
    (dict(t_min=-1e-3), ValueError, "t_min must be a finite time"),
    (dict(t_min=float("nan")), ValueError, "t_min must be a finite time"),
    (dict(max_steps=0), ValueError, "max_steps"),
    (dict(max_steps=True), TypeError, "max_steps"),
    (dict(rtol=0.0), ValueError, "rtol"),
    (dict(solver="euler"), ValueError, "solver"),
])
def test_bad_likelihood_arguments(kwargs, err, msg):
  with pytest.raises(err, match=msg):
    L.log_likelihood(lambda x, t, c=None: x, S.VP(), jnp.zeros((2, 2)), **kwargs)


def test_bits_per_dim_arguments():
  for kwargs, err in ((dict(num_levels=0), ValueError), (dict(num_levels=1), ValueError),
                      (dict(num_levels=True), TypeError), (dict(num_levels=255.5), TypeError),
                      (dict(dim=0), ValueError)):
    args = dict(dim=4, **kwargs) if "dim" not in kwargs else kwargs
    with pytest.raises(err, match="num_levels" if "num_levels" in kwargs else "dim"):
      L.bits_per_dim(jnp.zeros(()), **args)
