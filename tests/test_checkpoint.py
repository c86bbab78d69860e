"""Checkpoints: exact save/restore, integrity manifests (flipped / truncated files are detected,
set aside in train, skipped in read-only), tree mismatches and I/O errors change nothing, history,
identity, run lock."""
import gc
import hashlib
import json
import logging
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffusion import checkpoint, parallel, training
from diffusion.models import get_model
from tests.conftest import tree_hashes

NET = get_model("mlp", width=16, num_blocks=1, embed_dim=8)


def _state(seed=0, clip=0.0):
  opt = training.make_optimizer(training.OptimConfig(lr=1e-3, grad_clip=clip))
  s = jax.jit(lambda k: training.init_state(NET, opt, k, jnp.zeros((1, 2))))(
      jax.random.PRNGKey(seed))
  # Make every leaf distinct from its initial value (moments, EMA, counters).
  return s.replace(step=jnp.int32(7), num_skipped=jnp.int32(2),
                   ema_params=jax.tree_util.tree_map(lambda x: x + 0.5, s.ema_params),
                   opt_state=jax.tree_util.tree_map(lambda x: x + 1, s.opt_state))


def _abstract(state):
  mesh = parallel.make_mesh()
  return checkpoint.abstract_like(state, parallel.state_sharding(mesh, state))


def _assert_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_exact(tmp_path):
  s = _state()
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  ck.save(7, s, {"step": 7, "note": "x"})
  ck.wait()
  restored, meta, step = ck.restore(_abstract(s))
  ck.close()
  assert step == 7 and meta == {"step": 7, "note": "x"}
  assert isinstance(restored, training.TrainState)
  _assert_equal(s, restored)
  leaf = jax.tree_util.tree_leaves(restored.params)[0]
  assert isinstance(leaf.sharding, jax.sharding.NamedSharding)


def test_max_to_keep_and_empty(tmp_path):
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2, async_save=False)
  assert ck.restore(_abstract(_state())) == (None, {}, None)
  for i in (1, 2, 3):
    ck.save(i, _state(i))
  ck.wait()
  assert ck.all_steps() == [2, 3]
  ck.close()


def _data_files(step_dir):
  """The array data files a restore reads: the ocdbt blobs in <step>/state/d/."""
  d = os.path.join(step_dir, "state", "d")
  out = sorted(os.path.join(d, f) for f in os.listdir(d))
  assert out
  return out


def _flip_byte(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _saved(tmp_path, steps=(1, 2), async_save=False, clip=0.0):
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3, async_save=async_save,
                               config={"optim": {"grad_clip": clip}})
  states = {i: _state(i, clip) for i in steps}
  for i in steps:
    ck.save(i, states[i], {"step": i})
  ck.close()
  return states


def _warnings(caplog):
  return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("async_save", [False, True])
def test_every_save_gets_an_integrity_manifest(tmp_path, async_save):
  _saved(tmp_path, (1, 2, 3), async_save=async_save)
  for i in (1, 2, 3):
    d = tmp_path / "checkpoints" / str(i)
    manifest = json.loads((d / checkpoint.INTEGRITY_FILE).read_text())
    files = {os.path.relpath(os.path.join(p, f), d) for p, _, fs in os.walk(d) for f in fs}
    assert set(manifest["files"]) == files - {checkpoint.INTEGRITY_FILE}
    for rel, e in manifest["files"].items():
      data = (d / rel).read_bytes()
      assert e["size"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest()
    assert checkpoint.check_integrity(str(d)) == (True, "")


def test_async_save_writes_its_manifest_in_the_background(tmp_path):
  """Without wait() or close(): a run killed later still leaves verifiable checkpoints."""
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3, async_save=True)
  ck.save(1, _state(1))
  path = tmp_path / "checkpoints" / "1" / checkpoint.INTEGRITY_FILE
  t0 = time.time()
  while not path.exists() and time.time() - t0 < 30:
    time.sleep(0.05)
  assert path.exists()
  assert checkpoint.check_integrity(str(tmp_path / "checkpoints" / "1")) == (True, "")
  ck.close()


