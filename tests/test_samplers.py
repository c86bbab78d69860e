"""Ground-truth tests of every registered sampler against the analytic Gaussian mixture.

Parameterized over the WHOLE registry: a sampler registered later is checked with no new code,
through its ``SamplerInfo`` (kind, theoretical order, nfe formula, variants).

* NFE: a denoiser wrapped in an ``io_callback`` counts the calls actually executed inside the jitted
  sampler; it must equal ``info['nfe']`` and the registered formula ``nfe(num_steps, hparams)``.
* Deterministic samplers: the reference is the PF-ODE solved from the same x_T by diffrax
  (Dopri8, rtol = atol = 1e-9) in float64 (inside ``jax.enable_x64(True)``, so other
  tests keep float32); the empirical order of convergence, the least-squares slope of log(error)
  against log(NFE) at NFE ~ 30, 80, 200, must be within 0.3 of the theoretical order (at 20 NFE
  some third/fourth-order methods still converge faster than their order, e.g. UniPC-3 with
  warm-up: local slopes 5.0, 4.3, 4.1, 3.9 from NFE 20 to 320). Setting (chosen so the
  asymptotic regime is reached at these NFE, see ``ORDER_SETTING``): VP schedule restricted to
  t in [0.05, 0.5] (logSNR from about 6.0 down to -1.6; over wider ranges third-order methods
  approach their order only slowly, from above, e.g. DPM-Solver-3 fits 3.5-3.7 over NFE 20-200 on
  t in [0.02, 0.8] or [1e-3, 1]), the sampler's ``order_grid`` (uniform logSNR by default), a 64-D
  4-component mixture for the fast test, and also the 2-D mixture in the slow sweep over all
  variants.
* Stochastic samplers: means, covariances and mixture weights of 4,000 samples (2-D mixture, 200
  steps) against the exact distribution, with tolerances from the sample size (4 standard errors)
  plus a small allowance for the discretization bias.
* Stochastic samplers: a batch of 8 equals the same 8 as two batches of 4 (``sample_offset``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, schedules
from diffusion.samplers import (build_sampler, get_sampler, registered_samplers, sampler_info)
from tests.conftest import counting_denoiser

# Exhaustive sweeps are marked ``slow`` (excluded by pytest.ini; run them with ``-m slow``).
slow = pytest.mark.slow

ALL = registered_samplers()
DET = [n for n in ALL if sampler_info(n).kind == "deterministic"]
STO = [n for n in ALL if sampler_info(n).kind == "stochastic"]
# Kind 'consistency': ``denoise`` is a consistency function (diffusion.consistency). The exact NFE
# and batch-invariance tests apply (run with the mixture's denoiser standing in for it), not the
# PF-ODE order or the denoiser-distribution ones; their ground truth is tests/test_consistency.py.
CONS = [n for n in ALL if sampler_info(n).kind == "consistency"]
# Kind 'flow_map': ``denoise`` is a flow map Phi(x_t, t, s, cond) (diffusion.flow_map). The exact
# NFE and batch-invariance tests apply, fed the mixture's exact flow map (a reference solve with
# concrete times, so run without jit); ground truth in tests/test_mean_flow.py.
FLOW = [n for n in ALL if sampler_info(n).kind == "flow_map"]
DET_FIXED = [n for n in DET if not sampler_info(n).adaptive]

VP = schedules.VP()


@functools.lru_cache(None)
def mixture(dim: int) -> analytic.GaussianMixture:
  return analytic.random_mixture(0, dim, num_components=4)




# ------------------------------------------------------------------------------------------------
# Registry, config, interface
# ------------------------------------------------------------------------------------------------


def test_registry_metadata():
  assert len(ALL) >= 10
  for n in ALL:
    info = sampler_info(n)
    assert info.kind in ("deterministic", "stochastic", "consistency", "flow_map")
    assert info.paper and info.nfe_per_step
    for v in info.variants:
      hp = info.resolve(v)
      assert info.order(hp) >= 1
      if not info.adaptive:
        assert info.nfe(10, hp) >= 10


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match="registered samplers"):
    get_sampler("nope")
  with pytest.raises(ValueError, match="accepted"):
    build_sampler("heun", VP, 10, bogus=1.0)
  with pytest.raises(ValueError, match="unknown time grid"):
    build_sampler("heun", VP, 10, grid="bogus")


def test_config_fields_and_cli_override(tmp_path):
  from configs import sampling
  c = sampling.get_config()
  for k in ("sampler", "num_steps", "grid", "rho", "t_min", "t_max", "num_samples", "batch_size"):
    assert k in c
  for k in sampling.hyperparameter_types():
    assert c[k] is None
  assert sampling.non_default_fields(c) == {"sampler": c.sampler, "num_steps": c.num_steps,
                                           "grid": c.grid, "rho": c.rho}
  # A None (placeholder) field is overridable from the command line.
  script = tmp_path / "cli.py"
  script.write_text(textwrap.dedent("""
      from absl import app
      from ml_collections import config_flags
      _C = config_flags.DEFINE_config_file("config", %r)
      def main(_):
        c = _C.value
        print("RESULT", c.snr, c.sampler, c.num_steps, c.final_denoise)
      app.run(main)
  """ % (sampling.__file__,)))
  out = subprocess.run([sys.executable, str(script), "--config.snr=0.1", "--config.sampler=pc",
                        "--config.num_steps=10", "--config.final_denoise=False"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
                       env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1]),
                            "JAX_PLATFORMS": "cpu"})
  assert "RESULT 0.1 pc 10 False" in out.stdout, out.stderr[-2000:]
  fields = sampling.non_default_fields(c)
  build_sampler(schedule=VP, **fields)  # the driver's call works with the defaults


# ------------------------------------------------------------------------------------------------
# NFE and batch-split invariance, over the whole registry
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ALL if n not in FLOW])
def test_nfe_exact(name):
  info = sampler_info(name)
  gm = mixture(2)
  den, count = counting_denoiser(gm.denoiser(VP))
  n = 6
  for variant in info.variants[:1]:
    hp = info.resolve(variant)
    f = build_sampler(name, VP, n, grid="logsnr", **variant)
    x_T = VP.prior_sample(jax.random.PRNGKey(0), (3, 2))
    count[0] = 0
    x, out = f(den, jax.random.PRNGKey(1), x_T)
    jax.block_until_ready(x)
    assert int(out["nfe"]) == count[0], (name, out["nfe"], count[0])
    if not info.adaptive:
      assert count[0] == info.nfe(n, hp)
    assert np.all(np.isfinite(np.asarray(x)))


def _counting_flow_map(schedule, c=0.7):
  """(the PF-ODE flow map of Gaussian data N(0, c^2 I) in closed form, x_s = x_t sqrt(alpha_s^2
  c^2 + sigma_s^2) / sqrt(alpha_t^2 c^2 + sigma_t^2), with an io_callback counter of calls,
  counter list). Cheap: these tests count calls and split batches, they need no mixture."""
  count = [0]

  def bump():
    count[0] += 1

  def std(t):
    t = jnp.reshape(t, (-1, 1))
    return jnp.sqrt((schedule.alpha(t) * c)**2 + schedule.sigma(t)**2)

  def wrapped(x, t, s, cond=None):
    jax.experimental.io_callback(bump, None, ordered=True)
    return x * std(s) / std(t)

  return wrapped, count


@pytest.mark.parametrize("name", FLOW)
def test_nfe_exact_flow_map(name):
  info = sampler_info(name)
  den, count = _counting_flow_map(VP)
  for n in (1, 3):
    f = build_sampler(name, VP, n, grid="logsnr", jit=False, **info.variants[0])
    x_T = VP.prior_sample(jax.random.PRNGKey(0), (3, 2))
    count[0] = 0
    x, out = f(den, jax.random.PRNGKey(1), x_T)
    assert int(out["nfe"]) == count[0] == info.nfe(n, info.resolve(info.variants[0])), name
    assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("name", FLOW)
def test_batch_split_invariance_flow_map(name):
  info = sampler_info(name)
  f = build_sampler(name, VP, 2, grid="logsnr", jit=False, **info.variants[0])
  den, _ = _counting_flow_map(VP)
  x_T = VP.prior_sample(jax.random.PRNGKey(4), (8, 2))
  full, _ = f(den, jax.random.PRNGKey(3), x_T)
  a, _ = f(den, jax.random.PRNGKey(3), x_T[:4], sample_offset=0)
  b, _ = f(den, jax.random.PRNGKey(3), x_T[4:], sample_offset=4)
  np.testing.assert_allclose(np.concatenate([a, b]), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STO + CONS)
def test_batch_split_invariance(name):
  info = sampler_info(name)
  variant = dict(info.variants[0])
  if name == "pc":
    variant["step_size"] = "sample"  # the batch-averaged step couples the samples by design
  f = build_sampler(name, VP, 8, grid="logsnr", **variant)
  den = mixture(2).denoiser(VP)
  key = jax.random.PRNGKey(3)
  x_T = VP.prior_sample(jax.random.PRNGKey(4), (8, 2))
  full, _ = f(den, key, x_T)
  a, _ = f(den, key, x_T[:4], sample_offset=0)
  b, _ = f(den, key, x_T[4:], sample_offset=4)
  np.testing.assert_allclose(np.concatenate([a, b]), full, rtol=1e-5, atol=1e-5)
  other, _ = f(den, jax.random.PRNGKey(5), x_T)
  assert not np.allclose(other, full)


# ------------------------------------------------------------------------------------------------
# Deterministic: order of convergence against a float64 diffrax reference
# ------------------------------------------------------------------------------------------------

ORDER_SETTING = dict(schedule=schedules.VP(t_min=0.05, t_max=0.5), batch=16)
NFE_TARGETS = (30, 80, 200)


def reference_ode(gm, schedule, x_T, t0, t1):
  """PF-ODE dx/dt = f x - g^2/2 score from t0 to t1 in the schedule's own time, Dopri8 with
  rtol = atol = 1e-9 (call inside enable_x64 with float64 x_T)."""
  import diffrax

  def vf(t, x, args):
    return schedule.drift(t) * x - 0.5 * schedule.diffusion_sq(t) * gm.score(x, t, schedule)

  sol = diffrax.diffeqsolve(diffrax.ODETerm(vf), diffrax.Dopri8(), t0=t0, t1=t1, dt0=-1e-3,
                            y0=x_T, stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-9),
                            max_steps=100_000)
  return sol.ys[-1]


@functools.lru_cache(None)
def reference_pair(dim, batch, schedule=ORDER_SETTING["schedule"]):
  """(x_T, x_ref) in float64 for the order tests; call inside enable_x64."""
  gm = mixture(dim)
  sch = schedule
  x_T = gm.sample(jax.random.PRNGKey(7), batch, sch.t_max, sch, jnp.float64)
  return x_T, np.asarray(reference_ode(gm, sch, x_T, sch.t_max, sch.t_min))


def _steps_for(info, hp, target):
  """num_steps whose NFE is closest to ``target``."""
  per = info.nfe(100, hp) / 100.0
  return max(2, int(round(target / per)))


def measure_order(name, variant, dim, nfe_targets=NFE_TARGETS, grid=None, setting=ORDER_SETTING):
  """(slope of log error vs log NFE, NFEs, errors) in float64."""
  info = sampler_info(name)
  variant = dict(variant)
  if "final_denoise" in info.defaults():
    variant["final_denoise"] = False  # compare with the ODE solution at t_min itself
  hp = info.resolve(variant)
  sch = setting["schedule"]
  gm = mixture(dim)
  grid = grid or info.order_grid
  with jax.enable_x64(True):
    x_T, ref = reference_pair(dim, setting["batch"], sch)
    den = gm.denoiser(sch)
    nfes, errs = [], []
    for target in nfe_targets:
      n = _steps_for(info, hp, target)
      f = build_sampler(name, sch, n, grid=grid, **variant)
      x, out = f(den, jax.random.PRNGKey(0), x_T)
      nfes.append(int(out["nfe"]))
      errs.append(float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref)))
  slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
  return slope, nfes, errs


@pytest.mark.parametrize("name", DET_FIXED)
def test_order_of_convergence(name):
  info = sampler_info(name)
  variant = info.variants[0]
  slope, nfes, errs = measure_order(name, variant, 64)
  expected = info.order(info.resolve(variant))
  assert abs(slope - expected) <= 0.3, (name, slope, expected, nfes, errs)


@slow
@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("name", DET_FIXED)
def test_order_of_convergence_all_variants(name, dim):
  info = sampler_info(name)
  for variant in info.variants:
    hp = info.resolve(variant)
    if info.kind != "deterministic" or hp.get("eta", 0.0) != 0.0:
      continue
    slope, nfes, errs = measure_order(name, variant, dim)
    expected = info.order(hp)
    assert abs(slope - expected) <= 0.3, (name, variant, slope, expected, nfes, errs)


@pytest.mark.parametrize("name", [n for n in DET if sampler_info(n).adaptive])
def test_adaptive_accuracy(name):
  """Adaptive solvers: error against the reference shrinks with the tolerance."""
  sch = ORDER_SETTING["schedule"]
  gm = mixture(64)
  with jax.enable_x64(True):
    x_T, ref = reference_pair(64, 16)
    errs, nfes = [], []
    for tol in (1e-3, 1e-6):
      f = build_sampler(name, sch, 10, grid="logsnr", rtol=tol, atol=tol)
      x, out = f(gm.denoiser(sch), jax.random.PRNGKey(0), x_T)
      errs.append(float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref)))
      nfes.append(int(out["nfe"]))
  assert errs[1] < 1e-5 and errs[1] < errs[0] / 10, (errs, nfes)
  assert nfes[1] > nfes[0]


# ------------------------------------------------------------------------------------------------
# Stochastic: the distribution matches the exact data distribution
# ------------------------------------------------------------------------------------------------


def mixture_stats(gm, x):
  """(mean (D,), covariance (D, D), soft mixture weights (K,)) of samples x (n, D)."""
  x = np.asarray(x, np.float64)
  one = jnp.ones((x.shape[0], 1))
  logc, _, _ = gm._components(jnp.asarray(x, jnp.float32), one, 0.0 * one)
  r = np.asarray(jax.nn.softmax(logc, axis=-1), np.float64)
  return x.mean(0), np.cov(x.T), r.mean(0)


@functools.lru_cache(None)
def exact_stats(dim):
  gm = mixture(dim)
  return mixture_stats(gm, gm.sample0(jax.random.PRNGKey(13), 200_000))


def check_distribution(name, variant, dim=2, n=4000, steps=200, grid="karras", bias=0.03,
                       schedule=VP):
  """Sample statistics against the exact ones; also checks the NFE against a call counter."""
  gm = mixture(dim)
  info = sampler_info(name)
  f = build_sampler(name, schedule, steps, grid=grid, **variant)
  x_T = schedule.prior_sample(jax.random.PRNGKey(11), (n, dim))
  den, count = counting_denoiser(gm.denoiser(schedule))
  x, out = f(den, jax.random.PRNGKey(12), x_T)
  jax.block_until_ready(x)
  assert int(out["nfe"]) == count[0] == info.nfe(steps, info.resolve(variant))
  assert np.all(np.isfinite(np.asarray(x)))
  mean, cov, w = mixture_stats(gm, x)
  m0, c0, w0 = exact_stats(dim)
  sd = np.sqrt(np.diag(c0))
  tol_mean = 4 * sd / math.sqrt(n) + bias
  np.testing.assert_array_less(np.abs(mean - m0), tol_mean)
  # Var of a sample covariance entry ~ (c_ii c_jj + c_ij^2) / n (Gaussian approximation).
  tol_cov = 4 * np.sqrt((np.outer(sd**2, sd**2) + c0**2) / n) * 1.5 + bias
  np.testing.assert_array_less(np.abs(cov - c0), tol_cov)
  tol_w = 4 * np.sqrt(w0 * (1 - w0) / n) + bias
  np.testing.assert_array_less(np.abs(w - w0), tol_w)


@pytest.mark.parametrize("name", STO)
def test_stochastic_distribution(name):
  check_distribution(name, sampler_info(name).variants[0])


@slow
@pytest.mark.parametrize("name", STO)
def test_stochastic_distribution_all_variants(name):
  for variant in sampler_info(name).variants:
    if variant.get("step_size") != "sample":
      # Per-sample Langevin step sizes (snr ||z_b|| / ||score_b||)^2 are unstable in 2-D, where
      # the norms do not concentrate (near a mode ||score_b|| -> 0); see ``pc``'s docstring.
      check_distribution(name, variant)
    check_distribution(name, variant, dim=64, n=4000, bias=0.05)


# ------------------------------------------------------------------------------------------------
# Cross-checks between samplers that are the same method
# ------------------------------------------------------------------------------------------------


def _run(name, n=12, **hp):
  gm = mixture(2)
  f = build_sampler(name, VP, n, grid="karras", **hp)
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (64, 2))
  return np.asarray(f(gm.denoiser(VP), jax.random.PRNGKey(1), x_T)[0])


def test_identities():
  np.testing.assert_allclose(_run("euler"), _run("ddim"), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_run("ddpm"), _run("euler_ancestral", eta=1.0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_run("ddpm"), _run("ddim", eta=1.0, final_denoise=True), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(_run("heun"), _run("edm_stochastic"), rtol=1e-4, atol=1e-5)


def test_bad_hparams():
  with pytest.raises(ValueError, match="predictor"):
    build_sampler("pc", VP, 4, predictor="nope")(mixture(2).denoiser(VP), jax.random.PRNGKey(0),
                                                 jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="solver"):
    build_sampler("ode_adaptive", VP, 4, solver="rk99")(mixture(2).denoiser(VP),
                                                        jax.random.PRNGKey(0), jnp.zeros((2, 2)))


# ------------------------------------------------------------------------------------------------
# Grids, ends, engine
# ------------------------------------------------------------------------------------------------


def test_grids_and_clipping():
  from diffusion.samplers import grids, registry
  t = grids.time_grid(VP, 8, "logsnr_power")
  assert t[0] == VP.t_max and t[-1] == VP.t_min and np.all(np.diff(t) < 0)
  lam = VP.logsnr(t)
  steps = np.diff(lam)
  assert steps[0] > steps[-1] > 0  # kappa < 1: bigger logSNR steps at high noise
  np.testing.assert_allclose(grids.time_grid(VP, 8, "logsnr_power:1.0"),
                             grids.time_grid(VP, 8, "logsnr"), rtol=1e-12)
  with pytest.raises(ValueError, match="logsnr_power"):
    grids.time_grid(VP, 8, "logsnr_power:-1")
  t_min, t_max = registry.logsnr_clip(VP, None, None, -5.0, 5.0)
  np.testing.assert_allclose(VP.logsnr(np.array([t_max, t_min])), [-5.0, 5.0], rtol=1e-9)
  with pytest.raises(ValueError, match="range"):
    get_sampler("euler")(mixture(2).denoiser(VP), VP, None, jnp.zeros((2, 2)),
                         np.array([1.0, 0.5, 0.0]), cond=None, sample_offset=0)


def test_inside_outer_jit_and_typed_keys():
  gm = mixture(2)
  den = gm.denoiser(VP)
  f = build_sampler("ddpm", VP, 5, jit=False)
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (4, 2))
  a, _ = jax.jit(lambda k, x: f(den, k, x))(jax.random.PRNGKey(1), x_T)
  b, _ = f(den, jax.random.PRNGKey(1), x_T)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  c, _ = f(den, jax.random.key(1), x_T)  # new-style typed key
  assert np.all(np.isfinite(np.asarray(c)))


def test_program_validation_and_subst():
  from diffusion.samplers import engine
  prog = engine.Program()
  prog.eval(1.0)
  with pytest.raises(ValueError, match="rows < 1"):
    prog.eval(0.5, y={1: 1.0})
  assert engine.subst({"x": 2.0, 0: 1.0}, {"x": 3.0, 0: 1.0}) == {0: 3.0, "x": 6.0}


# ------------------------------------------------------------------------------------------------
# Adaptive DPM-Solver: max_steps; DPM-Solver++(3M) d2_weight; EDM churn; sampling key streams
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dpm_solver_12", "dpm_solver_23"])
def test_adaptive_dpm_solver_raises_at_max_steps(name):
  """Reaching max_steps before the end of the grid is an error (as in ode_adaptive), not an
  unfinished sample (the default max_steps finishes: ``test_nfe_exact``)."""
  den = mixture(2).denoiser(VP)
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (3, 2))
  with pytest.raises(Exception, match="reached max_steps=2"):
    x, _ = build_sampler(name, VP, 6, grid="logsnr", max_steps=2)(den, jax.random.PRNGKey(1), x_T)
    jax.block_until_ready(x)


def test_dpmpp_3m_d2_weight_orders():
  """2 phi_3 D_2 ('taylor', default) is third order (measured by ``test_order_of_convergence``,
  whose default variant it is); phi_3 D_2 ('reference', the DPM-Solver code and diffusers) only
  second order, measured here."""
  info = sampler_info("dpmpp_3m")
  assert info.variants[0] == {} and info.defaults()["d2_weight"] == "taylor"
  assert info.order(info.resolve({})) == 3.0
  variant = {"d2_weight": "reference"}
  assert info.order(info.resolve(variant)) == 2.0
  slope, nfes, errs = measure_order("dpmpp_3m", variant, 64)
  assert abs(slope - 2.0) <= 0.3, (slope, nfes, errs)
  with pytest.raises(ValueError, match="d2_weight"):
    build_sampler("dpmpp_3m", VP, 8, d2_weight="exact")


def test_edm_churn_gamma_is_algorithm_2():
  """Karras et al. 2022, Alg. 2: gamma_i = min(S_churn / N, sqrt(2) - 1) with N the number of
  sampling steps, t_0 .. t_{N-1} > 0 and t_N = 0: a grid of n intervals plus the final step to
  sigma = 0 has N = n + 1 steps, each churned (the last one too)."""
  from diffusion.samplers import ode
  sch = schedules.EDM()  # alpha = 1, tau = sigma = t
  n, s_churn = 4, 1.0
  t = grids_time_grid(sch, n, t_max=40.0)  # t_hat stays below the schedule's end (80)
  paper_t = np.concatenate([t, [0.0]])  # Alg. 2's t_0 .. t_N
  big_n = len(paper_t) - 1
  assert big_n == 5
  gamma = min(s_churn / big_n, math.sqrt(2) - 1)
  prog = ode.edm_stochastic_program(sch, t, s_churn, 0.0, float("inf"), 1.0, True)
  assert len(prog) == 2 * n + 1
  heun_rows = [prog.rows[2 * i] for i in range(n)] + [prog.rows[-1]]
  for i, row in enumerate(heun_rows):
    t_hat = paper_t[i] * (1 + gamma)
    np.testing.assert_allclose(row.t, t_hat, rtol=1e-12)
    np.testing.assert_allclose(row.y["z"], math.sqrt(t_hat**2 - paper_t[i]**2), rtol=1e-12)
  # Without the step to sigma = 0, N = n.
  prog = ode.edm_stochastic_program(sch, t, s_churn, 0.0, float("inf"), 1.0, False)
  np.testing.assert_allclose(prog.rows[2].t, t[1] * (1 + s_churn / n), rtol=1e-12)
  assert ode.churn_gamma(1.0, 5, 80.0, 0.0, 10.0) == math.sqrt(2) - 1
  assert ode.churn_gamma(20.0, 5, 1.0, 0.0, 10.0) == 0.0  # outside [S_min, S_max]


def grids_time_grid(sch, n, kind="karras", **kw):
  from diffusion.samplers import grids
  return grids.time_grid(sch, n, kind, **kw)


def _sharded(batch_size, sample_fn, num=8):
  from diffusion import parallel
  return parallel.sample_sharded(sample_fn, {}, jax.random.PRNGKey(21), VP, num, (2,),
                                 batch_size, parallel.make_mesh())


def test_sharded_sampling_streams():
  """x_T of sample i comes from fold_in(prior_key, i), the sampler noise from the independent
  noise key: neither stream reuses the key of the other, and samples do not depend on the batch
  size."""
  from diffusion import parallel
  den = mixture(2).denoiser(VP)
  f = build_sampler("ddpm", VP, 6, jit=False)

  def sample_fn(p, k, x_t, offset):
    # Returns [x_0, x_T, the x_T that the sampler's key would give]: (B, 6).
    x0, info = f(den, k, x_t, sample_offset=offset)
    same_key = parallel.per_sample_prior(VP, k, offset, x_t.shape[0], (2,))
    return jnp.concatenate([x0, x_t, same_key], axis=1), info

  full, _ = _sharded(8, sample_fn)
  prior_key, noise_key = parallel.sampling_streams(jax.random.PRNGKey(21))
  np.testing.assert_allclose(full[:, 2:4], parallel.per_sample_prior(VP, prior_key, 0, 8, (2,)),
                             rtol=1e-6)
  # The key handed to the sampler is not the one x_T was drawn from.
  assert not np.allclose(full[:, 4:], full[:, 2:4])
  assert not np.array_equal(jax.random.key_data(prior_key), jax.random.key_data(noise_key))
  split, _ = _sharded(4, sample_fn)
  np.testing.assert_allclose(split, full, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Argument validation: every bad value raises at build time, naming the argument
# ------------------------------------------------------------------------------------------------

BAD_BUILD_ARGS = [
    (dict(t_min=0.5, t_max=0.1), ValueError, "t_min < t_max"),
    (dict(t_max=2.0), ValueError, "t_max must be a finite time in the vp schedule's range"),
    (dict(t_min=-0.1), ValueError, "t_min must be a finite time"),
    (dict(t_min=float("nan")), ValueError, "t_min must be a finite time"),
    (dict(t_max=float("inf")), ValueError, "t_max must be a finite time"),
    (dict(t_min="0.1"), TypeError, "t_min must be a real number"),
    (dict(num_steps=True), TypeError, "num_steps"),
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(num_steps=4.0), TypeError, "num_steps"),
    (dict(rho=0.0), ValueError, "rho"),
    (dict(rho=-7.0), ValueError, "rho"),
    (dict(rho=float("nan")), ValueError, "rho"),
    (dict(grid=3), TypeError, "grid"),
    (dict(grid="logsnr_power:inf"), ValueError, "kappa"),
    (dict(grid="logsnr_power:nan"), ValueError, "kappa"),
    (dict(logsnr_min=float("nan")), ValueError, "logsnr_min"),
]


@pytest.mark.parametrize("kwargs,err,msg", BAD_BUILD_ARGS)
def test_build_sampler_rejects_bad_grid_args(kwargs, err, msg):
  kw = dict(num_steps=8, **kwargs) if "num_steps" not in kwargs else kwargs
  with pytest.raises(err, match=msg):
    build_sampler("euler", VP, **kw)


def test_grid_functions_reject_bad_args():
  from diffusion.samplers import grids
  for fn in (schedules.time_grid, grids.time_grid):
    with pytest.raises(ValueError, match="rho"):
      fn(VP, 8, "karras", rho=0.0)  # was a bare ZeroDivisionError
    with pytest.raises(TypeError, match="num_steps"):
      fn(VP, True, "karras")
    with pytest.raises(ValueError, match="t_min < t_max"):
      fn(VP, 8, "logsnr", t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="t_max"):
      fn(VP, 8, "uniform", t_max=1.5)
  assert np.all(np.diff(schedules.time_grid(VP, 8, "uniform", rho=-1.0)) < 0)  # rho unused


BAD_HPARAMS = [
    ("pc", dict(predictor="none", n_corrector=0), ValueError, "predictor or a corrector"),
    ("pc", dict(n_corrector=True), TypeError, "n_corrector"),
    ("pc", dict(n_corrector=-1), ValueError, "n_corrector"),
    ("edm_stochastic", dict(S_min=1.0, S_max=0.5), ValueError, "S_max must be >= S_min"),
    ("edm_stochastic", dict(S_churn=float("nan")), ValueError, "S_churn"),
    ("edm_stochastic", dict(S_noise="1"), TypeError, "S_noise"),
    ("ode_adaptive", dict(max_steps=0), ValueError, "max_steps"),
    ("ode_adaptive", dict(max_steps=10.5), TypeError, "max_steps"),
    ("ode_adaptive", dict(solver="rk99"), ValueError, "solver"),
    ("dpm_solver_12", dict(max_steps=0), ValueError, "max_steps"),
    ("dpm_solver_23", dict(theta=1.5), ValueError, "theta"),
    ("deis", dict(order=True), TypeError, "order"),
    ("deis", dict(order=4), ValueError, "order"),
    ("ipndm", dict(order=0), ValueError, "order"),
    ("unipc", dict(variant="bh3"), ValueError, "variant"),
    ("heun", dict(variables="x"), ValueError, "variables"),
    ("heun", dict(final_denoise="yes"), TypeError, "final_denoise"),
    ("ddim", dict(eta=-1.0), ValueError, "eta"),
    ("euler_ancestral", dict(eta=-0.5), ValueError, "eta"),
    ("dpmpp_2s", dict(r=1.0), ValueError, "r must be in"),
    ("dpmpp_3m", dict(d2_weight="exact"), ValueError, "d2_weight"),
]


@pytest.mark.parametrize("name,hp,err,msg", BAD_HPARAMS, ids=lambda v: str(v)[:30])
def test_bad_hparam_values(name, hp, err, msg):
  """Rejected by build_sampler (before tracing) and by the registered function itself."""
  with pytest.raises(err, match=msg):
    build_sampler(name, VP, 8, **hp)
  with pytest.raises(err, match=msg):
    get_sampler(name)(mixture(2).denoiser(VP), VP, jax.random.PRNGKey(0), jnp.zeros((2, 2)),
                      grids_time_grid(VP, 4), cond=None, sample_offset=0, **hp)


BAD_GRIDS = [
    (np.array([0.5, 0.8, 0.1]), "strictly decreasing"),
    (np.array([0.8, np.nan, 0.1]), "finite"),
    (np.array([1.5, 0.5, 0.1]), "range"),
    (np.array([0.8, 0.5, -0.1]), "range"),
    (np.array([0.5]), "at least 2"),
    (np.array([[0.5, 0.1]]), "1-D"),
]


@pytest.mark.parametrize("grid,msg", BAD_GRIDS, ids=lambda v: str(v)[:20])
def test_explicit_time_grid_is_validated(grid, msg):
  with pytest.raises(ValueError, match=msg):
    build_sampler("dpmpp_2m", VP, time_grid=grid)
  with pytest.raises(ValueError, match=msg):
    get_sampler("dpmpp_2m")(mixture(2).denoiser(VP), VP, None, jnp.zeros((2, 2)), grid,
                            cond=None, sample_offset=0)


def test_build_sampler_with_explicit_time_grid():
  """time_grid= gives the same sampler as the equal built grid; it excludes the grid arguments,
  and num_steps, if given, must match it."""
  grid = grids_time_grid(VP, 7, "logsnr")
  den = mixture(2).denoiser(VP)
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (5, 2))
  a, ia = build_sampler("dpmpp_2m", VP, 7, grid="logsnr")(den, None, x_T)
  b, ib = build_sampler("dpmpp_2m", VP, time_grid=list(grid))(den, None, x_T)
  c, _ = build_sampler("dpmpp_2m", VP, 7, time_grid=grid)(den, None, x_T)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)
  assert int(ia["nfe"]) == int(ib["nfe"]) == 7
  with pytest.raises(ValueError, match="num_steps=6 does not match"):
    build_sampler("dpmpp_2m", VP, 6, time_grid=grid)
  with pytest.raises(ValueError, match="grid"):
    build_sampler("dpmpp_2m", VP, time_grid=grid, grid="karras")
  with pytest.raises(ValueError, match="t_min"):
    build_sampler("dpmpp_2m", VP, time_grid=grid, t_min=0.01)
  with pytest.raises(ValueError, match="num_steps"):
    build_sampler("dpmpp_2m", VP)


# ------------------------------------------------------------------------------------------------
# Every sampler on the VP, VE, sub-VP and EDM schedules
# ------------------------------------------------------------------------------------------------

SCHEDULES = {"vp": VP, "ve": schedules.VE(), "subvp": schedules.SubVP(), "edm": schedules.EDM()}
# Relative error bounds at ~40 NFE on the Karras grid over each schedule's whole range, by
# theoretical order (measured on the 2-D mixture: order 1 <= 0.035, order 2 <= 0.021,
# order >= 3 <= 0.0026 over the four schedules).
ACCURACY_TOL = {1: 0.07, 2: 0.035, 3: 0.006}


@functools.lru_cache(None)
def full_range_reference(sname, dim=2, batch=16):
  """(x_T, x_ref) over the schedule's whole [t_min, t_max] in float64; call inside enable_x64."""
  sch, gm = SCHEDULES[sname], mixture(dim)
  x_T = gm.sample(jax.random.PRNGKey(7), batch, sch.t_max, sch, jnp.float64)
  return x_T, np.asarray(reference_ode(gm, sch, x_T, sch.t_max, sch.t_min))


