"""Training throughput (images/s) of the CIFAR-10-sized networks on this host.

``ddpm``: the DDPM U-Net (35,746,307 parameters; VP, eps loss, Adam); ``dit_s2``: DiT-S/2 on
32x32x3 pixels (256 tokens, configs/cifar10/dit.py's net; same step); ``edm2``: EDM2's
magnitude-preserving U-Net at CIFAR size (configs/cifar10/edm2.py: EDM preconditioning, the
uncertainty-weighted 'edm2' loss with lognormal sigmas, forced weight normalisation, Adam with
the rsqrt decay); ``ddpmpp`` / ``ncsnpp``: DDPM++ cont. (VP) and NCSN++ cont. (VE) of score
SDE (Song et al. 2021), network, schedule, loss and optimizer read from
configs/cifar10/ddpmpp_cont_vp.py and ncsnpp_cont_ve.py. Reuses
``benchmarks/train_throughput.py``'s ``bench_case`` (the full train step of
``diffusion.training``, one device, synthetic data, compile timed separately from a few timed
steps after a warm-up step) at each compute dtype of ``--dtypes`` (StepConfig.compute_dtype),
and writes ``benchmarks/results/cifar_throughput_<platform>.md``. MFU (nominal): step FLOPs (XLA
cost_analysis) x steps/s / the device's nominal dense peak for that dtype
(benchmarks/hardware.py); "vs measured matmul": the same against a large matmul of that dtype
timed in the same run.

  python benchmarks/cifar_throughput.py                 # ddpm at batches 8 and 32, float32
  python benchmarks/cifar_throughput.py --nets ddpm dit_s2 edm2 --batches 8 --steps 2
  python benchmarks/cifar_throughput.py --nets ddpmpp ncsnpp --dtypes float32 bfloat16
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import hardware  # noqa: E402
from train_throughput import (RESULTS, Case, bench_case, is_resource_exhausted,  # noqa: E402
                              peak_lines, peak_matmul, utilisation, write_table)
from diffusion.models import dit, edm2, unet  # noqa: E402
from experiments import build  # noqa: E402
from experiments.config_files import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
DTYPES = ("float32", "bfloat16")


def case_from_config(label: str, path: str) -> Case:
  """The train step of an experiment config file (its network, schedule, parameterization,
  StepConfig and OptimConfig, as experiments.build makes them) as a Case on 32x32x3 data."""
  c = load_config_file(path)
  m = c.model
  step = dataclasses.asdict(build.step_config(c))
  return Case(label, m.name, m.net.to_dict(), SHAPE, {}, sde=c.sde.name,
              sde_fields=c.sde.fields.to_dict(),
              param=dict(kind=m.parameterization, time_input=m.time_input,
                         sigma_data=m.sigma_data, scale_input=m.scale_input),
              step=step, optim=dataclasses.asdict(build.optim_config(c)))


CASES = {
    "ddpm": Case("DDPM U-Net", "ddpm_unet", unet.preset("cifar10"), SHAPE, {}),
    "dit_s2": Case("DiT-S/2 (pixels)", "dit", dit.preset("S/2"), SHAPE, {}),
    "edm2": Case("EDM2 U-Net (cifar10 preset)", "edm2_unet", edm2.preset("cifar10"), SHAPE, {},
                 sde="edm", param={"kind": "edm", "time_input": "c_noise"},
                 step={"weighting": "edm2", "time_sampling": "lognormal",
                       "ema_decay": 0.99716, "loss_opts": (("p_mean", -0.8), ("p_std", 1.6))},
                 optim={"lr": 0.012, "b2": 0.99, "grad_clip": 0.0, "decay": "rsqrt",
                        "rsqrt_ref_steps": 35_000, "warmup_steps": 10}),
    "ddpmpp": case_from_config("DDPM++ cont. (VP)",
                               os.path.join(REPO, "configs/cifar10/ddpmpp_cont_vp.py")),
    "ncsnpp": case_from_config("NCSN++ cont. (VE)",
                               os.path.join(REPO, "configs/cifar10/ncsnpp_cont_ve.py")),
}


def bench_fitting(case: Case, batch: int, steps: int, dtype: str,
                  min_batch: int = 1) -> Dict[str, Any]:
  """``bench_case`` at ``batch``, halved on XLA's out-of-memory error (RESOURCE_EXHAUSTED)
  down to ``min_batch``; the row's 'asked_batch' is ``batch`` (its 'batch' the one that ran)."""
  b = batch
  while True:
    try:
      row = bench_case(case, b, steps, dtype)
    except jax.errors.JaxRuntimeError as err:
      if not is_resource_exhausted(err) or b // 2 < min_batch:
        raise
      print(f"{case.label} {dtype} batch {b}: out of device memory; trying {b // 2}",
            flush=True)
      b //= 2
      continue
    row["asked_batch"] = batch
    return row


