"""Two-time networks, the 'mean_flow' parameterization, MeanFlow and shortcut losses and the
'flow_map' sampler against ground truth (closed-form Gaussian flow maps; the exact float64 flow
map of a Gaussian mixture, diffusion.flow_map)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, flow_map, mean_flow, schedules, shortcut
from diffusion.models import capabilities, get_model
from diffusion.parameterization import Parameterization, make_denoiser
from diffusion.samplers import build_sampler, sampler_info

RF = schedules.RectifiedFlow()
LAM, MU = np.array([0.3, 2.0]), np.array([0.5, -1.0])


# -- closed form: data N(MU, diag(LAM)) on rectified flow ----------------------------------------


def _sd(t):
  t = t[:, None]
  return jnp.sqrt((1 - t) ** 2 * LAM + t ** 2)


def gaussian_phi(x, t, r):
  """Phi(x, t -> r) = (1 - r) mu + sd(r) / sd(t) (x - (1 - t) mu), sd^2 = (1-t)^2 lam + t^2."""
  return (1 - r[:, None]) * MU + _sd(r) / _sd(t) * (x - (1 - t[:, None]) * MU)


def gaussian_u(x, r, t, cond=None):
  """The exact average velocity (x - Phi(x, t -> r)) / (t - r) (differentiable in x, r, t)."""
  return (x - gaussian_phi(x, t, r)) / (t - r)[:, None]


def gaussian_u_or_v(x, r, t, cond=None):
  """gaussian_u, and the velocity where r = t (safe under differentiation)."""
  same = (r == t)[:, None]
  return jnp.where(same, gaussian_v(x, t), gaussian_u(x, jnp.where(same[:, 0], t - 1, r), t))


def gaussian_v(x, t, cond=None):
  """The exact PF-ODE velocity: -mu + sd'(t) / sd(t) (x - (1 - t) mu)."""
  tt = t[:, None]
  dsd = (-(1 - tt) * LAM + tt) / _sd(t)
  return -MU + dsd / _sd(t) * (x - (1 - tt) * MU)


def _points(n=6, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(k1, (n, 2), jnp.float64) * 1.5
  t = jax.random.uniform(k2, (n,), jnp.float64, 0.3, 0.95)
  r = t * jax.random.uniform(k3, (n,), jnp.float64, 0.0, 0.9)
  return x, r, t


# -- two-time networks ---------------------------------------------------------------------------


NETS = {"mlp": (dict(width=32, num_blocks=2, embed_dim=16), (3, 2)),
        "ddpm_unet": (dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()),
                      (3, 8, 8, 1)),
        "dit": (dict(patch_size=2, hidden_size=32, depth=1, num_heads=2), (3, 8, 8, 1))}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "mlp" else pytest.mark.slow)
                                  for n in sorted(NETS)])  # the image networks: 5-16 s each
def test_two_time_networks_use_both_columns_and_keep_the_one_time_tree(name):
  kw, shape = NETS[name]
  net = get_model(name, **kw)
  assert capabilities(net).time_inputs == 2
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  c1 = jnp.array([0.1, 0.5, 0.9])
  c2 = jnp.stack([c1, 0.5 * c1], axis=1)
  p1 = net.init(jax.random.PRNGKey(1), x, c1)["params"]
  p2 = net.init(jax.random.PRNGKey(1), x, c2)["params"]
  flat1 = dict(jax.tree_util.tree_leaves_with_path(p1))
  flat2 = dict(jax.tree_util.tree_leaves_with_path(p2))
  # The one-time tree is a subset of the two-time one, leaf for leaf (same names, same init).
  for k, v in flat1.items():
    np.testing.assert_array_equal(flat2[k], v)
  extra = set(flat2) - set(flat1)
  assert len(extra) == 4, extra  # one twin embedding: two Dense layers
  # Perturb the twin so that the output depends on it (zero-init heads would hide it).
  p2 = jax.tree_util.tree_map_with_path(
      lambda k, v: v + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(k))), v.shape)
      if k in extra else v, p2)
  p2 = jax.tree_util.tree_map(lambda v: v + 0.05, p2)  # lift zero-initialised output layers
  out = net.apply({"params": p2}, x, c2)
  col0 = net.apply({"params": p2}, x, c2.at[:, 0].add(0.2))
  col1 = net.apply({"params": p2}, x, c2.at[:, 1].add(0.2))
  assert out.shape == x.shape
  assert not np.allclose(out, col0) and not np.allclose(out, col1)


