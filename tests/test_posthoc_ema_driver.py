"""EDM2's power EMAs in training (training.PowerEMAState, <workdir>/ema_snapshots/) and the
post-hoc EMA command (experiments.posthoc_ema) on a tiny checkerboard run: the train step's EMAs
against the exact recursion weights, snapshots, exact resume, the reconstructed checkpoint, and
that runs without profiles keep their state structure."""
import os
import shlex
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import checkpoint, posthoc_ema as pe, training
from diffusion.models import get_model
from diffusion.parameterization import Parameterization
from diffusion.schedules import get_schedule
from experiments import posthoc_ema, sample, setup, snapshots, train
from diffusion.config_checks import ConfigError
from experiments.validate import validate_config
from tests.conftest import REPO, TOY_CONFIG, tiny_config, tree_hashes, workdir_fingerprint

PROFILES = (0.05, 0.1)  # stored; the run also tracks 0.07, the ground truth of a reconstruction
RUN_PROFILES = (0.05, 0.07, 0.1)
RUN = {"training.num_steps": 200, "training.ckpt_every": 50, "training.log_every": 50,
       "training.max_to_keep": 10, "training.ema_profiles": RUN_PROFILES,
       "training.ema_snapshot_every": 50, "eval.plot_samples": 64}


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def _restore(wd, step=None):
  s = setup.setup(tiny_config(**RUN))
  ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False, read_only=True)
  try:
    return jax.device_get(ck.restore(s.abstract_state, step=step)[0])
  finally:
    ck.close()


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  """The reference: 200 uninterrupted steps with the 0.05 / 0.07 / 0.10 EMAs, snapshots every
  50."""
  wd = str(tmp_path_factory.mktemp("phema") / "a")
  train.train(tiny_config(**RUN), wd)
  return wd


def test_train_step_power_ema_is_the_exact_profile_average():
  """The train step's power EMAs after 12 steps equal sum_s w_s theta(s) with the recursion's
  exact weights (diffusion.posthoc_ema.discrete_weights) over the parameters it produced, to
  float32 rounding; a skipped (non-finite) step changes no EMA and is not counted in t."""
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  cfg = training.StepConfig(ema_profiles=PROFILES, nonfinite="skip")
  step = jax.jit(training.make_train_step(net, get_schedule("vp"), Parameterization("eps"),
                                          opt, cfg))
  state = training.with_power_ema(
      training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2))), len(PROFILES))
  x = jax.random.normal(jax.random.PRNGKey(1), (13, 32, 2))
  trajectory = []
  for i in range(13):
    batch = x[i] * (np.nan if i == 5 else 1.0)  # step 5 is skipped
    before = state.power_ema
    state, m = step(state, {"x": batch})
    if i == 5:
      assert float(m["finite"]) == 0.0 and _leaves_equal(state.power_ema, before)
      continue
    trajectory.append(jax.device_get(state.params))
  assert int(state.num_skipped) == 1 and len(trajectory) == 12
  for k, sr in enumerate(PROFILES):
    w = pe.discrete_weights(12, float(pe.gamma_of_sigma_rel(sr)))
    want = pe.combine(w, trajectory)
    for got, ref in zip(jax.tree_util.tree_leaves(state.power_ema[k]),
                        jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="needs a PowerEMAState with 2 EMAs"):
    step(training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2))), {"x": x[0]})