@pytest.mark.parametrize("sname", ["ve", "subvp", "edm"])
@pytest.mark.parametrize("name", DET)
def test_deterministic_on_other_schedules(name, sname):
  """Default variant: exact NFE (counted) and the error against the float64 PF-ODE solution at
  ~40 NFE within the bound of its order (adaptive: min(0.07, 10 rtol)). VP: ``test_nfe_exact``
  and ``test_order_of_convergence``."""
  info, sch, gm = sampler_info(name), SCHEDULES[sname], mixture(2)
  variant = dict(info.variants[0])
  if "final_denoise" in info.defaults():
    variant["final_denoise"] = False
  hp = info.resolve(variant)
  with jax.enable_x64(True):
    x_T, ref = full_range_reference(sname)
    den, count = counting_denoiser(gm.denoiser(sch))
    if info.adaptive:
      f = build_sampler(name, sch, 10, grid="logsnr", **variant)
      tol = min(0.07, 10 * hp["rtol"])
    else:
      n = _steps_for(info, hp, 40)
      f = build_sampler(name, sch, n, grid="karras", **variant)
      tol = ACCURACY_TOL[min(int(info.order(hp)), 3)]
    x, out = f(den, jax.random.PRNGKey(0), x_T)
    jax.block_until_ready(x)
  assert int(out["nfe"]) == count[0]
  if not info.adaptive:
    assert count[0] == info.nfe(n, hp)
  err = float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))
  assert err < tol, (name, sname, err, tol, int(out["nfe"]))