@pytest.mark.parametrize("name,kw,shape", [
    ("ncsnpp", dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()),
     (2, 8, 8, 1)),
    ("mlp_classifier", dict(width=16, num_blocks=1, embed_dim=8, num_classes=2), (2, 2))])
def test_one_time_networks_refuse_two_times(name, kw, shape):
  net = get_model(name, **kw)
  assert capabilities(net).time_inputs == 1
  x = jnp.zeros(shape)
  with pytest.raises(ValueError, match=r"c must have shape \(2,\), got \(2, 2\).*time_inputs"):
    net.init(jax.random.PRNGKey(0), x, jnp.zeros((2, 2)))


# -- parameterization and flow map ---------------------------------------------------------------


def test_mean_flow_parameterization_inputs_and_denoiser():
  par = Parameterization("mean_flow")
  x = jnp.ones((3, 2))
  t, r = jnp.array([0.9, 0.5, 0.2]), jnp.array([0.1, 0.5, 0.0])
  x_in, c = par.net_inputs(x, t, RF, r=r)
  np.testing.assert_array_equal(x_in, x)
  np.testing.assert_allclose(c, np.stack([t, t - r], 1))
  _, c0 = par.net_inputs(x, t, RF)  # the denoiser's reading: r = 0
  np.testing.assert_allclose(c0, np.stack([t, t], 1))
  f = jnp.full_like(x, 2.0)
  np.testing.assert_allclose(par.to_x0(f, x, t, RF), x - t[:, None] * 2.0, rtol=1e-6)
  np.testing.assert_allclose(par.from_x0(par.to_x0(f, x, t, RF), x, t, RF), f, rtol=1e-5)
  with pytest.raises(ValueError, match="needs the 'rectified_flow' schedule, got the 'vp'"):
    par.net_inputs(x, t, schedules.VP())
  with pytest.raises(ValueError, match="time_input must be 't'"):
    Parameterization("mean_flow", time_input="log_sigma")
  with pytest.raises(ValueError, match="takes one time"):
    Parameterization("flow").net_inputs(x, t, RF, r=r)


