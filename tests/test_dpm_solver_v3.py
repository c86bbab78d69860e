"""DPM-Solver-v3 and its empirical model statistics (diffusion/samplers/ems.py, dpm_solver_v3.py).

Ground truth: Gaussian data N(mu, diag(c^2)) under a VP schedule (alpha^2 = sigmoid(2 lambda),
sigma^2 = sigmoid(-2 lambda)), where x0_hat is linear in x and along the PF-ODE
x_lambda - alpha mu = z sqrt(v(lambda)), v_i = alpha^2 c_i^2 + sigma^2, z fixed. Then
  l* = mean_i sigma^2 / v_i,   f_i = A_i z_i + B_i,   A_i = (sigma^2/v_i - l) sqrt(v_i)/alpha,
  B_i = -l mu_i,   f^(1)_i = A_i' z_i + B_i'
and for isotropic c: f = -l mu is deterministic, s* = 0 (ridge), b* = -l' mu, and the solver with
these statistics is exact at any step size. The reductions of the paper's App. A.2 (l = 1: DPM-
Solver++, l = 0 / s = -1: DPM-Solver) are checked against the existing samplers' coefficients.
The registry-wide tests (tests/test_samplers.py: NFE, order on the mixture) cover the default
statistics ''.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, schedules
from diffusion.samplers import build_sampler, dpm_solver, ems
from diffusion.samplers import dpm_solver_v3 as v3
from diffusion.samplers.engine import Program

VP = schedules.VP()
MU = np.array([0.5, -1.0, 2.0])


def gaussian(c):
  c = np.broadcast_to(np.asarray(c, np.float64), MU.shape)
  return analytic.GaussianMixture.create([1.0], MU[None], (c * c)[None])


def v_of(lam, c):
  """v_i = alpha^2 c_i^2 + sigma^2 (VP)."""
  return jax.nn.sigmoid(2 * lam) * np.asarray(c)**2 + jax.nn.sigmoid(-2 * lam)


def closed_form(lam, c):
  """(l, dl/dlam, A (D,), dA/dlam, B, dB/dlam) for N(MU, diag(c^2)) at lambda (VP)."""
  c2 = np.broadcast_to(np.asarray(c, np.float64) ** 2, MU.shape)

  def parts(lm):
    a2, s2 = jax.nn.sigmoid(2 * lm), jax.nn.sigmoid(-2 * lm)
    v = a2 * c2 + s2
    l = jnp.mean(s2 / v)
    return l, (s2 / v - l) * jnp.sqrt(v) / jnp.sqrt(a2), -l * MU

  with jax.enable_x64(True):
    (l, a, b), (dl, da, db) = jax.jvp(parts, (jnp.float64(lam),), (jnp.float64(1.0),))
  return tuple(np.asarray(v, np.float64) for v in (l, dl, a, da, b, db))


def test_node_l_and_f_match_closed_forms():
  c = np.array([0.3, 0.8, 1.5])
  gm = gaussian(c)
  with jax.enable_x64(True):
    x0 = gm.sample0(jax.random.PRNGKey(0), 64, jnp.float64)
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape, jnp.float64)
    probes = jax.random.rademacher(jax.random.PRNGKey(2), (1,) + x0.shape, jnp.float64)
    for lam in (-3.0, 0.2, 2.5):
      l, dl, A, dA, B, dB = closed_form(lam, c)
      lsum, dlsum = ems.node_l(gm.denoiser(VP), VP, lam, x0, eps, probes)
      # The Jacobian is diagonal: Hutchinson with Rademacher probes is exact here.
      np.testing.assert_allclose(np.mean(lsum) / 64, l, rtol=1e-12)
      np.testing.assert_allclose(np.mean(dlsum) / 64, dl, rtol=1e-9, atol=1e-12)
      # Per coordinate: the diagonal sigma^2 / v_i.
      np.testing.assert_allclose(lsum / 64, jax.nn.sigmoid(-2 * lam) / v_of(lam, c), rtol=1e-12)
      f, f1 = ems.node_f(gm.denoiser(VP), VP, lam, l, dl, x0, eps)
      a = float(jax.nn.sigmoid(2 * lam)) ** 0.5
      sg = float(jax.nn.sigmoid(-2 * lam)) ** 0.5
      v = a * a * c * c + sg * sg
      z = (a * np.asarray(x0) + sg * np.asarray(eps) - a * MU) / np.sqrt(v)
      np.testing.assert_allclose(f, A * z + B, rtol=1e-10, atol=1e-10)
      np.testing.assert_allclose(f1, dA * z + dB, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sch", [VP, schedules.EDM(), schedules.RectifiedFlow(t_min=1e-3,
                                                                                 t_max=0.99)],
                         ids=["vp", "edm", "rectified_flow"])
def test_estimate_ems_isotropic_gaussian_is_exact(sch):
  """In lambda the statistics of Gaussian data do not depend on the schedule: l = 1/(1 + c^2
  e^{2 lambda}), s = 0, b = -l' mu for VP, EDM (alpha = 1) and rectified flow alike."""
  c = 0.7
  gm = gaussian(c)
  with jax.enable_x64(True):
    x0 = gm.sample0(jax.random.PRNGKey(0), 16, jnp.float64)
    e = ems.estimate_ems(gm.denoiser(sch), sch, x0, jax.random.PRNGKey(1), num_intervals=20,
                         batch_size=7)  # several batches: the merged moments
  lam = e.lambdas
  np.testing.assert_allclose(lam[[0, -1]], 0.5 * sch.logsnr(np.array([sch.t_max, sch.t_min])))
  l = 1 / (1 + c * c * np.exp(2 * lam))
  dl = -2 * c * c * np.exp(2 * lam) / (1 + c * c * np.exp(2 * lam)) ** 2
  np.testing.assert_allclose(e.l, l, rtol=1e-10)
  np.testing.assert_allclose(e.s, 0.0, atol=1e-9)
  np.testing.assert_allclose(e.b, -dl[:, None] * MU, rtol=1e-9, atol=1e-12)
  assert e.num_samples == 16 and e.schedule == ems.schedule_id(sch)


