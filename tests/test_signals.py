"""SIGTERM / SIGINT from the start of a run: one line, a defined exit status, nothing lost.

In-process tests of experiments.signals.RunSignals, and real subprocesses: a signal during set-up
(debug.setup_delay_s holds the run there) ends train, sample and eval with one line and status
128 + signum; SIGINT during training saves a checkpoint at a step boundary and exits 130, and
the run resumes from it. (SIGTERM during training: tests/test_reliability.py.) Two processes
(jax.distributed on CPU): SIGTERM to one of them stops both at the same step, saved together.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from diffusion import checkpoint, parallel
from experiments import signals
from tests.conftest import popen_main, run_main, wait_for

RUN = {"training.num_steps": 10**6, "training.log_every": 5, "training.ckpt_every": 10**5,
       "eval.density_grid": 0, "eval.plot_samples": 64, "training.async_checkpoints": True}


def _finish(proc, timeout=120):
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  return out


# -- in-process ----------------------------------------------------------------------------------


def test_immediate_mode_one_line_and_exit_status(capfd):
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as e:
    with signals.RunSignals("set-up", "nothing saved"):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(10)  # interrupted by the handler's exception
      pytest.fail("the signal did not interrupt")
  assert e.value.code == 143
  err = capfd.readouterr().err
  assert err.strip() == "interrupted by SIGTERM during set-up; nothing saved"
  assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back


def test_interrupted_is_not_an_exception():
  # `except Exception` in library code must not swallow a Ctrl-C.
  with pytest.raises(SystemExit) as e:
    with signals.RunSignals("sampling"):
      try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
      except Exception:  # noqa: BLE001 -- exactly what must not catch it
        pytest.fail("swallowed")
  assert e.value.code == 130


def test_deferred_records_and_acknowledged_signal_does_not_exit(capfd):
  with signals.RunSignals("training") as sig:
    with sig.deferred():
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)
      assert sig.received == signal.SIGINT  # recorded, the block keeps running
      os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C "while saving"
      time.sleep(0.05)
      assert sig.received == signal.SIGINT
      sig.acknowledge()
  assert "SIGINT received again: already stopping, please wait" in capfd.readouterr().err


def test_deferred_unacknowledged_signal_exits_after_the_block():
  done = []
  with pytest.raises(SystemExit) as e:
    with signals.RunSignals("writing the samples", "the samples are written") as sig:
      with sig.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        done.append(True)  # the protected work finishes
      pytest.fail("not reached")
  assert done == [True] and e.value.code == 143


def test_exit_on_signal_before_a_run(capfd):
  before = {s: signal.getsignal(s) for s in signals.SIGNALS}
  try:
    signals.exit_on_signal()
    with pytest.raises(SystemExit) as e:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(10)
    assert e.value.code == 143
    assert capfd.readouterr().err.strip() == (
        "interrupted by SIGTERM (start-up or exit); nothing saved")
  finally:
    for s, h in before.items():
      signal.signal(s, h)


def test_agreed_stop_one_process_is_received_and_dispatches_nothing(monkeypatch):
  sig = signals.RunSignals()
  monkeypatch.setattr(parallel, "StopAgreement", None)  # would fail if it were built
  assert sig.agreed_stop(1) is None
  sig.received = signal.SIGTERM
  assert sig.agreed_stop(2) == signal.SIGTERM and sig.agreed_stop(2, final=True) == 15


def test_stop_agreement_is_pipelined_sticky_and_final_reads_at_once():
  """The all-reduce itself on this process's devices: a boundary reads the previous one's."""
  a = parallel.StopAgreement()
  assert a.poll(1, 0, False) == 0
  assert a.poll(2, signal.SIGINT, False) == 0  # dispatched here, read at the next boundary
  assert a.poll(2, signal.SIGINT, False) == 0  # same boundary: the same answer, no collective
  assert a.poll(3, 0, False) == signal.SIGINT
  assert a.poll(4, 0, False) == signal.SIGINT  # once agreed, it stays
  b = parallel.StopAgreement()
  assert b.poll(5, 0, False) == 0
  assert b.poll(5, signal.SIGTERM, True) == signal.SIGTERM  # final: this call's flag counts


def test_agreed_stop_of_several_processes_sets_received(monkeypatch):
  """Another process got SIGTERM, this one nothing: the agreed signal becomes this one's."""
  monkeypatch.setattr(parallel, "process_count", lambda: 2)
  monkeypatch.setattr(parallel.StopAgreement, "poll",
                      lambda self, step, flag, final: 0 if step < 3 else signal.SIGTERM)
  sig = signals.RunSignals()
  assert sig.agreed_stop(2) is None and sig.received is None
  assert sig.agreed_stop(3) == signal.SIGTERM and sig.received == signal.SIGTERM


