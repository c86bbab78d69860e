"""End-to-end driver: train / sample / eval on a tiny toy run, CLI errors, refusals."""
import glob
import json
import os

import numpy as np
import pytest

from diffusion import checkpoint, training
from experiments import evaluate, sample, train
from tests.conftest import run_main, tiny_config


def test_end_to_end(tmp_path, capsys):
  """One tiny run, used in turn by the checks below (one test: a run is the costly part)."""
  wd = str(tmp_path)
  cfg = tiny_config()
  summary = train.train(cfg, wd)
  sampled = sample.run(cfg, wd)
  metrics = evaluate.run(cfg, wd)
  _check_files_and_metrics(wd, summary, sampled, metrics)
  _check_per_step_eval_files(wd, metrics, capsys)
  _check_different_experiment_is_refused(wd)
  _check_resume_continues_from_latest(wd, capsys)


def _check_files_and_metrics(wd, summary, sampled, metrics):
  assert summary["step"] == 30 and summary["status"] == "done"
  saved = json.load(open(os.path.join(wd, "config.json")))
  assert saved["training"]["num_steps"] == 30 and saved["resolved"]["data_shape"] == [2]
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20, 30]
  assert all({"loss", "grad_norm", "steps_per_sec", "lr"} <= set(r) for r in rows)
  assert glob.glob(os.path.join(wd, "tb", "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "20", "30"]
  assert glob.glob(os.path.join(wd, "plots", "samples_*.png"))
  assert os.path.exists(os.path.join(wd, "eval", "density.png"))
  # samples/<sampler>_n<steps>_<grid>_step<N>_<hash>/ (experiments/results.py)
  assert os.path.dirname(sampled["out"]) == os.path.join(wd, "samples")
  assert os.path.basename(sampled["out"]).startswith("heun_n8_karras_step30_")
  npz = np.load(os.path.join(sampled["out"], "samples.npz"))
  assert npz["x"].shape == (128, 2) and int(npz["nfe"]) > 0
  assert os.path.exists(os.path.join(sampled["out"], "samples.png"))
  assert os.path.exists(os.path.join(sampled["out"], "settings.json"))
  on_disk = json.load(open(os.path.join(wd, "eval", "metrics.json")))
  for k in ("nll_nats", "true_entropy_nats", "excess_nll_nats", "sliced_wasserstein", "mmd",
            "nfe"):
    assert k in on_disk and np.isfinite(on_disk[k]), k
  assert on_disk["true_entropy_nats"] == pytest.approx(np.log(32.0))
  assert on_disk["excess_nll_nats"] == pytest.approx(on_disk["nll_nats"] - np.log(32.0))
  assert on_disk == metrics
  assert not os.path.exists(os.path.join(wd, checkpoint.LOCK_FILE))


def _check_per_step_eval_files(wd, metrics, capsys):
  """eval/step_30/<name>/: the metrics (= eval/metrics.json), the sample shards; a TensorBoard
  scalar per number; a second eval skips the step without writing; a missing step is one line."""
  from experiments import shards
  from tests.test_logs import read_tb_scalars
  step_dir = os.path.join(wd, "eval", "step_30", metrics["name"])
  assert metrics["name"].startswith("heun_n8_karras_")
  assert json.load(open(os.path.join(step_dir, "metrics.json"))) == metrics
  assert metrics["step"] == 30
  for name in ("samples.png", "density.png"):  # per step; eval/<name> is the latest's copy
    assert open(os.path.join(step_dir, name), "rb").read() == open(
        os.path.join(wd, "eval", name), "rb").read()
  x = shards.read_samples(os.path.join(step_dir, "samples"))
  assert x.shape == (128, 2) and np.all(np.isfinite(x))
  tb = read_tb_scalars(os.path.join(wd, "tb", "eval"))
  assert tb["eval/nll_nats"] == {30: pytest.approx(metrics["nll_nats"], rel=1e-6)}
  assert tb["eval/mmd"] == {30: pytest.approx(metrics["mmd"], rel=1e-5, abs=1e-7)}
  assert "eval/sampler" not in tb and "eval/step" not in tb
  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(wd, "**"), recursive=True)}
  capsys.readouterr()
  assert evaluate.run(tiny_config(), wd) == metrics
  assert "step 30 already evaluated" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError) as e:
    evaluate.run(tiny_config(**{"eval.step": 15}), wd)
  assert "config.eval.step=15" in str(e.value) and "[10, 20, 30]" in str(e.value)
  after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(wd, "**"), recursive=True)}
  assert before == after


def _check_resume_continues_from_latest(wd, capsys):
  capsys.readouterr()
  cfg = tiny_config(**{"training.num_steps": 40, "eval.density_grid": 0})
  out = train.train(cfg, wd)
  assert out["step"] == 40
  assert "resumed from the checkpoint at step 30" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]


def _check_different_experiment_is_refused(wd):
  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(wd, "**"), recursive=True)}
  cfg = tiny_config(**{"model.net.width": 48, "sde.fields.beta_max": 10.0})
  with pytest.raises(checkpoint.WorkdirMismatchError) as e:
    train.train(cfg, wd)
  msg = str(e.value)
  assert "model.net.width" in msg and "sde.fields.beta_max" in msg and "nothing" in msg
  after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(wd, "**"), recursive=True)}
  assert before == after
  with pytest.raises(checkpoint.WorkdirMismatchError):
    evaluate.run(cfg, wd)


def test_unknown_dataset(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*checkerboard"):
    train.train(tiny_config(**{"data.name": "nope"}), str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def test_nan_stops_naming_the_step(tmp_path):
  cfg = tiny_config(**{"debug.nan_at_step": 15, "eval.density_grid": 0})
  with pytest.raises(training.NonFiniteError, match="step 15"):
    train.train(cfg, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]  # the last good one is kept
  assert not os.path.exists(tmp_path / checkpoint.LOCK_FILE)


def test_cli_unknown_config_key_lists_valid_keys(tmp_path):
  r = run_main(str(tmp_path), "train", extra=["--config.training.num_stepz=3"], timeout=120)
  assert r.returncode == 2, r.stderr
  assert "unknown config key" in r.stderr and "--config.training.num_stepz" in r.stderr
  assert "did you mean: training.num_steps" in r.stderr
  assert "training.ema_decay" in r.stderr  # the valid keys of its section ...
  assert "sde.name" not in r.stderr  # ... only
  assert not os.listdir(tmp_path)


def test_cli_unknown_dataset_message(tmp_path):
  r = run_main(str(tmp_path), "train", {"data.name": "nope"}, timeout=120)
  assert r.returncode == 1
  assert "unknown dataset 'nope'" in r.stderr and "Traceback" not in r.stderr
