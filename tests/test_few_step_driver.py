"""Few-step training through the driver (experiments/distill.py, experiments/reflow.py): progressive
distillation rounds (kept checkpoints, the round's teacher in the state, exact resume mid-round
and at a round's first step), consistency distillation from a teacher, consistency training's
traced curriculum, reflow's pairs and batches, and the refusals of incompatible teachers."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import checkpoint, consistency, parallel, training
from diffusion.losses import dsm_loss
from diffusion.parameterization import Parameterization, make_denoiser
from diffusion.schedules import get_schedule
from experiments import build, distill, evaluate, generate, reflow, sample, setup, train
from experiments.config_files import load_config_file
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests.conftest import REPO, TINY, with_overrides

TOY = os.path.join(REPO, "configs", "toy")


def _config(name, **overrides):
  c = load_config_file(os.path.join(TOY, f"checkerboard_{name}.py"))
  return with_overrides(c, {**TINY, **overrides})


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """Tiny trained teachers: {'vcos', 'edm', 'rf'} -> workdir (30 steps each)."""
  root = tmp_path_factory.mktemp("teachers")
  out = {}
  for name in ("vcos", "edm", "rf"):
    wd = str(root / name)
    train.train(_config(name), wd)
    out[name] = wd
  return out


def _student(name, teacher_wd, **overrides):
  c = _config(name, **overrides)
  c.distill.teacher_workdir = teacher_wd
  return c


def _refused(config, mode="train") -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, mode, device_count=1, process_count=1)
  assert "\n" not in str(e.value)
  return str(e.value)


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _restore_state(config, wd, step):
  s = setup.setup(config)
  ckpt = checkpoint.Checkpointer(wd, config=s.identity, read_only=True)
  try:
    state, _, got = ckpt.restore(s.abstract_state, step=step)
  finally:
    ckpt.close()
  assert got == step
  return state


# -- progressive distillation ----------------------------------------------------------------------

PD = {"distill.rounds": 2, "distill.student_steps": 4, "training.num_steps": 40,
      "training.ckpt_every": 10, "sampling.num_steps": 2}


@pytest.mark.slow  # ~100 s with its teacher; the PD driver is checked bitwise by golden case 'pd'
def test_pd_rounds_keep_students_and_carry_their_teachers(teachers, capsys):
  wd = os.path.join(os.path.dirname(teachers["vcos"]), "pd_a")
  cfg = _student("pd", teachers["vcos"], **PD, **{"training.max_to_keep": 1})
  out = train.train(cfg, wd)
  assert out["step"] == 40 and out["status"] == "done"
  log = capsys.readouterr().out
  assert "2 round(s) of 20 steps, students of [4, 2] DDIM steps from a teacher of 8" in log
  assert "round 1/2 done at step 20: its student (4 DDIM steps)" in log
  # max_to_keep=1 deletes step 10 and 30, never a round's end (keep_period = 20).
  assert sorted(int(n) for n in os.listdir(os.path.join(wd, "checkpoints"))
                if n.isdigit()) == [20, 40]
  _, teacher_ema, _ = setup.restore_params(_config("vcos"), teachers["vcos"])
  s20, s40 = _restore_state(cfg, wd, 20), _restore_state(cfg, wd, 40)
  assert isinstance(s20, training.DistillState)
  assert _leaves_equal(s20.teacher, teacher_ema)  # round 0's teacher: the trained run
  assert _leaves_equal(s40.teacher, s20.ema_params)  # round 1's: round 0's student (its EMA)
  assert not _leaves_equal(s40.params, s20.ema_params)  # ... which it then trained


@pytest.mark.slow  # ~28 s; PD's rounds: test_pd_rounds_keep_students_and_carry_their_teachers; exact resume: test_reliability's SIGKILL test
def test_pd_resumes_exactly_mid_round_and_at_a_round_start(teachers):
  root = os.path.dirname(teachers["vcos"])
  ref_wd, wd = os.path.join(root, "pd_ref"), os.path.join(root, "pd_b")
  cfg = _student("pd", teachers["vcos"], **PD, **{"training.max_to_keep": 10})
  train.train(cfg, ref_wd)
  ref = _restore_state(cfg, ref_wd, 40)
  train.train(cfg, wd)
  for resume_from in (30, 20):  # a kill after the checkpoint at 30, then at 20 (a round start)
    for step in os.listdir(os.path.join(wd, "checkpoints")):
      if step.isdigit() and int(step) > resume_from:
        shutil.rmtree(os.path.join(wd, "checkpoints", step))
    train.train(cfg, wd)
    got = _restore_state(cfg, wd, 40)
    assert _leaves_equal(got.params, ref.params) and _leaves_equal(got.teacher, ref.teacher)
    assert _leaves_equal(got.opt_state, ref.opt_state)


def test_begin_round_is_idempotent(teachers):
  cfg = _student("pd", teachers["vcos"], **PD)
  s = setup.setup(cfg)
  state = setup.init_state(s, setup.restore_params(_config("vcos"), teachers["vcos"])[1])
  state = state.replace(ema_params=jax.tree_util.tree_map(lambda a: a + 1.0, state.ema_params))
  once = s.objective.begin_round(state, s.optimizer)
  twice = s.objective.begin_round(once, s.optimizer)
  assert _leaves_equal(once, twice)
  assert _leaves_equal(once.teacher, state.ema_params) and _leaves_equal(once.params,
                                                                          state.ema_params)


# -- consistency distillation and training ---------------------------------------------------------


def test_cd_starts_from_the_teacher_trains_samples_and_evaluates(teachers, capsys):
  wd = os.path.join(os.path.dirname(teachers["edm"]), "cd")
  cfg = _student("cd", teachers["edm"], **{"training.num_steps": 20, "sampling.num_steps": 2})
  s = setup.setup(cfg)
  _, t_params, _ = setup.restore_params(_config("edm"), teachers["edm"])
  assert _leaves_equal(setup.init_state(s, t_params).params, t_params)
  out = train.train(cfg, wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  assert "teacher: the checkpoint at step 30" in capsys.readouterr().out
  r = sample.run(cfg, wd)
  assert r["nfe"] == 2
  m = evaluate.run(cfg, wd)  # a consistency function has no likelihood: samples only
  assert m["nfe"] == 2 and m["sampler"] == "consistency" and "nll_nats" not in m
  assert np.isfinite(m["sliced_wasserstein"])


def test_consistency_parameterization_is_the_boundary_function():
  """Parameterization('consistency') through make_denoiser equals consistency.make_consistency_fn
  of the same network, and is the identity (x / alpha) at t_min."""
  for name in ("edm", "vp", "rectified_flow"):
    sched = get_schedule(name)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2)), jnp.float32)
    apply_fn = lambda x_in, c, cond=None: jnp.tanh(x_in @ w + c[:, None])
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)), jnp.float32)
    t = jnp.asarray([sched.t_min, 0.3 * sched.t_max, 0.5 * sched.t_max, 0.9 * sched.t_max,
                     sched.t_max], jnp.float32)
    f = make_denoiser(apply_fn, sched, Parameterization("consistency", sigma_data=0.7))
    g = consistency.make_consistency_fn(apply_fn, sched, sigma_data=0.7)
    np.testing.assert_allclose(f(x, t), g(x, t), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(f(x, jnp.full((5,), sched.t_min)),
                               x / sched.alpha(jnp.float32(sched.t_min)), rtol=1e-6)


@pytest.mark.parametrize("curriculum,s0,s1,total", [("ict", 10, 1280, 3000), ("cm", 2, 150, 700)])
def test_traced_curriculum_equals_the_host_one(curriculum, s0, s1, total):
  host = consistency.ict_num_scales if curriculum == "ict" else consistency.cm_num_scales
  traced = jax.jit(lambda k: consistency.traced_num_scales(k, total, curriculum, s0, s1))
  got = np.asarray(jax.vmap(traced)(jnp.arange(total)))
  assert got.tolist() == [host(k, total, s0, s1) for k in range(total)]
  assert consistency.max_num_scales(total, curriculum, s0, s1) == got.max()


def test_traced_grid_equals_the_host_grid():
  sched = get_schedule("edm")
  lo, hi = consistency.sigma_range(sched)
  for n in (2, 11, 41):
    s, t, logits = consistency.traced_grid(sched, jnp.int32(n), 81)
    np.testing.assert_allclose(np.asarray(s[:n]), consistency.karras_sigmas(n, lo, hi),
                               rtol=2e-6)
    p = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(p[:n - 1], consistency.index_probs(
        consistency.karras_sigmas(n, lo, hi)), atol=1e-6)
    assert p[n - 1:].sum() == 0.0 and float(t[0]) == pytest.approx(sched.t_min)


@pytest.mark.slow  # ~14 s; CT's driver path: the golden 'ct' case; the curriculum: tests/test_consistency.py
def test_ct_trains_with_the_traced_curriculum(teachers):
  wd = os.path.join(os.path.dirname(teachers["edm"]), "ct")
  total = 40
  cfg = _config("ct", **{"training.num_steps": total, "distill.s0": 2, "distill.s1": 16})
  out = train.train(cfg, wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  for r in rows:  # the logged num_scales: the mean of N(k) over the window's steps
    window = range(r["step"] - 10, r["step"])
    assert r["num_scales"] == pytest.approx(np.mean(
        [consistency.ict_num_scales(k, total, 2, 16) for k in window]))


# -- reflow -------------------------------------------------------------------------------------------


def test_pairs_are_the_flows_own_noise_and_samples_and_resume(teachers, capsys):
  cfg = with_overrides(_config("rf"), {"distill.num_pairs": 300, "distill.pairs_shard_size": 100,
                                       "sampling.num_steps": 4})
  wd = teachers["rf"]
  info = reflow.run(cfg, wd)
  out = reflow.pairs_dir(wd)
  pairs = np.concatenate([np.load(os.path.join(out, f"shard_0000{k}.npz"))["x"]
                          for k in range(3)])
  assert pairs.shape == (300, 2, 2) and info["nfe"] == 9  # Heun: 4 steps, 2 calls each, + 1
  s, params, _ = setup.restore_params(cfg, wd)
  key = jax.random.PRNGKey(cfg.seed + 4)
  prior_key, _ = parallel.sampling_streams(key)
  noise = parallel.per_sample_prior(s.schedule, prior_key, 0, 300, (2,))
  np.testing.assert_allclose(pairs[:, 0], np.asarray(noise), rtol=1e-6, atol=1e-6)
  x, _ = generate.generate(s, params, 300, key)  # the driver's samples of the same key
  np.testing.assert_allclose(pairs[:, 1], x, rtol=1e-4, atol=1e-4)  # other batch shapes
  os.remove(os.path.join(out, "shard_00002.npz"))
  capsys.readouterr()
  reflow.run(cfg, wd)
  assert "200 of 300 samples already in" in capsys.readouterr().out
  np.testing.assert_array_equal(np.load(os.path.join(out, "shard_00002.npz"))["x"], pairs[200:])


def test_pair_batches_are_a_function_of_the_step_split_over_processes(teachers):
  cfg = _student("reflow", teachers["rf"])
  cfg.distill.pairs = reflow.pairs_dir(teachers["rf"])
  if not os.path.isdir(cfg.distill.pairs):
    reflow.run(with_overrides(_config("rf"), {"distill.num_pairs": 300,
                                              "distill.pairs_shard_size": 100}), teachers["rf"])
  pairs = build.load_pairs(cfg)
  whole = next(build.pair_batches(cfg, 7, 0, 1))
  halves = [next(build.pair_batches(cfg, 7, p, 2)) for p in range(2)]
  for k in ("x", "noise"):
    np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
  it = build.pair_batches(cfg, 5, 0, 1)
  next(it), next(it)
  np.testing.assert_array_equal(next(it)["x"], whole["x"])  # batch 7 from a start at 5
  rows = {tuple(p) for p in np.concatenate([pairs[:, 1], pairs[:, 0]], 1).tolist()}
  assert all(tuple(r) in rows for r in np.concatenate([whole["x"], whole["noise"]], 1).tolist())


def test_reflow_trains_on_the_pairs_from_the_flows_parameters(teachers):
  cfg = _student("reflow", teachers["rf"], **{"training.num_steps": 20})
  cfg.distill.pairs = reflow.pairs_dir(teachers["rf"])
  if not os.path.isdir(cfg.distill.pairs):
    reflow.run(with_overrides(_config("rf"), {"distill.num_pairs": 300,
                                              "distill.pairs_shard_size": 100}), teachers["rf"])
  s = setup.setup(cfg)
  _, t_params, _ = setup.restore_params(_config("rf"), teachers["rf"])
  assert _leaves_equal(setup.init_state(s, t_params).params, t_params)
  wd = os.path.join(os.path.dirname(teachers["rf"]), "reflow")
  out = train.train(cfg, wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  assert json.load(open(os.path.join(wd, "config.json")))["training"]["objective"] == "reflow"


def test_dsm_loss_with_given_noise_uses_it():
  sched = get_schedule("rectified_flow")
  x0 = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)), jnp.float32)
  noise = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)), jnp.float32)
  seen = {}

  def denoise(x, t, cond=None):
    seen["x"], seen["t"] = x, t
    return jnp.zeros_like(x)

  dsm_loss(denoise, x0, jax.random.PRNGKey(0), sched, weighting="flow", noise=noise)
  t = seen["t"][:, None]
  np.testing.assert_allclose(seen["x"], (1 - t) * x0 + t * noise, rtol=1e-6)
  with pytest.raises(ValueError, match="noise must have the shape"):
    dsm_loss(denoise, x0, jax.random.PRNGKey(0), sched, noise=noise[:3])


# -- refusals -------------------------------------------------------------------------------------


def test_incompatible_teachers_and_settings_are_refused(teachers, tmp_path):
  vcos, edm, rf = teachers["vcos"], teachers["edm"], teachers["rf"]
  cases = [
      (_student("cd", vcos), "config.sde.name='edm' differs from the teacher"),
      (_student("pd", vcos, **{"model.net.width": 48}), "config.model.net="),
      (_student("cd", edm, **{"model.net.width": 48}), "init_from_teacher=False"),
      (_student("pd", str(tmp_path / "none")), "teacher_workdir="),
      (_student("pd", vcos, **{"distill.rounds": 5}), "initial_steps=8 is not divisible"),
      (_student("pd", vcos, **{"distill.rounds": 4}), "multiple of config.distill.rounds=4"),
      (_student("pd", vcos, **{"distill.rounds": 2, "training.num_steps": 20,
                               "optim.warmup_steps": 10}), "steps per round 10"),
      (_student("cd", edm, **{"model.parameterization": "edm", "sampling.sampler": "heun"}),
       "parameterization='consistency'"),
      (_student("cd", edm, **{"distill.teacher_solver": "dpmpp_2m"}), "distill.teacher_solver"),
      (_student("ct", edm, **{"distill.curriculum": "linear"}), "distill.curriculum"),
      (_config("edm", **{"sampling.sampler": "consistency"}), "network is a denoiser"),
      (_student("cd", edm, **{"sampling.sampler": "heun"}), "a consistency function"),
      (_config("edm", **{"model.parameterization": "consistency",
                         "sampling.sampler": "consistency"}),
       "trained by the objectives 'consistency_distillation'"),
      (_student("reflow", rf, **{"distill.pairs": None}), "needs config.distill.pairs"),
  ]
  for cfg, expected in cases:
    try:
      msg = _refused(cfg)
    except BaseException as e:
      raise AssertionError(f"not refused: the case expecting {expected!r}") from e
    assert expected in msg, (expected, msg)
  # A teacher that is not a denoiser (a consistency student) is refused by name.
  cd_wd = str(tmp_path / "cd_as_teacher")
  os.makedirs(cd_wd)
  shutil.copy(os.path.join(edm, "config.json"), cd_wd)
  c = json.load(open(os.path.join(cd_wd, "config.json")))
  c["model"]["parameterization"] = "consistency"
  json.dump(c, open(os.path.join(cd_wd, "config.json"), "w"))
  assert "is not a denoiser" in _refused(_student("cd", cd_wd))
  # --mode=pairs needs a deterministic sampler.
  with pytest.raises(ConfigError, match="deterministic sampler"):
    reflow.check_deterministic(_config("rf", **{"sampling.sampler": "euler_maruyama"}))


def test_a_student_refuses_a_workdir_of_other_distill_settings(teachers):
  wd = os.path.join(os.path.dirname(teachers["vcos"]), "pd_c")
  train.train(_student("pd", teachers["vcos"], **PD), wd)
  with pytest.raises(checkpoint.WorkdirMismatchError, match="distill.student_steps"):
    train.train(_student("pd", teachers["vcos"], **{**PD, "distill.student_steps": 8}), wd)
  assert build.IDENTITY_FIELDS.count("distill") == 1


@pytest.mark.slow  # ~20 s: the CLI path of what the tests above run in-process
def test_cli_trains_a_student_and_writes_pairs(teachers, tmp_path):
  """Through ``python -m experiments.main``: a student loads its teacher's config file (once a
  DuplicateFlagError: library code imported the entry point), and --mode=pairs writes pairs."""
  from tests.conftest import run_main
  r = run_main(str(tmp_path / "cd"), "train",
               {"training.num_steps": 8, "training.ckpt_every": 8, "sampling.num_steps": 1,
                "distill.teacher_workdir": teachers["edm"]},
               config=os.path.join(TOY, "checkerboard_cd.py"), timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "teacher: the checkpoint at step 30" in r.stdout
  wd = str(tmp_path / "rf")
  shutil.copytree(teachers["rf"], wd, ignore=shutil.ignore_patterns("pairs"))
  r = run_main(wd, "pairs", {"distill.num_pairs": 64, "distill.pairs_shard_size": 32,
                             "sampling.num_steps": 2},
               config=os.path.join(TOY, "checkerboard_rf.py"), timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(wd, "pairs"))) == ["pairs.json", "shard_00000.npz",
                                                           "shard_00001.npz"]
  r = run_main(wd, "pairs", {"sampling.sampler": "euler_maruyama"},
               config=os.path.join(TOY, "checkerboard_rf.py"), timeout=300)
  assert r.returncode == 1 and "deterministic sampler" in r.stderr.strip().splitlines()[-1]
