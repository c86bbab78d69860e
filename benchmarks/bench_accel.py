"""One-command accelerator check (``make bench-accel``): train throughput and MFU, sampling
throughput, and a short digits run to a stated loss, in under 8 minutes on a GPU or TPU.

Parts, each with a wall-time budget (``BUDGETS``, seconds; the train part starts no case that
the longest case so far would take past it, the other two run under a subprocess timeout). The
subprocess parts run first, the train part (in this process) last;
XLA_PYTHON_CLIENT_PREALLOCATE=false lets the processes share a GPU:
  train    the full train step of the CIFAR-10 DDPM, DDPM++ cont. (VP) and NCSN++ cont. (VE)
           networks (read from configs/cifar10/ddpm.py, ddpmpp_cont_vp.py, ncsnpp_cont_ve.py:
           the papers' network, loss and optimizer) in float32 and bfloat16
           (StepConfig.compute_dtype) at the papers' batch 128, halved on XLA's out-of-memory
           error (said so in the table); steps/s, images/s,
           MFU against the nominal dense peak (benchmarks/hardware.py) and against a measured
           matmul of the same dtype.
  sampling ``benchmarks/sampling_throughput.py`` (written separately) as a subprocess; if the
           file is missing the report says so.
  vae      ``benchmarks/vae_throughput.py``: Stable Diffusion's VAE (``autoencoder_kl`` 'sd')
           encoding and decoding 256x256 images, images/s per dtype, as a subprocess.
  digits   ``python -m experiments.main --mode=train`` of configs/digits/vp.py for 300 steps
           (its cosine schedule shortened to them) in a temporary workdir; the training loss
           averaged over steps 251-300 (metrics.jsonl) against DIGITS_LOSS_THRESHOLD.

Writes benchmarks/results/bench_accel_<platform>.md (per-part tables, total wall time); exit
status 1 when the digits loss misses its threshold or the sampling script fails or times out
(a missing sampling script is reported, not a failure). On a CPU it refuses (hours at these
sizes) unless ``--allow_cpu --quick``: then a plumbing check with reduced networks (batch 2,
2 steps), nfe_scale 0.02 and 20 digits steps.

  python benchmarks/bench_accel.py                       # on a GPU / TPU
  python benchmarks/bench_accel.py --allow_cpu --quick   # plumbing check on a CPU (minutes)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# GPU: allocate on demand instead of 75% of the memory at start-up, in this process and in the
# parts' subprocesses (which inherit the environment), so that they can share the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

import hardware  # noqa: E402
from cifar_throughput import (CASES, bench_fitting, case_from_config,  # noqa: E402
                              measured_matmul, rows_markdown)
from train_throughput import RESULTS, Case, peak_lines, utilisation, write_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLING_SCRIPT = os.path.join(REPO, "benchmarks", "sampling_throughput.py")
VAE_SCRIPT = os.path.join(REPO, "benchmarks", "vae_throughput.py")
DIGITS_CONFIG = os.path.join(REPO, "configs", "digits", "vp.py")
NETS = ("ddpm", "ddpmpp", "ncsnpp")
# The papers' train steps: every case read from its config file (cifar_throughput's 'ddpm' case
# keeps its older fixed optimizer settings; this one is configs/cifar10/ddpm.py's).
ACCEL_CASES = {"ddpm": case_from_config("DDPM U-Net",
                                        os.path.join(REPO, "configs/cifar10/ddpm.py")),
               "ddpmpp": CASES["ddpmpp"], "ncsnpp": CASES["ncsnpp"]}
DTYPES = ("float32", "bfloat16")
PARTS = ("train", "sampling", "digits", "vae")
PAPER_BATCH = 128  # Ho et al. 2020 and Song et al. 2021 train CIFAR-10 at batch 128
DIGITS_STEPS = 300
# Training loss (mean over steps 251-300) of configs/digits/vp.py cut to 300 steps, seed 0, as
# measured on this project's 2-core CPU (jax 0.10.2; docs/performance.md): 0.1007 (the windows
# ending at steps 150 / 200 / 250: 0.1203 / 0.1106 / 0.1003). Data and noise are the same on
# every platform (pure functions of the seed and step); only the arithmetic differs (TF32
# matmuls, other reduction orders). The threshold, 0.12 (+19%), passes a run at least as far
# along as the CPU run's step ~150-200 and fails one that does not learn (0.74 at step 50).
DIGITS_LOSS_CPU = 0.1007
DIGITS_LOSS_THRESHOLD = 0.12
# Two samplers (3 nets x 2 dtypes x 2 samplers = 12 compilations fit the sampling budget); the
# per-NFE time of a sampler barely depends on which sampler it is, so nfe_scale 0.1 measures it
# and the table extrapolates images/s to each sampler's paper NFE.
DEFAULT_SAMPLERS = ("heun", "dpmpp_2m")
# Budgets (s) on an accelerator: train + sampling + digits + start-up < 8 minutes.
BUDGETS = {"train": 210.0, "sampling": 120.0, "digits": 120.0, "vae": 90.0}
QUICK_BUDGETS = {"train": 420.0, "sampling": 120.0, "digits": 300.0, "vae": 300.0}
QUICK_NET_KWARGS = {  # --quick: the same code paths, compiled in about a minute on 2 CPU cores
    "ddpm_unet": dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,)),
    "ddpmpp": dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,)),
    "ncsnpp": dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,)),
}


@dataclasses.dataclass
class Settings:
  """What one run does (``settings(quick)``)."""
  batch: int
  steps: int
  nfe_scale: float
  sampling_batch: int
  digits_steps: int
  digits_log_every: int
  budgets: Dict[str, float]
  threshold: Optional[float]  # digits loss threshold (None: plumbing check only)
  digits_overrides: Tuple[str, ...] = ()


def settings(quick: bool) -> Settings:
  """Full (accelerator) or --quick (plumbing check) settings."""
  if quick:
    return Settings(batch=2, steps=2, nfe_scale=0.02, sampling_batch=2, digits_steps=20,
                    digits_log_every=10, budgets=dict(QUICK_BUDGETS), threshold=None,
                    digits_overrides=("--config.eval.plot_samples=4",
                                      "--config.sampling.num_steps=2",
                                      "--config.optim.warmup_steps=5"))
  return Settings(batch=PAPER_BATCH, steps=20, nfe_scale=0.1, sampling_batch=PAPER_BATCH,
                  digits_steps=DIGITS_STEPS, digits_log_every=50, budgets=dict(BUDGETS),
                  threshold=DIGITS_LOSS_THRESHOLD)


def quick_case(case: Case) -> Case:
  """``case`` with its network shrunk to QUICK_NET_KWARGS (the label says so)."""
  kw = {**case.kwargs, **QUICK_NET_KWARGS[case.model]}
  return dataclasses.replace(case, label=case.label + " [reduced: --quick]", kwargs=kw)


# -- part (a): train throughput -------------------------------------------------------------------


def train_pairs(nets: Sequence[str], dtypes: Sequence[str],
                quick: bool) -> List[Tuple[str, str]]:
  """(net, dtype) pairs to run: all of them; with --quick each net once, the dtypes taken in
  turn (every net and every dtype runs, in len(nets) compilations)."""
  if quick:
    return [(n, dtypes[i % len(dtypes)]) for i, n in enumerate(nets)]
  return [(n, dt) for n in nets for dt in dtypes]


def part_train(nets: Sequence[str], dtypes: Sequence[str], s: Settings,
               quick: bool) -> Tuple[List[str], List[Dict[str, Any]]]:
  """Train-step throughput and MFU of each (net, dtype) of ``train_pairs``; returns markdown
  lines and rows. A case is skipped when the longest case so far would end past the part's
  budget (a started case runs to its end)."""
  t0 = time.time()
  longest = 0.0
  measured = measured_matmul(dtypes)
  nominal = {dt: hardware.nominal_peak(dt) for dt in dtypes}
  rows = []
  for name, dt in train_pairs(nets, dtypes, quick):
    case = quick_case(ACCEL_CASES[name]) if quick else ACCEL_CASES[name]
    if time.time() - t0 + longest > s.budgets["train"]:
      rows.append(dict(label=case.label, dtype=dt, asked_batch=s.batch,
                       skipped="skipped: part budget spent"))
      continue
    t_case = time.time()
    r = bench_fitting(case, s.batch, s.steps, dt)
    longest = max(longest, time.time() - t_case)
    nom, meas = utilisation(r, nominal, measured)
    print(f"[train] {name} {dt} batch {r['batch']}: {r['steps_per_s']:.3f} steps/s, "
          f"{r['examples_per_s']:.1f} images/s, MFU (nominal) {nom}, vs measured matmul "
          f"{meas}", flush=True)
    rows.append(r)
  lines = [f"## (a) Train step throughput and MFU (budget {s.budgets['train']:.0f} s, took "
           f"{time.time() - t0:.0f} s)", "",
           f"Synthetic 32x32x3 data, batch {s.batch}" + (
               " (--quick; each net in one dtype)" if quick else
               " (the papers'; halved on out-of-memory where marked)") +
           f", {s.steps} timed steps after one warm-up step.", ""]
  lines += peak_lines(nominal, measured) + [""] + rows_markdown(rows, nominal, measured)
  return lines, rows


# -- part (b): sampling throughput ----------------------------------------------------------------


def sampling_command(s: Settings, samplers: Sequence[str], dtypes: Sequence[str],
                     out: str) -> List[str]:
  """The sampling_throughput.py command line (its CLI: --nets --samplers --batch --dtypes
  --nfe_scale --out)."""
  return [sys.executable, SAMPLING_SCRIPT, "--nets", *NETS, "--samplers", *samplers,
          "--batch", str(s.sampling_batch), "--dtypes", *dtypes, "--nfe_scale",
          str(s.nfe_scale), "--out", out]


def _tail(text: str, n: int = 20) -> str:
  return "\n".join(text.strip().splitlines()[-n:])


def part_sampling(s: Settings, samplers: Sequence[str], dtypes: Sequence[str],
                  out: str) -> Tuple[List[str], str]:
  """Runs sampling_throughput.py; returns markdown lines and a status word."""
  head = f"## (b) Sampling throughput (budget {s.budgets['sampling']:.0f} s"
  return run_part(head, SAMPLING_SCRIPT, sampling_command(s, samplers, dtypes, out),
                  s.budgets["sampling"], out)


def vae_command(quick: bool, dtypes: Sequence[str], out: str) -> List[str]:
  """The vae_throughput.py command line: Stable Diffusion's VAE at 256x256 (--quick: the
  'small' preset at 64x64)."""
  size = ["--preset", "small", "--size", "64", "--batch", "2"] if quick else [
      "--preset", "sd", "--size", "256", "--batch", "8"]
  return [sys.executable, VAE_SCRIPT, *size, "--dtypes", *dtypes, "--out", out]


def part_vae(s: Settings, quick: bool, dtypes: Sequence[str],
             out: str) -> Tuple[List[str], str]:
  """Runs vae_throughput.py (latent diffusion's encode / decode images/s)."""
  head = f"## (d) Autoencoder encode / decode throughput (budget {s.budgets['vae']:.0f} s"
  return run_part(head, VAE_SCRIPT, vae_command(quick, dtypes, out), s.budgets["vae"], out)


def run_part(head: str, script: str, cmd: List[str], budget: float,
             out: str) -> Tuple[List[str], str]:
  """Runs a benchmark script as a subprocess under ``budget`` seconds; returns markdown lines
  (its table, or why there is none) and a status word."""
  t0 = time.time()
  if not os.path.exists(script):
    return [head + ")", "", f"NOT RUN: {os.path.relpath(script, REPO)} does not exist "
            "in this checkout."], "missing"
  shown = " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget)
  except subprocess.TimeoutExpired as e:
    out_text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    return [head + f", stopped at {time.time() - t0:.0f} s)", "", f"`python {shown}`", "",
            "TIMED OUT (part budget spent); its last output:", "", "```",
            _tail(out_text), "```"], "timeout"
  took = f", took {time.time() - t0:.0f} s)"
  if proc.returncode != 0:
    return [head + took, "", f"`python {shown}`", "", f"FAILED (exit {proc.returncode}):", "",
            "```", _tail(proc.stdout + "\n" + proc.stderr), "```"], "failed"
  body = open(out).read() if os.path.exists(out) else _tail(proc.stdout, 60)
  return [head + took, "", f"`python {shown}` (its table follows)", "", body.strip()], "ok"


# -- part (c): a short digits run to a stated loss ------------------------------------------------


def digits_command(s: Settings, workdir: str) -> List[str]:
  """experiments.main --mode=train of configs/digits/vp.py for s.digits_steps steps (the cosine
  schedule's length follows training.num_steps)."""
  return [sys.executable, "-m", "experiments.main", f"--config={DIGITS_CONFIG}",
          f"--workdir={workdir}", "--mode=train",
          f"--config.training.num_steps={s.digits_steps}",
          f"--config.training.log_every={s.digits_log_every}",
          "--config.training.ckpt_every=1000000", "--config.training.sample_every=1000000",
          *s.digits_overrides]


def final_loss(metrics_jsonl: str) -> Tuple[int, float]:
  """(step, loss) of the last row of a run's metrics.jsonl (the mean training loss of its last
  log window)."""
  with open(metrics_jsonl) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  if not rows:
    raise ValueError(f"{metrics_jsonl} has no rows")
  return int(rows[-1]["step"]), float(rows[-1]["loss"])


def verdict(loss: float, threshold: Optional[float]) -> str:
  """'PASS' / 'FAIL' of loss < threshold; 'finite (no threshold)' / 'NOT FINITE' without one."""
  if not math.isfinite(loss):
    return "FAIL (not finite)"
  if threshold is None:
    return "finite (plumbing check, no threshold)"
  return "PASS" if loss < threshold else "FAIL"


def part_digits(s: Settings) -> Tuple[List[str], str]:
  """Runs the digits training; returns markdown lines and the verdict."""
  t0 = time.time()
  head = f"## (c) Digits VP, {s.digits_steps} steps (budget {s.budgets['digits']:.0f} s"
  workdir = tempfile.mkdtemp(prefix="bench_accel_digits_")
  cmd = digits_command(s, workdir)
  shown = "python " + " ".join(c.replace(REPO + os.sep, "") for c in cmd[1:]).replace(
      workdir, "TMP")
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=s.budgets["digits"])
    if proc.returncode != 0:
      return [head + ")", "", f"`{shown}`", "", f"FAILED (exit {proc.returncode}):", "", "```",
              _tail(proc.stdout + "\n" + proc.stderr), "```"], "FAIL (run failed)"
    step, loss = final_loss(os.path.join(workdir, "metrics.jsonl"))
  except subprocess.TimeoutExpired:
    return [head + ")", "", f"`{shown}`", "", "TIMED OUT (part budget spent)"], "FAIL (timeout)"
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  v = verdict(loss, s.threshold)
  thr = "none (--quick)" if s.threshold is None else f"< {s.threshold}"
  lines = [head + f", took {time.time() - t0:.0f} s)", "", f"`{shown}`", "",
           "| config | steps | training loss, last log window | threshold | CPU reference | "
           "verdict |", "|---|---:|---:|---|---:|---|",
           f"| configs/digits/vp.py | {step} | {loss:.4f} (steps {step - s.digits_log_every + 1}"
           f"-{step}) | {thr} | {DIGITS_LOSS_CPU if s.threshold is not None else '-'} | {v} |"]
  return lines, v


