"""Where a run reports: progress lines, metrics.jsonl and TensorBoard events (process 0 only)."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, Optional

import jax
from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.utils import figure_to_image

from diffusion.io_utils import atomic_write


def is_main() -> bool:
  return jax.process_index() == 0


def say(msg: str) -> None:
  """A progress line on stdout from process 0."""
  if is_main():
    print(msg, flush=True)


def duration(seconds: float) -> str:
  """'42 s', '3 min 05 s', '2 h 07 min' (for ETAs)."""
  if not math.isfinite(seconds):
    return "?"
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f"{s} s"
  if s < 3600:
    return f"{s // 60} min {s % 60:02d} s"
  return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta(done: float, total: float, rate: float) -> str:
  """Time left at ``rate`` units per second."""
  return duration((total - done) / rate) if rate > 0 else "?"


class Progress:
  """A progress callback ``progress(done)``: prints ``<what> 3,000/10,000 (1,234.5 <unit>/s,
  ETA 5 s)`` on process 0, at the first and the last call and in between at most every
  ``interval_s``.
  The first line's rate is measured from the creation of the object (it includes the first
  compile); later lines' from the first line on, so that their ETA leaves the compile out."""

  def __init__(self, what: str, total: int, unit: str, interval_s: float = 2.0,
               clock=time.monotonic):
    self.what, self.total, self.unit, self.interval_s = what, int(total), unit, interval_s
    self._clock = clock
    self._start = (clock(), 0)  # (time, done) the rate is measured from
    self._last: Optional[float] = None

  def __call__(self, done: int) -> None:
    now = self._clock()
    final = done >= self.total
    if not final and self._last is not None and now - self._last < self.interval_s:
      return
    t0, done0 = self._start
    rate = (done - done0) / max(now - t0, 1e-9)
    if self._last is None:
      self._start = (now, done)
    self._last = now
    tail = "done" if final else f"ETA {eta(done, self.total, rate)}"
    say(f"{self.what} {done:,}/{self.total:,} ({rate:,.1f} {self.unit}/s, {tail})")


def truncate_jsonl(path: str, max_step: int) -> int:
  """Drops the rows of a metrics.jsonl with step > max_step (a resumed run writes them again),
  and a torn last line (no newline: the writer was killed mid-row). Other lines are kept as
  they are. Rewrites atomically (temporary file + rename); returns the number of lines dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for i, line in enumerate(lines):
    if i == len(lines) - 1 and not line.endswith("\n"):
      continue  # torn write
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      keep.append(line)  # not ours to judge: kept verbatim
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > max_step:
      continue
    keep.append(line)
  dropped = len(lines) - len(keep)
  if dropped:
    with atomic_write(path, tmp=path + ".tmp", fsync=True) as f:
      f.writelines(keep)
  return dropped


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON with sorted keys atomically (temporary file + rename),
  creating the folder if needed."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with atomic_write(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)


class TBEvents:
  """A synchronous TensorBoard event file in ``logdir`` (tensorboardX's protos and record
  writer, no background thread). tensorboardX's SummaryWriter queues events for a thread, and
  its flush() does not drain that queue, so a kill -9 lost the last points; here every call
  writes and flushes. ``purge_step``: TensorBoard hides the events of earlier files at steps
  >= purge_step (a resumed run)."""

  def __init__(self, logdir: str, purge_step: Optional[int] = None, suffix: str = ""):
    os.makedirs(logdir, exist_ok=True)
    # The pid keeps two runs started within one second from sharing a file name; ``suffix``
    # two writers of one process (the file name has the time in seconds).
    self._w = EventsWriter(os.path.join(logdir, "events"),
                           filename_suffix=f".{os.getpid()}{suffix}")
    if purge_step is not None:
      self._write(Event(step=int(purge_step), wall_time=time.time(),
                        session_log=SessionLog(status=SessionLog.START)))

  def _write(self, event) -> None:
    self._w.write_event(event)
    self._w.flush()

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    for k, v in values.items():
      self._write(Event(step=int(step), wall_time=time.time(),
                        summary=summary.scalar(k, float(v))))

  def figure(self, tag: str, step: int, figure) -> None:
    self._write(Event(step=int(step), wall_time=time.time(),
                      summary=summary.image(tag, figure_to_image(figure, close=False),
                                            dataformats="CHW")))

  def close(self) -> None:
    self._w.close()


class MetricWriter:
  """Appends scalars to <workdir>/metrics.jsonl and to TensorBoard events in <workdir>/tb.

  Only process 0 writes; other processes get a no-op writer. tensorboardX is used (TensorBoard
  event files without TensorFlow). Every ``scalars`` call flushes both, so a killed run keeps
  every point it logged. ``start_step``: the step the run starts (or resumes) from; rows of
  metrics.jsonl past it are dropped (``truncate_jsonl``) and TensorBoard is told to hide its
  events past it (``purge_step``), so a resumed run has no duplicate points.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, start_step: Optional[int] = None):
    self.enabled = is_main()
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if start_step is not None:
        truncate_jsonl(self.path, int(start_step))
      if tensorboard:
        purge = None if start_step is None else int(start_step) + 1
        self._tb = TBEvents(os.path.join(workdir, "tb"), purge_step=purge)

  def scalars(self, step: int, values: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in values.items():
      v = float(v)
      row[k] = v if math.isfinite(v) else str(v)
    if self._tb is not None:
      self._tb.scalars(step, values)  # written and flushed
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def image(self, tag: str, step: int, figure) -> None:
    if self.enabled and self._tb is not None:
      self._tb.figure(tag, int(step), figure)

  def flush(self) -> None:
    """Everything is written when logged; kept for callers."""

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
