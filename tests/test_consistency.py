"""Consistency models (diffusion/consistency.py, the 'consistency' sampler) against ground truth.

The analytic Gaussian mixture's exact denoiser gives the exact consistency function: the PF-ODE
map from (x, t) to t_min, here ``ode_consistency_fn`` (RK4 in log sigma, float64), itself checked
against a diffrax Dopri8 solution and the registry's DPM-Solver-3. With it: one- and multi-step
consistency sampling give exact samples; the CD loss with an exact teacher step is ~0 and grows
for a perturbed student; the CT loss is biased at finite N and its bias shrinks with N.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, consistency as cm, schedules
from diffusion.parameterization import Parameterization
from diffusion.samplers import build_sampler, sampler_info
from tests.conftest import counting_denoiser

slow = pytest.mark.slow
EDM, VP = schedules.EDM(), schedules.VP()


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@functools.lru_cache(None)
def mixture(dim: int = 2) -> analytic.GaussianMixture:
  return analytic.random_mixture(0, dim, num_components=4)


def exact_consistency_fn(gm, schedule, steps=256):
  """The exact consistency function of ``gm`` under ``schedule`` (to RK4's O(steps^-4)), jitted;
  cached per (mixture, schedule, steps) so that tests share compilations."""
  return _exact_fn(id(gm), gm, schedule, steps)


_CACHE = {}


def _exact_fn(key, gm, schedule, steps):
  k = (key, schedule, steps)
  if k not in _CACHE:
    _CACHE[k] = jax.jit(cm.ode_consistency_fn(gm.denoiser(schedule), schedule, steps))
  return _CACHE[k]


def reference_ode(gm, schedule, x, t0, t1):
  import diffrax

  def vf(t, y, args):
    return schedule.drift(t) * y - 0.5 * schedule.diffusion_sq(t) * gm.score(y, t, schedule)

  sol = diffrax.diffeqsolve(diffrax.ODETerm(vf), diffrax.Dopri8(), t0=t0, t1=t1, dt0=-1e-3, y0=x,
                            stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
                            max_steps=200_000)
  return np.asarray(sol.ys[-1])


# ------------------------------------------------------------------------------------------------
# (a) Boundary parameterization
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sch", [EDM, VP], ids=lambda s: s.name)
def test_boundary_parameterization(sch):
  """f(x, t_min) = x / alpha(t_min) exactly, whatever the network; c_skip / c_out are CM App. C's
  and reduce to EDM's preconditioning for s_min = 0."""
  net = lambda x_in, c, cond: jnp.sin(3 * x_in) + 5.0 + c[:, None]
  f = cm.make_consistency_fn(net, sch, sigma_data=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3), jnp.float64)
  a_min = float(sch.alpha(np.float64(sch.t_min)))
  np.testing.assert_array_equal(np.asarray(f(x, jnp.full((6,), sch.t_min))), np.asarray(x / a_min))
  # Elsewhere the network matters.
  assert not np.allclose(f(x, jnp.full((6,), 0.5 * sch.t_max)), x)
  s_min, sd = 0.002, 0.5
  s = np.array([0.002, 0.01, 0.5, 3.0, 80.0])
  c_skip, c_out = cm.boundary_coefficients(jnp.asarray(s), s_min, sd)
  np.testing.assert_allclose(c_skip, sd**2 / ((s - s_min)**2 + sd**2), rtol=1e-14)
  np.testing.assert_allclose(c_out, sd * (s - s_min) / np.sqrt(sd**2 + s**2), rtol=1e-14)
  assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
  _, edm_skip, edm_out = Parameterization("edm")._edm_skip_out(jnp.zeros((5, 1)), jnp.asarray(s),
                                                               EDM)
  c_skip0, c_out0 = cm.boundary_coefficients(jnp.asarray(s), 0.0, sd)
  np.testing.assert_allclose(c_skip0, edm_skip[:, 0], rtol=1e-14)
  np.testing.assert_allclose(c_out0, edm_out[:, 0], rtol=1e-14)


# ------------------------------------------------------------------------------------------------
# The exact consistency function and the teacher steps
# ------------------------------------------------------------------------------------------------