def test_estimate_ems_anisotropic_gaussian_population_values():
  c = np.array([0.3, 0.8, 1.5])
  gm = gaussian(c)
  with jax.enable_x64(True):
    x0 = gm.sample0(jax.random.PRNGKey(0), 20000, jnp.float64)
    e = ems.estimate_ems(gm.denoiser(VP), VP, x0, jax.random.PRNGKey(1), num_intervals=4,
                         trace="exact", batch_size=20000)
  for k, lam in enumerate(e.lambdas):
    l, dl, A, dA, B, dB = closed_form(lam, c)
    np.testing.assert_allclose(e.l[k], l, rtol=1e-12)  # exact: x0_hat is linear
    s = np.sum(A * dA) / np.sum(A * A)
    np.testing.assert_allclose(e.s[k], s, rtol=0.05, atol=0.02)  # Monte Carlo: 20000 samples
    np.testing.assert_allclose(e.b[k], dB - s * B, rtol=0.05, atol=0.05 * np.abs(dB).max())


def test_ems_save_load_and_checks(tmp_path):
  e = ems.EMS(np.linspace(-2, 3, 6), np.linspace(0, 1, 6), np.zeros(6), np.ones((6, 3)),
              ems.schedule_id(VP), 10)
  p = str(tmp_path / "e.npz")
  e.save(p)
  back = ems.load_ems(p)
  for k in ("lambdas", "l", "s", "b"):
    np.testing.assert_array_equal(getattr(back, k), getattr(e, k))
  assert back.schedule == ems.schedule_id(VP) and back.num_samples == 10 and back.data_shape == (3,)
  back.check_schedule(VP)
  with pytest.raises(ValueError, match="computed for the schedule"):
    back.check_schedule(schedules.VP(beta_max=10.0))
  with pytest.raises(ValueError, match="leaves the EMS grid"):
    back.check_covers([-2.5, 1.0])
  with pytest.raises(ValueError, match="strictly increasing"):
    ems.EMS(np.array([0.0, 0.0]), np.zeros(2), np.zeros(2))
  with pytest.raises(ValueError, match="does not exist"):
    ems.load_ems(str(tmp_path / "nope.npz"))
  with pytest.raises(ValueError, match="trace"):
    ems.estimate_ems(None, VP, np.zeros((4, 2)), jax.random.PRNGKey(0), trace="nope")