@pytest.mark.parametrize("damage", [_flip_byte, _truncate])
def test_corrupt_checkpoint_train_sets_it_aside_and_uses_previous(tmp_path, caplog, damage):
  states = _saved(tmp_path)
  damage(_data_files(str(tmp_path / "checkpoints" / "2"))[0])
  before = tree_hashes(tmp_path / "checkpoints" / "2")
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3, async_save=False)
  with caplog.at_level("WARNING"):
    restored, meta, step = ck.restore(_abstract(states[1]))
  assert step == 1 and meta == {"step": 1}
  _assert_equal(states[1], restored)
  warned = _warnings(caplog)
  assert len(warned) == 1, [r.getMessage() for r in warned]
  assert "step 2" in warned[0].getMessage() and "corrupt" in warned[0].getMessage()
  assert "\n" not in warned[0].getMessage()
  # Moved whole, byte for byte, out of the way; the step can be written again.
  assert tree_hashes(tmp_path / "corrupt_checkpoints" / "2") == before
  assert ck.all_steps() == [1]
  ck.save(2, states[2])
  ck.close()


@pytest.mark.parametrize("damage", [_flip_byte, _truncate])
def test_corrupt_checkpoint_read_only_is_skipped_and_nothing_moves(tmp_path, caplog, damage):
  states = _saved(tmp_path)
  damage(_data_files(str(tmp_path / "checkpoints" / "2"))[0])
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with caplog.at_level("WARNING"):
    restored, _, step = ck.restore(_abstract(states[1]))
  ck.close()
  assert step == 1
  _assert_equal(states[1], restored)
  warned = _warnings(caplog)
  assert len(warned) == 1 and "step 2" in warned[0].getMessage()
  assert "nothing moved" in warned[0].getMessage()
  assert tree_hashes(tmp_path) == before


def test_a_flipped_byte_in_any_file_of_the_manifest_is_caught(tmp_path, caplog):
  """Every file integrity.json lists (metadata, sharding, commit markers, blobs), not only the
  array data: one byte flipped (same size) in a fresh copy of the workdir each time; train sets
  step 2 aside and restores step 1, read-only skips it and moves nothing."""
  import shutil
  src = tmp_path / "src"
  states = _saved(src)
  files = sorted(json.loads((src / "checkpoints" / "2" / checkpoint.INTEGRITY_FILE)
                            .read_text())["files"])
  assert {"meta/metadata", "state/_METADATA", "_CHECKPOINT_METADATA"} <= set(files)
  assert any(f.startswith("state/") and "/d/" in f for f in files)
  for i, rel in enumerate(files):
    wd = tmp_path / f"copy{i}"
    shutil.copytree(src, wd)
    size = os.path.getsize(wd / "checkpoints" / "2" / rel)
    _flip_byte(wd / "checkpoints" / "2" / rel)
    assert os.path.getsize(wd / "checkpoints" / "2" / rel) == size
    assert checkpoint.check_integrity(str(wd / "checkpoints" / "2")) == (
        False, f"file {rel} differs from what was written (sha256)"), rel
    read_only = i % 2 == 1  # both modes over the files, one restore per copy
    before = tree_hashes(wd)
    caplog.clear()
    ck = checkpoint.Checkpointer(str(wd), max_to_keep=3, async_save=False, read_only=read_only)
    with caplog.at_level("WARNING"):
      restored, meta, step = ck.restore(_abstract(states[1]))
    ck.close()
    assert step == 1 and meta == {"step": 1}, rel
    _assert_equal(states[1], restored)
    warned = [r.getMessage() for r in _warnings(caplog)]
    assert len(warned) == 1 and "step 2" in warned[0] and rel in warned[0], (rel, warned)
    if read_only:
      assert tree_hashes(wd) == before, rel
    else:
      assert not os.path.exists(wd / "checkpoints" / "2"), rel
      assert os.path.isdir(wd / "corrupt_checkpoints" / "2"), rel
    shutil.rmtree(wd)