def test_snapshots_are_the_states_emas(run_a):
  """A file per (step, sigma_rel) every 50 steps; the step-200 snapshots are bitwise the final
  checkpoint's power EMAs, with t = step (no skips) and gamma of their sigma_rel."""
  names = sorted(os.listdir(os.path.join(run_a, snapshots.SNAPSHOT_DIR)))
  assert names == [snapshots.snapshot_name(s, sr) for s in (50, 100, 150, 200)
                   for sr in RUN_PROFILES]
  final = _restore(run_a, 200)
  assert isinstance(final, training.PowerEMAState) and len(final.power_ema) == 3
  snaps = snapshots.read_snapshots(run_a, final.params)
  assert [(s.step, s.t, s.sigma_rel) for s in snaps] == [
      (s, s, sr) for s in (50, 100, 150, 200) for sr in RUN_PROFILES]
  for k in range(3):
    assert _leaves_equal(snaps[k - 3].params, final.power_ema[k])
  assert not _leaves_equal(final.power_ema[0], final.power_ema[2])
  assert not _leaves_equal(final.power_ema[0], final.params)
  with np.load(os.path.join(run_a, snapshots.SNAPSHOT_DIR, names[0])) as z:
    assert float(z["__gamma__"]) == pytest.approx(float(pe.gamma_of_sigma_rel(0.05)))


def test_resume_gives_bit_identical_emas_and_snapshots(run_a, tmp_path):
  """A copy of the run 'killed' after the step-150 snapshot was written but before its
  checkpoint (checkpoints after 100 and later snapshots removed) resumes from step 100: the final
  state (power EMAs included) and every snapshot equal the uninterrupted run's bit for bit, and
  the existing step-150 snapshot is kept, not rewritten."""
  wd = str(tmp_path / "b")
  shutil.copytree(run_a, wd)
  for s in ("150", "200"):
    shutil.rmtree(os.path.join(wd, "checkpoints", s))
  snap_dir = os.path.join(wd, snapshots.SNAPSHOT_DIR)
  for sr in RUN_PROFILES:
    os.remove(os.path.join(snap_dir, snapshots.snapshot_name(200, sr)))
  kept = os.path.join(snap_dir, snapshots.snapshot_name(150, 0.05))
  before = os.stat(kept)
  train.train(tiny_config(**RUN), wd)
  assert _leaves_equal(_restore(wd, 200), _restore(run_a, 200))
  template = _restore(run_a, 200).params
  a, b = snapshots.read_snapshots(run_a, template), snapshots.read_snapshots(wd, template)
  assert [(s.step, s.sigma_rel) for s in a] == [(s.step, s.sigma_rel) for s in b]
  assert all(_leaves_equal(x.params, y.params) for x, y in zip(a, b))
  after = os.stat(kept)
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_reconstruction_matches_an_ema_tracked_during_training(run_a, capsys):
  """Ground truth from training itself: the 0.07 EMA reconstructed from the 0.05 / 0.10
  snapshots only, at steps 200 and 150, against the 0.07 EMA the run tracked. Its error must be
  under 0.4 times the distance from the truth to the nearest stored profile (measured 0.11 at
  step 200, 0.18 at 150 on this short noisy run; benchmarks/posthoc_ema_toy.py: 0.064 with 4
  snapshots per profile, 0.003 with 20) -- a reconstruction that got the snapshot times or
  profiles wrong lands near 1 or above."""
  snaps = snapshots.read_snapshots(run_a, _restore(run_a, 200).params)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])  # noqa
  for end in (200, 150):
    stored = [s for s in snaps if s.sigma_rel in PROFILES and s.step <= end]
    truth = next(s for s in snaps if s.sigma_rel == 0.07 and s.step == end)
    recon, rec = pe.reconstruct([s.params for s in stored], [s.t for s in stored],
                                [s.sigma_rel for s in stored], 0.07, truth.t)
    err = np.linalg.norm(flat(recon) - flat(truth.params))
    nearest = min(np.linalg.norm(flat(s.params) - flat(truth.params))
                  for s in stored if s.step == end)
    with capsys.disabled():
      print(f"\n[posthoc_ema driver] 0.07 from 0.05/0.10 at step {end} ({len(stored)} snapshots):"
            f" ||err|| {err:.3e}, ||nearest stored - truth|| {nearest:.3e}, ratio "
            f"{err / nearest:.3f}, relative profile residual {rec.relative_residual:.4f}")
    assert err < 0.4 * nearest