def test_integrals_are_exact_for_piecewise_linear_statistics():
  lam = np.array([-1.0, 0.0, 0.5, 2.0])
  l = np.array([1.0, 0.5, 2.0, -1.0])
  e = ems.EMS(lam, l, 0.3 * l, np.stack([np.array([1.0, -2.0]) * v for v in l]))
  ints = ems.EMSIntegrals(e)
  # L at 1.0: trapezoids over [-1, 0], [0, 0.5] and [0.5, 1.0] with l(1.0) = 1.0.
  want = 0.5 * (1 + 0.5) + 0.25 * (0.5 + 2.0) + 0.25 * (2.0 + 1.0)
  np.testing.assert_allclose(ints.L(1.0), want, rtol=1e-14)
  np.testing.assert_allclose(ints.S(1.0), 0.3 * want, rtol=1e-14)
  # Bc against a fine trapezoid of e^{-S} b.
  x = np.linspace(-1.0, 1.7, 200001)
  y = np.exp(-ints.S(x))[:, None] * ints.interp(ints.b, x)
  ref = np.sum(0.5 * np.diff(x)[:, None] * (y[1:] + y[:-1]), axis=0)
  np.testing.assert_allclose(ints.Bc(1.7)[0], ref, rtol=1e-9)
  q, w = ints.quad(1.7, -0.5)
  np.testing.assert_allclose(np.sum(w), -2.2, rtol=1e-14)
  np.testing.assert_allclose(np.sum(w * q**3), (0.5**4 - 1.7**4) / 4, rtol=1e-12)


def test_taylor_matrix():
  lams = [0.0, 0.3, -0.5]
  g = lambda x: 1.0 + 2.0 * x - 3.0 * x * x
  c = v3.taylor_matrix(lams, pseudo=False) @ np.array([g(x) for x in lams])
  np.testing.assert_allclose(c, [1.0, 2.0, -6.0], atol=1e-12)
  # Pseudo: i! times the divided differences g[l0], g[l0, l1], g[l0, l1, l2].
  c = v3.taylor_matrix(lams, pseudo=True) @ np.array([g(x) for x in lams])
  np.testing.assert_allclose(c, [1.0, 2.0 - 3.0 * 0.3, -6.0], atol=1e-12)


def _forms(statistics_l, statistics_s, times, t_next, order):
  ints = ems.EMSIntegrals(ems.constant_ems(statistics_l, statistics_s, -10.0, 10.0))
  rows = list(range(len(times)))
  newest_first = list(reversed(times))[:order]
  return v3.step_form(ints, VP, newest_first[0], t_next, newest_first,
                      list(reversed(rows))[:order], pseudo=False)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_l1_reduces_to_dpm_solver_pp_exponential_integrator(order):
  times = [0.8, 0.6, 0.45]  # oldest first
  t_next = 0.3
  got = _forms(1.0, 0.0, times, t_next, order)
  # v3 stores f = -x0_hat (p = 0, q = -1 for l = 1): its row weights are minus DPM-Solver++'s.
  if order == 2:  # exact integral of the linear interpolant (DPM-Solver++(2M) uses 1/(2r) instead)
    a_t, _, l_t = dpm_solver._as(VP, t_next)
    _, _, l0 = dpm_solver._as(VP, times[-1])
    _, _, l1 = dpm_solver._as(VP, times[-2])
    h, r = l_t - l0, (l0 - l1) / (l_t - l0)
    c = a_t * (h - 1 + math.exp(-h)) / (r * h)
    want = {"x": None, 2: -(-a_t * math.expm1(-h) + c), 1: -(-c)}
  else:
    want = dpm_solver.dpmpp_multistep_update(VP, times[-order:], [0, 1, 2][-order:], t_next,
                                             order, d2_weight="taylor")
    want = {k: (v if k == "x" else -v) for k, v in want.items()}
  want["x"] = float(VP.sigma(np.float64(t_next)) / VP.sigma(np.float64(times[-1])))
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14)