# -- subprocesses --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,sig", [("train", signal.SIGTERM), ("train", signal.SIGINT),
                                      ("sample", signal.SIGTERM), ("eval", signal.SIGINT)])
def test_signal_during_setup_one_line_no_traceback(tmp_path, mode, sig):
  wd = str(tmp_path)
  proc = popen_main(wd, mode, {**RUN, "debug.setup_delay_s": 60.0})
  try:
    wait_for(proc, "setting up")
    proc.send_signal(sig)
  finally:
    out = _finish(proc)
  name = signal.Signals(sig).name
  assert proc.returncode == 128 + sig, out[-3000:]
  what = "nothing saved" if mode == "train" else "nothing written"
  assert f"interrupted by {name} during set-up; {what}" in out
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  assert len([l for l in out.splitlines() if l.strip()]) == 1, out  # the one line
  assert not os.path.exists(os.path.join(wd, checkpoint.CKPT_DIR))
  assert not os.path.exists(os.path.join(wd, checkpoint.LOCK_FILE))


@pytest.mark.slow  # ~25 s (SIGKILL and exact resume: test_reliability.py, by default)
def test_sigint_during_training_saves_exits_130_and_resumes(tmp_path):
  wd = str(tmp_path)
  proc = popen_main(wd, "train", RUN)
  try:
    wait_for(proc, "step 10/")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C must not break the save
  finally:
    out = _finish(proc)
  assert proc.returncode == 130, out[-3000:]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  assert "SIGINT received again: already stopping, please wait" in out
  assert "SIGINT: saved a checkpoint at step " in out
  step = int(out.split("SIGINT: saved a checkpoint at step ")[1].split(";")[0])
  assert step >= 10 and os.path.isdir(os.path.join(wd, checkpoint.CKPT_DIR, str(step)))
  assert not os.path.exists(os.path.join(wd, checkpoint.LOCK_FILE))
  r = run_main(wd, "train", {**RUN, "training.num_steps": step + 5})
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from the checkpoint at step {step}" in r.stdout
  assert f"training done at step {step + 5}" in r.stdout


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  """SIGTERM reaches process 1 only (which logs nothing): the processes agree on the stop at a
  step boundary (signals.RunSignals.agreed_stop), both save the same checkpoint, and both exit 0.
  Without the agreement process 1 would enter the collective save alone and both would hang."""
  wd = str(tmp_path)
  port = _free_port()
  procs = [popen_main(wd, "train", {**RUN, "parallel.distributed": True,
                                    "parallel.coordinator_address": f"127.0.0.1:{port}",
                                    "parallel.num_processes": 2, "parallel.process_id": i})
           for i in range(2)]
  outs = ["", ""]
  try:
    outs[0] = "".join(wait_for(procs[0], "step 10/", timeout=300))
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.time()
    for i, p in enumerate(procs):
      try:
        outs[i] += p.communicate(timeout=max(1.0, 150 - (time.time() - t0)))[0]
      except subprocess.TimeoutExpired:
        pytest.fail(f"process {i} still running 150 s after the SIGTERM (hung in a collective "
                    f"one process entered alone?); output:\n{outs[i][-3000:]}")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert [p.returncode for p in procs] == [0, 0], (outs[0][-3000:], outs[1][-3000:])
  assert "SIGTERM: saved a checkpoint at step " in outs[0], outs[0][-3000:]
  step = int(outs[0].split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
  assert step >= 10 and "Traceback" not in outs[0] + outs[1]
  # The only checkpoint is the one both processes wrote at the agreed step (ckpt_every is far).
  assert sorted(os.listdir(os.path.join(wd, checkpoint.CKPT_DIR))) == [str(step)]
  step_dir = os.path.join(wd, checkpoint.CKPT_DIR, str(step))
  assert checkpoint.check_integrity(step_dir) == (True, "")
  for i in range(2):  # each process wrote its part of that step
    assert os.path.isfile(os.path.join(step_dir, "state", "array_metadatas", f"process_{i}"))
    assert os.path.isdir(os.path.join(step_dir, "state", f"ocdbt.process_{i}"))
  assert json.load(open(os.path.join(step_dir, "meta", "metadata")))["step"] == step
  assert not os.path.exists(os.path.join(wd, checkpoint.LOCK_FILE))