def test_posthoc_command_writes_a_checkpoint_sample_restores(run_a, tmp_path):
  """sigma_rel 0.08 at step 150 (snapshots <= 150 only): the new workdir's checkpoint restores
  via setup.restore_params, its EMA equals the combination of the snapshot files with the
  solved coefficients, the source workdir is unchanged, and sample.run draws from it. A second
  write to the same workdir is refused."""
  src_before = {**workdir_fingerprint(run_a), **tree_hashes(run_a)}
  out = str(tmp_path / "posthoc")
  cfg = tiny_config(**RUN)
  summary = posthoc_ema.run(cfg, run_a, 0.08, step=150, out_workdir=out)
  assert summary["step"] == 150 and summary["t"] == 150
  assert [s["step"] for s in summary["snapshots"]] == [50] * 3 + [100] * 3 + [150] * 3
  rec = pe.solve_coefficients([50] * 3 + [100] * 3 + [150] * 3, list(RUN_PROFILES) * 3, 0.08,
                              150)
  np.testing.assert_allclose(summary["coefficients"], rec.coefficients, rtol=0, atol=0)
  snaps = [s for s in snapshots.read_snapshots(run_a, _restore(run_a, 200).params)
           if s.step <= 150]
  want = pe.combine(rec.coefficients, [s.params for s in snaps])
  s, params, step = setup.restore_params(cfg, out)
  assert step == 150 and _leaves_equal(params, want)
  assert {**workdir_fingerprint(run_a), **tree_hashes(run_a)} == src_before
  assert os.path.exists(os.path.join(out, posthoc_ema.INFO_FILE))
  res = sample.run(tiny_config(**{**RUN, "sampling.num_samples": 32,
                                  "sampling.batch_size": 32}), out)
  assert res["step"] == 150
  assert np.all(np.isfinite(np.load(os.path.join(res["out"], "samples.npz"))["x"]))
  with pytest.raises(ValueError, match="already holds checkpoints"):
    posthoc_ema.run(cfg, run_a, 0.08, step=150, out_workdir=out)
  with pytest.raises(ValueError, match=r"--step=120 is not a snapshot step.*\[50, 100, 150, 200\]"):
    posthoc_ema.run(cfg, run_a, 0.07, step=120, out_workdir=str(tmp_path / "x"))
  with pytest.raises(ValueError, match=r"--sigma_rel=0.5 is out of range"):
    posthoc_ema.run(cfg, run_a, 0.5, out_workdir=str(tmp_path / "x"))


def test_an_override_that_differs_from_the_runs_value_is_refused(run_a, tmp_path):
  """An explicit --config.<key> that disagrees with W/config.json is one ConfigError naming both
  values (it would be replaced by the run's value); one that agrees, or none, is accepted."""
  given = tiny_config(**{**RUN, "training.num_steps": 999})
  with pytest.raises(ConfigError, match=r"--config.training.num_steps=999 differs from the run's "
                                        r"value 200 in .*config.json"):
    posthoc_ema.run(given, run_a, 0.08, out_workdir=str(tmp_path / "x"),
                    overridden=["training.ema_profiles", "training.num_steps"])
  assert not os.path.exists(tmp_path / "x")
  posthoc_ema.check_overrides_match(tiny_config(**RUN), setup.saved_config(tiny_config(), run_a),
                                    ["training.ema_profiles", "training.num_steps"], run_a)


def test_sample_hint_is_the_config_file_with_the_runs_values():
  """The printed sample command: the config file, the run's values where they differ from the
  file's (shell-quoted), the new workdir."""
  line = posthoc_ema.sample_hint(TOY_CONFIG, tiny_config(**RUN), "/tmp/o w")
  assert line.startswith(f"sample with: python -m experiments.main --config={TOY_CONFIG} ")
  assert "'--config.training.ema_profiles=(0.05, 0.07, 0.1)'" in line
  assert " --config.training.num_steps=200 " in line and "\n" not in line
  assert line.endswith(" '--workdir=/tmp/o w' --mode=sample")