def test_eps_statistics_reduce_to_dpm_solver():
  times, t_next = [0.7, 0.5], 0.35
  got = _forms(0.0, -1.0, times, t_next, 2)
  a_s, sg_s, l_s = dpm_solver._as(VP, times[1])
  a_1, sg_1, l_1 = dpm_solver._as(VP, times[0])
  a_t, sg_t, l_t = dpm_solver._as(VP, t_next)
  h = l_t - l_s
  d = 1.0 / (l_s - l_1)  # eps(lam) = eps_s + (lam - lam_s) (eps_s - eps_1) / (lam_s - lam_1)
  w_s = -sg_t * math.expm1(h) - sg_t * (math.expm1(h) - h) * d
  w_1 = sg_t * (math.expm1(h) - h) * d
  # v3's outputs are f = sigma eps / alpha: weights on eps are the f weights times sigma/alpha.
  np.testing.assert_allclose(got["x"], a_t / a_s, rtol=1e-13)
  np.testing.assert_allclose(got[1] * sg_s / a_s, w_s, rtol=1e-12)
  np.testing.assert_allclose(got[0] * sg_1 / a_1, w_1, rtol=1e-12)


def _mixture_run(name, n=8, **hp):
  gm = analytic.random_mixture(0, 2)
  with jax.enable_x64(True):
    x_T = VP.prior_sample(jax.random.PRNGKey(0), (32, 2)).astype(jnp.float64)
    f = build_sampler(name, VP, n, grid="logsnr", **hp)
    return np.asarray(f(gm.denoiser(VP), jax.random.PRNGKey(1), x_T)[0])


def test_order_one_equals_dpm_solver_1():
  ref = _mixture_run("dpm_solver_1")
  for st in ("", "eps"):
    got = _mixture_run("dpm_solver_v3", statistics=st, order=1, use_corrector=False)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


def _gaussian_ems(c, num_intervals=4000, t_min=None):
  lam = ems.lambda_grid(VP, num_intervals, t_min=t_min)
  l = 1 / (1 + c * c * np.exp(2 * lam))
  dl = -2 * c * c * np.exp(2 * lam) / (1 + c * c * np.exp(2 * lam)) ** 2
  return ems.EMS(lam, l, np.zeros_like(lam), -dl[:, None] * MU, ems.schedule_id(VP), 0)


@pytest.mark.parametrize("hp", [dict(order=1, use_corrector=False), dict()])
def test_exact_statistics_solve_gaussian_data_exactly(tmp_path, hp):
  c = 0.7
  p = str(tmp_path / "g.npz")
  _gaussian_ems(c).save(p)
  gm = gaussian(c)
  with jax.enable_x64(True):
    x_T = VP.prior_sample(jax.random.PRNGKey(0), (16, 3)).astype(jnp.float64)
    t = np.array([VP.t_max, 0.4, 0.1, VP.t_min])
    x, _ = v3.dpm_solver_v3(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, t, statistics=p,
                            **hp)
  a0, s0 = float(VP.alpha(t[0])), float(VP.sigma(t[0]))
  a1, s1 = float(VP.alpha(t[-1])), float(VP.sigma(t[-1]))
  want = a1 * MU + (np.asarray(x_T) - a0 * MU) * math.sqrt((a1**2 * c * c + s1**2) /
                                                           (a0**2 * c * c + s0**2))
  np.testing.assert_allclose(np.asarray(x), want, rtol=1e-6, atol=1e-6)
  # Without statistics (l = 1) three steps are far from exact.
  with jax.enable_x64(True):
    x1, _ = v3.dpm_solver_v3(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, t, **hp)
  assert np.abs(np.asarray(x1) - want).max() > 1e-3