def measured_matmul(dtypes: Sequence[str]) -> Dict[str, float]:
  """Peak matmul FLOP/s of each dtype on device 0 (train_throughput.peak_matmul; n = 4096 on
  an accelerator, 1024 on a CPU)."""
  n = 1024 if jax.devices()[0].platform == "cpu" else 4096
  return {dt: peak_matmul(jnp.dtype(dt), n, 5) for dt in dtypes}


def _gflop(g: float) -> str:
  return f"{g:.0f}" if g >= 10 else f"{g:.2f}"


def rows_markdown(rows: List[Dict[str, Any]], nominal: Dict[str, hardware.Peak],
                  measured: Dict[str, float]) -> List[str]:
  """The result table: one line per (network, dtype, batch)."""
  dev = jax.devices()[0]
  where = f"{dev.platform} ({os.cpu_count()} cores)" if dev.platform == "cpu" else (
      f"{dev.platform} ({dev.device_kind})")
  lines = ["| network | dtype | parameters | device | batch | compile s | s/step | steps/s | "
           "images/s | GFLOP/step | MFU (nominal) | vs measured matmul | "
           "peak memory (XLA step) |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    if r.get("skipped"):
      lines.append(f"| {r['label']} | {r['dtype']} | - | {where} | {r['asked_batch']} | - | - "
                   f"| - | {r['skipped']} | - | - | - | - |")
      continue
    mem = "n/a" if r["xla_bytes"] is None else f"{r['xla_bytes'] / 2**30:.2f} GiB"
    b = str(r["batch"])
    if r.get("asked_batch", r["batch"]) != r["batch"]:
      b += f" (asked {r['asked_batch']}: out of memory, halved)"
    nom, meas = utilisation(r, nominal, measured)
    lines.append(f"| {r['label']} | {r['dtype']} | {r['params']:,} | {where} | {b} | "
                 f"{r['trace_s'] + r['compile_s']:.1f} | {1 / r['steps_per_s']:.2f} | "
                 f"{r['steps_per_s']:.3f} | {r['examples_per_s']:.2f} | "
                 f"{_gflop(r['gflop_per_step'])} | {nom} | {meas} | {mem} |")
  return lines


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--nets", nargs="+", default=["ddpm"], choices=sorted(CASES))
  p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
  p.add_argument("--dtypes", nargs="+", default=["float32"], choices=DTYPES,
                 help="compute dtypes of the train step (StepConfig.compute_dtype)")
  p.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  load0 = os.getloadavg()
  t_start = time.time()
  measured = measured_matmul(args.dtypes)
  nominal = {dt: hardware.nominal_peak(dt) for dt in args.dtypes}
  rows = []
  for name in args.nets:
    for dt in args.dtypes:
      for b in args.batches:
        r = bench_case(CASES[name], b, args.steps, dt)
        nom, meas = utilisation(r, nominal, measured)
        print(f"{name} {dt} batch {b}: compile {r['trace_s'] + r['compile_s']:.1f} s, "
              f"{r['steps_per_s']:.3f} steps/s, {r['examples_per_s']:.2f} images/s, "
              f"MFU (nominal) {nom}, vs measured matmul {meas}", flush=True)
        rows.append(r)
  load1 = os.getloadavg()
  default = args.nets == ["ddpm"] and args.batches == [8, 32] and args.steps == 3
  cmd = "python benchmarks/cifar_throughput.py" + ("" if default else (
      f" --nets {' '.join(args.nets)} --batches {' '.join(map(str, args.batches))} "
      f"--steps {args.steps}")) + (
      "" if args.dtypes == ["float32"] else f" --dtypes {' '.join(args.dtypes)}")
  lines = [
      f"# CIFAR-10-sized networks: training throughput on {dev.platform} ({dev.device_kind})",
      "",
      f"Measured by `{cmd}` (jax {jax.__version__}, {os.cpu_count()} CPU cores, one device). "
      f"The full train step of each network (the module docstring of "
      f"benchmarks/cifar_throughput.py) on synthetic 32x32x3 data, compute dtype as listed; "
      f"{args.steps} timed steps after one warm-up step; compile = tracing + XLA compilation "
      f"(persistent cache off).",
      "",
  ] + peak_lines(nominal, measured) + [
      "",
      f"Host load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on "
      f"{os.cpu_count()} cores: the host was shared, so these are lower bounds for an idle "
      f"machine. Total wall time {time.time() - t_start:.0f} s.",
      "",
  ] + rows_markdown(rows, nominal, measured)
  if dev.platform == "cpu":  # the accelerator row is only "not measured" on a CPU-only run
    lines.append("| - | - | - | GPU | - | - | - | - | not measured | - | - | - | - |")
    lines += ["", "No GPU or TPU was available to this run: there is no accelerator number here. "
              "On an accelerator, run the same command (it writes "
              "`cifar_throughput_<platform>.md`), or `make bench-accel`."]
  write_table("\n".join(lines) + "\n",
              args.out or os.path.join(RESULTS, f"cifar_throughput_{dev.platform}.md"))
  print(f"command: {cmd}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
