"""APG, CFG rescale, CFG-Zero*, CFG++ and autoguidance (diffusion/guidance/) against exact answers.

Ground truth:
* diffusers 0.42.1's own combinations (``normalized_guidance`` with its ``MomentumBuffer``,
  ``rescale_noise_cfg``, ``ClassifierFreeZeroStarGuidance``) on fixed random predictions
  (tests/data/guidance_family/, made by make_diffusers_fixtures.py there);
* hand-computed 2-D cases of each paper's equations;
* the labelled analytic mixture (float64): each method at its 'no guidance' weight is the exact
  conditional denoiser, and reduces to classifier-free guidance where its paper says it does
  (APG with eta = 1 and no threshold, rescale with phi = 0, CFG-Zero* with s* = 1); CFG++ equals
  DDIM with CFG at the per-step scale l / (1 - tau_{k+1} / tau_k) and is unconditional DDIM at
  l = 0;
* autoguidance: the guided score is grad log(p_good,t^w p_bad,t^(1-w)) (jax.grad, float64), and
  Langevin dynamics at a small t with the guided score converge to that tilted density, computed
  by quadrature on a 2-D grid.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, guidance, schedules
from diffusion.guidance.apg import project
from diffusion.guidance.cfg_rescale import rescale_combine
from diffusion.guidance.cfg_zero_star import optimized_scale, zero_star_combine
from diffusion.samplers import build_sampler
from tests.test_guidance import labelled_mixture  # the same 2-D, 3-class mixture

slow = pytest.mark.slow
VP = schedules.VP()
RF = schedules.RectifiedFlow()
NULL = 3
FIXTURES = os.path.join(os.path.dirname(__file__), "data", "guidance_family",
                        "diffusers_guiders.npz")


APG = guidance.adaptive_projected_guidance
RESCALE = guidance.rescaled_classifier_free
ZERO_STAR = guidance.classifier_free_zero_star


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def points(sched, n=12, seed=0):
  gm = labelled_mixture()
  t = jnp.asarray(np.linspace(0.05, 0.9, n) * sched.t_max)
  x = gm.sample(jax.random.PRNGKey(seed), n, t, sched, jnp.float64)
  labels = jnp.asarray(np.arange(n) % NULL)
  return x, t, labels


def cfg(sched, w):
  return guidance.classifier_free(labelled_mixture().denoiser(sched), w, null_label=NULL)


def close(a, b, tol=1e-11):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------
# The reference implementation's combinations (diffusers 0.42.1)
# ------------------------------------------------------------------------------------------------


def fixtures():
  return dict(np.load(FIXTURES))


def test_apg_matches_diffusers():
  f = fixtures()
  c, u = jnp.asarray(f["cond"]), jnp.asarray(f["uncond"])
  for i, (scale, eta, thr, orig) in enumerate(f["apg_cases"]):
    # diffusers' original formulation: cond + scale * update = the paper's base 'cond' at w = scale
    # + 1; its default: uncond + scale * update = base 'uncond' at w = scale.
    kw = dict(base="cond", w=scale + 1) if orig else dict(base="uncond", w=scale)
    out, _ = guidance.apg_combine(c, u, kw["w"], eta=eta, norm_threshold=thr, base=kw["base"])
    close(out, f[f"apg_{i}"], 1e-12)
  running = None
  for k in range(3):
    out, running = guidance.apg_combine(c + k / 2, u - k / 3, 3.0, eta=0.0, norm_threshold=2.0,
                                        momentum=-0.5, running=running, base="uncond")
    close(out, f["apg_momentum"][k], 1e-12)


def test_rescale_and_zero_star_match_diffusers():
  f = fixtures()
  c, u = jnp.asarray(f["cond"]), jnp.asarray(f["uncond"])
  for phi in (0.0, 0.7, 1.0):
    close(rescale_combine(c, u, 4.0, phi), f[f"rescale_{phi}"], 1e-12)
  # the reference computes s* in float32
  np.testing.assert_allclose(zero_star_combine(c, u, 4.0), f["zero_star"], rtol=2e-6,
                             atol=2e-6)


# ------------------------------------------------------------------------------------------------
# Hand-computed cases of the papers' equations
# ------------------------------------------------------------------------------------------------


def test_apg_hand_computed():
  c, u = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])  # D = (1, -1): par (1, 0), orth (0, -1)
  close(guidance.apg_combine(c, u, 3.0, eta=0.0)[0], [[1.0, -2.0]])
  close(guidance.apg_combine(c, u, 3.0, eta=0.5)[0], [[2.0, -2.0]])
  r = 1 / np.sqrt(2)  # threshold 1: D -> D / sqrt(2)
  close(guidance.apg_combine(c, u, 3.0, eta=0.0, norm_threshold=1.0)[0], [[1.0, -2 * r]])
  close(guidance.apg_combine(c, u, 3.0, eta=0.0, norm_threshold=5.0)[0], [[1.0, -2.0]])
  close(guidance.apg_combine(c, u, 3.0, eta=0.0, base="uncond")[0], [[0.0, -2.0]])
  par, orth = project(jnp.array([[2.0, 3.0]]), jnp.array([[0.0, 5.0]]))
  close(par, [[0.0, 3.0]])
  close(orth, [[2.0, 0.0]])


def test_rescale_hand_computed():
  c, u = jnp.array([[1.0, 3.0]]), jnp.array([[1.0, 1.0]])  # w = 2: g = (1, 5), std 2 vs std 1
  close(rescale_combine(c, u, 2.0, 1.0), [[0.5, 2.5]])
  close(rescale_combine(c, u, 2.0, 0.5), [[0.75, 3.75]])
  close(rescale_combine(c, u, 2.0, 0.0), [[1.0, 5.0]])


def test_zero_star_hand_computed():
  c, u = jnp.array([[1.0, 1.0]]), jnp.array([[2.0, 0.0]])  # s* = 2 / 4
  close(optimized_scale(c, u, 0.0), [[0.5]])
  close(zero_star_combine(c, u, 3.0, eps=0.0), [[1.0, 3.0]])
  close(zero_star_combine(c, u, 3.0, optimized=False), [[-1.0, 3.0]])


# ------------------------------------------------------------------------------------------------
# Exact reductions on the mixture
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sched", [VP, pytest.param(RF, marks=slow)], ids=["vp", "rf"])
def test_reductions_to_cfg_and_to_the_conditional(sched):
  gm = labelled_mixture()
  den = gm.denoiser(sched)
  x, t, labels = points(sched)
  exact = gm.denoise(x, t, labels, schedule=sched)
  for w in (1.0, 2.5):
    ref = exact if w == 1.0 else cfg(sched, w)(x, t, labels)
    close(APG(den, w, null_label=NULL, eta=1.0)(x, t, labels), ref)
    for space in guidance.SPACES:
      close(RESCALE(den, w, null_label=NULL, phi=0.0, space=space,
                                 schedule=sched)(x, t, labels), ref, 1e-9)
      close(ZERO_STAR(den, w, null_label=NULL, space=space, schedule=sched,
                                   optimized=False)(x, t, labels), ref, 1e-9)
  for space in guidance.SPACES:  # w = 1 with the method's own extras switched on
    close(RESCALE(den, 1.0, null_label=NULL, phi=0.7, space=space,
                               schedule=sched)(x, t, labels), exact, 1e-9)
    close(ZERO_STAR(den, 1.0, null_label=NULL, space=space,
                                 schedule=sched)(x, t, labels), exact, 1e-9)
  close(APG(den, 1.0, null_label=NULL, norm_threshold=0.5)(x, t, labels), exact)
  close(guidance.autoguidance(den, lambda x, t, c=None: 0 * x, 1.0)(x, t, labels), exact)
  # and the methods do guide at w != 1, differently from CFG
  ref = cfg(sched, 3.0)(x, t, labels)
  for g in (APG(den, 3.0, null_label=NULL, eta=0.0),
            RESCALE(den, 3.0, null_label=NULL, schedule=sched),
            ZERO_STAR(den, 3.0, null_label=NULL, schedule=sched)):
    assert float(jnp.max(jnp.abs(g(x, t, labels) - ref))) > 1e-3


def test_spaces():
  x, t, _ = points(VP)
  x0 = x[::-1] * 0.7
  eps = (x - VP.alpha(t)[:, None] * x0) / VP.sigma(t)[:, None]
  close(guidance.to_space(x0, x, t, VP, "eps"), eps)
  close(guidance.to_space(x0, x, t, VP, "v"), VP.alpha(t)[:, None] * eps - VP.sigma(t)[:, None]
        * x0)
  x, t, _ = points(RF)
  eps = (x - RF.alpha(t)[:, None] * x0) / RF.sigma(t)[:, None]
  close(guidance.to_space(x0, x, t, RF, "velocity"), eps - x0)
  for space in guidance.SPACES:
    close(guidance.from_space(guidance.to_space(x0, x, t, RF, space), x, t, RF, space), x0, 1e-10)


def test_zero_star_optimized_scale_in_velocity_space():
  """s* of the rectified-flow velocities v = eps - x0, recomputed by hand; zero-init gives x0 = x
  (zero velocity) above zero_init_t, for VP the PF-ODE velocity alpha' x0 + sigma' eps = 0."""
  gm = labelled_mixture()
  x, t, labels = points(RF)
  den = gm.denoiser(RF)
  x0c, x0u = gm.denoise(x, t, labels, schedule=RF), gm.denoise(x, t, None, schedule=RF)
  a, s = RF.alpha(t)[:, None], RF.sigma(t)[:, None]
  vc, vu = (x - a * x0c) / s - x0c, (x - a * x0u) / s - x0u
  st = jnp.sum(vc * vu, -1, keepdims=True) / (jnp.sum(vu * vu, -1, keepdims=True) + 1e-8)
  v = st * vu + 3.0 * (vc - st * vu)
  ref = (x - s * v) / (a + s)  # v = eps - x0 = (x - x0) / s  (a + s = 1)
  close(ZERO_STAR(den, 3.0, null_label=NULL, schedule=RF)(x, t, labels), ref, 1e-9)
  tz = float(t[7])
  out = ZERO_STAR(den, 3.0, null_label=NULL, schedule=RF, zero_init_t=tz)(x, t,
                                                                                       labels)
  close(out[8:], x[8:])
  close(out[:8], ref[:8], 1e-9)
  x, t, labels = points(VP)
  out = ZERO_STAR(guidance_mixture_vp(), 3.0, null_label=NULL, schedule=VP,
                               zero_init_t=0.0)(x, t, labels)
  a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
  vel = VP.dalpha_dt(t)[:, None] * out + VP.dsigma_dt(t)[:, None] * (x - a * out) / s
  close(vel, 0 * vel, 1e-9)


def guidance_mixture_vp():
  return labelled_mixture().denoiser(VP)


@pytest.mark.parametrize("sched", [VP, RF], ids=["vp", "rf"])
def test_interval_keeps_the_conditional_outside(sched):
  gm = labelled_mixture()
  den = gm.denoiser(sched)
  x, t, labels = points(sched)
  lo, hi = float(t[3]), float(t[8])
  inside = (np.asarray(t) >= lo) & (np.asarray(t) <= hi)
  exact = np.asarray(gm.denoise(x, t, labels, schedule=sched))
  for make in (lambda **k: APG(den, 3.0, null_label=NULL, eta=0.0, **k),
               lambda **k: RESCALE(den, 3.0, null_label=NULL, schedule=sched, **k),
               lambda **k: ZERO_STAR(den, 3.0, null_label=NULL, schedule=sched, **k),
               lambda **k: guidance.autoguidance(den, lambda x, t, c=None: 0 * x, 3.0, **k)):
    out, full = np.asarray(make(interval=(lo, hi))(x, t, labels)), make()(x, t, labels)
    close(out[~inside], exact[~inside], 1e-12)
    close(out[inside], np.asarray(full)[inside], 1e-12)


def test_dict_cond_and_null_label():
  """A dict cond (labels plus other per-sample entries) guides like the bare labels; NULL-labelled
  samples get the unconditional denoiser."""
  gm = labelled_mixture()
  den = gm.denoiser(VP)
  x, t, labels = points(VP)
  g = ZERO_STAR(den, 3.0, null_label=NULL, schedule=VP)
  close(g(x, t, {"label": labels, "y": x}), g(x, t, labels), 0.0)
  nul = jnp.full_like(labels, NULL)
  unc = gm.denoise(x, t, None, schedule=VP)
  close(APG(den, 3.0, null_label=NULL, eta=0.0)(x, t, nul), unc, 1e-12)
  # s* = |u|^2 / (|u|^2 + 1e-8) (the reference's eps): 1 only up to ~1e-8 / |u|^2
  close(ZERO_STAR(den, 3.0, null_label=NULL, schedule=VP, space="x0")(x, t, nul), unc, 1e-6)


def test_cost_info():
  gm = labelled_mixture()
  den = gm.denoiser(VP)
  for g, name in ((APG(den, 2.0, null_label=NULL),
                   "adaptive_projected_guidance"),
                  (RESCALE(den, 2.0, null_label=NULL, schedule=VP),
                   "rescaled_classifier_free"),
                  (ZERO_STAR(den, 2.0, null_label=NULL, schedule=VP),
                   "classifier_free_zero_star")):
    assert guidance.denoiser_info(g) == {"batch_multiplier": 2, "network_vjp": False,
                                         "transforms": (name,)}
  ag = guidance.autoguidance(den, gm.denoiser(VP), 2.0)
  assert guidance.denoiser_info(ag) == {"batch_multiplier": 1, "network_vjp": False,
                                        "transforms": ("autoguidance",),
                                        "guide_batch_multiplier": 1}
  both = guidance.classifier_free(ag, 2.0, null_label=NULL)  # CFG of an autoguided model
  assert guidance.denoiser_info(both)["guide_batch_multiplier"] == 2
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (3, 2))
  _, info = build_sampler("heun", VP, 4)(ag, jax.random.PRNGKey(1), x_T, jnp.array([0, 1, 2]))
  assert info["guide_batch_multiplier"] == 1 and info["batch_multiplier"] == 1


# ------------------------------------------------------------------------------------------------
# CFG++
# ------------------------------------------------------------------------------------------------


def cfg_with_step_weights(den, grid, weights):
  """CFG whose scale at grid time t_k is weights[k] (exact lookup)."""
  gt, wt = jnp.asarray(grid[:-1]), jnp.asarray(weights)

  def g(x, t, cond):
    x0c, x0u = den(x, t, cond), den(x, t, jnp.full_like(cond, NULL))
    w = wt[jnp.argmin(jnp.abs(t[:, None] - gt[None]), axis=1)][:, None]
    return x0u + w * (x0c - x0u)

  return g


@pytest.mark.parametrize("sched", [VP, pytest.param(RF, marks=slow)], ids=["vp", "rf"])
def test_cfgpp_equals_ddim_with_per_step_cfg(sched):
  gm = labelled_mixture()
  den = gm.denoiser(sched)
  grid = np.linspace(sched.t_max, sched.t_min * 20, 13)
  x_T = sched.prior_sample(jax.random.PRNGKey(3), (9, 2)).astype(jnp.float64)
  labels = jnp.asarray(np.arange(9) % NULL)
  key = jax.random.PRNGKey(0)
  ddim = build_sampler("ddim", sched, time_grid=grid, final_denoise=False)
  tau = np.asarray(sched.sigma(grid) / sched.alpha(grid))
  for lam in (0.0, 0.4, 1.0):
    x, info = guidance.cfgpp_ddim(den, sched, key, x_T, grid, weight=lam, null_label=NULL,
                                  cond=labels)
    assert info["nfe"] == 12 and info["batch_multiplier"] == 2
    w_k = lam / (1 - tau[1:] / tau[:-1])
    ref, _ = ddim(cfg_with_step_weights(den, grid, w_k), key, x_T, labels)
    close(x, ref, 1e-9)
    if lam == 0.0:
      unc, _ = ddim(den, key, x_T, jnp.full((9,), NULL))
      close(x, unc, 1e-10)
  # the final step to sigma = 0 returns x0_l
  xf, info = guidance.cfgpp_ddim(den, sched, key, x_T, grid, weight=0.5, null_label=NULL,
                                 cond=labels, final_denoise=True)
  assert info["nfe"] == 13
  x12, _ = guidance.cfgpp_ddim(den, sched, key, x_T, grid, weight=0.5, null_label=NULL,
                               cond=labels)
  pair = guidance.cfgpp_pair(den, 0.5, null_label=NULL)
  close(xf, pair(x12, jnp.full((9,), grid[-1]), labels)[0])
  # outside the interval: the plain conditional DDIM step (here: an interval missing the grid)
  xi, _ = guidance.cfgpp_ddim(den, sched, key, x_T, grid, weight=0.5, null_label=NULL,
                              cond={"label": labels}, interval=(-2.0, -1.0))
  close(xi, ddim(den, key, x_T, labels)[0], 1e-10)


def test_cfgpp_pure_noise_start_and_refusals():
  gm = labelled_mixture()
  zt = schedules.DiscreteVP(zero_terminal_snr=True)  # alpha(1) = 0: pure noise at the start
  grid = np.linspace(1.0, 0.05, 8)
  assert float(zt.alpha(grid[0])) == 0.0
  x_T = jax.random.normal(jax.random.PRNGKey(0), (4, 2), jnp.float64)
  x, _ = guidance.cfgpp_ddim(gm.denoiser(zt), zt, None, x_T, grid, weight=0.6, null_label=NULL,
                             cond=jnp.array([0, 1, 2, 0]))
  assert np.all(np.isfinite(np.asarray(x)))
  assert guidance.check_cfgpp_sampler("ddim", {}) is False
  assert guidance.check_cfgpp_sampler("ddim", {"final_denoise": True, "eta": 0.0}) is True
  with pytest.raises(ValueError, match="DDIM sampler only.*'heun'"):
    guidance.check_cfgpp_sampler("heun", {})
  with pytest.raises(ValueError, match="eta must be 0"):
    guidance.check_cfgpp_sampler("ddim", {"eta": 1.0})
  for lam in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="weight"):
      guidance.cfgpp_ddim(gm.denoiser(VP), VP, None, x_T, grid, weight=lam, null_label=NULL,
                          cond=jnp.zeros(4, int))


# ------------------------------------------------------------------------------------------------
# Autoguidance
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(None)
def good_bad():
  """A 2-D mixture and a degraded version: covariances x2.5 and weights perturbed."""
  means = np.array([[-1.0, 0.0], [1.0, 0.4], [0.0, 1.3]])
  covs = np.array([np.diag([0.15, 0.1]), [[0.12, 0.05], [0.05, 0.1]], np.diag([0.08, 0.2])])
  good = analytic.GaussianMixture.create([0.3, 0.45, 0.25], means, covs)
  bad = analytic.GaussianMixture.create([0.4, 0.3, 0.3], means, 2.5 * covs)
  return good, bad


W_AUTO = 2.0


def tilted_log_density(x, t, w=W_AUTO, sched=VP):
  good, bad = good_bad()
  return w * good.log_prob(x, t, sched) + (1 - w) * bad.log_prob(x, t, sched)


def guided_score(x, t, w=W_AUTO, sched=VP):
  good, bad = good_bad()
  x0 = guidance.autoguidance(good.denoiser(sched), bad.denoiser(sched), w)(x, t)
  a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
  return (a * x0 - x) / s**2


def test_autoguidance_score_is_grad_log_tilted():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64) * 1.5
  t = jnp.asarray(np.linspace(0.02, 0.9, 16))
  for w in (0.5, 2.0, 3.5):
    ref = jax.grad(lambda z: jnp.sum(tilted_log_density(z, t, w)))(x)
    close(guided_score(x, t, w), ref, 1e-9)


def grid_moments(t, w=W_AUTO, n=241, half=3.5):
  """Mean (2,), covariance (2, 2) of p_good,t^w p_bad,t^(1-w) / Z by quadrature on a grid."""
  g = np.linspace(-half, half, n)
  xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  lp = np.asarray(tilted_log_density(jnp.asarray(xx), jnp.full((len(xx),), t), w))
  p = np.exp(lp - lp.max())
  p /= p.sum()
  m = p @ xx
  c = (xx - m).T @ ((xx - m) * p[:, None])
  return m, c, (g, p.reshape(n, n))


def annealed_langevin(t_end, per_level, final, levels=10, eps=0.2, n=4000, seed=1):
  """Unadjusted Langevin x <- x + h score + sqrt(2h) z with the autoguided score: ``per_level``
  steps at each of ``levels`` times from 0.4 down to t_end (geometric), then ``final`` steps at
  t_end; h = eps sigma(t)^2. Its stationary law at fixed t is the tilted p_t (up to O(h))."""
  ts = np.concatenate([np.repeat(np.geomspace(0.4, t_end, levels), per_level),
                       np.full(final, t_end)])
  hs = eps * np.asarray(VP.sigma(ts))**2
  x = jax.random.normal(jax.random.PRNGKey(seed), (n, 2), jnp.float64)
  key = jax.random.PRNGKey(seed + 1)

  def body(x, s):
    t, h, j = s
    z = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
    return x + h * guided_score(x, jnp.full((n,), t)) + jnp.sqrt(2 * h) * z, None

  run = jax.jit(lambda x, ts, hs: jax.lax.scan(body, x, (ts, hs, jnp.arange(len(ts))))[0])
  return run(x, jnp.asarray(ts), jnp.asarray(hs))


def moment_error(x, m, c):
  x = np.asarray(x)
  return np.abs(x.mean(0) - m).max() + np.abs(np.cov(x.T) - c).max()


@slow
def test_autoguided_langevin_converges_to_the_tilted_density():
  """Measured (4,000 chains, moment error = max |mean error| + max |cov error|): 0.35 after
  2 x 10 + 10 steps, 0.14 after 10 x 10 + 50, 0.03 after 100 x 10 + 300; the Monte Carlo floor
  is ~0.02."""
  t = 0.02  # VP: sigma ~ 0.077
  m, c, _ = grid_moments(t)
  few, many = (moment_error(annealed_langevin(t, k, f), m, c) for k, f in ((2, 10), (100, 300)))
  assert many < 0.06 and few > 0.2, (few, many)
  # and the good model's own density is measurably different
  xg = np.asarray(good_bad()[0].sample(jax.random.PRNGKey(5), 4000, t, VP, jnp.float64))
  assert moment_error(xg, m, c) > 3 * many


# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------


def test_argument_errors():
  den = labelled_mixture().denoiser(VP)
  cases = [
      (lambda: APG(den, float("nan"), null_label=NULL), ValueError, "weight"),
      (lambda: APG(den, 2.0, null_label=0), ValueError, "null_label"),
      (lambda: APG(den, 2.0, null_label=NULL, momentum=-0.5), ValueError, "state"),
      (lambda: APG(den, 2.0, null_label=NULL, base="x"), ValueError, "'x'"),
      (lambda: APG(den, 2.0, null_label=NULL, norm_threshold=-1.0), ValueError, "-1.0"),
      (lambda: APG(den, 2.0, null_label=NULL, eta="1"), ValueError, "eta"),
      (lambda: APG("f", 2.0, null_label=NULL), TypeError, "callable"),
      (lambda: RESCALE(den, 2.0, null_label=NULL), TypeError, "schedule"),
      (lambda: RESCALE(den, 2.0, null_label=NULL, phi=1.5, schedule=VP), ValueError,
       "1.5"),
      (lambda: RESCALE(den, 2.0, null_label=NULL, space="noise", schedule=VP),
       ValueError, "'noise'"),
      (lambda: ZERO_STAR(den, 2.0, null_label=NULL, space="x0", zero_init_t=0.9),
       TypeError, "zero_init_t"),
      (lambda: ZERO_STAR(den, 2.0, null_label=NULL, schedule=VP, optimized=1),
       TypeError, "optimized"),
      (lambda: ZERO_STAR(den, 2.0, null_label=NULL, schedule=VP, eps=-1.0),
       ValueError, "eps"),
      (lambda: ZERO_STAR(den, 2.0, null_label=NULL, schedule=VP,
                                      interval=(0.5, 0.1)), ValueError, "interval"),
      (lambda: guidance.autoguidance(den, None, 2.0), TypeError, "guide"),
      (lambda: guidance.autoguidance(den, den, float("inf")), ValueError, "weight"),
  ]
  for make, exc, msg in cases:
    with pytest.raises(exc, match=msg):
      make()
  g = APG(den, 2.0, null_label=NULL)
  with pytest.raises(ValueError, match="needs class labels"):
    g(jnp.zeros((2, 2)), jnp.full((2,), 0.5), None)
