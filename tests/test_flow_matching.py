"""Flow matching / rectified flow: the 'flow' parameterization and weighting, logit-normal times,
the exact velocity as the loss's minimiser, a trained MLP's velocity, straightness (diffusion.flow)
and one-step Euler sampling. Ground truth: the analytic Gaussian mixture (diffusion.analytic)."""
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, flow, losses, objectives, training
from diffusion.data import toy2d
from diffusion.models import get_model
from diffusion.parameterization import Parameterization, TIME_INPUTS, make_denoiser, \
    velocity_from_x0, x0_from_velocity
from diffusion.samplers.registry import build_sampler
from diffusion.schedules import SCHEDULES, RectifiedFlow, get_schedule

RF = RectifiedFlow()
FLOW = Parameterization(kind="flow")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _eight_gaussians() -> analytic.GaussianMixture:
  return analytic.GaussianMixture.create(*toy2d.gaussian_mixture_params("8gaussians"))


def _times(schedule, n, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(schedule.t_min, schedule.t_max, n))


# -- 1. the 'flow' parameterization ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_flow_parameterization_is_exact_for_every_schedule(name, x64):
  """to_x0 inverts velocity_from_x0 (and from_x0 is it) to 1e-10 on every schedule, and the
  velocity of the true (x0, eps) is alpha' x0 + sigma' eps."""
  sched = get_schedule(name)
  if sched.learned:  # VDM's schedule, bound to its initial parameters
    sched = sched.bind(jax.tree_util.tree_map(np.asarray, sched.init_params(
        jax.random.PRNGKey(1))))
  rng = np.random.default_rng(1)
  x0, eps = jnp.asarray(rng.normal(size=(64, 3))), jnp.asarray(rng.normal(size=(64, 3)))
  t = _times(sched, 64)
  x = sched.marginal(x0, eps, t)
  u = FLOW.from_x0(x0, x, t, sched)
  tb = t[:, None]
  np.testing.assert_allclose(u, sched.dalpha_dt(tb) * x0 + sched.dsigma_dt(tb) * eps,
                             rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(u))))
  np.testing.assert_allclose(u, velocity_from_x0(x0, x, t, sched), rtol=1e-12, atol=0)
  np.testing.assert_allclose(FLOW.to_x0(u, x, t, sched), x0, rtol=0, atol=1e-9)
  np.testing.assert_allclose(x0_from_velocity(u, x, t, sched), x0, rtol=0, atol=1e-9)


def test_rectified_flow_denoiser_is_x_minus_t_u(x64):
  rng = np.random.default_rng(2)
  x, u = jnp.asarray(rng.normal(size=(16, 2))), jnp.asarray(rng.normal(size=(16, 2)))
  t = _times(RF, 16)
  np.testing.assert_allclose(FLOW.to_x0(u, x, t, RF), x - t[:, None] * u, rtol=1e-14)


@pytest.mark.parametrize("time_input", [t for t in TIME_INPUTS if t != "index"])
def test_flow_denoiser_wraps_a_network_with_every_time_input(time_input, x64):
  """make_denoiser with kind='flow': a network that outputs the exact velocity gives the exact
  x0, whatever scalar it is conditioned on."""
  gm = _eight_gaussians()
  param = Parameterization(kind="flow", time_input=time_input)
  x = gm.sample(jax.random.PRNGKey(0), 32, 0.4, RF, jnp.float64)
  t = jnp.full((32,), 0.4)
  exact = gm.denoise(x, t, schedule=RF)
  u_star = velocity_from_x0(exact, x, t, RF)
  x_in, c = param.net_inputs(x, t, RF)
  assert c.shape == (32,) and bool(jnp.all(jnp.isfinite(c)))
  denoise = make_denoiser(lambda x_in, c, cond: u_star, RF, param)
  np.testing.assert_allclose(denoise(x, t), exact, atol=1e-12)


def test_index_time_input_is_refused_on_a_continuous_schedule():
  # 'index' is a discrete schedule's step (vp_discrete); the flow's schedule has none.
  with pytest.raises(ValueError, match="needs a discrete-time schedule"):
    Parameterization(kind="flow", time_input="index").net_inputs(jnp.zeros((2, 2)),
                                                                  jnp.full((2,), 0.4), RF)


