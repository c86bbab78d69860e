"""Fault tolerance of the train driver, with real subprocesses and signals.

A resume with a config of another state structure, or over checkpoints that are all corrupt, is
refused without changing the workdir (the latter is allowed with allow_fresh_start).

Exact resume: N steps straight == N/2 steps, SIGKILL, resume (params, EMA, optimizer state bit
for bit on CPU). SIGTERM saves and exits 0. A second run on a busy workdir is refused; the stale
lock of a killed run is taken over.
"""
import os
import signal

import jax
import numpy as np
import pytest

from diffusion import checkpoint
from experiments import setup, train
from tests.conftest import (dit_config, popen_main, run_main, tiny_config, wait_for,
                            workdir_fingerprint)

RUN = {"training.num_steps": 40, "training.ckpt_every": 20, "training.log_every": 10,
       "eval.density_grid": 0, "eval.plot_samples": 64, "training.async_checkpoints": True}


def _final_state(workdir, overrides):
  cfg = tiny_config(**{**RUN, **overrides})
  s = setup.setup(cfg)
  ck = checkpoint.Checkpointer(workdir, max_to_keep=None, async_save=False)
  state, _, step = ck.restore(s.abstract_state)
  ck.close()
  return jax.device_get(state), step


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_and_resume_is_exact_and_lock_refuses_second_run(tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  proc = popen_main(killed, "train", {**RUN, "debug.hang_at_step": 20})
  try:
    wait_for(proc, "hanging at step 20")
    # A second run on the same workdir is refused while the first is alive.
    second = run_main(killed, "train", RUN)
    assert second.returncode == 1
    assert f"in use by process {proc.pid}" in second.stderr
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.stdout.close()
  assert open(os.path.join(killed, checkpoint.LOCK_FILE)).read().split()[0] == str(proc.pid)
  # The async save of step 20 got its integrity manifest before the kill.
  assert checkpoint.check_integrity(os.path.join(killed, "checkpoints", "20")) == (True, "")

  train.train(tiny_config(**RUN), straight)  # the reference, in this process
  resumed = run_main(killed, "train", RUN)  # takes over the stale lock
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from the checkpoint at step 20" in resumed.stdout
  assert "without an integrity check" not in resumed.stderr
  a, step_a = _final_state(straight, {})
  b, step_b = _final_state(killed, {})
  assert step_a == step_b == 40
  _assert_bitwise_equal(a, b)


@pytest.mark.slow  # 24 s cold
def test_resume_of_an_image_transformer_is_exact(tmp_path):
  """In process: a tiny DiT (configs/digits/dit.py) trained 20 steps straight equals 10 steps,
  a fresh train() resuming from the step-10 checkpoint, then 10 more: params, EMA and optimizer
  state bit for bit."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert train.train(dit_config(), straight)["step"] == 20
  assert train.train(dit_config(**{"training.num_steps": 10}), resumed)["step"] == 10
  assert train.train(dit_config(), resumed)["step"] == 20

  def final(wd):
    s = setup.setup(dit_config())
    ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False)
    state, _, step = ck.restore(s.abstract_state)
    ck.close()
    assert step == 20
    return jax.device_get(state)

  a, b = final(straight), final(resumed)
  assert "block0" in a.params and int(a.step) == 20
  _assert_bitwise_equal(a, b)


@pytest.mark.slow  # ~20 s (SIGKILL and exact resume: the test above, by default)
def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
  wd = str(tmp_path)
  proc = popen_main(wd, "train", {**RUN, "training.num_steps": 10**6, "training.log_every": 5,
                                  "training.ckpt_every": 10**5})
  try:
    wait_for(proc, "step 10/")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: saved a checkpoint at step" in out
  step = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
  assert step >= 10 and os.path.isdir(os.path.join(wd, "checkpoints", str(step)))
  assert not os.path.exists(os.path.join(wd, checkpoint.LOCK_FILE))
  r = run_main(wd, "train", {**RUN, "training.num_steps": step + 5, "training.log_every": 5,
                             "training.ckpt_every": 10**5})
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from the checkpoint at step {step}" in r.stdout


def test_cli_nan_stops_with_message(tmp_path):
  r = run_main(str(tmp_path), "train", {"debug.nan_at_step": 12, "eval.density_grid": 0})
  assert r.returncode == 1
  assert "non-finite loss or gradient at step 12" in r.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]


def test_train_refuses_other_state_structure_and_fresh_start_over_corrupt(tmp_path):
  """In process (fast): train() resumes nothing it cannot prove right, and changes nothing."""
  wd = str(tmp_path)
  small = {"training.num_steps": 10, "eval.density_grid": 0, "optim.warmup_steps": 2}
  assert train.train(tiny_config(**small), wd)["step"] == 10
  before = workdir_fingerprint(wd)
  # optim.grad_clip 1.0 -> 0 drops clip_by_global_norm's node from the optimizer state.
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"optim\.grad_clip \(1\.0 -> 0"):
    train.train(tiny_config(**small, **{"optim.grad_clip": 0.0}), wd)
  assert workdir_fingerprint(wd) == before  # config.json too: it still records grad_clip 1.0

  d = os.path.join(wd, "checkpoints", "10", "state", "d")
  for f in os.listdir(d):
    with open(os.path.join(d, f), "r+b") as fh:
      fh.truncate(1)
  before = workdir_fingerprint(wd)
  with pytest.raises(checkpoint.NoUsableCheckpointError, match="--allow_fresh_start"):
    train.train(tiny_config(**small), wd)
  assert workdir_fingerprint(wd) == before
  out = train.train(tiny_config(**{**small, "training.num_steps": 5}), wd,
                    allow_fresh_start=True)
  assert out["step"] == 5 and out["status"] == "done"
  assert os.listdir(os.path.join(wd, checkpoint.CORRUPT_DIR)) == ["10"]