@pytest.mark.slow  # subprocesses
def test_posthoc_cli(run_a, tmp_path):
  """The command line without the run's overrides (W/config.json holds them): exit 0, the
  default out workdir W/posthoc_ema/sigma_rel_0.12_step_200, and its printed sample command runs
  as printed; a run without profiles is refused in one line naming the field."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  wd = str(tmp_path / "w")
  shutil.copytree(run_a, wd)

  def command(workdir):
    return subprocess.run([sys.executable, "-m", "experiments.posthoc_ema",
                           f"--config={TOY_CONFIG}", f"--workdir={workdir}", "--sigma_rel=0.12"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

  done = command(wd)
  assert done.returncode == 0, done.stderr[-3000:]
  out = os.path.join(wd, "posthoc_ema", "sigma_rel_0.12_step_200")
  assert "post-hoc EMA sigma_rel=0.12" in done.stdout and checkpoint.has_checkpoints(out)
  (hint,) = [l for l in done.stdout.splitlines() if l.startswith("sample with: ")]
  argv = shlex.split(hint[len("sample with: "):])
  assert argv[:3] == ["python", "-m", "experiments.main"] and f"--workdir={out}" in argv
  sampled = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert "wrote 128 samples" in sampled.stdout and "checkpoint at step 200" in sampled.stdout
  plain = str(tmp_path / "plain")
  train.train(tiny_config(), plain)  # no profiles
  bad = command(plain)
  assert bad.returncode == 1 and "config.training.ema_profiles=()" in bad.stderr


def test_runs_without_profiles_keep_their_state_and_checkpoints(tmp_path):
  """Without ema_profiles the state is the plain TrainState with the signature it always had
  (no power_ema leaf), and a checkpoint of such a state restores into it; a run with profiles
  refuses that workdir naming training.ema_profiles, nothing changed."""
  cfg = tiny_config()
  s = setup.setup(cfg)
  assert type(s.abstract_state) is training.TrainState
  opt = s.optimizer
  plain = jax.eval_shape(lambda k: training.init_state(s.net, opt, k, jnp.zeros((1, 2))),
                         jax.random.PRNGKey(0))
  assert checkpoint.tree_signature(s.abstract_state) == checkpoint.tree_signature(plain)
  assert not any("power_ema" in p for p, _, _ in checkpoint.tree_signature(s.abstract_state))
  assert "ema_profiles" not in s.identity["training"]
  wd = str(tmp_path / "plain")
  state = setup.init_state(s)
  checkpoint.write_config(wd, s.identity)
  ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False, config=s.identity)
  ck.save(0, state, {"step": 0})
  restored = ck.restore(s.abstract_state)[0]
  ck.close()
  assert _leaves_equal(restored, state)
  before = workdir_fingerprint(wd)
  with pytest.raises(checkpoint.WorkdirMismatchError, match="training.ema_profiles"):
    train.train(tiny_config(**RUN), wd)
  assert workdir_fingerprint(wd) == before


@pytest.mark.parametrize("overrides, expected", [
    ({"training.ema_profiles": (0.05, 0.4)}, r"ema_profiles=\(0.05, 0.4\) is out of range"),
    ({"training.ema_profiles": (0.1, 0.05)}, r"ema_profiles=\(0.1, 0.05\) must be increasing"),
    ({"training.ema_profiles": (0.05, 0.05)}, r"must be increasing"),
    ({"training.ema_profiles": ("a",)}, r"ema_profiles=\('a',\) must be a tuple of sigma_rel"),
    ({"training.ema_profiles": (0.05,), "training.ema_snapshot_every": 0},
     r"ema_snapshot_every=0 must be >= 1 when"),
    ({"training.ema_snapshot_every": -1}, r"ema_snapshot_every=-1 must be an integer >= 0"),
])
def test_bad_ema_fields_are_refused(overrides, expected):
  base = {"training.ema_snapshot_every": 50}
  with pytest.raises(ConfigError, match=expected):
    validate_config(tiny_config(**{**base, **overrides}), "train")