# -- 2. the 'flow' weighting -----------------------------------------------------------------------


def _some_denoiser(x, t, cond=None):
  return 0.7 * jnp.tanh(x) + 0.2 * t[:, None] * x - 0.1


@pytest.mark.parametrize("name,sampling", [("rectified_flow", "uniform"),
                                           ("rectified_flow", "logit_normal"),
                                           ("vp", "uniform"), ("vp_cosine", "logit_normal")])
def test_flow_weighting_is_the_velocity_mse(name, sampling):
  """dsm_loss(weighting='flow') per example == ||u_hat - u||^2 from the same (t, eps), with
  u = alpha' x0 + sigma' eps and u_hat the velocity of the denoiser's x0_hat."""
  sched = get_schedule(name)
  key = jax.random.PRNGKey(3)
  x0 = jax.random.normal(jax.random.PRNGKey(4), (256, 2)) * 2.0
  loss, aux = losses.dsm_loss(_some_denoiser, x0, key, sched, weighting="flow",
                              time_sampling=sampling, reduce="sum")
  kt, ke = jax.random.split(key)
  t = losses.sample_times(kt, 256, sched, sampling)
  eps = jax.random.normal(ke, x0.shape)
  np.testing.assert_array_equal(aux["t"], t)
  xt = sched.marginal(x0, eps, t)
  tb = t[:, None]
  u = sched.dalpha_dt(tb) * x0 + sched.dsigma_dt(tb) * eps
  u_hat = velocity_from_x0(_some_denoiser(xt, t), xt, t, sched)
  direct = jnp.sum(jnp.square(u_hat - u), axis=-1)
  np.testing.assert_allclose(aux["per_example"], direct, rtol=2e-3, atol=1e-5)
  assert float(loss) == pytest.approx(float(jnp.mean(direct)), rel=2e-3)


def test_rectified_flow_weight_is_inverse_t_squared():
  t = jnp.linspace(0.01, 0.99, 50)
  np.testing.assert_allclose(losses.loss_weight(t, RF, "flow"), 1.0 / t**2, rtol=1e-5)


# -- 3. logit-normal times -------------------------------------------------------------------------


def test_logit_normal_times_have_the_asked_moments():
  t = losses.sample_times(jax.random.PRNGKey(5), 40_000, RF, "logit_normal", logit_mean=0.5,
                          logit_std=0.8, t_min=1e-3, t_max=0.999)
  t = np.asarray(t, np.float64)
  assert t.min() >= 1e-3 - 1e-9 and t.max() <= 0.999 + 1e-9
  z = np.log(t) - np.log1p(-t)
  assert z.mean() == pytest.approx(0.5, abs=0.02)  # s.e. 0.004
  assert z.std() == pytest.approx(0.8, abs=0.02)
  t0 = np.asarray(losses.sample_times(jax.random.PRNGKey(5), 40_000, RF, "logit_normal"))
  assert np.median(t0) == pytest.approx(0.5, abs=0.02)  # SD3's default m = 0, s = 1


def test_logit_normal_refuses_times_outside_the_unit_interval():
  with pytest.raises(ValueError, match="logit_normal.*t_max=80"):
    losses.sample_times(jax.random.PRNGKey(0), 4, get_schedule("edm"), "logit_normal")


def test_new_names_are_config_options():
  from experiments import validate
  assert "flow" in losses.WEIGHTINGS and "logit_normal" in losses.TIME_SAMPLINGS
  assert {"logit_mean", "logit_std"} <= set(objectives.get("dsm").loss_option_names())
  assert {"logit_mean", "logit_std"} <= set(objectives.get("classifier").loss_option_names())


# -- 4. the exact velocity minimises the flow-matching loss ----------------------------------------