def test_integrity_check_cases(tmp_path):
  _saved(tmp_path, (1,))
  d = tmp_path / "checkpoints" / "1"
  assert checkpoint.check_integrity(str(d)) == (True, "")
  os.remove(d / "meta" / "metadata")
  assert checkpoint.check_integrity(str(d)) == (False, "file meta/metadata is missing")
  (d / checkpoint.INTEGRITY_FILE).write_text('{"files": {"a": ')  # unreadable: nothing proven
  ok, why = checkpoint.check_integrity(str(d))
  assert ok is None and "unreadable" in why
  os.remove(d / checkpoint.INTEGRITY_FILE)
  assert checkpoint.check_integrity(str(d)) == (None, f"it has no {checkpoint.INTEGRITY_FILE}")


def test_checkpoint_without_manifest_is_used_with_a_warning(tmp_path, caplog):
  """As saved by an older version, or killed between orbax's finalization and the manifest."""
  states = _saved(tmp_path)
  os.remove(tmp_path / "checkpoints" / "2" / checkpoint.INTEGRITY_FILE)
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3, async_save=False)
  with caplog.at_level("WARNING"):
    restored, _, step = ck.restore(_abstract(states[2]))
  ck.close()
  assert step == 2
  _assert_equal(states[2], restored)
  warned = _warnings(caplog)
  assert len(warned) == 1 and "without an integrity check" in warned[0].getMessage()
  assert tree_hashes(tmp_path) == before  # no manifest is written after the fact


def test_all_corrupt_refuses_then_fresh_start_when_allowed(tmp_path):
  states = _saved(tmp_path)
  for i in (1, 2):
    _truncate(_data_files(str(tmp_path / "checkpoints" / str(i)))[0])
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3, async_save=False)
  with pytest.raises(checkpoint.NoUsableCheckpointError,
                     match=r"step 2: .*step 1: .*nothing was moved.*--allow_fresh_start"):
    ck.restore(_abstract(states[1]))
  assert tree_hashes(tmp_path) == before
  assert ck.restore(_abstract(states[1]), allow_fresh_start=True) == (None, {}, None)
  assert sorted(os.listdir(tmp_path / "corrupt_checkpoints")) == ["1", "2"]
  assert ck.all_steps() == []
  ck.close()


def test_structure_mismatch_names_the_config_field_and_changes_nothing(tmp_path):
  _saved(tmp_path, clip=1.0)  # clip_by_global_norm adds a node to the optimizer state
  before = tree_hashes(tmp_path)
  for read_only in (False, True):
    ck = checkpoint.Checkpointer(str(tmp_path), async_save=False, read_only=read_only,
                                 config={"optim": {"grad_clip": 0.0}})
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
      ck.restore(_abstract(_state(0, clip=0.0)))
    ck.close()
    msg = str(e.value)
    assert "step 2" in msg and "optim.grad_clip (1.0 -> 0.0)" in msg
    assert "opt_state/0/count is in this run only" in msg
    assert "Nothing was changed" in msg and "\n" not in msg
    assert tree_hashes(tmp_path) == before


def test_structure_mismatch_of_a_checkpoint_without_signature_names_the_field(tmp_path):
  """Checkpoints of an older version hold no tree signature: orbax's refusal is reported with
  the fields that differ from config.json, and nothing moves."""
  checkpoint.write_config(str(tmp_path), {"optim": {"grad_clip": 1.0}})
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ck.manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(0, clip=1.0)),
                                             meta=ocp.args.JsonSave({"step": 3})))
  ck.close()
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), read_only=True,
                               config={"optim": {"grad_clip": 0.0}})
  with pytest.raises(checkpoint.CheckpointRestoreError) as e:
    ck.restore(_abstract(_state(0, clip=0.0)))
  ck.close()
  msg = str(e.value)
  assert "step 3" in msg and "not moved" in msg and "\n" not in msg
  assert "config.json's: optim.grad_clip (1.0 -> 0.0)" in msg
  assert tree_hashes(tmp_path) == before


def test_io_errors_propagate_and_move_nothing(tmp_path, monkeypatch):
  states = _saved(tmp_path)
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=False)

  def eio(*a, **k):
    raise OSError(5, "Input/output error")

  monkeypatch.setattr(ck.manager, "restore", eio)
  with pytest.raises(OSError, match="Input/output error"):
    ck.restore(_abstract(states[1]))
  monkeypatch.undo()
  monkeypatch.setattr(checkpoint, "sha256_file", eio)  # while verifying integrity.json
  with pytest.raises(OSError, match="Input/output error"):
    ck.restore(_abstract(states[1]))
  ck.close()
  assert tree_hashes(tmp_path) == before


