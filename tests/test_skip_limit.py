"""The 'skip' non-finite policy: a limit on consecutive skipped steps, and a summary line."""
import os

import pytest

from diffusion import checkpoint, training
from experiments import train
from tests.conftest import run_main, tiny_config

SKIP = {"training.nonfinite": "skip", "debug.nan_at_step": 12, "eval.density_grid": 0,
        "eval.plot_samples": 64}


def test_too_many_consecutive_skips_stop_naming_the_setting(tmp_path):
  cfg = tiny_config(**SKIP, **{"debug.nan_num_steps": 100, "training.max_consecutive_skips": 5})
  with pytest.raises(training.NonFiniteError,
                     match=r"6 consecutive .*steps 12-17.*training.max_consecutive_skips=5"):
    train.train(cfg, str(tmp_path))
  # Checked before every save: no checkpoint after the run of skips went past the limit.
  assert sorted(os.listdir(tmp_path / checkpoint.CKPT_DIR)) == ["10"]
  assert not os.path.exists(tmp_path / checkpoint.LOCK_FILE)


def test_skips_within_the_limit_finish_with_a_summary(tmp_path, capsys):
  cfg = tiny_config(**SKIP, **{"debug.nan_num_steps": 3, "training.max_consecutive_skips": 3})
  out = train.train(cfg, str(tmp_path))
  assert out["status"] == "done" and out["step"] == 30
  assert "skipped 3 of 30 steps (non-finite)" in capsys.readouterr().out


def test_no_limit_with_zero(tmp_path, capsys):
  cfg = tiny_config(**SKIP, **{"debug.nan_num_steps": 100, "training.max_consecutive_skips": 0})
  assert train.train(cfg, str(tmp_path))["status"] == "done"
  assert "skipped 18 of 30 steps (non-finite)" in capsys.readouterr().out


def test_cli_skip_limit_one_error_line(tmp_path):
  r = run_main(str(tmp_path), "train", {**SKIP, "debug.nan_num_steps": 100,
                                        "training.max_consecutive_skips": 5})
  assert r.returncode == 1
  assert "Traceback" not in r.stderr
  assert r.stderr.strip().startswith("error: 6 consecutive steps with a non-finite loss")
  assert "training done" not in r.stdout