def test_exact_velocity_minimises_flow_matching_loss():
  """Under rectified flow on 8gaussians, dsm_loss('flow') of u* + delta exceeds that of the exact
  u*, and per example the gap is ||delta||^2 + 2 (u* - u).delta, whose cross term has mean 0:
  E||u_hat - u||^2 = E||u* - u||^2 + E||u_hat - u*||^2 within Monte Carlo error."""
  gm = _eight_gaussians()
  exact = gm.denoiser(RF)

  def delta(x, t):
    return 0.3 * jnp.sin(x) + 0.2 * t[:, None]

  def perturbed(x, t, cond=None):
    u_hat = velocity_from_x0(exact(x, t), x, t, RF) + delta(x, t)
    return x0_from_velocity(u_hat, x, t, RF)

  n = 100_000
  x0 = gm.sample0(jax.random.PRNGKey(6), n)
  key = jax.random.PRNGKey(7)
  l_star, a_star = losses.dsm_loss(exact, x0, key, RF, weighting="flow", reduce="sum")
  l_pert, a_pert = losses.dsm_loss(perturbed, x0, key, RF, weighting="flow", reduce="sum")
  t, xt = losses.noisy_batch(key, x0, RF, "uniform")
  d2 = jnp.sum(jnp.square(delta(xt, t)), axis=-1)
  cross = np.asarray(a_pert["per_example"] - a_star["per_example"] - d2, np.float64)
  se = cross.std() / math.sqrt(n)
  assert float(l_pert) > float(l_star) + 0.5 * float(jnp.mean(d2))
  assert abs(cross.mean()) < 4.0 * se, (cross.mean(), se)
  gap = float(l_pert - l_star)
  assert gap == pytest.approx(float(jnp.mean(d2)), abs=4.0 * se)


def _train_velocity_mse(num_steps: int, batch: int = 256):
  """(MSE to the exact velocity at init, after num_steps, seconds): an MLP trained by flow
  matching ('flow' parameterization and weighting, rectified flow) on 8gaussians."""
  gm = _eight_gaussians()
  net = get_model("mlp", width=128, num_blocks=2, embed_dim=32)
  opt = training.make_optimizer(training.OptimConfig(lr=3e-3, warmup_steps=20))
  cfg = training.StepConfig(weighting="flow", time_sampling="uniform")
  step = jax.jit(training.make_train_step(net, RF, FLOW, opt, cfg))
  state = training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((batch, 2)))
  t_eval = jax.random.uniform(jax.random.PRNGKey(8), (2_000,), minval=0.05, maxval=0.95)
  xe = gm.sample0(jax.random.PRNGKey(9), 2_000)
  xe = RF.marginal(xe, jax.random.normal(jax.random.PRNGKey(10), xe.shape), t_eval)
  u_star = velocity_from_x0(gm.denoise(xe, t_eval, schedule=RF), xe, t_eval, RF)

  def mse(params):
    def apply_fn(x_in, c, cond=None):
      return net.apply({"params": params}, x_in, c, labels=cond, train=False)
    u = FLOW.from_x0(make_denoiser(apply_fn, RF, FLOW)(xe, t_eval), xe, t_eval, RF)
    return float(jnp.mean(jnp.sum(jnp.square(u - u_star), axis=-1)))

  before = mse(state.params)
  start = time.perf_counter()
  for i in range(num_steps):
    x = gm.sample0(jax.random.PRNGKey(100 + i), batch)
    state, _ = step(state, {"x": x})
  jax.block_until_ready(state.params)
  return before, mse(state.params), time.perf_counter() - start


@pytest.mark.slow  # ~20 s of training (the loss at the exact velocity: the tests above)
def test_trained_mlp_learns_the_exact_velocity():
  """300 steps of flow matching on 8gaussians: the learned velocity's mean squared distance to
  the exact one (t in [0.05, 0.95]) falls below a quarter of its value at initialisation."""
  before, after, _ = _train_velocity_mse(300)
  assert after < 0.25 * before, (before, after)


# -- 5. straightness -------------------------------------------------------------------------------


def test_straightness_of_a_point_mass_is_zero(x64):
  """x0 = mu surely: the RF path is x_t = mu + (t/t_max)(x_T - mu), a straight line at constant
  speed, so S = 0 (for the denoiser and for the velocity), and one Euler step is exact."""
  gm = analytic.GaussianMixture.create([1.0], [[1.5, -0.5]], [0.0])
  x_T = jax.random.normal(jax.random.PRNGKey(11), (64, 2), jnp.float64)
  s, per = flow.straightness(gm.denoiser(RF), RF, x_T, 8)
  assert per.shape == (64,) and float(jnp.max(per)) < 1e-10 and float(s) < 1e-10
  vel = flow.velocity_field(gm.denoiser(RF), RF)
  s_v, _ = flow.straightness(vel, RF, x_T, 8, prediction="velocity")
  assert float(s_v) < 1e-10