def test_statistics_checks(tmp_path):
  p = str(tmp_path / "g.npz")
  _gaussian_ems(0.7, 50, t_min=0.01).save(p)
  den = gaussian(0.7).denoiser(VP)
  x_T = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="statistics must be"):
    build_sampler("dpm_solver_v3", VP, 4, statistics=str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match="data shape"):
    build_sampler("dpm_solver_v3", schedules.VP(t_min=0.01), 4, statistics=p)(
        den, jax.random.PRNGKey(0), jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="computed for the schedule"):
    other = schedules.VP(beta_max=15.0)
    build_sampler("dpm_solver_v3", other, 4, statistics=p)(den, jax.random.PRNGKey(0), x_T)
  with pytest.raises(ValueError, match="leaves the EMS grid"):
    build_sampler("dpm_solver_v3", VP, 4, statistics=p)(den, jax.random.PRNGKey(0), x_T)
  x, _ = build_sampler("dpm_solver_v3", schedules.VP(t_min=0.01), 4, statistics=p)(
      den, jax.random.PRNGKey(0), x_T)  # another t_min, inside the EMS's range: accepted
  assert np.all(np.isfinite(np.asarray(x)))
  with pytest.raises(ValueError, match="order"):
    build_sampler("dpm_solver_v3", VP, 4, order=4)


def test_program_constant_offsets():
  """The engine's opt-in constant 'c' (b's offsets) in the evaluation point and the update."""
  from diffusion.samplers import engine
  prog = Program()
  r = prog.eval(0.5, y={"x": 1.0, "c": np.array([1.0, 2.0])},
                x={"m": 1.0, "c": np.array([10.0, 20.0])})
  del r
  x = jnp.array([[0.5, -1.0]])
  out, info = engine.run_program(prog, lambda y, t, c=None: 2.0 * y, jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(np.asarray(out), [[2 * 1.5 + 10.0, 2 * 1.0 + 20.0]])
  with pytest.raises(ValueError, match="data shape"):
    engine.run_program(prog, lambda y, t, c=None: y, jax.random.PRNGKey(0), jnp.zeros((1, 3)))
  assert info["nfe"] == 1


def test_half_corrector_corrects_only_above_one_half():
  sch = schedules.VP(t_min=0.05, t_max=0.5)  # every point at t <= 0.5: no correction at all
  gm = analytic.random_mixture(0, 2)
  x_T = sch.prior_sample(jax.random.PRNGKey(0), (8, 2))
  run = lambda **hp: np.asarray(build_sampler("dpm_solver_v3", sch, 6, grid="logsnr", **hp)(
      gm.denoiser(sch), jax.random.PRNGKey(1), x_T)[0])
  np.testing.assert_array_equal(run(half_corrector=True), run(use_corrector=False))
  assert not np.allclose(run(), run(use_corrector=False))


def test_image_shaped_statistics_run(tmp_path):
  """EMS of a non-linear denoiser on (n, 2, 2, 1) data in float32: shapes, and the sampler with
  them (b's offsets broadcast over the batch)."""
  def den(x, t, cond=None):
    a = VP.alpha(t)[:, None, None, None]
    return jnp.tanh(x) / (a + 0.5)

  x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2, 2, 1))
  e = ems.estimate_ems(den, VP, x0, jax.random.PRNGKey(1), num_intervals=8, batch_size=32)
  assert e.l.shape == e.s.shape == (9,) and e.b.shape == (9, 2, 2, 1)
  assert np.all(np.isfinite(e.b)) and e.data_shape == (2, 2, 1)
  exact = ems.estimate_ems(den, VP, x0, jax.random.PRNGKey(1), num_intervals=8, trace="exact")
  np.testing.assert_allclose(exact.l, e.l, atol=0.1)  # Hutchinson vs the exact trace
  p = str(tmp_path / "img.npz")
  e.save(p)
  x, out = build_sampler("dpm_solver_v3", VP, 4, grid="logsnr", statistics=p)(
      den, jax.random.PRNGKey(2), jax.random.normal(jax.random.PRNGKey(3), (3, 2, 2, 1)))
  assert x.shape == (3, 2, 2, 1) and np.all(np.isfinite(np.asarray(x))) and int(out["nfe"]) == 4


