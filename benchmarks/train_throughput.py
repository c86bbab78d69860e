"""Training throughput: compile time, steps/s, examples/s, MFU and memory of one train step.

For the toy MLP, the digits U-Net and the DDPM CIFAR-10 U-Net, the full train step of
``diffusion.training`` (DSM loss, Adam, EMA, clipping; one device) is compiled and timed on
synthetic data. Model FLOPs utilisation (MFU) = (FLOPs of the compiled step, from XLA's
``cost_analysis``) x steps/s / (the device's nominal dense peak for the compute dtype,
benchmarks/hardware.py: a datasheet table for GPUs / TPUs, cores x FMA units x lanes x 2 x clock
on a CPU). Beside it, the same rate against the peak matmul rate measured on the same device in
the same run (a large matmul of the compute dtype): how close the step comes to what this
software stack reaches on a plain matmul. Peak memory: the device's
``peak_bytes_in_use`` where it reports one (GPU/TPU), else XLA's ``memory_analysis`` of the step
(arguments + outputs + temporaries - aliased) and the process's peak RSS.

  python benchmarks/train_throughput.py            # writes benchmarks/results/train_throughput_<platform>.md
  python benchmarks/train_throughput.py --quick    # fewer steps, smaller CPU batches (a few minutes on CPU)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hardware  # noqa: E402
from diffusion import training  # noqa: E402
from diffusion.models import get_model, registered_models  # noqa: E402
from diffusion.parameterization import Parameterization  # noqa: E402
from diffusion.schedules import get_schedule  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass
class Case:
  label: str
  model: str
  kwargs: Dict[str, Any]
  shape: Tuple[int, ...]  # one example
  batch: Dict[str, int]  # per (platform, quick): 'cpu', 'cpu_quick', 'accel', 'accel_quick'
  # The train step: schedule, parameterization, StepConfig and OptimConfig keywords (default:
  # VP, eps prediction, the eps loss, Adam 1e-4 with warm-up).
  sde: str = "vp"
  param: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "eps"})
  step: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"ema_decay": 0.999})
  optim: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"lr": 1e-4,
                                                                     "warmup_steps": 10})
  sde_fields: Dict[str, Any] = dataclasses.field(default_factory=dict)  # get_schedule kwargs


def cases() -> List[Case]:
  out = [Case("MLP, toy 2-D", "mlp", dict(width=128, num_blocks=3, embed_dim=64), (2,),
              dict(cpu=512, cpu_quick=512, accel=4096, accel_quick=4096))]
  if "ddpm_unet" in registered_models():
    from diffusion.models import unet
    out.append(Case("DDPM U-Net, digits 8x8x1", "ddpm_unet", unet.preset("digits"), (8, 8, 1),
                    dict(cpu=128, cpu_quick=32, accel=512, accel_quick=256)))
    out.append(Case("DDPM U-Net, CIFAR-10 32x32x3", "ddpm_unet", unet.preset("cifar10"),
                    (32, 32, 3), dict(cpu=8, cpu_quick=2, accel=128, accel_quick=128)))
  return out


def peak_matmul(dtype, n: int, reps: int) -> float:
  """Best-of-``reps`` FLOP/s of an (n, n) @ (n, n) matmul chain in ``dtype`` on device 0."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  inner = 4

  @jax.jit
  def f(a, b):
    x = a
    for _ in range(inner):
      x = (x @ b) * 0.01
    return x

  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return inner * 2.0 * n**3 / best


def _device_peak_bytes() -> Optional[int]:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 -- CPU backends may not implement it
    return None
  return None if not stats else stats.get("peak_bytes_in_use")


