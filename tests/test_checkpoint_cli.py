"""Checkpoint safety through the command line (subprocesses): nothing saved is ever lost.

A trained workdir (checkpoints 10, 20, 30) is copied per test, then damaged or resumed with a
config of another state structure. Checked each time: the exit status, that stderr holds one line
per checkpoint (no library tracebacks), and what changed on disk (hashes of every file).
"""
import os
import shutil

import pytest

from tests.conftest import run_main, tree_hashes, workdir_fingerprint

pytestmark = pytest.mark.slow  # several CLI runs each; the fast cases are in test_checkpoint.py

RUN = {"eval.density_grid": 0}


def _data_files(wd, step):
  d = os.path.join(wd, "checkpoints", str(step), "state", "d")
  return [os.path.join(d, f) for f in sorted(os.listdir(d))]


def _lines(text):
  return [l for l in text.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("trained") / "wd")
  r = run_main(wd, "train", RUN)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "20", "30"]
  return wd


@pytest.fixture
def workdir(trained, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(trained, wd)
  return wd


def test_grad_clip_change_is_refused_naming_the_field_and_nothing_changes(workdir):
  before = workdir_fingerprint(workdir)
  for mode in ("train", "sample"):
    r = run_main(workdir, mode, {**RUN, "optim.grad_clip": 0})
    assert r.returncode == 1, (mode, r.stdout[-2000:], r.stderr[-2000:])
    err = _lines(r.stderr)
    assert len(err) == 1, r.stderr[-3000:]
    assert err[0].startswith("error: checkpoint at step 30")
    assert "optim.grad_clip (1.0 -> 0.0)" in err[0] and "Nothing was changed" in err[0]
    assert workdir_fingerprint(workdir) == before  # config.json still records grad_clip 1.0
  r = run_main(workdir, "train", {**RUN, "training.num_steps": 40})  # the right config resumes
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from the checkpoint at step 30" in r.stdout


def test_flipped_byte_in_newest_sample_eval_skip_it_and_train_sets_it_aside(workdir):
  path = _data_files(workdir, 30)[0]
  with open(path, "r+b") as f:
    f.seek(100)
    b = f.read(1)
    f.seek(100)
    f.write(bytes([b[0] ^ 0x01]))
  before = workdir_fingerprint(workdir)
  r = run_main(workdir, "sample", RUN)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "from the checkpoint at step 20" in r.stdout
  err = _lines(r.stderr)
  assert len(err) == 1 and "step 30" in err[0] and "nothing moved" in err[0], r.stderr[-3000:]
  assert workdir_fingerprint(workdir) == before
  r = run_main(workdir, "eval", RUN)
  assert r.returncode == 0, r.stderr[-3000:]
  err = _lines(r.stderr)
  assert len(err) == 1 and "step 30" in err[0] and "nothing moved" in err[0], r.stderr[-3000:]
  assert workdir_fingerprint(workdir) == before

  r = run_main(workdir, "train", {**RUN, "training.num_steps": 40})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from the checkpoint at step 20" in r.stdout
  err = _lines(r.stderr)
  assert len(err) == 1 and "step 30" in err[0] and "corrupt_checkpoints" in err[0], err
  moved = os.path.join(workdir, "corrupt_checkpoints", "30")
  assert tree_hashes(moved) == {os.path.relpath(k, "checkpoints/30"): v for k, v in before.items()
                            if k.startswith("checkpoints/30/")}


def test_all_truncated_refuses_fresh_start_unless_allowed(workdir):
  for step in (10, 20, 30):
    for p in _data_files(workdir, step):
      with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
  before = workdir_fingerprint(workdir)
  for mode in ("train", "sample"):
    r = run_main(workdir, mode, RUN)
    assert r.returncode == 1, (mode, r.stdout[-2000:])
    err = _lines(r.stderr)
    assert len(err) == 1, r.stderr[-3000:]
    assert "every checkpoint" in err[0] and "nothing was moved" in err[0]
    assert ("--allow_fresh_start" in err[0]) == (mode == "train")
    assert "resumed" not in r.stdout and "starting" not in r.stdout
    assert workdir_fingerprint(workdir) == before

  r = run_main(workdir, "train", {**RUN, "training.num_steps": 10}, extra=["--allow_fresh_start"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "starting" in r.stdout and "resumed" not in r.stdout
  assert len(_lines(r.stderr)) == 3  # one line per checkpoint set aside
  assert sorted(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == ["10", "20", "30"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