def test_matches_the_reference_implementation(tmp_path):
  """Against the reference code's sampler (tests/data/dpm_solver_v3/README.md): the same EMS, the
  same 5 times, every predictor / corrector setting, scalar and per-coordinate statistics, to
  ~1e-6 (its trapezoid rule on a 30x finer resampling of the statistics against our exact
  integrals); without the statistics the difference is 4e-2 to 1e-1."""
  import os
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dpm_solver_v3")
  z = dict(np.load(os.path.join(here, "inputs.npz")))
  ref = dict(np.load(os.path.join(here, "reference.npz")))
  p, p_pc = str(tmp_path / "ems.npz"), str(tmp_path / "ems_pc.npz")
  ems.EMS(z["lambdas"], z["l"], z["s"], z["b"], str(z["schedule"]), int(z["num_samples"])).save(p)
  ems.EMS(z["lambdas"], z["l_pc"], z["s_pc"], z["b_pc"], str(z["schedule"]),
          int(z["num_samples"])).save(p_pc)
  gm = analytic.GaussianMixture(z["weights"], z["means"], z["eigvals"], z["eigvecs"])
  settings = {"order3": {}, "order2": {"order": 2}, "p_pseudo": {"p_pseudo": True},
              "c_order": {"c_pseudo": False}, "no_corrector": {"use_corrector": False},
              "order3_degenerated": {"statistics": ""},
              "no_corrector_degenerated": {"statistics": "", "use_corrector": False},
              "order3_per_coordinate": {"statistics": p_pc},
              "no_corrector_per_coordinate": {"statistics": p_pc, "use_corrector": False}}
  with jax.enable_x64(True):
    for name, hp in settings.items():
      hp = {"statistics": p, **hp}
      f = build_sampler("dpm_solver_v3", VP, time_grid=ref["timesteps"], **hp)
      x = np.asarray(f(gm.denoiser(VP), jax.random.PRNGKey(0), jnp.asarray(z["x_T"]))[0])
      err = np.linalg.norm(x - ref[name]) / np.linalg.norm(ref[name])
      assert err < 2e-5, (name, err)


def _per_coordinate_gaussian_ems(c, num_intervals=4000):
  """The per-coordinate EMS of N(MU, diag(c^2)) in closed form: l_i = 1/(1 + c_i^2 e^{2 lam}),
  s = 0, b_i = -l_i' mu_i (f_i = -l_i mu_i is deterministic)."""
  lam = ems.lambda_grid(VP, num_intervals)
  e2 = np.exp(2 * lam)[:, None] * c**2
  l = 1 / (1 + e2)
  dl = -2 * e2 / (1 + e2) ** 2
  return ems.EMS(lam, l, np.zeros_like(l), -dl * MU, ems.schedule_id(VP), 0)