# -- the orchestrator -----------------------------------------------------------------------------


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--allow_cpu", action="store_true", help="run on a CPU (needs --quick)")
  p.add_argument("--quick", action="store_true", help="plumbing check: tiny sizes")
  p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
  p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
  p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
  p.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS))
  p.add_argument("--out", default=None, help="markdown path (default: "
                 "benchmarks/results/bench_accel_<platform>.md)")
  args = p.parse_args(argv)
  t_start = time.time()
  dev = jax.devices()[0]
  if dev.platform == "cpu" and not (args.allow_cpu and args.quick):
    print("bench_accel: no GPU or TPU found (JAX's device is a CPU). These sizes take hours on "
          "a CPU; for a plumbing check run `python benchmarks/bench_accel.py --allow_cpu "
          "--quick`.", file=sys.stderr)
    return 2
  s = settings(args.quick)
  out = args.out or os.path.join(RESULTS, f"bench_accel_{dev.platform}.md")
  lines = [f"# Accelerator check on {dev.platform} ({dev.device_kind})", "",
           f"`python benchmarks/bench_accel.py{' --allow_cpu --quick' if args.quick else ''}` "
           f"(jax {jax.__version__}, {jax.device_count()} device(s), one used; compilation "
           f"cache {os.environ.get('JAX_COMPILATION_CACHE_DIR') or 'off'}).", ""]
  if args.quick:
    lines += ["--quick: a plumbing check (reduced networks, batch 2, few steps): these numbers "
              "are not benchmarks.", ""]
  # The subprocess parts run first, while this process holds no device buffers; the train part
  # (in this process) last. The report keeps the order (a), (b), (c).
  sections: Dict[str, List[str]] = {}
  summary: Dict[str, str] = {}
  if "sampling" in args.parts:
    base, ext = os.path.splitext(out)
    sections["sampling"], summary["sampling"] = part_sampling(
        s, args.samplers, args.dtypes, base + "_sampling" + ext)
  if "digits" in args.parts:
    sections["digits"], summary["digits"] = part_digits(s)
  if "vae" in args.parts:
    base, ext = os.path.splitext(out)
    sections["vae"], summary["vae"] = part_vae(s, args.quick, args.dtypes,
                                               base + "_vae" + ext)
  if "train" in args.parts:
    sections["train"], rows = part_train(args.nets, args.dtypes, s, args.quick)
    summary["train"] = (f"{sum(1 for r in rows if not r.get('skipped'))} of {len(rows)} cases "
                        f"run")
  for name in PARTS:
    if name in sections:
      lines += sections[name] + [""]
  done = [f"{k}: {summary[k]}" for k in PARTS if k in summary]
  total = time.time() - t_start
  lines += [f"Total wall time {total:.0f} s ({'; '.join(done)})."]
  write_table("\n".join(lines) + "\n", out)
  failed = (summary.get("digits", "").startswith("FAIL") or
            summary.get("sampling") in ("failed", "timeout") or
            summary.get("vae") in ("failed", "timeout"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
