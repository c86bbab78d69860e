"""Schedules: closed forms against autodiff, logSNR round trips, SDE marginals by Monte Carlo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import schedules as S
from diffusion.schedules import get_schedule



def _registered(name):
  """Every registered schedule with its default fields (a learned one bound to its initial
  parameters): a schedule registered with ``register_schedule`` is checked by these tests."""
  sched = S.get_schedule(name)
  if sched.learned:
    sched = sched.bind(jax.tree_util.tree_map(np.asarray,
                                              sched.init_params(jax.random.PRNGKey(0))))
  return sched


# A discrete-time schedule (DDPM's) is piecewise between its steps: it is checked below at t_min
# values on its step grid, not at its defaults.
ALL = [_registered(n) for n in sorted(S.SCHEDULES)
       if not hasattr(S.SCHEDULES[n], "discrete_index")] + [
    S.VE(sigma_min=0.002, sigma_max=80.0), S.VP(beta_min=0.5, beta_max=10.0),
    S.DiscreteVP(t_min=1.37e-3), S.DiscreteVP(t_min=2.3e-3, beta_schedule="squaredcos_cap_v2",
                                             t_max=0.9986)]
IDS = [f"{s.name}-{i}" for i, s in enumerate(ALL)]


def _times(s, n=7):
  return np.linspace(s.t_min, s.t_max, n)[1:-1]


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_derivatives_match_autodiff(sched):
  t = jnp.asarray(_times(sched), jnp.float32)
  for f, df in [(sched.alpha, sched.dalpha_dt), (sched.sigma, sched.dsigma_dt),
                (sched.logsnr, sched.dlogsnr_dt)]:
    auto = jax.vmap(jax.grad(lambda u: f(u)))(t)
    np.testing.assert_allclose(df(t), auto, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_sde_coefficients_follow_from_alpha_sigma(sched):
  # f = dlog alpha/dt, g^2 = d sigma^2/dt - 2 f sigma^2, checked in float64 by finite differences.
  t = _times(sched)
  h = 1e-6 * sched.t_max
  dlog_a = (np.log(sched.alpha(t + h)) - np.log(sched.alpha(t - h))) / (2 * h)
  dsig2 = (sched.sigma(t + h)**2 - sched.sigma(t - h)**2) / (2 * h)
  np.testing.assert_allclose(sched.drift(t), dlog_a, rtol=1e-5, atol=1e-8)
  g2 = dsig2 - 2 * dlog_a * sched.sigma(t)**2
  np.testing.assert_allclose(sched.diffusion_sq(t), g2, rtol=1e-5)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_logsnr_inverse_round_trip(sched):
  t = np.linspace(sched.t_min, sched.t_max, 50)
  lam = sched.logsnr(t)
  assert np.all(np.diff(lam) < 0), "logSNR must decrease in t"
  np.testing.assert_allclose(sched.t_from_logsnr(lam), t, rtol=1e-9, atol=1e-12)
  # the traced (float32) path agrees with the host float64 path
  np.testing.assert_allclose(sched.logsnr(jnp.asarray(t, jnp.float32)), lam, rtol=2e-3, atol=2e-3)


def test_vp_and_subvp_closed_forms():
  vp, sub = S.VP(), S.SubVP()
  t = np.linspace(0.01, 1, 20)
  b = 0.1 * t + 0.5 * t**2 * 19.9
  np.testing.assert_allclose(vp.alpha(t), np.exp(-0.5 * b))
  np.testing.assert_allclose(vp.alpha(t)**2 + vp.sigma(t)**2, 1.0)
  np.testing.assert_allclose(sub.sigma(t), 1 - np.exp(-b))
  np.testing.assert_allclose(sub.diffusion_sq(t), vp.beta(t) * (1 - np.exp(-2 * b)))


@pytest.mark.parametrize("sched", [S.VP(), S.SubVP(), S.VE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_marginals_match_euler_maruyama_of_the_sde(sched):
  # Simulate dx = f x dt + g dw from x0 = 1.5 (fine steps) and compare mean / std at t with
  # alpha(t) x0 and sigma(t): the (f, g) pair implied by (alpha, sigma) has these marginals.
  n, steps, t_end = 40_000, 400, 0.6
  x0 = 1.5
  ts = np.linspace(0.0, t_end, steps + 1)

  def step(x, inp):
    t, dt, z = inp
    return x + sched.drift(t) * x * dt + jnp.sqrt(sched.diffusion_sq(t) * dt) * z, None

  zs = jax.random.normal(jax.random.PRNGKey(0), (steps, n))
  tm = jnp.asarray(0.5 * (ts[1:] + ts[:-1]), jnp.float32)
  x, _ = jax.lax.scan(step, jnp.full((n,), x0), (tm, jnp.asarray(np.diff(ts), jnp.float32), zs))
  se = float(sched.sigma(t_end)) / np.sqrt(n)
  assert abs(float(x.mean()) - x0 * float(sched.alpha(t_end))) < 5 * se + 2e-3
  assert abs(float(x.std()) / float(sched.sigma(t_end)) - 1) < 0.02


@pytest.mark.parametrize("kind", S.GRIDS)
@pytest.mark.parametrize("sched", [S.VP(), S.VE(), S.EDM()], ids=["vp", "ve", "edm"])
def test_time_grids_are_decreasing_with_exact_ends(kind, sched):
  t = S.time_grid(sched, 12, kind)
  assert t.shape == (13,) and t.dtype == np.float64
  assert t[0] == sched.t_max and t[-1] == sched.t_min
  assert np.all(np.diff(t) < 0)


def test_grid_spacing_definitions():
  vp = S.VP()
  lam = vp.logsnr(S.time_grid(vp, 10, "logsnr"))
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
  edm = S.EDM()
  s = S.time_grid(edm, 10, "karras", rho=7.0)**(1 / 7)
  np.testing.assert_allclose(np.diff(s), np.diff(s)[0], rtol=1e-9)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="unknown schedule 'vpp'.*available"):
    S.get_schedule("vpp")
  with pytest.raises(ValueError, match="no field.*sigma_max"):
    S.get_schedule("vp", sigma_max=3.0)
  with pytest.raises(ValueError, match="unknown time grid 'log'"):
    S.time_grid(S.VP(), 5, "log")
  with pytest.raises(ValueError, match="t_min < t_max"):
    S.get_schedule("vp", t_min=1.0, t_max=0.5)


def test_vp_cosine_sigma_is_exact_at_zero_and_stable():
  """sigma = sqrt(sin(p - p0) sin(p + p0)) / cos(p0): exactly 0 at t = 0 (sqrt(1 - alpha^2)
  gave 0 or 1.5e-8 in float64 jax depending on layout), alpha^2 + sigma^2 = 1 elsewhere."""
  import jax
  from diffusion.schedules import VPCosine
  sch = VPCosine()
  with jax.enable_x64(True):
    t = jnp.asarray(np.linspace(0.0, 0.9946, 257), jnp.float64)
    a, s = np.asarray(sch.alpha(t)), np.asarray(sch.sigma(t))
    assert s[0] == 0.0 and float(sch.sigma(jnp.zeros((3,), jnp.float64))[1]) == 0.0
    np.testing.assert_allclose(a * a + s * s, 1.0, atol=1e-14)
    np.testing.assert_allclose(s[1:], np.sqrt(1 - a[1:] ** 2), rtol=1e-7)
  assert float(sch.sigma(np.float64(0.5))) == pytest.approx(np.sqrt(1 - sch.alpha(0.5) ** 2),
                                                             rel=1e-13)


def test_discrete_vp_is_ddpm_at_its_steps():
  # alpha(t_n)^2 = prod_{i<=n} (1 - beta_i) at t_n = (n + 1) / N, DDPM's betas 1e-4..0.02; the
  # network is fed the step index n there.
  s = S.DiscreteVP()
  n = np.arange(1000)
  t = (n + 1) / 1000
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  np.testing.assert_allclose(s.alpha(t)**2, abar, rtol=1e-13)
  np.testing.assert_allclose(s.alpha(t)**2 + s.sigma(t)**2, 1.0, rtol=1e-13)
  np.testing.assert_allclose(s.discrete_index(t), n, atol=1e-9)
  # beta(t) is piecewise constant: -N log(1 - beta_n) on (n/N, (n+1)/N].
  np.testing.assert_allclose(s.beta(t - 0.5e-3), -1000 * np.log1p(-np.linspace(1e-4, 0.02, 1000)))
  # The continuous VP (beta in [0.1, 20]) differs from it: the documented 0.095 logSNR at most.
  gap = np.abs(s.logsnr(t) - S.VP().logsnr(t)).max()
  assert 0.09 < gap < 0.1, gap


def test_discrete_vp_rejects_bad_betas():
  with pytest.raises(ValueError, match="beta_schedule='quadratic'"):
    S.DiscreteVP(beta_schedule="quadratic")
  with pytest.raises(ValueError, match="betas must lie in"):
    S.DiscreteVP(beta_start=0.5, beta_end=1.5)
  with pytest.raises(ValueError, match="t_max=1.5"):
    S.DiscreteVP(t_max=1.5)


def test_index_time_input_needs_a_discrete_schedule():
  from diffusion.parameterization import Parameterization
  p = Parameterization("eps", time_input="index")
  x = jnp.zeros((2, 3))
  _, c = p.net_inputs(x, jnp.asarray([0.001, 1.0]), S.DiscreteVP())
  np.testing.assert_allclose(c, [0.0, 999.0], atol=1e-4)
  with pytest.raises(ValueError, match="needs a discrete-time schedule"):
    p.net_inputs(x, jnp.asarray([0.5, 0.5]), S.VP())


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_sampler_on_vp_discrete_takes_ddpms_own_steps(variance):
  # On vp_discrete, the step from t_n = (n+1)/N to t_{n-1} is Ho et al.'s eq. 7: mean
  # sqrt(abar_{n-1}) beta_n / (1 - abar_n) x0 + sqrt(alpha_n) (1 - abar_{n-1}) / (1 - abar_n) x_n,
  # variance beta~_n = (1 - abar_{n-1}) / (1 - abar_n) beta_n ('posterior') or beta_n ('beta').
  from diffusion.samplers.sde import ddpm_coefs
  s = S.DiscreteVP()
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)
  for n in (1, 17, 500, 999):
    a, d, c = ddpm_coefs(s, (n + 1) / 1000, n / 1000, variance)
    np.testing.assert_allclose(a, np.sqrt(1 - betas[n]) * (1 - abar[n - 1]) / (1 - abar[n]),
                               rtol=1e-10)
    np.testing.assert_allclose(d, np.sqrt(abar[n - 1]) * betas[n] / (1 - abar[n]), rtol=1e-10)
    var = betas[n] * (1 - abar[n - 1]) / (1 - abar[n]) if variance == "posterior" else betas[n]
    np.testing.assert_allclose(c**2, var, rtol=1e-10)
  with pytest.raises(ValueError, match="variance='large'"):
    ddpm_coefs(s, 0.5, 0.4, "large")


# -- logSNR shift (schedules.Shifted) ------------------------------------------------------------


def test_shift_on_rectified_flow_is_sd3s_formula_and_keeps_each_family():
  t = np.linspace(0.01, 0.99, 9)
  rf = get_schedule("rectified_flow", shift=3.0)
  want = 3.0 * t / (1.0 + 2.0 * t)  # SD3 (Esser et al. 2024, eq. 23)
  np.testing.assert_allclose(rf.sigma(t), want, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(rf.alpha(t), 1.0 - want, rtol=1e-12, atol=1e-14)
  vp = get_schedule("vp", shift=2.0)
  np.testing.assert_allclose(vp.alpha(t)**2 + vp.sigma(t)**2, 1.0, atol=1e-14)
  np.testing.assert_allclose(vp.logsnr(t), get_schedule("vp").logsnr(t) - 2 * np.log(2.0),
                             atol=1e-12)
  np.testing.assert_allclose(vp.t_from_logsnr(vp.logsnr(t)), t, atol=1e-10)
  h = 1e-6
  for sch in (rf, vp, get_schedule("edm", shift=0.5), get_schedule("vp_cosine", shift=4.0)):
    for f, df in ((sch.alpha, sch.dalpha_dt), (sch.sigma, sch.dsigma_dt)):
      np.testing.assert_allclose((f(t + h) - f(t - h)) / (2 * h), df(t), rtol=1e-6, atol=1e-8,
                                 err_msg=sch.name)
  assert get_schedule("vp", shift=1.0) == get_schedule("vp", shift=1.0)  # hashable, frozen


def test_a_shift_of_one_over_b_is_scaling_the_data_by_b():
  """Diffusing b x0 on the base schedule is diffusing x0 on Shifted(base, 1/b) with the state
  scaled by c(t) = sigma(t) / sigma'(t): the exact denoisers satisfy D_b(x, t) = b D(x / c, t)
  and DDIM's trajectories map onto each other exactly."""
  from diffusion import analytic
  from diffusion.samplers import build_sampler
  b = 2.5
  base = get_schedule("vp")
  shifted = get_schedule("vp", shift=1.0 / b)
  gm = analytic.random_mixture(3, 2, num_components=3)
  scaled = analytic.GaussianMixture.create(gm.weights, b * gm.means, b * b * gm.covariances())
  c = lambda t: base.sigma(t) / shifted.sigma(t)
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)) * 2.0)
    t = jnp.asarray(np.linspace(0.02, 0.98, 16))
    ct = c(t)[:, None]
    np.testing.assert_allclose(np.asarray(scaled.denoiser(base)(x, t, None)),
                               b * np.asarray(gm.denoiser(shifted)(x / ct, t, None)),
                               rtol=1e-10, atol=1e-10)
    f_base = build_sampler("ddim", base, 12, grid="uniform")
    f_shift = build_sampler("ddim", shifted, 12, grid="uniform")
    x_T = jnp.asarray(np.random.default_rng(1).normal(size=(32, 2)))
    out_b, _ = f_base(scaled.denoiser(base), jax.random.PRNGKey(0), x_T)
    out_s, _ = f_shift(gm.denoiser(shifted), jax.random.PRNGKey(0),
                       x_T / c(np.float64(base.t_max)))
    np.testing.assert_allclose(np.asarray(out_b), float(c(np.float64(base.t_min))) *
                               np.asarray(out_s), rtol=1e-9, atol=1e-9)