def is_resource_exhausted(err: BaseException) -> bool:
  """Whether ``err`` is XLA's out-of-memory error (a JaxRuntimeError whose status is
  RESOURCE_EXHAUSTED; JAX has no narrower type for it)."""
  return isinstance(err, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(err)


def build_step(case: Case, batch: int, dtype: Optional[str] = None):
  """The jitted (donating) train step of ``case``, its initial state and a synthetic batch x
  (batch, *case.shape); dtype: the step's ``compute_dtype`` ('float32' / 'bfloat16'; None: the
  case's, else float32). Returns (jitted, state, x, dtype)."""
  step_kw = dict(case.step)
  if dtype is not None:  # StepConfig refuses an unknown one
    step_kw["compute_dtype"] = dtype
  dtype = step_kw.get("compute_dtype", "float32")
  net = get_model(case.model, **case.kwargs)
  sched = get_schedule(case.sde, **case.sde_fields)
  param = Parameterization(**case.param)
  opt = training.make_optimizer(training.OptimConfig(**case.optim))
  step_fn = training.make_train_step(net, sched, param, opt, training.StepConfig(**step_kw))
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (batch,) + case.shape, jnp.float32)
  state = jax.jit(lambda k: training.init_state(net, opt, k, x[:1]))(key)
  return jax.jit(step_fn, donate_argnums=(0,)), state, x, dtype