# EDM is slow (~50 s on a loaded host): the map itself is schedule-agnostic and VP checks it here.
@pytest.mark.parametrize("sch", [pytest.param(EDM, marks=pytest.mark.slow), VP],
                         ids=lambda s: s.name)
def test_exact_consistency_fn_is_the_ode_map(sch):
  """ode_consistency_fn (512 RK4 steps) vs diffrax Dopri8 (rtol = atol = 1e-11) and the registry's
  DPM-Solver-3 (1000 steps, uniform logSNR) from t_max, and from a mid time; identity at t_min."""
  gm = mixture(2)
  x = gm.sample(jax.random.PRNGKey(1), 16, sch.t_max, sch, jnp.float64)
  a_min = float(sch.alpha(np.float64(sch.t_min)))
  ref = reference_ode(gm, sch, x, sch.t_max, sch.t_min) / a_min
  f = exact_consistency_fn(gm, sch, 512)
  got = np.asarray(f(x, jnp.full((16,), sch.t_max)))
  assert np.max(np.abs(got - ref)) < 1e-7, np.max(np.abs(got - ref))
  dpm, _ = build_sampler("dpm_solver_3", sch, 1000, grid="logsnr")(gm.denoiser(sch), None, x)
  assert np.max(np.abs(got - np.asarray(dpm) / a_min)) < 1e-7
  # Per-sample start times (traced): each sample from its own t.
  t_mid = np.linspace(0.3, 0.9, 16) * sch.t_max
  x_mid = gm.sample(jax.random.PRNGKey(2), 16, 0.5 * sch.t_max, sch, jnp.float64)
  got = np.asarray(f(x_mid, jnp.asarray(t_mid)))
  for b in (0, 15):
    r = reference_ode(gm, sch, x_mid[b:b + 1], t_mid[b], sch.t_min) / a_min
    assert np.max(np.abs(got[b] - r[0])) < 1e-7
  np.testing.assert_array_equal(np.asarray(f(x, jnp.full((16,), sch.t_min))), x / a_min)