def test_shift_refusals():
  with pytest.raises(ValueError, match="shift=0 must be a finite number > 0"):
    get_schedule("vp", shift=0)
  with pytest.raises(ValueError, match="continuous, fixed schedule"):
    get_schedule("vp_discrete", shift=2.0)


# -- zero terminal SNR (Lin et al. 2024) ---------------------------------------------------------


def test_rescaled_betas_reach_zero_terminal_snr_and_keep_the_first_step():
  b = S.discrete_betas(1000, 0.00085, 0.012, "scaled_linear")  # Stable Diffusion's
  r = S.rescale_zero_terminal_snr(b)
  root, root_r = np.sqrt(np.cumprod(1 - b)), np.sqrt(np.cumprod(1 - r))
  assert root_r[-1] == 0.0 and r[-1] == 1.0
  np.testing.assert_allclose(root_r[0], root[0], rtol=1e-14)
  # sqrt(abar) is moved by one affine map: shift by its last value, scale to keep the first.
  np.testing.assert_allclose(root_r, (root - root[-1]) * root[0] / (root[0] - root[-1]),
                             rtol=1e-12, atol=1e-15)
  assert np.all(np.diff(root_r) < 0)


def test_zero_terminal_snr_schedule_is_pure_noise_at_one_and_exact_at_the_steps():
  z = S.get_schedule("vp_discrete", zero_terminal_snr=True)
  abar = np.cumprod(1 - S.rescale_zero_terminal_snr(S.discrete_betas(1000, 1e-4, 0.02, "linear")))
  t = (np.arange(1000) + 1.0) / 1000
  np.testing.assert_allclose(z.alpha(t)**2, abar, rtol=1e-12, atol=1e-300)
  assert z.alpha(1.0) == 0.0 and z.sigma(1.0) == 1.0 and z.prior_std() == 1.0
  assert z.logsnr(np.asarray([1.0]))[0] == -np.inf
  tail = np.linspace(0.9991, 1.0, 10)  # the last segment: alpha^2 linear in t, down to 0
  a2 = z.alpha(tail)**2
  np.testing.assert_allclose(np.diff(a2), np.diff(a2)[0], rtol=1e-8, atol=1e-15)
  np.testing.assert_allclose(z.t_from_logsnr(z.logsnr(tail[:-1])), tail[:-1], atol=1e-12)
  h, u = 1e-7, np.asarray([0.3005, 0.9994, 0.9996])  # off the knots (beta jumps there)
  for f, df in ((z.alpha, z.dalpha_dt), (z.sigma, z.dsigma_dt)):
    np.testing.assert_allclose((f(u + h) - f(u - h)) / (2 * h), df(u), rtol=1e-5, atol=1e-9)
  plain = S.get_schedule("vp_discrete")  # the default is unchanged
  assert plain.alpha(1.0) > 0