@pytest.mark.parametrize("sname", ["ve", "subvp", "edm"])
@pytest.mark.parametrize("name", STO)
def test_stochastic_on_other_schedules(name, sname):
  """Default variant, exact NFE and the sample statistics (VP: ``test_stochastic_distribution``),
  at a modest size: 2,000 samples, 100 steps."""
  check_distribution(name, sampler_info(name).variants[0], n=2000, steps=100, bias=0.05,
                     schedule=SCHEDULES[sname])


def logsnr_restricted(sch):
  """``sch`` restricted to the logSNR range of ORDER_SETTING's VP, t in [0.05, 0.5]."""
  ref = ORDER_SETTING["schedule"]
  lo, hi = ref.logsnr(np.float64(ref.t_max)), ref.logsnr(np.float64(ref.t_min))
  return dataclasses.replace(sch, t_min=float(sch.t_from_logsnr(hi)),
                             t_max=float(sch.t_from_logsnr(lo)))


@slow
@pytest.mark.parametrize("sname", ["ve", "subvp", "edm"])
@pytest.mark.parametrize("name", DET_FIXED)
def test_order_of_convergence_other_schedules(name, sname):
  info = sampler_info(name)
  variant = info.variants[0]
  setting = dict(schedule=logsnr_restricted(SCHEDULES[sname]), batch=ORDER_SETTING["batch"])
  slope, nfes, errs = measure_order(name, variant, 64, setting=setting)
  expected = info.order(info.resolve(variant))
  assert abs(slope - expected) <= 0.3, (name, sname, slope, expected, nfes, errs)


