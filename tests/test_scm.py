"""sCM on TrigFlow (diffusion.scm, schedule and parameterization 'trigflow') against closed forms
and the exact flow map of a Gaussian mixture."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, flow_map, scm
from diffusion import parameterization as P
from diffusion import schedules as S

SD = 0.5


def test_trigflow_schedule_closed_forms():
  sched = S.get_schedule("trigflow")
  assert sched.t_min == pytest.approx(math.atan(0.004)) and sched.t_max == pytest.approx(
      math.atan(160.0))
  t = np.linspace(sched.t_min, sched.t_max, 9)
  np.testing.assert_allclose(sched.alpha(t), np.cos(t))
  np.testing.assert_allclose(sched.sigma(t), SD * np.sin(t))
  np.testing.assert_allclose(sched.edm_sigma(t), SD * np.tan(t))
  np.testing.assert_allclose(sched.edm_sigma(np.array([sched.t_min, sched.t_max])), [0.002, 80.0])
  np.testing.assert_allclose(sched.t_from_edm_sigma(SD * np.tan(t)), t)
  np.testing.assert_allclose(sched.diffusion_sq(t), 2 * SD**2 * np.tan(t))
  assert sched.prior_std() == SD
  wide = S.get_schedule("trigflow", sigma_data=1.0)
  assert wide.t_max == pytest.approx(math.atan(80.0))
  with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
    S.get_schedule("trigflow", sigma_data=0.0)
  with pytest.raises(ValueError, match="must be < pi/2"):
    S.get_schedule("trigflow", t_max=1.6)


def test_trigflow_parameterization_inputs_and_boundary():
  sched = S.TrigFlow()
  par = P.Parameterization("trigflow", sigma_data=SD)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  f = jax.random.normal(jax.random.PRNGKey(1), (4, 3)) * 10
  t = jnp.array([0.0, 0.3, 1.0, 1.5])
  x_in, c = par.net_inputs(x, t, sched)
  np.testing.assert_allclose(x_in, x / SD)
  np.testing.assert_allclose(c, t)
  x0 = par.to_x0(f, x, t, sched)
  np.testing.assert_array_equal(x0[0], x[0])  # f(x, 0) = x exactly
  tb = t[:, None]
  np.testing.assert_allclose(x0, jnp.cos(tb) * x - jnp.sin(tb) * SD * f, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="needs the 'trigflow' schedule"):
    par.net_inputs(x, t, S.EDM())
  with pytest.raises(ValueError, match="differs from the trigflow schedule's sigma_data"):
    P.Parameterization("trigflow", sigma_data=1.0).to_x0(f, x, t, sched)


def _gaussian(sched):
  """Data N(m, diag(s^2)) (2-D) and its exact consistency function on TrigFlow:
  f*(x, t) = m + s (x - cos t m) / sqrt(cos^2 t s^2 + sigma_d^2 sin^2 t) (the standardised x_t is
  constant along the PF-ODE), F* = (cos t x - f*) / (sin t sigma_d)."""
  m, s = jnp.array([0.3, -0.6]), jnp.array([0.4, 0.9])
  gm = analytic.GaussianMixture.create([1.0], [np.asarray(m)], [np.diag(np.asarray(s)**2)])

  def f_star(x, t):
    tb = t[:, None]
    std = jnp.sqrt(jnp.cos(tb)**2 * s**2 + SD**2 * jnp.sin(tb)**2)
    return m + s * (x - jnp.cos(tb) * m) / std

  def big_f(x, t):
    tb = t[:, None]
    return (jnp.cos(tb) * x - f_star(x, t)) / (jnp.sin(tb) * SD)

  return gm, f_star, big_f


def test_tangent_vanishes_at_the_exact_consistency_function_of_a_gaussian():
  sched = S.TrigFlow()
  with jax.enable_x64(True):
    gm, f_star, big_f = _gaussian(sched)
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 2), jnp.float64) * 0.7
    t = jnp.array([0.05, 0.3, 0.7, 1.0, 1.3, 1.55], jnp.float64)
    v = flow_map.velocity(gm.denoiser(sched), sched, x, t)
    f0, df = jax.jvp(big_f, (x, t), (v, jnp.ones_like(t)))
    # jvp = central finite differences along (v, 1)
    h = 1e-6
    fd = (big_f(x + h * v, t + h) - big_f(x - h * v, t - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(df), np.asarray(fd), rtol=1e-7, atol=1e-7)
    g = scm.tangent(f0, df, x, v, t, SD)
    first = -jnp.cos(t)[:, None]**2 * (SD * f0 - v)  # one term alone is O(1)
    assert float(jnp.max(jnp.abs(first))) > 0.05
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-12)
    # ... and not at a function that is not consistent: F* + 0.1 x
    wrong = lambda x_, t_: big_f(x_, t_) + 0.1 * x_
    f1, df1 = jax.jvp(wrong, (x, t), (v, jnp.ones_like(t)))
    assert float(jnp.max(jnp.abs(scm.tangent(f1, df1, x, v, t, SD)))) > 1e-2


def test_loss_gradient_vanishes_at_the_exact_consistency_function():
  # student F* + theta h: at theta = 0 the loss gradient is -2 E[h . g] / D = 0 because g = 0; the
  # teacher is the exact velocity (sCD with a perfect teacher), on the EDM schedule (SNR matched).
  sched, edm = S.TrigFlow(), S.EDM()
  with jax.enable_x64(True):
    gm, _, big_f = _gaussian(sched)
    x0 = gm.sample0(jax.random.PRNGKey(3), 64, jnp.float64)

    def velocity(x_t, t):
      return scm.teacher_velocity(gm.denoiser(edm), edm, sched, x_t, t)

    def loss_at(theta, student_f):
      student = lambda x_, t_: student_f(x_, t_) + theta * jnp.sin(x_)
      return scm.scm_loss(student, student_f, x0, jax.random.PRNGKey(4), sched,
                          velocity=velocity, weighting="uniform")[0]

    grad = jax.grad(loss_at)(0.0, big_f)
    assert abs(float(grad)) < 1e-10
    wrong = lambda x_, t_: big_f(x_, t_) + 0.1 * x_
    assert abs(float(jax.grad(loss_at)(0.0, wrong))) > 1e-3


@pytest.mark.slow  # 17 s cold (float64 Dopri8 solves); fast: the Gaussian closed form and
# the loss gradient at the exact mixture consistency function below
def test_tangent_vanishes_on_a_mixture_by_the_exact_flow_map():
  # f* = Phi(x_t, t -> 0) by the float64 adaptive solve; dF*/dt by central differences along
  # the exact velocity; g = cos t df*/dt = 0 up to the solver / difference error.
  sched = S.TrigFlow(sigma_data=1.0)
  gm = analytic.random_mixture(0, 2)
  with jax.enable_x64(True):
    den = gm.denoiser(sched)
    x = jax.random.normal(jax.random.PRNGKey(5), (4, 2), jnp.float64)
    t = jnp.array([0.2, 0.6, 1.0, 1.4], jnp.float64)
    solve = dict(rtol=1e-12, atol=1e-12)

    def big_f(x_, t_):
      f = flow_map.exact_flow_map(den, sched, x_, t_, 0.0, **solve)
      return (jnp.cos(t_)[:, None] * x_ - f) / (jnp.sin(t_)[:, None] * 1.0)

    v = flow_map.velocity(den, sched, x, t)
    h = 1e-4
    df = (big_f(x + h * v, t + h) - big_f(x - h * v, t - h)) / (2 * h)
    f0 = big_f(x, t)
    g = scm.tangent(f0, df, x, v, t, 1.0)
    scale = float(jnp.max(jnp.abs(jnp.cos(t)[:, None]**2 * (f0 - v))))
    assert scale > 0.05
    assert float(jnp.max(jnp.abs(g))) < 1e-6 * max(scale, 1.0)


@pytest.mark.parametrize("teacher", ["vp", "edm", "rectified_flow", "vp_cosine"])
def test_teacher_on_another_schedule_gives_the_trigflow_velocity(teacher):
  sched, other = S.TrigFlow(), S.get_schedule(teacher)
  gm = analytic.random_mixture(1, 3)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(6), (5, 3), jnp.float64) * 0.6
    t = jnp.array([0.1, 0.4, 0.8, 1.1, 1.3], jnp.float64)
    t_other = other.t_from_logsnr(sched.logsnr(t))
    inside = (t_other > other.t_min) & (t_other < other.t_max)
    got = scm.teacher_velocity(gm.denoiser(other), other, sched, x, t)
    want = flow_map.velocity(gm.denoiser(sched), sched, x, t)
    np.testing.assert_allclose(np.asarray(got)[np.asarray(inside)],
                               np.asarray(want)[np.asarray(inside)], rtol=1e-9, atol=1e-9)
    assert int(inside.sum()) >= 3


def test_time_distribution_ratio_and_normalisation():
  sched = S.TrigFlow()
  t = scm.sample_time(jax.random.PRNGKey(7), 20_000, sched, -1.0, 1.4)
  assert float(t.min()) >= sched.t_min - 1e-6 and float(t.max()) <= sched.t_max + 1e-6
  # log(sigma_d tan t) ~ N(-1, 1.4^2): its median and spread
  tau = np.log(SD * np.tan(np.asarray(t, np.float64)))
  assert abs(np.median(tau) + 1.0) < 0.05 and abs(np.std(tau) - 1.4) < 0.05
  np.testing.assert_allclose([float(scm.tangent_ratio(s, 100)) for s in (0, 50, 100, 400)],
                             [0.0, 0.5, 1.0, 1.0])
  assert float(scm.tangent_ratio(0, 0)) == 1.0
  g = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(scm.normalize_tangent(g, 0.1), g / jnp.array([[5.1], [0.1]]))
  with pytest.raises(ValueError, match="unknown sCM weighting"):
    scm.scm_loss(None, None, jnp.zeros((2, 2)), jax.random.PRNGKey(0), sched, weighting="edm")
  with pytest.raises(ValueError, match="'trigflow' schedule"):
    scm.sample_time(jax.random.PRNGKey(0), 2, S.EDM())


def test_mlp_log_variance_head_is_optional_and_leaves_the_network_unchanged():
  from diffusion.models import capabilities, get_model
  x, c = jnp.ones((3, 2)), jnp.array([0.1, 0.5, 1.2])
  plain = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  off = get_model("mlp", width=16, num_blocks=1, embed_dim=8, logvar_head=False)
  on = get_model("mlp", width=16, num_blocks=1, embed_dim=8, logvar_head=True)
  p_plain = plain.init(jax.random.PRNGKey(0), x, c)["params"]
  p_off = off.init(jax.random.PRNGKey(0), x, c)["params"]
  p_on = on.init(jax.random.PRNGKey(0), x, c)["params"]
  assert jax.tree_util.tree_structure(p_plain) == jax.tree_util.tree_structure(p_off)
  for a, b in zip(jax.tree_util.tree_leaves(p_plain), jax.tree_util.tree_leaves(p_off)):
    np.testing.assert_array_equal(a, b)
  assert set(p_on) == set(p_plain) | {"logvar_head"}
  assert not capabilities(plain).return_logvar and not capabilities(off).return_logvar
  assert capabilities(on).return_logvar
  f_on, u = on.apply({"params": p_on}, x, c, return_logvar=True)
  np.testing.assert_array_equal(f_on, plain.apply({"params": p_plain}, x, c))
  np.testing.assert_array_equal(u, jnp.zeros(3))  # zero-initialised: u = 0
  with pytest.raises(ValueError, match="logvar_head=True"):
    plain.apply({"params": p_plain}, x, c, return_logvar=True)