def test_ddim_starts_from_pure_noise_and_the_others_are_refused():
  from diffusion import analytic
  from diffusion.parameterization import Parameterization
  from diffusion.samplers import build_sampler
  z = S.get_schedule("vp_discrete", zero_terminal_snr=True)
  gm = analytic.random_mixture(0, 2, num_components=3)
  with jax.enable_x64(True):
    den = gm.denoiser(z)
    x_T = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)))
    # At alpha = 0 the exact denoiser is the data mean, so one DDIM step 1 -> s is
    # x_s = alpha_s E[x0] + sigma_s x_T exactly.
    mean = np.asarray(gm.weights) @ np.asarray(gm.means)
    np.testing.assert_allclose(np.asarray(den(x_T, jnp.ones(8), None)),
                               np.broadcast_to(mean, (8, 2)), atol=1e-12)
    s = 0.9
    x, _ = build_sampler("ddim", z, time_grid=np.asarray([1.0, s]))(den, jax.random.PRNGKey(0),
                                                                     x_T)
    want = z.alpha(s) * mean + z.sigma(s) * np.asarray(x_T)
    np.testing.assert_allclose(np.asarray(x), want, rtol=1e-12, atol=1e-12)
    out, _ = build_sampler("ddim", z, 10, grid="trailing")(den, jax.random.PRNGKey(0), x_T)
    assert np.all(np.isfinite(np.asarray(out)))
  for name in ("euler", "dpmpp_2m", "heun"):
    with pytest.raises(ValueError, match="zero terminal SNR: only samplers that start from pure "
                                         "noise, e.g. 'ddim'"):
      build_sampler(name, z, 10, grid="trailing")
  with pytest.raises(ValueError, match="'eps' cannot be evaluated at zero terminal SNR.*'v'"):
    Parameterization("eps").check_schedule(z)
  Parameterization("v").check_schedule(z)
