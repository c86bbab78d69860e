"""Training throughput (images/s) of the CIFAR-10-sized networks on this host.

``ddpm``: the DDPM U-Net (35,746,307 parameters; VP, eps loss, Adam); ``dit_s2``: DiT-S/2 on
32x32x3 pixels (256 tokens, configs/cifar10/dit.py's net; same step); ``edm2``: EDM2's
magnitude-preserving U-Net at CIFAR size (configs/cifar10/edm2.py: EDM preconditioning, the
uncertainty-weighted 'edm2' loss with lognormal sigmas, forced weight normalisation, Adam with
the rsqrt decay). Reuses ``benchmarks/train_throughput.py``'s ``bench_case`` (the full train
step of ``diffusion.training``, one device, synthetic data, compile timed separately from a few
timed steps after a warm-up step) and writes ``benchmarks/results/cifar_throughput_<platform>.md``.

  python benchmarks/cifar_throughput.py                 # ddpm at batches 8 and 32
  python benchmarks/cifar_throughput.py --nets ddpm dit_s2 edm2 --batches 8 --steps 2
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
from diffusion.models import dit, edm2, unet  # noqa: E402

SHAPE = (32, 32, 3)
CASES = {
    "ddpm": Case("DDPM U-Net", "ddpm_unet", unet.preset("cifar10"), SHAPE, {}),
    "dit_s2": Case("DiT-S/2 (pixels)", "dit", dit.preset("S/2"), SHAPE, {}),
    "edm2": Case("EDM2 U-Net (cifar10 preset)", "edm2_unet", edm2.preset("cifar10"), SHAPE, {},
                 sde="edm", param={"kind": "edm", "time_input": "c_noise"},
                 step={"weighting": "edm2", "time_sampling": "lognormal",
                       "ema_decay": 0.99716, "loss_opts": (("p_mean", -0.8), ("p_std", 1.6))},
                 optim={"lr": 0.012, "b2": 0.99, "grad_clip": 0.0, "decay": "rsqrt",
                        "rsqrt_ref_steps": 35_000, "warmup_steps": 10}),
}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--nets", nargs="+", default=["ddpm"], choices=sorted(CASES))
  p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
  p.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  load0 = os.getloadavg()
  t_start = time.time()
  rows = []
  for name in args.nets:
    for b in args.batches:
      r = bench_case(CASES[name], b, args.steps)
      print(f"{name} batch {b}: compile {r['trace_s'] + r['compile_s']:.1f} s, "
            f"{r['steps_per_s']:.3f} steps/s, {r['examples_per_s']:.2f} images/s", flush=True)
      rows.append(r)
  load1 = os.getloadavg()
  cmd = "python benchmarks/cifar_throughput.py" + (
      "" if args.nets == ["ddpm"] and args.batches == [8, 32] and args.steps == 3 else
      f" --nets {' '.join(args.nets)} --batches {' '.join(map(str, args.batches))} "
      f"--steps {args.steps}")
  lines = [
      f"# CIFAR-10-sized networks: training throughput on {dev.platform} ({dev.device_kind})",
      "",
      f"Measured by `{cmd}` (jax {jax.__version__}, {os.cpu_count()} CPU cores, one device). "
      f"The full train step of each network (the module docstring of "
      f"benchmarks/cifar_throughput.py) on synthetic 32x32x3 data, float32; {args.steps} timed "
      f"steps after one warm-up step; compile = tracing + XLA compilation (persistent cache "
      f"off).",
      "",
      f"Host load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on "
      f"{os.cpu_count()} cores: the host was shared, so these are lower bounds for an idle "
      f"machine. Total wall time {time.time() - t_start:.0f} s.",
      "",
      "| network | parameters | device | batch | compile s | s/step | steps/s | images/s | "
      "GFLOP/step | peak memory (XLA step) |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    mem = "n/a" if r["xla_bytes"] is None else f"{r['xla_bytes'] / 2**30:.2f} GiB"
    lines.append(f"| {r['label']} | {r['params']:,} | {dev.platform} ({os.cpu_count()} cores) | "
                 f"{r['batch']} | "
                 f"{r['trace_s'] + r['compile_s']:.1f} | {1 / r['steps_per_s']:.2f} | "
                 f"{r['steps_per_s']:.3f} | {r['examples_per_s']:.2f} | "
                 f"{r['gflop_per_step']:.0f} | {mem} |")
  if dev.platform == "cpu":  # the accelerator row is only "not measured" on a CPU-only run
    lines.append("| - | - | GPU | - | - | - | - | not measured | - | - |")
    lines += ["", "No GPU or TPU was available to this run: there is no accelerator number here. "
              "On an accelerator, run the same command (it writes "
              "`cifar_throughput_<platform>.md`)."]
  write_table("\n".join(lines) + "\n",
              args.out or os.path.join(RESULTS, f"cifar_throughput_{dev.platform}.md"))
  print(f"command: {cmd}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