def test_make_flow_map_of_the_exact_average_velocity_is_the_exact_map():
  par = Parameterization("mean_flow")

  def apply_fn(x_in, c, cond):  # a 'network' fed (t, t - r) returning the exact u
    t = c[:, 0]
    return gaussian_u(x_in, t - c[:, 1], t)

  with jax.enable_x64(True):
    x, r, t = _points()
    phi = flow_map.make_flow_map(apply_fn, RF, par)
    # (the network sees c in float32, as every network does: 1e-7 relative)
    np.testing.assert_allclose(phi(x, t, r), gaussian_phi(x, t, r), rtol=1e-6, atol=1e-6)
    den = flow_map.denoiser_of_flow_map(phi)
    np.testing.assert_allclose(den(x, t), gaussian_phi(x, t, 0 * t), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(make_denoiser(apply_fn, RF, par)(x, t), den(x, t), rtol=1e-6)
  with pytest.raises(ValueError, match="two-time parameterization"):
    flow_map.make_flow_map(apply_fn, RF, Parameterization("flow"))
  with pytest.raises(ValueError, match="rectified_flow"):
    flow_map.make_flow_map(apply_fn, schedules.VP(), par)


def test_gaussian_closed_form_matches_the_exact_solver():
  """The closed form used below is the exact flow map (cross-check with diffusion.flow_map)."""
  gm = analytic.GaussianMixture.create([1.0], [MU], [LAM])
  with jax.enable_x64(True):
    x, r, t = _points(4, seed=3)
    want = flow_map.exact_flow_map(gm.denoiser(RF), RF, x, np.asarray(t), np.asarray(r))
    np.testing.assert_allclose(gaussian_phi(x, t, r), want, rtol=1e-8, atol=1e-8)
    v = flow_map.velocity(gm.denoiser(RF), RF, x, t)
    np.testing.assert_allclose(gaussian_v(x, t), v, rtol=1e-10, atol=1e-10)


# -- MeanFlow ------------------------------------------------------------------------------------


def test_mean_flow_target_at_the_exact_average_velocity_is_itself():
  with jax.enable_x64(True):
    x, r, t = _points()
    v = gaussian_v(x, t)
    u, target, dudt = mean_flow.mean_flow_target(gaussian_u, x, r, t, v)
    np.testing.assert_allclose(target, u, rtol=1e-9, atol=1e-9)
    # the jvp is the total derivative along the trajectory: central differences of u(z_tau, r, tau)
    h = 1e-4
    z = lambda tau: gaussian_phi(x, t + 0.01, tau)  # the trajectory through x at t
    x_at = z(t)
    up = gaussian_u(z(t + h), r, t + h)
    dn = gaussian_u(z(t - h), r, t - h)
    u2, _, dudt2 = mean_flow.mean_flow_target(gaussian_u, x_at, r, t, gaussian_v(x_at, t))
    np.testing.assert_allclose(dudt2, (up - dn) / (2 * h), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(dudt)) > 1e-2  # not trivially zero


@pytest.mark.slow  # 13 s: seven float64 solves (the Gaussian tests above are the fast check)
def test_mean_flow_identity_on_a_mixture_with_the_exact_solver():
  """u = v - (t - r) d/dt u for the exact average velocity of a 2-D mixture (float64 solve),
  d/dt u by central differences along the exact trajectory: the identity the target rests on."""
  gm = analytic.random_mixture(1, 2, num_components=3)
  with jax.enable_x64(True):
    den = gm.denoiser(RF)
    x_top = jax.random.normal(jax.random.PRNGKey(5), (4, 2), jnp.float64)
    t, r, h = 0.7, 0.25, 1e-3
    z = lambda tau: flow_map.exact_flow_map(den, RF, x_top, 0.9, tau)
    u = lambda tau: flow_map.exact_average_velocity(den, RF, z(tau), r, tau)
    dudt = (u(t + h) - u(t - h)) / (2 * h)
    v = flow_map.velocity(den, RF, z(t), t)
    np.testing.assert_allclose(u(t), v - (t - r) * dudt, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(dudt)) > 1e-2


def test_mean_flow_loss_and_gradient_vanish_at_the_exact_average_velocity():
  with jax.enable_x64(True):
    x0 = jnp.asarray(MU + np.sqrt(LAM) * np.random.default_rng(0).standard_normal((64, 2)))

    def loss_of(theta):
      u_fn = lambda z, r, t, cond=None: theta * gaussian_u_or_v(z, r, t)
      return mean_flow.mean_flow_loss(u_fn, x0, jax.random.PRNGKey(0), velocity_fn=gaussian_v,
                                      ratio_r_neq_t=0.75, adaptive_p=0.0)

    (loss, aux), grad = jax.value_and_grad(loss_of, has_aux=True)(jnp.float64(1.0))
    assert float(loss) < 1e-16 and abs(float(grad)) < 1e-7, (loss, grad)
    assert 0.5 < float(aux["fraction_r_neq_t"]) < 0.95
    (off, _), g_off = jax.value_and_grad(loss_of, has_aux=True)(jnp.float64(1.1))
    assert float(off) > 1e-3 and abs(float(g_off)) > 1e-3  # away from it, neither vanishes


def test_two_time_sampling_matches_the_paper():
  r, t = mean_flow.sample_two_times(jax.random.PRNGKey(0), 20000, ratio_r_neq_t=0.25)
  r, t = np.asarray(r), np.asarray(t)
  assert np.all((0 < r) & (r <= t) & (t < 1))
  assert abs(np.mean(r < t) - 0.25) < 0.02
  # t = max of two logit-normals: its logit has median above mu = -0.4
  assert np.median(np.log(t / (1 - t))) > -0.4
  with pytest.raises(ValueError, match="ratio_r_neq_t"):
    mean_flow.mean_flow_loss(gaussian_u, jnp.zeros((2, 2)), jax.random.PRNGKey(0),
                             ratio_r_neq_t=1.5)


# -- shortcut ------------------------------------------------------------------------------------


def test_shortcut_target_at_the_exact_map_is_the_exact_double_step():
  gm = analytic.random_mixture(2, 2, num_components=3)
  with jax.enable_x64(True):
    den = gm.denoiser(RF)

    def u_exact(z, r, t, cond=None):
      return flow_map.exact_average_velocity(den, RF, z, np.asarray(r), np.asarray(t))

    z = jax.random.normal(jax.random.PRNGKey(2), (5, 2), jnp.float64)
    t = jnp.array([1.0, 0.75, 0.5, 0.25, 0.5], jnp.float64) * 0.999
    d = jnp.array([0.5, 0.25, 0.125, 0.125, 1 / 128], jnp.float64) * 0.999
    target = shortcut.self_consistency_target(u_exact, z, t, d)
    want = u_exact(z, t - 2 * d, t)
  np.testing.assert_allclose(target, want, rtol=1e-7, atol=1e-7)


def test_shortcut_times_lie_on_the_grid_and_loss_vanishes_for_the_exact_gaussian():
  t, d = shortcut.sample_self_consistency_times(jax.random.PRNGKey(0), 4000, 128)
  t, d = np.asarray(t), np.asarray(d)
  assert set(np.unique(d)) == {2.0 ** -j for j in range(1, 8)}
  assert np.all(t - 2 * d >= -1e-7) and np.all(t <= 1 + 1e-7)
  np.testing.assert_allclose(np.round(t / d), t / d, atol=1e-5)
  with jax.enable_x64(True):
    x0 = jnp.asarray(MU + np.sqrt(LAM) * np.random.default_rng(1).standard_normal((32, 2)))
    # Flow matching uses v = eps - x0 (the conditional velocity): only the consistency part of
    # the loss vanishes at the exact map.
    loss, aux = shortcut.shortcut_loss(gaussian_u_or_v, x0, jax.random.PRNGKey(3))
    assert float(aux["mse_consistency"]) < 1e-12
    assert float(aux["mse_flow"]) > 0.1
  with pytest.raises(ValueError, match="power of two"):
    shortcut.shortcut_loss(gaussian_u, x0, jax.random.PRNGKey(0), max_steps=100)


# -- the flow_map sampler ------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_flow_map_sampler_with_the_exact_map_is_exact(steps):
  sched = schedules.RectifiedFlow(t_min=0.0, t_max=0.999)
  gm = analytic.random_mixture(0, 2, num_components=3)
  with jax.enable_x64(True):
    phi = flow_map.exact_flow_map_fn(gm.denoiser(sched), sched)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (6, 2), jnp.float64)
    # jit=False: the exact map is a reference solve that needs concrete times
    x, info = build_sampler("flow_map", sched, steps, grid="uniform", jit=False)(phi, None, x_T)
    want = flow_map.exact_flow_map(gm.denoiser(sched), sched, x_T, 0.999, 0.0)
  assert int(info["nfe"]) == steps == sampler_info("flow_map").nfe(steps, {})
  np.testing.assert_allclose(x, want, rtol=1e-7, atol=1e-7)


def test_flow_map_sampler_runs_from_pure_noise_to_data():
  """The closed grid t = 1 .. 0 of a (t_min, t_max) = (0, 1) schedule is accepted (PF-ODE samplers
  refuse it) and the Gaussian's exact map carries N(0, I) at t = 1 to the data."""
  sched = schedules.RectifiedFlow(t_min=0.0, t_max=1.0)
  with jax.enable_x64(True):
    x_T = jax.random.normal(jax.random.PRNGKey(1), (4000, 2), jnp.float64)
    phi = lambda x, t, s, cond=None: gaussian_phi(x, jnp.full(x.shape[:1], t),
                                                  jnp.full(x.shape[:1], s))
    x, _ = build_sampler("flow_map", sched, 1, grid="uniform")(phi, None, x_T)
  np.testing.assert_allclose(np.mean(x, 0), MU, atol=0.1)
  np.testing.assert_allclose(np.var(x, 0), LAM, rtol=0.1)
  with pytest.raises(ValueError, match="positive"):
    build_sampler("euler", sched, 2, grid="uniform")