def bench_case(case: Case, batch: int, steps: int, dtype: Optional[str] = None
               ) -> Dict[str, Any]:
  """Compiles and times the train step of ``case`` at ``batch`` (``build_step``); returns a row
  of results."""
  jitted, state, x, dtype = build_step(case, batch, dtype)
  n_params = training.count_params(state.params)

  t0 = time.perf_counter()
  lowered = jitted.lower(state, {"x": x})
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
                 mem.temp_size_in_bytes - mem.alias_size_in_bytes)

  state, m = compiled(state, {"x": x})  # warm-up
  jax.block_until_ready(state)
  t = time.perf_counter()
  for i in range(steps):
    state, m = compiled(state, {"x": x})
    if i % 8 == 7:
      jax.block_until_ready(state.step)
  jax.block_until_ready(state)
  dt = time.perf_counter() - t
  assert np.isfinite(float(m["loss"])), f"{case.label}: non-finite loss"
  sps = steps / dt
  return dict(label=case.label, dtype=dtype, params=n_params, batch=batch, trace_s=t1 - t0,
              compile_s=t2 - t1, steps_per_s=sps, examples_per_s=sps * batch,
              gflop_per_step=flops / 1e9, tflops=flops * sps / 1e12, xla_bytes=xla_bytes,
              device_peak=_device_peak_bytes(),
              rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _fmt_bytes(b: Optional[float]) -> str:
  if b is None:
    return "n/a"
  for unit in ("B", "KiB", "MiB", "GiB"):
    if b < 1024 or unit == "GiB":
      return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
    b /= 1024.0
  return f"{b:.1f} GiB"


def utilisation(row: Dict[str, Any], nominal: Dict[str, hardware.Peak],
                measured: Dict[str, float]) -> Tuple[str, str]:
  """The row's achieved FLOP/s as "MFU (nominal)" and "vs measured matmul" table cells, both
  against the peak of the row's compute dtype ("unknown peak" without a nominal one)."""
  rate = row["tflops"] * 1e12
  m = hardware.mfu(row["gflop_per_step"] * 1e9, row["steps_per_s"], nominal[row["dtype"]])
  meas = measured.get(row["dtype"])
  return ("unknown peak" if m is None else f"{100 * m:.1f}%",
          "n/a" if not meas else f"{100 * rate / meas:.1f}%")


def peak_lines(nominal: Dict[str, hardware.Peak], measured: Dict[str, float]) -> List[str]:
  """Header lines stating the nominal peaks (formula and source) and the measured matmul
  rates."""
  out = ["Nominal dense peak (benchmarks/hardware.py; MFU (nominal) = step FLOPs from XLA's "
         "cost_analysis x steps/s / this peak for the step's compute dtype):", ""]
  out += [f"- {dt}: {p.describe()}" for dt, p in nominal.items()]
  out += ["", "Peak matmul rate measured in the same run (the 'vs measured matmul' column): " +
          ", ".join(f"{dt} {r / 1e12:.3f} TFLOP/s" for dt, r in measured.items()) + "."]
  return out


def to_markdown(rows: List[Dict[str, Any]], peak32: float, peak16: float, quick: bool,
                cmd: str) -> str:
  dev = jax.devices()[0]
  nominal = {dt: hardware.nominal_peak(dt) for dt in ("float32", "bfloat16")}
  measured = {"float32": peak32, "bfloat16": peak16}
  lines = [
      f"# Training throughput on {dev.platform} ({dev.device_kind})",
      "",
      f"Measured by `{cmd}` ({'--quick: few timed steps, small CPU batches' if quick else 'full'}"
      f"), jax {jax.__version__}, {jax.device_count()} device(s), one device used. Synthetic "
      f"data; the full train step (DSM loss, Adam, grad clipping, EMA).",
      "",
  ] + peak_lines(nominal, measured) + [
      "",
      "| model | dtype | params | batch | compile s | steps/s | examples/s | GFLOP/step | "
      "TFLOP/s | MFU (nominal) | vs measured matmul | peak memory (XLA step) | device peak | "
      "process RSS |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    mfu_nom, mfu_meas = utilisation(r, nominal, measured)
    lines.append(
        f"| {r['label']} | {r['dtype']} | {r['params']:,} | {r['batch']} | "
        f"{r['trace_s'] + r['compile_s']:.1f} "
        f"| {r['steps_per_s']:.2f} | {r['examples_per_s']:.0f} | {r['gflop_per_step']:.2f} | "
        f"{r['tflops']:.3f} | {mfu_nom} | {mfu_meas} | {_fmt_bytes(r['xla_bytes'])} | "
        f"{_fmt_bytes(r['device_peak'])} | {_fmt_bytes(r['rss'])} |")
  lines += ["", "compile s = tracing + XLA compilation of the step (persistent cache off)."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="few steps, small CPU batches")
  p.add_argument("--steps", type=int, default=None, help="timed steps per model")
  p.add_argument("--only", default=None, help="substring of the model labels to run")
  p.add_argument("--out", default=None, help="output markdown path")
  args = p.parse_args(argv)
  platform = jax.devices()[0].platform
  accel = platform != "cpu"
  key = ("accel" if accel else "cpu") + ("_quick" if args.quick else "")
  n = 4096 if accel else (512 if args.quick else 1024)
  peak32 = peak_matmul(jnp.float32, n, 5)
  peak16 = peak_matmul(jnp.bfloat16, n, 5)
  print(f"peak matmul: float32 {peak32 / 1e12:.3f} TFLOP/s, bfloat16 {peak16 / 1e12:.3f} "
        f"TFLOP/s", flush=True)
  rows = []
  for case in cases():
    if args.only and args.only.lower() not in case.label.lower():
      continue
    batch = case.batch[key]
    big = case.model != "mlp"
    steps = args.steps or (3 if (big and not accel and args.quick) else
                           10 if big and not accel else 50 if args.quick else 200)
    if case.model == "mlp" and not args.steps:
      steps = 200 if args.quick else 2000
    r = bench_case(case, batch, steps)
    print(f"{r['label']}: compile {r['trace_s'] + r['compile_s']:.1f} s, "
          f"{r['steps_per_s']:.2f} steps/s, {r['examples_per_s']:.0f} examples/s, "
          f"{r['gflop_per_step']:.2f} GFLOP/step, {100 * r['tflops'] * 1e12 / peak32:.1f}% of "
          f"the measured float32 matmul", flush=True)
    rows.append(r)
  cmd = "python benchmarks/train_throughput.py" + (" --quick" if args.quick else "")
  md = to_markdown(rows, peak32, peak16, args.quick, cmd)
  write_table(md, args.out or os.path.join(RESULTS, f"train_throughput_{platform}.md"))
  return 0


def write_table(md: str, out: str) -> None:
  """Prints the markdown table and writes it to ``out`` (its folder is created), ending with
  the line naming the machine (hardware.machine_line: CPU model, cores, JAX devices)."""
  md = hardware.with_machine_line(md)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write(md)
  print(md)
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
