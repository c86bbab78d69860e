"""Losses: the exact denoiser minimises every weighting; weights equal the papers' losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic as A
from diffusion import losses as L
from diffusion import parameterization as P
from diffusion import schedules as S


@pytest.mark.parametrize("weighting", L.WEIGHTINGS)
@pytest.mark.parametrize("sched", [S.VP(), S.VE(), S.EDM()], ids=lambda s: s.name)
def test_exact_denoiser_minimises_the_loss(weighting, sched):
  gm = A.random_mixture(0, 3, 3)
  exact = gm.denoiser(sched)
  x0 = gm.sample0(jax.random.PRNGKey(0), 4096)
  ts = "lognormal" if sched.name == "edm" else "stratified"

  @jax.jit
  def loss_at(delta):  # perturbed denoisers: shrink / shift the exact posterior mean
    den = lambda x, t, c=None: (1 + delta) * exact(x, t) + 0.3 * delta
    if weighting in L.UNCERTAINTY_WEIGHTINGS:  # (x0_hat, u) with a fixed u = 0.5
      plain = den
      den = lambda x, t, c=None: (plain(x, t), jnp.full((x.shape[0],), 0.5, x.dtype))
    return L.dsm_loss(den, x0, jax.random.PRNGKey(1), sched, weighting=weighting,
                      time_sampling=L.TimeSampling(ts, t_min=sched.t_min * 5))[0]

  l0 = loss_at(0.0)
  assert loss_at(0.05) > l0 and loss_at(-0.05) > l0
  # stationarity: d loss / d delta at 0 is ~0 relative to the curvature
  grad = jax.grad(loss_at)(0.0)
  curv = (loss_at(0.05) + loss_at(-0.05) - 2 * l0) / 0.05**2
  assert abs(grad) < 0.1 * curv


def test_weightings_reproduce_paper_losses():
  sched = S.VP()
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  x0 = jax.random.normal(k[0], (32, 4))
  eps = jax.random.normal(k[1], (32, 4))
  t = jax.random.uniform(k[2], (32,), minval=0.01, maxval=0.99)
  xt = sched.marginal(x0, eps, t)
  x0_hat = x0 + 0.1 * jax.random.normal(k[3], x0.shape)
  err_x0 = jnp.mean((x0_hat - x0)**2, -1)
  eps_hat = P.eps_from_x0(x0_hat, xt, t, sched)
  v_hat, v = P.v_from_x0(x0_hat, xt, t, sched), sched.alpha(t)[:, None] * eps - sched.sigma(t)[:, None] * x0
  s_hat = P.score_from_x0(x0_hat, xt, t, sched)
  s_true = -eps / sched.sigma(t)[:, None]
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3)
  close(L.loss_weight(t, sched, "eps") * err_x0, jnp.mean((eps_hat - eps)**2, -1))
  close(L.loss_weight(t, sched, "v") * err_x0, jnp.mean((v_hat - v)**2, -1))
  close(L.loss_weight(t, sched, "likelihood") * err_x0,
        sched.diffusion_sq(t) * jnp.mean((s_hat - s_true)**2, -1))


def test_time_sampling_ranges_and_strata():
  sched = S.VP()
  for m in ["uniform", "stratified", "antithetic"]:
    t = L.sample_times(jax.random.PRNGKey(0), 64, sched, m)
    assert float(t.min()) >= sched.t_min and float(t.max()) <= sched.t_max
  t = np.sort(np.asarray(L.sample_times(jax.random.PRNGKey(1), 10, sched, "stratified", t_min=0, t_max=1)))
  assert np.all(np.floor(t * 10) == np.arange(10))  # one time in each stratum
  t = L.sample_times(jax.random.PRNGKey(2), 8, sched, "antithetic", t_min=0.0, t_max=1.0)
  np.testing.assert_allclose(t[:4] + t[4:], 1.0, rtol=1e-6)
  lam = np.sort(np.asarray(sched.logsnr(L.sample_times(jax.random.PRNGKey(4), 10, sched, "logsnr"))))
  lo, hi = sched.logsnr(sched.t_max), sched.logsnr(sched.t_min)
  assert np.all(np.floor((lam - lo) / (hi - lo) * 10 + 1e-4) == np.arange(10))  # stratified in logSNR
  edm = S.EDM()
  t = L.sample_times(jax.random.PRNGKey(3), 100_000, edm, "lognormal", t_min=1e-9, t_max=1e9)
  np.testing.assert_allclose([np.log(t).mean(), np.log(t).std()], [-1.2, 1.2], atol=0.02)


def test_bad_names():
  with pytest.raises(ValueError, match="unknown weighting 'snr'"):
    L.loss_weight(jnp.ones(2), S.VP(), "snr")
  with pytest.raises(ValueError, match="unknown time sampling 'beta'"):
    L.sample_times(jax.random.PRNGKey(0), 2, S.VP(), "beta")
