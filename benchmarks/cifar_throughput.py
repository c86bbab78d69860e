"""Training throughput (images/s) of the DDPM CIFAR-10 U-Net (35,746,307 parameters) on this host.

Reuses ``benchmarks/train_throughput.py``'s ``bench_case`` (the full train step of
``diffusion.training``: DSM loss, Adam, grad clipping, EMA; one device; synthetic data; compile
timed separately from a few timed steps after a warm-up step) at batch 8 and 32, and writes
``benchmarks/results/cifar_throughput_<platform>.md``.

  python benchmarks/cifar_throughput.py                 # batches 8 and 32, 3 timed steps each
  python benchmarks/cifar_throughput.py --batches 8 --steps 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from train_throughput import RESULTS, Case, bench_case, write_table  # noqa: E402
from diffusion.models import unet  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
  p.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  case = Case("DDPM U-Net, CIFAR-10 32x32x3", "ddpm_unet", unet.preset("cifar10"), (32, 32, 3),
              {})
  load0 = os.getloadavg()
  t_start = time.time()
  rows = []
  for b in args.batches:
    r = bench_case(case, b, args.steps)
    print(f"batch {b}: compile {r['trace_s'] + r['compile_s']:.1f} s, {r['steps_per_s']:.3f} "
          f"steps/s, {r['examples_per_s']:.2f} images/s", flush=True)
    rows.append(r)
  load1 = os.getloadavg()
  cmd = "python benchmarks/cifar_throughput.py" + (
      "" if args.batches == [8, 32] and args.steps == 3 else
      f" --batches {' '.join(map(str, args.batches))} --steps {args.steps}")
  lines = [
      f"# DDPM CIFAR-10 U-Net: training throughput on {dev.platform} ({dev.device_kind})",
      "",
      f"Measured by `{cmd}` (jax {jax.__version__}, {os.cpu_count()} CPU cores, one device). "
      f"The full train step (DSM loss, Adam, grad clipping, EMA) of the 35,746,307-parameter "
      f"U-Net of Ho et al. 2020 on synthetic 32x32x3 data; {args.steps} timed steps after one "
      f"warm-up step; compile = tracing + XLA compilation (persistent cache off).",
      "",
      f"Host load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on "
      f"{os.cpu_count()} cores: the host was shared, so these are lower bounds for an idle "
      f"machine. Total wall time {time.time() - t_start:.0f} s.",
      "",
      "| device | batch | compile s | s/step | steps/s | images/s | GFLOP/step | peak memory (XLA step) |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    mem = "n/a" if r["xla_bytes"] is None else f"{r['xla_bytes'] / 2**30:.2f} GiB"
    lines.append(f"| {dev.platform} ({os.cpu_count()} cores) | {r['batch']} | "
                 f"{r['trace_s'] + r['compile_s']:.1f} | {1 / r['steps_per_s']:.2f} | "
                 f"{r['steps_per_s']:.3f} | {r['examples_per_s']:.2f} | "
                 f"{r['gflop_per_step']:.0f} | {mem} |")
  if dev.platform == "cpu":  # the accelerator row is only "not measured" on a CPU-only run
    lines.append("| GPU | - | - | - | - | not measured | - | - |")
    lines += ["", "No GPU or TPU was available to this run: there is no accelerator number here. "
              "On an accelerator, run the same command (it writes "
              "`cifar_throughput_<platform>.md`)."]
  write_table("\n".join(lines) + "\n",
              args.out or os.path.join(RESULTS, f"cifar_throughput_{dev.platform}.md"))
  print(f"command: {cmd}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