@pytest.mark.parametrize("sch", [EDM, VP], ids=lambda s: s.name)
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_traced_teacher_step_equals_registry(sch, method):
  """For concrete times the traced Euler / Heun step is the registry's sampler on [t_from, t_to],
  and so is teacher_step_from_sampler; the latter refuses traced times and stochastic samplers."""
  gm = mixture(2)
  den = gm.denoiser(sch)
  x = gm.sample(jax.random.PRNGKey(3), 8, 0.3 * sch.t_max, sch, jnp.float64)
  t0, t1 = 0.3 * sch.t_max, 0.1 * sch.t_max
  traced = cm.traced_teacher_step(method, sch, den)
  a = np.asarray(jax.jit(traced)(x, t0, t1))
  b = np.asarray(cm.teacher_step_from_sampler(method, sch, den)(x, t0, t1))
  reg, info = build_sampler(method, sch, time_grid=[t0, t1], final_denoise=False)(den, None, x)
  np.testing.assert_allclose(a, np.asarray(reg), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(b, np.asarray(reg), rtol=1e-12, atol=1e-12)
  assert int(info["nfe"]) == (1 if method == "euler" else 2)
  step = cm.teacher_step_from_sampler(method, sch, den)
  with pytest.raises(TypeError, match="traced"):
    jax.jit(lambda y, t: step(y, t, t1))(x, t0)
  with pytest.raises(ValueError, match="stochastic"):
    cm.teacher_step_from_sampler("ddpm", sch, den)


# ------------------------------------------------------------------------------------------------
# (b) Consistency sampling with the exact consistency function gives exact samples
# ------------------------------------------------------------------------------------------------


def _stats(gm, x, sch):
  """(mean, covariance, soft component weights) of samples x (n, D) at t_min."""
  x = np.asarray(x, np.float64)
  one = jnp.ones((x.shape[0], 1), jnp.float64)
  s_min = float(sch.edm_sigma(np.float64(sch.t_min)))
  logc, _, _ = gm._components(jnp.asarray(x), one, s_min * one)
  r = np.asarray(jax.nn.softmax(logc, axis=-1))
  return x.mean(0), np.cov(x.T), r.mean(0)


def _check_exact(gm, sch, x, n, extra=0.0):
  s_min = float(sch.edm_sigma(np.float64(sch.t_min)))
  m0 = np.asarray(gm.mean())
  c0 = np.asarray(gm.covariance()) + s_min**2 * np.eye(gm.dim)
  w0 = _stats(gm, gm.sample(jax.random.PRNGKey(99), 100_000, sch.t_min, sch, jnp.float64)
              / float(sch.alpha(np.float64(sch.t_min))), sch)[2]
  mean, cov, w = _stats(gm, x, sch)
  sd = np.sqrt(np.diag(c0))
  np.testing.assert_array_less(np.abs(mean - m0), 4 * sd / math.sqrt(n) + extra)
  tol_cov = 4 * np.sqrt((np.outer(sd**2, sd**2) + c0**2) / n) * 1.5 + extra
  np.testing.assert_array_less(np.abs(cov - c0), tol_cov)
  np.testing.assert_array_less(np.abs(w - w0), 4 * np.sqrt(w0 * (1 - w0) / n) + extra)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_is_exact(steps):
  """EDM schedule, 2-D mixture, 4,000 samples from exact x_T ~ p_T: CM Alg. 1 with the exact
  consistency function on the Karras grid (1, 2, 4 evaluations) matches the exact distribution at
  t_min (mean, covariance, component weights within 4 standard errors); NFE counted = steps."""
  gm, sch, n = mixture(2), EDM, 4000
  f, count = counting_denoiser(exact_consistency_fn(gm, sch, 128))
  x_T = gm.sample(jax.random.PRNGKey(4), n, sch.t_max, sch, jnp.float64)
  x, out = build_sampler("consistency", sch, steps)(f, jax.random.PRNGKey(5), x_T)
  jax.block_until_ready(x)
  assert int(out["nfe"]) == count[0] == steps
  _check_exact(gm, sch, x, n)


def test_consistency_sampling_from_the_prior():
  """x_T ~ N(0, T^2 I) (CM's prior) instead of p_T: the prior mismatch (data variance / T^2 ~
  3e-4) is below the Monte Carlo error at 4,000 samples; and the re-noising is fresh: 2-step
  samples differ from 1-step ones and across keys."""
  gm, sch, n = mixture(2), EDM, 4000
  f = exact_consistency_fn(gm, sch, 128)
  x_T = sch.prior_sample(jax.random.PRNGKey(6), (n, 2)).astype(jnp.float64)
  one, _ = build_sampler("consistency", sch, 1)(f, jax.random.PRNGKey(7), x_T)
  _check_exact(gm, sch, one, n)
  two, _ = build_sampler("consistency", sch, 2)(f, jax.random.PRNGKey(7), x_T)
  two_b, _ = build_sampler("consistency", sch, 2)(f, jax.random.PRNGKey(8), x_T)
  _check_exact(gm, sch, two, n)
  assert np.mean(np.abs(np.asarray(two) - np.asarray(one))) > 0.1
  assert np.mean(np.abs(np.asarray(two) - np.asarray(two_b))) > 0.1


def test_consistency_sampler_registry_and_grid():
  """Kind 'consistency', NFE = num_steps, rows at t_0 .. t_{N-1} with the CM Alg. 1 re-noising
  sqrt(s_n^2 - s_N^2) (alpha-scaled on VP)."""
  from diffusion.samplers import consistency as cs
  info = sampler_info("consistency")
  assert info.kind == "consistency" and info.nfe(4, {}) == 4 and info.defaults() == {}
  grid = np.array([0.9, 0.5, 0.2, 0.01])
  prog = cs.consistency_program(VP, grid)
  assert [r.t for r in prog.rows] == [0.9, 0.5, 0.2]
  s = lambda t: float(VP.edm_sigma(np.float64(t)))
  a = float(VP.alpha(np.float64(0.5)))
  np.testing.assert_allclose(prog.rows[1].y["z"], a * math.sqrt(s(0.5)**2 - s(0.01)**2),
                             rtol=1e-12)
  np.testing.assert_allclose(prog.rows[1].y["x"], a, rtol=1e-12)
  assert prog.rows[0].y == {"x": 1.0}


# ------------------------------------------------------------------------------------------------
# (c) Losses at the exact consistency function
# ------------------------------------------------------------------------------------------------


def _perturbed(f, eps):
  return lambda x, t, cond=None: f(x, t, cond) + eps * jnp.tanh(x) * jnp.log(t)[:, None]


def test_cd_loss_zero_at_exact_and_grows_with_perturbation():
  """EDM schedule, N = 18: the CD loss with the exact consistency function as student and target
  and an exact teacher step (16 RK4 steps) is ~0 (< 1e-12, squared L2); a student perturbed by
  eps g gives a loss growing like eps^2 (ratio ~100 per decade of eps)."""
  gm, sch = mixture(2), EDM
  f = exact_consistency_fn(gm, sch, 256)
  teacher = cm.rk4_teacher_step(gm.denoiser(sch), sch, 16)
  x0 = gm.sample0(jax.random.PRNGKey(9), 512, jnp.float64)
  key = jax.random.PRNGKey(10)
  loss = lambda fs: float(cm.consistency_distillation_loss(fs, f, teacher, x0, key, sch, 18)[0])
  base = loss(f)
  assert base < 1e-12, base
  l3, l2 = loss(_perturbed(f, 1e-3)), loss(_perturbed(f, 1e-2))
  assert l3 > 1e3 * max(base, 1e-16) and 50 < l2 / l3 < 200, (base, l3, l2)
  # iCT's defaults (pseudo-Huber, 1/(s_{i+1} - s_i), log-normal index) and no EMA target: ~0 too.
  ict = dict(metric="pseudo_huber", weighting="ict", index_distribution="lognormal")
  l_ict, aux = cm.consistency_distillation_loss(f, None, teacher, x0, key, sch, 18, **ict)
  assert float(l_ict) < 1e-9 and aux["distance"].shape == (512,)
  # A Heun teacher step: discretisation-biased, the bias shrinking fast with N (local error
  # O(Delta s^3), so the squared-L2 loss falls like N^-6 at best).
  heun = cm.traced_teacher_step("heun", sch, gm.denoiser(sch))
  l_heun = [float(cm.consistency_distillation_loss(f, f, heun, x0, key, sch, n)[0])
            for n in (18, 72)]
  assert l_heun[0] > 1e3 * max(base, 1e-16) and l_heun[1] < l_heun[0] / 100, (base, l_heun)


def test_cd_loss_with_registry_teacher_at_a_fixed_index():
  """A fixed index gives concrete times, so a registry sampler can be the teacher: with 'heun' it
  equals the traced Heun teacher's loss."""
  gm, sch = mixture(2), EDM
  f = exact_consistency_fn(gm, sch, 64)
  den = gm.denoiser(sch)
  x0 = gm.sample0(jax.random.PRNGKey(11), 64, jnp.float64)
  key = jax.random.PRNGKey(12)
  kw = dict(index=5)
  a = cm.consistency_distillation_loss(f, f, cm.teacher_step_from_sampler("heun", sch, den), x0,
                                       key, sch, 18, **kw)[0]
  b = cm.consistency_distillation_loss(f, f, cm.traced_teacher_step("heun", sch, den), x0, key,
                                       sch, 18, **kw)[0]
  np.testing.assert_allclose(float(a), float(b), rtol=1e-9)
  assert float(a) > 0


def ct_bias(n_scales, weighting, num=2000, seed=13):
  gm, sch = mixture(2), EDM
  f = exact_consistency_fn(gm, sch, 32)
  x0 = gm.sample0(jax.random.PRNGKey(seed), num, jnp.float64)
  return float(cm.consistency_training_loss(f, None, x0, jax.random.PRNGKey(seed + 1), sch,
                                            n_scales, metric="l2", weighting=weighting,
                                            index_distribution="uniform")[0])


@pytest.mark.slow  # ~14 s; CD's loss at the exact map (above) and CT's curriculum (below) stay fast
def test_ct_loss_bias_shrinks_with_n():
  """The CT loss at the exact consistency function (squared L2, uniform index) is not 0 at finite
  N: with lambda = 1 it shrinks like N^-2 (mean of Delta s^2), with iCT's lambda = 1/Delta s like
  N^-1 (the slopes of log loss against log N over N = 10, 20, 40, 80: measured about 2.0 and
  1.0, see docs/consistency.md)."""
  ns = np.array([10, 20, 40, 80])
  for weighting, expected in (("uniform", 2.0), ("ict", 1.0)):
    losses = np.array([ct_bias(int(n), weighting) for n in ns])
    slope = -np.polyfit(np.log(ns), np.log(losses), 1)[0]
    assert np.all(np.diff(losses) < 0), (weighting, losses)
    assert abs(slope - expected) < 0.3, (weighting, slope, losses)


def test_loss_gradient_flows_to_the_student_only():
  """With ``f_target=None`` (iCT, no EMA) the gradient is that of the student branch alone: equal
  to the gradient with a frozen copy of the parameters as the target."""
  sch = EDM
  x0 = mixture(2).sample0(jax.random.PRNGKey(14), 32, jnp.float64)

  def net(w):
    return lambda x_in, c, cond: jnp.tanh(x_in @ w) + c[:, None]

  w0 = jnp.asarray(np.random.RandomState(0).randn(2, 2))
  key = jax.random.PRNGKey(15)

  def loss(w, w_target):
    fs = cm.make_consistency_fn(net(w), sch)
    ft = None if w_target is None else cm.make_consistency_fn(net(w_target), sch)
    return cm.consistency_training_loss(fs, ft, x0, key, sch, 11)[0]

  g_none = jax.jit(jax.grad(lambda w: loss(w, None)))(w0)
  g_frozen = jax.jit(jax.grad(lambda w: loss(w, w0)))(w0)
  np.testing.assert_allclose(g_none, g_frozen, rtol=1e-12)
  assert np.all(np.isfinite(g_none)) and np.abs(g_none).max() > 0


# ------------------------------------------------------------------------------------------------
# (d) Discretisation, curriculum, index distribution, pseudo-Huber
# ------------------------------------------------------------------------------------------------


def test_curriculum_grid_and_index_distribution():
  # iCT sec. 3.4 with K = 400,000: K' = floor(400000 / (log2(128) + 1)) = 50,000.
  k = 400_000
  got = [cm.ict_num_scales(s, k) for s in (0, 49_999, 50_000, 100_000, 150_000, 300_000,
                                           350_000, 399_999)]
  assert got == [11, 11, 21, 41, 81, 641, 1281, 1281]
  assert cm.ict_num_scales(10**7, k) == 1281
  assert cm.cm_num_scales(0, 800_000) == 2 and cm.cm_num_scales(800_000, 800_000) == 151
  s = cm.karras_sigmas(11, 0.002, 80.0)
  assert s[0] == 0.002 and s[-1] == 80.0 and np.all(np.diff(s) > 0)
  np.testing.assert_allclose(s[5], ((0.002**(1 / 7) + 80**(1 / 7)) / 2)**7, rtol=1e-13)
  from scipy.special import erf
  p = cm.index_probs(s)
  assert p.shape == (10,) and abs(p.sum() - 1) < 1e-14 and np.all(p > 0)
  c = lambda v: erf((np.log(v) + 1.1) / (math.sqrt(2) * 2.0))
  np.testing.assert_allclose(p[3] / p[6], (c(s[4]) - c(s[3])) / (c(s[7]) - c(s[6])), rtol=1e-12)
  # Most mass around exp(P_mean) = 0.33: the interval containing it is the most likely.
  assert s[int(np.argmax(p))] <= math.exp(-1.1) <= s[int(np.argmax(p)) + 1] * 3
  np.testing.assert_allclose(cm.index_probs(s, "uniform"), np.full(10, 0.1))
  idx = np.asarray(cm.sample_indices(jax.random.PRNGKey(0), 100_000, p))
  freq = np.bincount(idx, minlength=10) / 100_000
  np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / 100_000) + 1e-4)
  # Pseudo-Huber: c = 0.00054 sqrt(d), 0.03 for CIFAR-10 (iCT sec. 3.3).
  assert abs(cm.pseudo_huber_c(3 * 32 * 32) - 0.0299) < 1e-4
  a, b = jnp.zeros((2, 4)), jnp.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(cm.distance(a, b, "pseudo_huber", c=1.0), [math.sqrt(26) - 1, 0.0])
  np.testing.assert_allclose(cm.distance(a, b, "l2"), [25.0, 0.0])


