"""Where a run reports: progress lines, metrics.jsonl and TensorBoard events (process 0 only)."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, Optional

import jax


def is_main() -> bool:
  return jax.process_index() == 0


def say(msg: str) -> None:
  """A progress line on stdout from process 0."""
  if is_main():
    print(msg, flush=True)


class MetricWriter:
  """Appends scalars to <workdir>/metrics.jsonl and to TensorBoard events in <workdir>/tb.

  Only process 0 writes; other processes get a no-op writer. tensorboardX is used (TensorBoard
  event files without TensorFlow).
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = is_main()
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def scalars(self, step: int, values: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in values.items():
      v = float(v)
      row[k] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add_scalar(k, v, int(step))
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def image(self, tag: str, step: int, figure) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_figure(tag, figure, int(step), close=False)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
