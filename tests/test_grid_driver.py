"""Explicit time grids in the driver (config.sampling.time_grid), the grid search on a trained
run (experiments/search_grid.py), and consistency distillation's EMA target network
(config.distill.target_ema: the update rule, the loss reading it, exact resume)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import checkpoint, training
from diffusion.config_checks import ConfigError
from diffusion.models import get_model
from diffusion.parameterization import Parameterization
from diffusion.samplers import grids
from diffusion.schedules import get_schedule
from experiments import build, sample, search_grid, setup, train
from experiments.config_files import load_config_file
from experiments.validate import validate
from tests.conftest import REPO, TINY, with_overrides

TOY = os.path.join(REPO, "configs", "toy")


def _config(name, **overrides):
  c = load_config_file(os.path.join(TOY, f"checkerboard_{name}.py"))
  return with_overrides(c, {**TINY, **overrides})


def _leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def _refused(config, mode="train") -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, mode, device_count=1, process_count=1)
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("grid") / "edm")
  train.train(_config("edm"), wd)
  return wd


def _cd(teacher_wd, **overrides):
  c = _config("cd", **{"training.num_steps": 20, **overrides})
  c.distill.teacher_workdir = teacher_wd
  return c


TARGET = {"distill.target_ema": 0.9, "training.max_to_keep": 5}


@pytest.fixture(scope="module")
def cd_target_run(teacher):
  """(config, workdir) of a 20-step CD run with an EMA target (checkpoints at 10 and 20)."""
  cfg = _cd(teacher, **TARGET)
  wd = os.path.join(os.path.dirname(teacher), "cd_target_ref")
  out = train.train(cfg, wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  return cfg, wd


def _restore_state(config, wd, step):
  s = setup.setup(config)
  ckpt = checkpoint.Checkpointer(wd, config=s.identity, read_only=True)
  try:
    state, _, got = ckpt.restore(s.abstract_state, step=step)
  finally:
    ckpt.close()
  assert got == step
  return state


# -- the EMA target's update rule ------------------------------------------------------------------


def test_target_is_an_ema_of_the_parameters_after_each_step():
  """theta^-_k = mu theta^-_{k-1} + (1 - mu) theta_k (CM Alg. 2), theta^-_0 = theta_0, on a plain
  train step (the rule does not depend on the objective); the sampled EMA is separate."""
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  sched, param = get_schedule("edm"), Parameterization("edm")
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  mu = 0.8
  cfg = training.StepConfig(ema_decay=0.5, target_ema=mu)
  step = jax.jit(training.make_train_step(net, sched, param, opt, cfg))
  state = training.with_target(training.init_state(net, opt, jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 2))))
  assert _leaves_equal(state.target, state.params)
  expected = state.target
  for i in range(3):
    batch = {"x": jax.random.normal(jax.random.PRNGKey(10 + i), (32, 2))}
    state, _ = step(state, batch)
    expected = jax.tree_util.tree_map(lambda e, p: e + (1.0 - mu) * (p - e), expected,
                                      state.params)
    for got, want in zip(jax.tree_util.tree_leaves(state.target),
                         jax.tree_util.tree_leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # float32 round-off only
    assert not _leaves_equal(state.target, state.params)
  assert not _leaves_equal(state.target, state.ema_params)  # another decay


def test_target_ema_needs_a_target_state_and_a_valid_mu():
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  opt = training.make_optimizer(training.OptimConfig())
  step = training.make_train_step(net, get_schedule("edm"), Parameterization("edm"), opt,
                                  training.StepConfig(target_ema=0.9))
  state = training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match="TargetState"):
    step(state, {"x": jnp.zeros((4, 2))})
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match="target_ema"):
      training.StepConfig(target_ema=bad)


def test_the_cd_loss_reads_the_target(teacher):
  """With theta^- = theta the EMA-target loss equals the stop-gradient one bit for bit; with
  another theta^- it differs (the target is what the student is pulled to)."""
  plain = setup.setup(_cd(teacher))
  ema = setup.setup(_cd(teacher, **{"distill.target_ema": 0.9}))
  assert plain.step_cfg.target_ema == 0.0 and ema.step_cfg.target_ema == 0.9
  _, t_params, _ = setup.restore_params(_config("edm"), teacher)
  state = setup.init_state(ema, t_params)
  assert isinstance(state, training.TargetState) and _leaves_equal(state.target, state.params)
  from diffusion import objectives
  tm = objectives.TeacherModel(plain.net, plain.param, plain.schedule)
  batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (64, 2))}
  key = jax.random.PRNGKey(2)
  ctx = {"step": jnp.int32(0), "teacher": t_params}

  def loss_of(s, context):
    fn = training.make_loss(s.net, s.schedule, s.param, s.step_cfg, config=s.config, teacher=tm)
    return float(fn(state.params, batch, key, context)[0])

  base = loss_of(plain, ctx)
  assert loss_of(ema, dict(ctx, target=state.params)) == base
  moved = jax.tree_util.tree_map(lambda a: a + 0.05, state.params)
  assert abs(loss_of(ema, dict(ctx, target=moved)) - base) > 1e-4 * abs(base)


def test_cd_with_an_ema_target_resumes_exactly(teacher, cd_target_run):
  cfg, ref_wd = cd_target_run
  wd = os.path.join(os.path.dirname(teacher), "cd_target")
  ref = _restore_state(cfg, ref_wd, 20)
  assert isinstance(ref, training.TargetState)
  assert not _leaves_equal(ref.target, ref.params)
  assert not _leaves_equal(ref.target, ref.ema_params)
  shutil.copytree(ref_wd, wd)
  shutil.rmtree(os.path.join(wd, "checkpoints", "20"))  # a kill after the checkpoint at 10
  train.train(cfg, wd)
  got = _restore_state(cfg, wd, 20)
  for field in ("params", "target", "ema_params", "opt_state"):
    assert _leaves_equal(getattr(got, field), getattr(ref, field)), field


def test_unset_target_and_grid_leave_the_identity_unchanged(teacher):
  """distill.target_ema None or 0 and sampling.time_grid None are absent from config.json (the
  identity of runs from before the fields); set, they are recorded."""
  res = {"data_shape": [2], "param_count": 1, "jax_version": jax.__version__}
  for mu in (None, 0.0):
    d = build.identity_dict(_cd(teacher, **{"distill.target_ema": mu}), res)
    assert "target_ema" not in d["distill"] and "time_grid" not in d["sampling"]
  assert build.identity_dict(_cd(teacher, **{"distill.target_ema": 0.9}),
                             res)["distill"]["target_ema"] == 0.9
  zero = setup.setup(_cd(teacher, **{"distill.target_ema": 0.0}))
  assert zero.identity == setup.setup(_cd(teacher)).identity and zero.step_cfg.target_ema == 0
  assert not isinstance(zero.abstract_state, training.TargetState)


@pytest.mark.parametrize("overrides, match", [
    ({"distill.target_ema": 1.0}, "target_ema"),
    ({"distill.target_ema": -0.5}, "target_ema"),
    ({"distill.target_ema": 0.9, "training.ema_profiles": (0.05,)}, "ema_profiles"),
])
def test_bad_target_ema_is_refused(teacher, overrides, match):
  assert match in _refused(_cd(teacher, **overrides))


def test_consistency_training_refuses_a_target_ema():
  assert "target_ema" in _refused(_config("ct", **{"distill.target_ema": 0.9}))


# -- explicit time grids ---------------------------------------------------------------------------


def test_explicit_time_grid_samples_as_the_grid_it_spells(teacher, cd_target_run):
  """sampling.time_grid = the Karras grid's times gives the samples of grid='karras' bit for bit,
  in a results folder of its own."""
  _, wd = cd_target_run
  cfg = _cd(teacher, **TARGET, **{"sampling.num_steps": 2})
  karras = sample.run(cfg, wd)
  sched = build.schedule(cfg)
  times = tuple(float(t) for t in grids.time_grid(sched, 2, "karras"))
  explicit = sample.run(with_overrides(_cd(teacher, **TARGET, **{"sampling.num_steps": 2}),
                                       {"sampling.time_grid": times}), wd)
  assert explicit["out"] != karras["out"] and "explicit_grid" in explicit["out"]
  a = np.load(os.path.join(karras["out"], "samples.npz"))["x"]
  b = np.load(os.path.join(explicit["out"], "samples.npz"))["x"]
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("grid, steps, match", [
    ((80.0, 1.0, 0.002), 3, "num_steps"),
    ((80.0, 0.002, 1.0), 2, "decreasing"),
    ((90.0, 1.0, 0.002), 2, "range"),
    (("a", 1.0), 1, "tuple of floats"),
])
def test_bad_time_grids_are_refused(teacher, grid, steps, match):
  cfg = _cd(teacher, **{"sampling.num_steps": steps})
  cfg.sampling.time_grid = grid
  assert match in _refused(cfg, "sample")


def test_a_sweep_refuses_an_explicit_grid(teacher):
  cfg = _cd(teacher, **{"sampling.num_steps": 2, "eval.sweep_samplers": "consistency",
                        "eval.sweep_nfe": "1,2"})
  cfg.sampling.time_grid = (80.0, 1.0, 0.002)
  assert "sweep" in _refused(cfg, "sweep")


# -- the search on a trained run -------------------------------------------------------------------


@pytest.mark.slow  # 10 sample sets (~15 s on 2 loaded cores)
def test_search_grid_writes_its_result_once_and_prints_the_overrides(teacher, cd_target_run):
  _, wd = cd_target_run
  cfg = _cd(teacher, **TARGET, **{"eval.sweep_num_samples": 128})
  out = search_grid.run(cfg, wd, 2, "sw", iterations=2)
  grid, trace = out["grid"], out["trace"]
  assert grid.shape == (3,) and np.all(np.diff(grid) < 0) and not out["reused"]
  assert trace["num_evaluations"] == 1 + 4 and len(trace["searches"]) == 1
  assert trace["score"] <= trace["one_step_score"] + 0.02  # an end point reproduces 1 step
  assert os.path.dirname(out["path"]) == os.path.join(wd, "grids")
  assert os.path.basename(out["path"]).startswith("step_20_consistency_2steps_sw_")
  saved = json.load(open(out["path"]))
  assert saved["grid"] == [float(t) for t in grid] and saved["settings"]["num_samples"] == 128
  mtime = os.path.getmtime(out["path"])
  again = search_grid.run(cfg, wd, 2, "sw", iterations=2)
  assert again["reused"] and os.path.getmtime(out["path"]) == mtime
  np.testing.assert_array_equal(again["grid"], grid)
  other = search_grid.run(cfg, wd, 2, "sw", iterations=1)  # another setting, another file
  assert other["path"] != out["path"] and os.path.exists(out["path"])
  # The printed overrides sample with the grid, and eval's metric of those samples is the
  # search's score of that grid.
  flags = search_grid.overrides(grid)
  assert flags.startswith("--config.sampling.num_steps=2 --config.sampling.time_grid='(")
  cfg_g = _cd(teacher, **TARGET, **{"eval.sweep_num_samples": 128, "sampling.num_steps": 2})
  cfg_g.sampling.time_grid = tuple(float(t) for t in grid)
  validate(cfg_g, "sample", wd, device_count=1, process_count=1)
  s, params, _ = setup.restore_params(cfg_g, wd)
  from experiments import generate
  x, _ = generate.generate(s, params, 128, jax.random.PRNGKey(cfg_g.seed + 2))
  assert search_grid.scorer(cfg_g, "sw")(np.asarray(x)) == pytest.approx(trace["score"],
                                                                          rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_steps": 0}, "num_steps"), ({"metric": "kl"}, "metric"),
    ({"metric": "fid"}, "fid"), ({"iterations": -1}, "iterations"),
    ({"num_samples": 1}, "num_samples"),
])
def test_search_grid_refuses_bad_requests(teacher, kwargs, match):
  args = {"num_steps": 2, "metric": "sw", "iterations": 2, "sweeps": 0, "num_samples": None}
  args.update(kwargs)
  with pytest.raises(ConfigError, match=match):
    search_grid.check_request(_cd(teacher), args["num_steps"], args["metric"],
                              args["iterations"], args["sweeps"], args["num_samples"])


def test_fit_and_ays_grids_are_written_once_and_sample_by_name(teacher):
  """search_grid --method=fit / ays on a trained run: files under grids/, read back (never
  recomputed), and the printed grid kinds validate and sample for any step count they hold."""
  cfg = _config("edm", **{"eval.sweep_num_samples": 64})
  fit = search_grid.run_fit(cfg, teacher, [2, 3], ["dpmpp_2m"], reference_steps=20,
                            max_evals=12)
  assert not fit["reused"] and os.path.basename(fit["path"]).startswith("fit_step_")
  saved = json.load(open(fit["path"]))
  assert sorted(saved["grids"]["dpmpp_2m"]) == ["2", "3"]
  for k in ("2", "3"):
    assert saved["traces"]["dpmpp_2m"][k]["loss"] <= saved["traces"]["dpmpp_2m"][k]["init_loss"]
  again = search_grid.run_fit(cfg, teacher, [2, 3], ["dpmpp_2m"], reference_steps=20,
                              max_evals=12)
  assert again["reused"] and again["grids"] == saved["grids"]
  costs = search_grid.run_ays(cfg, teacher, num_nodes=16)
  assert os.path.basename(costs["path"]).startswith("ays_step_") and not costs["reused"]
  assert search_grid.run_ays(cfg, teacher, num_nodes=16)["reused"]
  for kind, steps in ((f"fitted:{fit['path']}", 3), (f"ays:{costs['path']}", 5)):
    c = with_overrides(cfg, {"sampling.sampler": "dpmpp_2m", "sampling.num_steps": steps,
                             "sampling.grid": kind})
    validate(c, "sample", teacher, device_count=1, process_count=1)
  bad = with_overrides(cfg, {"sampling.sampler": "unipc", "sampling.num_steps": 3,
                             "sampling.grid": f"fitted:{fit['path']}"})
  assert "no grid fitted for sampler 'unipc'" in _refused(bad, "sample")
  sweep = with_overrides(cfg, {"sampling.grid": f"fitted:{fit['path']}",
                               "eval.sweep_samplers": "dpmpp_2m", "eval.sweep_nfe": "2,3"})
  validate(sweep, "sweep", teacher, device_count=1, process_count=1)  # every cell is held
  sweep = with_overrides(sweep, {"eval.sweep_nfe": "2,4"})
  assert "'dpmpp_2m' at NFE 4: 4 steps" in _refused(sweep, "sweep")
  with pytest.raises(ConfigError, match="fixed-step deterministic"):
    search_grid.run_fit(cfg, teacher, [2], ["euler_maruyama"])
  cfg = _config("edm", **{"eval.sweep_num_samples": 64})  # with_overrides changed the other
  stats = search_grid.run_ems(cfg, teacher, num_intervals=12)
  assert os.path.basename(stats["path"]).startswith("ems_step_") and not stats["reused"]
  assert search_grid.run_ems(cfg, teacher, num_intervals=12)["reused"]
  v3 = with_overrides(cfg, {"sampling.sampler": "dpm_solver_v3", "sampling.num_steps": 4,
                            "sampling.grid": "logsnr", "sampling.statistics": stats["path"]})
  validate(v3, "sample", teacher, device_count=1, process_count=1)
  s, params, _ = setup.restore_params(v3, teacher)
  from experiments import generate
  x, info = generate.generate(s, params, 16, jax.random.PRNGKey(0))
  assert info["nfe"] == 4 and np.all(np.isfinite(np.asarray(x)))