# ------------------------------------------------------------------------------------------------
# (e) Errors name the bad value
# ------------------------------------------------------------------------------------------------

BAD = [
    (lambda: cm.ict_num_scales(0, 3), ValueError, "total_steps=3"),
    (lambda: cm.ict_num_scales(-1, 100), ValueError, "step"),
    (lambda: cm.ict_num_scales(0, 100, s0=20, s1=10), ValueError, "s1 >= s0"),
    (lambda: cm.karras_sigmas(1, 0.002, 80.0), ValueError, "num_scales"),
    (lambda: cm.karras_sigmas(10, 1.0, 0.5), ValueError, "sigma_min < sigma_max"),
    (lambda: cm.karras_sigmas(10, 0.002, 80.0, rho=0.0), ValueError, "rho"),
    (lambda: cm.index_probs(np.array([1.0, 0.5]), "lognormal"), ValueError, "increasing"),
    (lambda: cm.index_probs(np.array([0.1, 0.5]), "beta"), ValueError, "'beta'"),
    (lambda: cm.distance(jnp.zeros((1, 2)), jnp.zeros((1, 2)), "lpips"), ValueError, "'lpips'"),
    (lambda: cm.make_consistency_fn(lambda *a: 0, EDM, sigma_data=-1.0), ValueError,
     "sigma_data"),
    (lambda: cm.make_consistency_fn(lambda *a: 0, EDM, sigma_min=1e-4), ValueError,
     "sigma_min=0.0001"),
    (lambda: cm.traced_teacher_step("rk4", EDM, None), ValueError, "'rk4'"),
    (lambda: cm.consistency_training_loss(None, None, jnp.zeros((2, 2)), jax.random.PRNGKey(0),
                                          EDM, 11, index=10), ValueError, "index=10"),
    (lambda: cm.consistency_training_loss(None, None, jnp.zeros((2, 2)), jax.random.PRNGKey(0),
                                          EDM, 11, weighting="snr"), ValueError, "'snr'"),
    (lambda: cm.consistency_distillation_loss(None, None, "heun", jnp.zeros((2, 2)),
                                              jax.random.PRNGKey(0), EDM, 11), TypeError,
     "teacher_step"),
    (lambda: cm.ode_consistency_fn(None, EDM, 0), ValueError, "num_steps"),
]


@pytest.mark.parametrize("fn,err,msg", BAD, ids=[b[2] for b in BAD])
def test_bad_arguments(fn, err, msg):
  with pytest.raises(err, match=msg):
    fn()


# ------------------------------------------------------------------------------------------------
# Slow: larger checks
# ------------------------------------------------------------------------------------------------


@slow
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_is_exact_vp_8d(steps):
  """VP schedule, 8-D mixture, 10,000 samples."""
  gm, sch, n = mixture(8), VP, 10_000
  f = exact_consistency_fn(gm, sch, 128)
  x_T = gm.sample(jax.random.PRNGKey(16), n, sch.t_max, sch, jnp.float64)
  x, out = build_sampler("consistency", sch, steps)(f, jax.random.PRNGKey(17), x_T)
  assert int(out["nfe"]) == steps
  _check_exact(gm, sch, x, n)


if __name__ == "__main__":  # prints the measured CT bias table of docs/consistency.md
  with jax.enable_x64(True):
    for w in ("uniform", "ict"):
      print(w, [f"{ct_bias(n, w, num=4000):.4g}" for n in (10, 20, 40, 80, 160)])
