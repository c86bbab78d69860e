"""VDM's learned noise schedule (diffusion.schedules.LearnedVP, diffusion.vdm) against exact
answers: the VP identity, monotonicity for any parameters, the exact logSNR inverse, closed-form
derivatives, the ELBO of the exact mixture denoiser (>= the exact NLL, equal within Monte Carlo
noise), and the gradients of VDM's objective (mean loss for the network, E[L^2] for gamma's
shape)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import elbo, schedules
from diffusion.parameterization import Parameterization
from diffusion import vdm
from diffusion.vdm import vdm_loss

import tests.test_elbo as te


def _random_params(seed, learn_endpoints=False, hidden=16, scale=3.0):
  """Far-from-init parameters: any values, signs and magnitudes."""
  rng = np.random.default_rng(seed)
  s = schedules.LearnedVP(hidden=hidden, learn_endpoints=learn_endpoints)
  p = {k: scale * rng.normal(size=np.shape(v)) for k, v in
       s.init_params(jax.random.PRNGKey(0)).items()}
  if learn_endpoints:
    p["gamma_min"], p["gamma_max"] = np.float64(-9.0), np.float64(4.0)
  return s.bind(p)


@pytest.mark.parametrize("seed", range(5))
def test_vp_identity_monotone_gamma_and_endpoints(seed):
  s = _random_params(seed, learn_endpoints=seed % 2 == 1)
  t = np.linspace(0, 1, 2001)
  np.testing.assert_allclose(s.alpha(t)**2 + s.sigma(t)**2, 1.0, rtol=1e-14)
  g, dg = s.gamma_and_derivative(t)
  assert np.all(np.diff(g) > 0) and np.all(dg > 0)
  lo, hi = (-9.0, 4.0) if seed % 2 else (-13.3, 5.0)
  np.testing.assert_allclose([g[0], g[-1]], [lo, hi], atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_logsnr_inverse_is_exact(seed):
  s = _random_params(seed)
  t = np.linspace(0, 1, 501)
  np.testing.assert_allclose(s.t_from_logsnr(s.logsnr(t)), t, atol=1e-12)
  traced = s.bind({k: jnp.asarray(v, jnp.float32) for k, v in s.params.items()})
  back = jax.jit(traced.t_from_logsnr)(jnp.asarray(s.logsnr(t), jnp.float32))
  np.testing.assert_allclose(back, t, atol=2e-5)


def test_closed_form_derivatives_match_autodiff():
  s = _random_params(7)
  traced = s.bind({k: jnp.asarray(v, jnp.float32) for k, v in s.params.items()})
  t = jnp.linspace(0.05, 0.95, 7)
  for f, df in [(traced.alpha, traced.dalpha_dt), (traced.sigma, traced.dsigma_dt),
                (traced.logsnr, traced.dlogsnr_dt)]:
    np.testing.assert_allclose(df(t), jax.vmap(jax.grad(f))(t), rtol=2e-4, atol=1e-5)
  # and the SDE's f, g^2 follow from (alpha, sigma) as for every schedule
  h, tt = 1e-6, np.array([0.2, 0.5, 0.8])
  dlog_a = (np.log(s.alpha(tt + h)) - np.log(s.alpha(tt - h))) / (2 * h)
  np.testing.assert_allclose(s.drift(tt), dlog_a, rtol=1e-6)
  dsig2 = (s.sigma(tt + h)**2 - s.sigma(tt - h)**2) / (2 * h)
  np.testing.assert_allclose(s.diffusion_sq(tt), dsig2 - 2 * dlog_a * s.sigma(tt)**2, rtol=1e-6)


def test_unbound_and_bad_parameters_are_refused():
  s = schedules.LearnedVP()
  with pytest.raises(ValueError, match="not bound"):
    s.alpha(np.float64(0.5))
  with pytest.raises(ValueError, match="must have the keys"):
    s.bind({"v1": np.zeros(1)})
  with pytest.raises(ValueError, match="gamma_min < gamma_max"):
    schedules.LearnedVP(gamma_min=5.0, gamma_max=-13.3)


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_elbo_of_the_exact_denoiser_is_the_exact_nll_for_any_learned_schedule(seed):
  # A discrete distribution on a grid is a mixture with zero covariances (tests/test_elbo.py):
  # with its exact denoiser, the ELBO under any learned gamma equals -log P(x) on average and is
  # never below it beyond Monte Carlo noise.
  sched = _random_params(seed, learn_endpoints=True, scale=1.5)
  sched = sched.bind(dict(sched.params, gamma_min=np.float64(-13.3), gamma_max=np.float64(6.0)))
  grid, w, mixture, entropy = te._exact_setup()
  x, nll = te._draw(grid, w, 4096)
  out = jax.jit(lambda k: elbo.elbo(mixture.denoiser(sched), sched, x, k, num_levels=te.L,
                                    num_time_samples=32))(jax.random.PRNGKey(0))
  gap = np.asarray(out["total"], np.float64) - nll
  mean, se = gap.mean(), gap.std() / math.sqrt(len(gap))
  assert mean > -4 * se and abs(mean) < 4 * se + 0.01, (mean, se, entropy)


def _linear_net(net_params, x_in, c, cond):
  return net_params["w"] * x_in + net_params["b"] * c[:, None]


@pytest.mark.slow  # ~18 s: two gradient compiles (closed-form derivatives: the tests above)
def test_vdm_objective_gradients_are_mean_loss_for_the_net_and_variance_for_the_shape():
  sched = schedules.LearnedVP(hidden=8)
  sp = {k: jnp.asarray(v) for k, v in sched.init_params(jax.random.PRNGKey(3)).items()}
  params = {"net": {"w": jnp.asarray(0.3), "b": jnp.asarray(0.01)}, "schedule": sp}
  param = Parameterization("eps", time_input="logsnr")
  x0 = jax.random.uniform(jax.random.PRNGKey(1), (16, 3), minval=-1, maxval=1)
  key = jax.random.PRNGKey(2)

  def objective(p):
    return vdm_loss(_linear_net, p, sched, param, x0, key)[0]

  t, eps, _ = vdm.draws(key, x0, 0.0, 1.0, "stratified")

  def per_example(p):  # the same draws, no stop-gradients
    return vdm.diffusion_loss(_linear_net, p["net"], sched.bind(p["schedule"]), param, x0, t,
                              eps)

  g = jax.grad(objective)(params)
  value, aux = vdm_loss(_linear_net, params, sched, param, x0, key)
  np.testing.assert_allclose(value, jnp.mean(aux["per_example"]), rtol=1e-6)
  g_mean = jax.grad(lambda p: jnp.mean(per_example(p)))(params)
  g_sq = jax.grad(lambda p: jnp.mean(per_example(p)**2))(params)
  for k in ("w", "b"):
    np.testing.assert_allclose(g["net"][k], g_mean["net"][k], rtol=1e-5)
  scale = max(float(jnp.abs(v).max()) for v in g_sq["schedule"].values())
  for k in sp:  # (b1, b3 cancel in the normalisation: their exact gradient is 0)
    np.testing.assert_allclose(g["schedule"][k], g_sq["schedule"][k], rtol=1e-4,
                               atol=1e-4 * scale)
  assert float(jnp.abs(g_sq["schedule"]["v2"]).max()) > 0  # the shape does get a gradient


def test_diffusion_loss_expectation_does_not_depend_on_the_shape():
  # VDM Sec. 5.1: with fixed endpoints and a network of the logSNR, E[L] is the same for every
  # gamma shape (here the exact mixture denoiser, stratified times); other endpoints change it.
  grid, w, mixture, _ = te._exact_setup()
  x, _ = te._draw(grid, w, 2048)
  xc = elbo.bin_centers(x, te.L)
  t = (np.arange(64) + 0.5) / 64
  tt = np.repeat(t, xc.shape[0])
  xs = jnp.tile(xc, (64, 1))
  eps = jnp.asarray(np.random.default_rng(0).normal(size=xs.shape))

  def mean_loss(sched):
    z = sched.marginal(xs, eps, jnp.asarray(tt))
    err = np.sum((np.asarray(mixture.denoiser(sched)(z, jnp.asarray(tt))) - np.asarray(xs))**2,
                 -1)
    g, dg = sched.gamma_and_derivative(tt)
    return float(np.mean(0.5 * dg * np.exp(-g) * err))

  shapes = [mean_loss(_random_params(seed, scale=1.5)) for seed in (0, 4)]
  assert abs(shapes[0] - shapes[1]) < 0.03 * shapes[0], shapes
  s = _random_params(0, learn_endpoints=True, scale=1.5)
  other_ends = mean_loss(s.bind(dict(s.params, gamma_min=np.float64(-13.3),
                                     gamma_max=np.float64(-2.0))))
  assert abs(other_ends - shapes[0]) > 0.1 * shapes[0], (shapes, other_ends)


def _toy_vdm(**overrides):
  """checkerboard with the learned schedule (fixed endpoints), the tiny MLP of conftest."""
  from tests.conftest import tiny_config
  return tiny_config(**{"sde.name": "vdm_learned",
                        "sde.fields": {"gamma_min": -10.0, "gamma_max": 6.0, "hidden": 16,
                                       "learn_endpoints": False, "t_min": 0.0, "t_max": 1.0},
                        "model.time_input": "logsnr", "training.weighting": "likelihood",
                        "training.time_sampling": "stratified", **overrides})


@pytest.mark.slow  # driver-level, 30 s cold
def test_driver_trains_resumes_exactly_and_samples_with_the_learned_schedule(tmp_path):
  """The schedule's parameters are in the checkpoint (params['schedule']) and trained (they
  move); a run resumed at step 10 equals the straight one bit for bit; sample / eval bind the
  restored (EMA) schedule, and the sampler runs on it."""
  import jax.tree_util as jtu
  from diffusion import checkpoint
  from experiments import generate, setup, train
  from diffusion.config_checks import ConfigError
  from experiments.validate import validate_config
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  n = {"training.num_steps": 20, "training.ckpt_every": 10}
  assert train.train(_toy_vdm(**n), straight)["step"] == 20
  assert train.train(_toy_vdm(**{**n, "training.num_steps": 10}), resumed)["step"] == 10
  assert train.train(_toy_vdm(**n), resumed)["step"] == 20

  def final(wd):
    s = setup.setup(_toy_vdm(**n))
    ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False)
    state, _, step = ck.restore(s.abstract_state)
    ck.close()
    return s, jax.device_get(state)

  s, a = final(straight)
  _, b = final(resumed)
  assert all(jtu.tree_leaves(jtu.tree_map(lambda u, v: bool(np.array_equal(u, v)), a, b)))
  init = s.schedule.init_params(jax.random.PRNGKey(0))
  assert set(a.params) == {"net", "schedule"}
  assert not np.allclose(a.params["schedule"]["v2"], init["v2"])  # the shape was trained
  st, ema, _ = setup.restore_params(_toy_vdm(**n), straight)
  np.testing.assert_array_equal(st.schedule.params["v2"], np.asarray(ema["schedule"]["v2"],
                                                                     np.float64))
  x, info = generate.generate(st, ema, 8, jax.random.PRNGKey(0))
  assert x.shape == (8, 2) and np.all(np.isfinite(x)) and int(info["nfe"]) > 0
  with pytest.raises(ConfigError, match="time_input='logsnr'"):
    validate_config(_toy_vdm(**{"model.time_input": "t"}), "train")
  with pytest.raises(ConfigError, match="weighting='likelihood'"):
    validate_config(_toy_vdm(**{"training.weighting": "eps"}), "train")
  with pytest.raises(ConfigError, match="learn_endpoints=True trains the bound's discrete"):
    validate_config(_toy_vdm(**{"sde.fields.learn_endpoints": True}), "train")
