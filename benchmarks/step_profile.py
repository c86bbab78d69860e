"""Where the time of one train step goes: a jax.profiler trace of the compiled step, each XLA
operation put in a category by what it computes.

The step is ``benchmarks/cifar_throughput.py``'s case (default: the DDPM CIFAR-10 U-Net, batch 8,
float32). After a warm-up, ``--steps`` steps run under ``jax.profiler.trace``; every executed
XLA operation (a thunk: a fusion, a convolution, a copy) is matched to its instruction in the
compiled program's optimized HLO (``compiled.as_text()``) and put in a category from the op
names it contains:

  convolutions / matmuls  library calls (XNNPACK / YNNPACK / Eigen / oneDNN on CPU, cuDNN /
                          cuBLAS / Triton on GPU), forward and backward
  layout copies           transposes and copies XLA inserts around them (e.g. the batch moved to
                          the feature position for a weight gradient)
  network elementwise, group norm, attention softmax  the network's other fusions
  optimizer, EMA, loss    everything outside the network
  rng                     the random bits (threefry) of noise and dropout

Times are summed over the threads that ran the operations (on CPU the intra-op pool), per
step; the wall time per step is given beside them. Writes
``benchmarks/results/step_profile_<platform>.md``.

  python benchmarks/step_profile.py                         # DDPM U-Net, batch 8
  python benchmarks/step_profile.py --net ncsnpp --batch 4 --steps 3
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from train_throughput import RESULTS, build_step, write_table  # noqa: E402

CATEGORIES = ("convolutions / matmuls", "layout copies", "network: group norm",
              "network: attention softmax", "network: other elementwise", "rng",
              "optimizer, EMA, loss, other")
_LIBRARY_KINDS = ("__ynn_fusion", "__xnn_fusion", "__onednn_fusion", "__cudnn", "__cublas",
                  "__triton")


def hlo_index(hlo: str) -> Tuple[Dict[str, Tuple[str, str]], Dict[str, List[str]]]:
  """(instruction name -> (first line, called computation or '')), (computation -> its lines)
  from an optimized HLO module's text."""
  inst: Dict[str, Tuple[str, str]] = {}
  comps: Dict[str, List[str]] = {}
  cur = None
  for line in hlo.split("\n"):
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
    if head:
      cur = head.group(1)
      comps[cur] = []
      continue
    if cur is not None:
      comps[cur].append(line)
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m and m.group(1) not in inst:
      call = re.search(r"calls=%?([\w.\-]+)", line)
      inst[m.group(1)] = (line, call.group(1) if call else "")
  return inst, comps


def category(name: str, inst: Dict[str, Tuple[str, str]], comps: Dict[str, List[str]]) -> str:
  """The category (CATEGORIES) of the executed operation ``name``."""
  line, called = inst.get(name, ("", ""))
  body = "\n".join([line] + comps.get(called, []))
  if (any(k in line for k in _LIBRARY_KINDS) or re.search(r" (convolution|dot)\(", body)
      or "custom-call" in line):
    return CATEGORIES[0]
  ops = " ".join(re.findall(r'op_name="([^"]*)"', body))
  if re.match(r"(copy|transpose)", name) or (not ops and re.search(r" (copy|transpose)\(", body)):
    return CATEGORIES[1]
  if "threefry" in ops or "random_bits" in ops or "/while/" in ops:
    return CATEGORIES[5]
  net = re.search(r"\(([A-Z]\w+)\)|/([A-Z]\w+)/", ops)  # the flax module class in the op name
  if net:
    if "GroupNorm" in ops or "norm" in ops.lower():
      return CATEGORIES[2]
    if "softmax" in ops or "attn" in ops:
      return CATEGORIES[3]
    return CATEGORIES[4]
  return CATEGORIES[6]


def profile(case, batch: int, steps: int) -> Dict[str, object]:
  """Runs the case's compiled train step under the profiler; per-category thread-seconds per
  step and the wall time per step."""
  jitted, state, x, _ = build_step(case, batch)
  compiled = jitted.lower(state, {"x": x}).compile()
  inst, comps = hlo_index(compiled.as_text())
  for _ in range(2):  # warm-up
    state, _ = compiled(state, {"x": x})
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    with jax.profiler.trace(tmp):
      for _ in range(steps):
        state, _ = compiled(state, {"x": x})
        jax.block_until_ready(state)
    wall = (time.perf_counter() - t0) / steps
    path = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
  per_cat: Dict[str, float] = collections.Counter()
  top: Dict[str, float] = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if ev.name not in inst:  # executor bookkeeping, python frames, waits
          continue
        c = category(ev.name, inst, comps)
        per_cat[c] += ev.duration_ns / 1e9 / steps
        top[(c, ev.name)] += ev.duration_ns / 1e9 / steps
  return dict(wall=wall, per_cat=per_cat, top=top.most_common(8))


def to_markdown(label: str, batch: int, steps: int, r: Dict[str, object], cmd: str) -> str:
  dev = jax.devices()[0]
  total = sum(r["per_cat"].values()) or float("nan")
  lines = [
      f"# Where the train step's time goes: {label}, batch {batch}, on {dev.platform} "
      f"({dev.device_kind})",
      "",
      f"Measured by `{cmd}` (jax {jax.__version__}, {os.cpu_count()} CPU cores, host load "
      f"{os.getloadavg()[0]:.1f}); {steps} profiled steps after a warm-up; wall time "
      f"{r['wall']:.2f} s per step (profiler on). Operation times are summed over the threads "
      f"that ran them (benchmarks/step_profile.py's docstring).",
      "",
      "| category | s per step (summed over threads) | share |",
      "|---|---:|---:|",
  ]
  for c in CATEGORIES:
    v = r["per_cat"].get(c, 0.0)
    lines.append(f"| {c} | {v:.3f} | {100 * v / total:.1f}% |")
  lines += ["", "Largest single operations:", "",
            "| operation | category | s per step |", "|---|---|---:|"]
  for (c, name), v in r["top"]:
    lines.append(f"| `{name}` | {c} | {v:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  from cifar_throughput import CASES
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--net", default="ddpm", choices=sorted(CASES))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.batch < 1 or args.steps < 1:
    raise SystemExit(f"--batch and --steps must be >= 1, got {args.batch}, {args.steps}")
  case = CASES[args.net]
  r = profile(case, args.batch, args.steps)
  cmd = (f"python benchmarks/step_profile.py --net {args.net} --batch {args.batch} "
         f"--steps {args.steps}")
  write_table(to_markdown(case.label, args.batch, args.steps, r, cmd),
              args.out or os.path.join(RESULTS, f"step_profile_{jax.devices()[0].platform}.md"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
