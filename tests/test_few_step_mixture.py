"""Trained few-step students against the exact answers of 8gaussians (a Gaussian mixture, so the
PF-ODE map x_T -> x_0 is known): reflow straightens the flow and shrinks the one-step error, and a
consistency-distilled student's one-step map approaches the exact consistency function. Short
runs; benchmarks/few_step_mixture.py is the full measurement (docs/few_step.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, consistency as C, flow, schedules, training
from diffusion.data import toy2d
from diffusion.models import get_model
from diffusion.parameterization import Parameterization, make_denoiser
from diffusion.samplers import build_sampler

GM = analytic.GaussianMixture.create(*toy2d.gaussian_mixture_params("8gaussians"))


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _exact_map(sched, x_T):
  with jax.enable_x64(True):
    f = build_sampler("dpm_solver_3", sched, num_steps=100, grid="logsnr")
    return np.asarray(f(GM.denoiser(sched), jax.random.PRNGKey(0),
                        jnp.asarray(x_T, jnp.float64))[0], np.float32)


def _train(sched, param, objective, loss_fn, steps, data):
  net = get_model("mlp", width=64, num_blocks=2, embed_dim=32)
  opt = training.make_optimizer(training.OptimConfig(lr=2e-3, warmup_steps=20))
  cfg = training.StepConfig(objective=objective, weighting="flow", ema_decay=0.0)
  step = jax.jit(training.make_train_step(net, sched, param, opt, cfg, loss_fn=loss_fn))
  state = training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  for i in range(steps):
    state, _ = step(state, data(i))
  return make_denoiser(lambda x, c, cond=None: net.apply({"params": state.params}, x, c),
                       sched, param)


@pytest.mark.slow  # ~18 s; reflow's objective: tests/test_objectives.py, its driver run: test_few_step_driver.py and the golden 'reflow' case
def test_reflow_straightens_the_exact_flow_and_shrinks_its_one_step_error():
  """The 2-RF trained 300 steps on pairs of the exact 1-RF: straightness falls from 1.99 (the
  exact flow) to below 0.1 (measured 0.0043), and the 1-step Euler map's relative error to the
  pairs' map from 1.00 to below 0.3 (measured 0.11)."""
  rf = schedules.RectifiedFlow()
  noise = np.asarray(rf.prior_sample(jax.random.PRNGKey(1), (8192, 2)))
  targets = _exact_map(rf, noise)
  rng = np.random.default_rng(0)

  def data(i):
    idx = rng.integers(0, len(noise), 256)
    return {"x": jnp.asarray(targets[idx]), "noise": jnp.asarray(noise[idx])}

  student = _train(rf, Parameterization("flow"), "reflow", None, 300, data)
  x_T = jnp.asarray(noise[:2000])
  one_step = build_sampler("euler", rf, num_steps=1, grid="uniform")
  err = {}
  straight = {}
  for name, den in (("1-RF", GM.denoiser(rf)), ("2-RF", student)):
    straight[name] = float(flow.straightness(den, rf, x_T, 50)[0])
    err[name] = _rel(one_step(den, jax.random.PRNGKey(0), x_T)[0], targets[:2000])
  print("straightness", straight, "1-step relative error", err)
  assert straight["1-RF"] > 1.5 and straight["2-RF"] < 0.1
  assert err["1-RF"] > 0.9 and err["2-RF"] < 0.3


@pytest.mark.slow  # ~22 s of training; CD's loss at the exact map: tests/test_consistency.py
def test_consistency_distilled_student_approaches_the_exact_consistency_function():
  """CD (CM's defaults, exact Heun teacher steps, 18 scales), 400 steps: the 1-step map's relative
  error to the exact consistency function falls below 0.45 (measured 0.36), from 1.0 for a
  network that outputs 0 (f = c_skip x, about 0 at sigma_max)."""
  edm = schedules.EDM()
  param = Parameterization("consistency", sigma_data=1.0)
  teacher = C.traced_teacher_step("heun", edm, GM.denoiser(edm))

  def cd(denoise, x0, key, context):
    return C.consistency_distillation_loss(denoise, None, teacher, x0, key, edm, 18)

  student = _train(edm, param, "consistency_distillation", cd, 400,
                   lambda i: {"x": GM.sample0(jax.random.PRNGKey(100 + i), 256)})
  x_T = edm.prior_sample(jax.random.PRNGKey(3), (1000, 2))
  t = jnp.full((1000,), edm.t_max)
  exact = C.ode_consistency_fn(GM.denoiser(edm), edm, 128)(x_T, t)
  err = _rel(student(x_T, t), exact)
  zero = make_denoiser(lambda x, c, cond=None: jnp.zeros_like(x), edm, param)
  print("1-step relative error of the CD student:", err)
  assert _rel(zero(x_T, t), exact) > 0.99 and err < 0.45


@pytest.mark.parametrize("n", [1, 2])
def test_consistency_sampler_runs_a_trained_parameterization(n):
  """The registry's 'consistency' sampler takes Parameterization('consistency')'s function: at
  t_min it returns x exactly, so the last grid point is the boundary (NFE = steps)."""
  edm = schedules.EDM()
  f = make_denoiser(lambda x, c, cond=None: jnp.zeros_like(x), edm,
                    Parameterization("consistency", sigma_data=1.0))
  x, info = build_sampler("consistency", edm, num_steps=n, grid="karras")(
      f, jax.random.PRNGKey(0), edm.prior_sample(jax.random.PRNGKey(1), (16, 2)))
  assert info["nfe"] == n and np.all(np.isfinite(np.asarray(x)))