def test_straightness_of_a_standard_gaussian_matches_closed_form(x64):
  """x0 ~ N(0, I) under RF on [0, 1] is NOT straight: x_t = sqrt((1-t)^2 + t^2) x_1 goes in and
  back out along the same ray (x_0 and x_1 have the same law), so Z_1 - Z_0 = 0 and
  S = ||x_1||^2 int_0^1 (2t-1)^2 / ((1-t)^2 + t^2) dt = ||x_1||^2 (2 - pi/2) per path."""
  sched = get_schedule("rectified_flow", t_min=0.0, t_max=1.0)
  gm = analytic.GaussianMixture.create([1.0], [[0.0, 0.0]], [1.0])
  x_T = jax.random.normal(jax.random.PRNGKey(12), (16, 2), jnp.float64)
  _, per = flow.straightness(gm.denoiser(sched), sched, x_T, 2_000)
  expect = jnp.sum(x_T**2, axis=-1) * (2.0 - math.pi / 2.0)
  np.testing.assert_allclose(per, expect, rtol=2e-3)


def test_straightness_of_a_multimodal_mixture_is_positive(x64):
  gm = _eight_gaussians()
  x_T = jax.random.normal(jax.random.PRNGKey(13), (256, 2), jnp.float64)
  s, per = flow.straightness(gm.denoiser(RF), RF, x_T, 64)
  assert float(s) > 0.1 and bool(jnp.all(per >= 0))
  s_fine, _ = flow.straightness(gm.denoiser(RF), RF, x_T, 128)
  assert float(s_fine) == pytest.approx(float(s), rel=0.1)  # converged in num_steps


def test_straightness_refuses_bad_input():
  den = _eight_gaussians().denoiser(RF)
  x_T = jnp.zeros((4, 2))
  with pytest.raises(TypeError, match="num_steps"):
    flow.straightness(den, RF, x_T, 2.5)
  with pytest.raises(ValueError, match="'score'.*x0"):
    flow.straightness(den, RF, x_T, 4, prediction="score")
  with pytest.raises(ValueError, match="batch axis"):
    flow.straightness(den, RF, jnp.zeros((4,)), 4)
  with pytest.raises(ValueError, match="t_max"):
    flow.straightness(den, RF, x_T, 4, t_max=2.0)


# -- one-step sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("variables", ["edm", "t"])
def test_one_step_euler_is_one_velocity_step(variables, x64):
  """The registry's euler with num_steps=1 on rectified flow is x_T + (t_min - t_max) u(x_T,
  t_max) with one network evaluation; on a point mass (a straight flow) it lands exactly on the
  ODE solution mu + (t_min / t_max)(x_T - mu)."""
  mu = jnp.asarray([[1.5, -0.5]])
  for gm in (_eight_gaussians(), analytic.GaussianMixture.create([1.0], mu, [0.0])):
    den = gm.denoiser(RF)
    x_T = jax.random.normal(jax.random.PRNGKey(14), (32, 2), jnp.float64)
    sampler = build_sampler("euler", RF, num_steps=1, grid="uniform", variables=variables)
    x, info = sampler(den, jax.random.PRNGKey(0), x_T)
    assert int(info["nfe"]) == 1
    t_T = jnp.full((32,), RF.t_max)
    expect = x_T + (RF.t_min - RF.t_max) * velocity_from_x0(den(x_T, t_T), x_T, t_T, RF)
    np.testing.assert_allclose(x, expect, atol=1e-10)
  np.testing.assert_allclose(x, mu + (RF.t_min / RF.t_max) * (x_T - mu), atol=1e-10)


def test_logit_normal_outside_the_unit_interval_is_refused_at_start_up():
  from diffusion.config_checks import ConfigError
  from experiments.validate import validate
  from tests.conftest import tiny_config
  c = tiny_config(**{"sde.name": "edm", "sde.fields": {}, "training.time_sampling": "logit_normal",
                     "model.parameterization": "edm"})
  with pytest.raises(ConfigError, match="config.training.time_sampling.*logit_normal"):
    validate(c, "train", device_count=1, process_count=1)