# Under pytest, an unraisable exception becomes this warning instead of stderr output.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_unverified_unreadable_checkpoint_is_an_error_not_a_fallback(tmp_path, capfd):
  states = _saved(tmp_path)
  d = tmp_path / "checkpoints" / "2"
  os.remove(d / checkpoint.INTEGRITY_FILE)  # as saved by an older version
  for f in _data_files(str(d)):
    _truncate(f)
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  with pytest.raises(checkpoint.CheckpointRestoreError, match=r"step 2 .*not moved"):
    ck.restore(_abstract(states[1]))
  for _ in range(2):  # failed reads on one manager: tensorstore then calls into a closed loop
    with pytest.raises(checkpoint.CheckpointRestoreError):
      ck.restore(_abstract(states[1]), step=2)
  ck.close()
  assert tree_hashes(tmp_path) == before
  gc.collect()
  time.sleep(0.5)  # tensorstore completes the abandoned reads in its own threads
  err = capfd.readouterr().err
  for noise in ("Event loop is closed", "never retrieved", "Traceback", "OUT_OF_RANGE"):
    assert noise not in err, err[:2000]


def test_identity_check(tmp_path):
  wd = str(tmp_path)
  cfg = {"model": {"name": "mlp", "net": {"width": 32}}, "sde": {"name": "vp"},
         "training": {"num_steps": 10}}
  checkpoint.check_identity(wd, cfg, ["model", "sde"])  # empty workdir: fine
  checkpoint.write_config(wd, cfg)
  os.makedirs(tmp_path / "checkpoints" / "5")
  other = {"model": {"name": "mlp", "net": {"width": 64}}, "sde": {"name": "vp"},
           "training": {"num_steps": 99}}
  with pytest.raises(checkpoint.WorkdirMismatchError, match=r"model\.net\.width.*32.*64"):
    checkpoint.check_identity(wd, other, ["model", "sde"])
  # Fields outside the identity (training.num_steps) may change.
  checkpoint.check_identity(wd, dict(cfg, training={"num_steps": 99}), ["model", "sde"])


def _vdm_state(optim, seed=0):
  """A TrainState of a network with a learned VDM schedule: params {'net', 'schedule'}."""
  from diffusion import vdm
  from diffusion.schedules import get_schedule
  model = vdm.WithLearnedSchedule("mlp", {"width": 16, "num_blocks": 1, "embed_dim": 8},
                                  get_schedule("vdm_learned"))
  opt = training.make_optimizer(optim)
  s = jax.jit(lambda k: training.init_state(model, opt, k, jnp.zeros((1, 2))))(
      jax.random.PRNGKey(seed))
  return s.replace(step=jnp.int32(5), ema_params=jax.tree_util.tree_map(
      lambda x: x * 0.75 + 0.125, s.ema_params))


def test_restore_ema_params_of_a_run_with_another_optimizer(tmp_path):
  """Sampling needs only the EMA params: a checkpoint saved with Adam (no clipping) restores its
  ema_params bit for bit into an abstract tree built with AdamW and clipping, whose optimizer
  state has another structure (a whole-state restore refuses it), and a learned schedule's
  parameters come back with them. Read-only: nothing in the workdir changes."""
  adam = training.OptimConfig(name="adam", lr=1e-3, grad_clip=0.0)
  adamw = training.OptimConfig(name="adamw", lr=1e-3, grad_clip=1.0, weight_decay=0.1)
  saved = {1: _vdm_state(adam, 1), 2: _vdm_state(adam, 2)}
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=False,
                               config={"optim": {"name": "adam", "grad_clip": 0.0}})
  for i, st in saved.items():
    ck.save(i, st, {"step": i})
  ck.close()
  before = tree_hashes(tmp_path)
  other = _abstract(_vdm_state(adamw))
  assert (jax.tree_util.tree_structure(other.opt_state)
          != jax.tree_util.tree_structure(saved[2].opt_state))
  ck = checkpoint.Checkpointer(str(tmp_path), read_only=True,
                               config={"optim": {"name": "adamw", "grad_clip": 1.0}})
  with pytest.raises(checkpoint.CheckpointMismatchError, match="optim.name"):
    ck.restore(other)
  ema, meta, step = ck.restore_field("ema_params", other.ema_params)
  assert step == 2 and meta == {"step": 2}
  assert set(ema) == {"net", "schedule"} and jax.tree_util.tree_leaves(ema["schedule"])
  _assert_equal(saved[2].ema_params, ema)
  assert all(isinstance(x.sharding, jax.sharding.NamedSharding)
             for x in jax.tree_util.tree_leaves(ema))
  ema1, _, step1 = ck.restore_field("ema_params", other.ema_params, step=1)
  assert step1 == 1
  _assert_equal(saved[1].ema_params, ema1)
  ck.close()
  assert tree_hashes(tmp_path) == before