def test_unipc_final_orders_at_every_n_remove_the_jump_at_ten_steps():
  """On a uniform-t grid UniPC-3's full-order final steps at N >= 10 (the N < 10 rule stops
  lowering them) jump the error up ~10x from N = 8; lowering them at every N, as the UniPC code
  and diffusers do (``lower_order_final_every_n``), keeps the error falling."""
  from diffusion import flow_map
  sch = schedules.VP()
  gm = mixture(2)
  with jax.enable_x64(True):
    den = gm.denoiser(sch)
    x_T = sch.prior_sample(jax.random.PRNGKey(1), (64, 2)).astype(jnp.float64)
    ref = np.asarray(flow_map.exact_flow_map(den, sch, x_T, sch.t_max, sch.t_min))
    err = {}
    for every in (False, True):
      for n in (8, 10):
        f = build_sampler("unipc", sch, n, grid="uniform", lower_order_final_every_n=every)
        x, _ = f(den, jax.random.PRNGKey(0), x_T)
        err[every, n] = float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))
  assert err[False, 8] == err[True, 8], err  # below 10 the two rules are one
  assert err[False, 10] > 4 * err[False, 8], err
  assert err[True, 10] < err[True, 8], err


# -- timestep spacings of discrete schedules (grids 'linspace', 'leading', 'trailing') ----------