def test_estimate_ems_per_coordinate_anisotropic_gaussian_is_exact():
  c = np.array([0.3, 0.8, 1.5])
  gm = gaussian(c)
  with jax.enable_x64(True):
    x0 = gm.sample0(jax.random.PRNGKey(0), 16, jnp.float64)
    e = ems.estimate_ems(gm.denoiser(VP), VP, x0, jax.random.PRNGKey(1), num_intervals=10,
                         batch_size=7, per_coordinate=True)
  want = _per_coordinate_gaussian_ems(c, 10)
  assert e.per_coordinate and e.l.shape == e.s.shape == e.b.shape == (11, 3)
  np.testing.assert_allclose(e.l, want.l, rtol=1e-10)
  np.testing.assert_allclose(e.s, 0.0, atol=1e-8)
  np.testing.assert_allclose(e.b, want.b, rtol=1e-8, atol=1e-12)


def test_per_coordinate_statistics_solve_anisotropic_gaussian_exactly(tmp_path):
  c = np.array([0.3, 0.8, 1.5])
  p = str(tmp_path / "pc.npz")
  _per_coordinate_gaussian_ems(c).save(p)
  gm = gaussian(c)
  t = np.array([VP.t_max, 0.4, 0.1, VP.t_min])
  with jax.enable_x64(True):
    x_T = VP.prior_sample(jax.random.PRNGKey(0), (16, 3)).astype(jnp.float64)
    x, _ = v3.dpm_solver_v3(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, t, statistics=p)
    # The scalar statistics (the coordinates' mean l) cannot make this data's ODE linear.
    lam = ems.lambda_grid(VP, 2000)
    l_mean = np.mean(1 / (1 + np.exp(2 * lam)[:, None] * c**2), axis=1)
    ps = str(tmp_path / "scalar.npz")
    ems.EMS(lam, l_mean, np.zeros_like(lam), None, ems.schedule_id(VP), 0).save(ps)
    xs, _ = v3.dpm_solver_v3(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, t, statistics=ps)
  a0, s0 = float(VP.alpha(t[0])), float(VP.sigma(t[0]))
  a1, s1 = float(VP.alpha(t[-1])), float(VP.sigma(t[-1]))
  want = a1 * MU + (np.asarray(x_T) - a0 * MU) * np.sqrt((a1**2 * c * c + s1**2) /
                                                         (a0**2 * c * c + s0**2))
  np.testing.assert_allclose(np.asarray(x), want, rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(xs) - want).max() > 1e-3


def test_program_per_coordinate_coefficients():
  """The engine's opt-in per-coordinate path: arrays of the data's shape for 'x', rows and p
  multiply elementwise; arrays elsewhere or of two shapes are refused."""
  from diffusion.samplers import engine
  prog = Program()
  r0 = prog.eval(0.5, out=(np.array([1.0, 0.0]), -1.0), x={"x": np.array([2.0, 3.0])})
  prog.eval(0.4, y={"x": 1.0, r0: np.array([0.5, -1.0])}, x={"m": 1.0})
  x = jnp.array([[1.0, 2.0]])
  out, _ = engine.run_program(prog, lambda y, t, c=None: 0.5 * y, jax.random.PRNGKey(0), x)
  h0 = np.array([1.0, 0.0]) * [1.0, 2.0] - 0.5 * np.array([1.0, 2.0])  # p y + q m at row 0
  y1 = np.array([2.0, 6.0]) + np.array([0.5, -1.0]) * h0
  np.testing.assert_allclose(np.asarray(out)[0], 0.5 * y1)
  bad = Program()
  bad.eval(0.5, x={"y": np.array([1.0, 2.0])})
  with pytest.raises(ValueError, match="must be a float"):
    bad.compile()
  two = Program()
  two.eval(0.5, x={"x": np.ones(2)})
  two.eval(0.4, x={"x": np.ones(3)})
  with pytest.raises(ValueError, match="share one shape"):
    two.compile()