def test_restore_field_verifies_integrity_and_structure(tmp_path, caplog):
  states = _saved(tmp_path)
  _flip_byte(tmp_path / "checkpoints" / "2" / "state" / "_METADATA")
  before = tree_hashes(tmp_path)
  ck = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with caplog.at_level("WARNING"):
    ema, _, step = ck.restore_field("ema_params", _abstract(states[1]).ema_params)
  assert step == 1  # step 2 is proven corrupt: skipped, not moved
  _assert_equal(states[1].ema_params, ema)
  warned = [r.getMessage() for r in _warnings(caplog)]
  assert len(warned) == 1 and "step 2" in warned[0] and "state/_METADATA" in warned[0]
  with pytest.raises(checkpoint.NoUsableCheckpointError, match="step 2"):
    ck.restore_field("ema_params", _abstract(states[1]).ema_params, step=2)
  # Another network: the field's leaves differ from the saved signature.
  wide = get_model("mlp", width=32, num_blocks=1, embed_dim=8)
  opt = training.make_optimizer(training.OptimConfig(lr=1e-3, grad_clip=0.0))
  other = jax.eval_shape(lambda k: training.init_state(wide, opt, k, jnp.zeros((1, 2))),
                         jax.random.PRNGKey(0))
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"step 1 .*ema_params/Dense_0/bias is float32\[16\] in the checkpoint"):
    ck.restore_field("ema_params", _abstract(other).ema_params)
  ck.close()
  assert tree_hashes(tmp_path) == before


def test_identity_check_ignoring_the_optimizer(tmp_path):
  """Sample / eval compare the identity without optim.*; train compares all of it."""
  wd = str(tmp_path)
  fields = ["model", "optim.name"]
  cfg = {"model": {"width": 32}, "optim": {"name": "adam", "grad_clip": 1.0}}
  checkpoint.write_config(wd, cfg)
  os.makedirs(tmp_path / "checkpoints" / "5")
  other_opt = {"model": {"width": 32}, "optim": {"name": "adamw", "grad_clip": 0.0}}
  with pytest.raises(checkpoint.WorkdirMismatchError, match=r"optim\.name"):
    checkpoint.check_identity(wd, other_opt, fields)
  checkpoint.check_identity(wd, other_opt, fields, ignore=("optim",))
  with pytest.raises(checkpoint.WorkdirMismatchError, match=r"model\.width.*32.*64"):
    checkpoint.check_identity(wd, {**other_opt, "model": {"width": 64}}, fields,
                              ignore=("optim",))


def test_run_lock(tmp_path):
  wd = str(tmp_path)
  with checkpoint.RunLock(wd):
    assert open(tmp_path / checkpoint.LOCK_FILE).read().split()[0] == str(os.getpid())
    with pytest.raises(checkpoint.WorkdirLockedError, match=str(os.getpid())):
      checkpoint.RunLock(wd).acquire()
  assert not os.path.exists(tmp_path / checkpoint.LOCK_FILE)
  # A stale lock of a dead process is taken over.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  import socket
  (tmp_path / checkpoint.LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}\n")
  lock = checkpoint.RunLock(wd).acquire()
  assert open(tmp_path / checkpoint.LOCK_FILE).read().split()[0] == str(os.getpid())
  lock.release()