def test_discrete_timesteps_are_the_released_samplers():
  from diffusion.samplers.grids import discrete_timesteps
  np.testing.assert_array_equal(discrete_timesteps(1000, 10, "linspace"),
                                [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
  np.testing.assert_array_equal(discrete_timesteps(1000, 10, "leading", 1),
                                [901, 801, 701, 601, 501, 401, 301, 201, 101, 1])
  np.testing.assert_array_equal(discrete_timesteps(1000, 10, "trailing"),
                                [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
  np.testing.assert_array_equal(discrete_timesteps(1000, 3, "trailing"), [999, 666, 332])
  with pytest.raises(ValueError, match="only 'leading' takes an offset"):
    build_sampler("ddim", schedules.get_schedule("vp_discrete"), 4, grid="trailing:1")
  with pytest.raises(ValueError, match="the 'vp' schedule has none"):
    build_sampler("ddim", VP, 4, grid="trailing")


@pytest.mark.parametrize("spacing", ["linspace", "leading:1", "trailing"])
def test_ddim_on_a_spacing_is_the_released_ddim_loop(spacing):
  """DDIM on the grid equals the DDIM loop over alphas_cumprod written here (diffusers'
  DDIMScheduler with set_alpha_to_one=False): at timestep n, x0 = D(x, n); x <- sqrt(abar_p) x0 +
  sqrt(1 - abar_p) (x - sqrt(abar_n) x0) / sqrt(1 - abar_n), p the next timestep (abar[0] after
  the last). diffusers takes p = n - N // S instead, the same where the timesteps are N // S
  apart (leading; trailing with S dividing N) and off by up to N / S - N // S (trailing) or more
  (linspace) elsewhere: not reproduced (docs/samplers.md)."""
  from diffusion.samplers.grids import discrete_timesteps, parse_spacing
  sch = schedules.get_schedule("vp_discrete")
  n_train, steps = sch.num_timesteps, 7
  abar = np.cumprod(1.0 - schedules.discrete_betas(n_train, 1e-4, 0.02, "linear"))
  gm = mixture(2)
  ts = discrete_timesteps(n_train, steps, *parse_spacing(spacing))
  if spacing.startswith("leading"):  # diffusers' p = n - N // S is the next timestep here
    np.testing.assert_array_equal(ts[1:], ts[:-1] - n_train // steps)
  with jax.enable_x64(True):
    den = gm.denoiser(sch)
    x_T = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)))
    got, out = build_sampler("ddim", sch, steps, grid=spacing)(den, jax.random.PRNGKey(0), x_T)
    x = np.asarray(x_T)
    for i, n in enumerate(ts):
      x0 = np.asarray(den(jnp.asarray(x), jnp.full((16,), (n + 1.0) / n_train), None))
      a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else abar[0]
      eps = (x - np.sqrt(abar[n]) * x0) / np.sqrt(1.0 - abar[n])
      x = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-9, atol=1e-9)
  # linspace ends on timestep 0, whose step to abar[0] is the identity: one NFE fewer here.
  assert int(out["nfe"]) == steps - (spacing == "linspace")
