"""Logs of a run: metrics.jsonl without duplicates after a resume, TensorBoard flushed at every
log step (a kill -9 loses no logged point), progress lines with rate and ETA."""
import glob
import json
import os
import signal
import struct

import pytest

from experiments import writers
from tests.conftest import popen_main, run_main, wait_for


def read_tb_scalars(logdir: str, starts=None):
  """{tag: {step: value}} from the raw TensorBoard event files (TFRecord framing: u64 length,
  u32 crc, payload, u32 crc), parsed with tensorboardX's Event proto; a torn record ends a file.
  ``starts``: a list that receives the steps of SessionLog START events (purge steps)."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos + 12 <= len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      if pos + 12 + n + 4 > len(data):
        break
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      if starts is not None and ev.session_log.status == event_pb2.SessionLog.START:
        starts.append(ev.step)
      for v in ev.summary.value:
        out.setdefault(v.tag, {})[ev.step] = v.simple_value
  return out


# -- unit ----------------------------------------------------------------------------------------


def test_duration_and_eta_format():
  assert writers.duration(4.4) == "4 s"
  assert writers.duration(185) == "3 min 05 s"
  assert writers.duration(7620) == "2 h 07 min"
  assert writers.eta(30, 100, 7.0) == "10 s"
  assert writers.eta(0, 100, 0.0) == "?"


def test_progress_lines_rate_eta_and_throttle(capsys):
  t = [100.0]
  p = writers.Progress("sampling", 10_000, "samples", interval_s=2.0, clock=lambda: t[0])
  t[0] += 2.0
  p(1000)  # first call: printed
  t[0] += 1.0
  p(2000)  # 1 s after the last line: throttled
  t[0] += 1.0
  p(3000)
  t[0] += 0.5
  p(10_000)  # last: always printed
  lines = capsys.readouterr().out.splitlines()
  # The first rate includes the set-up before the first call (a compile), later ones do not.
  assert lines == ["sampling 1,000/10,000 (500.0 samples/s, ETA 18 s)",
                   "sampling 3,000/10,000 (1,000.0 samples/s, ETA 7 s)",
                   "sampling 10,000/10,000 (3,600.0 samples/s, done)"]


def test_truncate_jsonl_drops_rows_past_the_step_and_a_torn_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  rows = [{"step": s, "loss": 1.0 / s} for s in (10, 20, 30, 40)]
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
    f.write("a note\n")  # not a row of ours: kept
    f.write('{"step": 50, "lo')  # torn by a kill -9
  assert writers.truncate_jsonl(path, 20) == 3
  lines = open(path).read().splitlines()
  assert [json.loads(l)["step"] for l in lines[:-1]] == [10, 20] and lines[-1] == "a note"
  assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left
  assert writers.truncate_jsonl(path, 20) == 0


def test_metric_writer_flushes_tensorboard_at_each_call(tmp_path):
  w = writers.MetricWriter(str(tmp_path))
  w.scalars(5, {"loss": 0.5})
  w.scalars(10, {"loss": 0.25})
  # Not closed: what a kill -9 would leave on disk.
  assert read_tb_scalars(str(tmp_path / "tb"))["loss"] == {5: 0.5, 10: 0.25}
  w.close()


def test_metric_writer_resume_drops_later_rows(tmp_path):
  w = writers.MetricWriter(str(tmp_path))
  for s in (5, 10, 15):
    w.scalars(s, {"loss": float(s)})
  w.close()
  w = writers.MetricWriter(str(tmp_path), start_step=10)  # resumed from step 10
  w.scalars(15, {"loss": -1.0})
  w.close()
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["loss"]) for r in rows] == [(5, 5.0), (10, 10.0), (15, -1.0)]
  starts = []
  assert read_tb_scalars(str(tmp_path / "tb"), starts)["loss"][15] == -1.0
  assert starts == [11]  # TensorBoard hides the old file's points from step 11 on


# -- the driver ----------------------------------------------------------------------------------


@pytest.mark.slow  # ~25 s: kill -9 and resume (exact resume after kill: test_reliability.py)
def test_kill9_keeps_logged_tb_points_and_resume_has_no_duplicate_rows(tmp_path):
  wd = str(tmp_path)
  run = {"training.num_steps": 10**6, "training.log_every": 2, "training.ckpt_every": 10,
         "training.async_checkpoints": False, "eval.density_grid": 0, "eval.plot_samples": 64}
  proc = popen_main(wd, "train", run)
  try:
    seen = "".join(wait_for(proc, "step 14/"))
    assert "ETA " in seen  # the progress line of training
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.stdout.close()
  tb = read_tb_scalars(os.path.join(wd, "tb"))
  assert {2, 4, 6, 8, 10, 12, 14} <= set(tb["loss"]), tb.get("loss")
  logged = [json.loads(l)["step"] for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert max(logged) >= 14  # rows past the checkpoint at step 10, to be dropped on resume
  r = run_main(wd, "train", {**run, "training.num_steps": 20})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from the checkpoint at step 10" in r.stdout
  steps = [json.loads(l)["step"] for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert steps == list(range(2, 21, 2))


def test_metric_writer_figure_is_written_at_once(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig = plt.figure(figsize=(1, 1))
  w = writers.MetricWriter(str(tmp_path))
  w.image("samples", 3, fig)
  plt.close(fig)
  (path,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  data = open(path, "rb").read()  # before close
  assert b"samples" in data and b"PNG" in data
  w.close()


def test_sample_and_eval_print_progress_lines(tmp_path, capsys):
  import re
  from experiments import evaluate, sample, train
  from tests.conftest import tiny_config
  cfg = tiny_config(**{"training.num_steps": 10, "eval.density_grid": 0,
                       "sampling.num_samples": 256, "sampling.batch_size": 128,
                       "eval.plot_samples": 64, "eval.nll_batch_size": 32})
  train.train(cfg, str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  # 10 steps of decay 0.999: the EMA's warning, one line, before anything is built.
  warned = [i for i, l in enumerate(lines) if l.startswith("warning: config.training.ema_decay")]
  started = [i for i, l in enumerate(lines) if l.startswith("starting ")]
  assert len(warned) == 1 and warned[0] < started[0], lines
  sample.run(cfg, str(tmp_path))
  out = capsys.readouterr().out
  assert re.search(r"^sampling 128/256 \([\d,.]+ samples/s, ETA \d+ s\)$", out, re.M), out
  assert re.search(r"^sampling 256/256 \([\d,.]+ samples/s, done\)$", out, re.M), out
  evaluate.run(cfg, str(tmp_path))
  out = capsys.readouterr().out
  # The likelihood: what starts and the fields that size it, then each batch with an ETA.
  assert re.search(r"^likelihood: 64 points in 2 batches of 32 \(eval.nll_points, "
                   r"eval.nll_batch_size\)\nlikelihood 32/64 \([\d,.]+ points/s, ETA \d+ s\)\n"
                   r"likelihood 64/64 \([\d,.]+ points/s, done\)$", out, re.M), out
  assert re.search(r"^sampling 128/128 \([\d,.]+ samples/s, done\)$", out, re.M), out
