"""The DDPM CIFAR-10 U-Net's train step here against PyTorch + diffusers, on the same machine.

Both sides run the same step: VP noising at t ~ U(1e-5, 1) (beta 0.1..20, the network sees
999 t), eps prediction with the mean squared error, backward, global-norm clipping to 1, Adam
(2e-4, warm-up 5000) and an EMA (0.9999) of the parameters, float32, train mode (dropout 0.1), on
one fixed synthetic batch. The network is the DDPM U-Net (Ho et al. 2020, App. B; 35,746,307
parameters): ``ddpm_unet`` here and diffusers' ``UNet2DModel`` with google/ddpm-cifar10-32's
config there; the script checks that both count 35,746,307.

Each framework runs in its own worker process that builds and warms up (compiles) its step, then
waits. The parent asks the workers in turn (jax, torch, jax, torch, ...) for ``--steps`` steps
each, so the two never compete for the cores and slow drift of a shared machine hits both alike;
the table gives the median step time over the rounds and the ratio of throughputs measured in this
one invocation. Both run on the CPU (``--device=cuda``: both on the GPU, PyTorch synchronised
after each step).

PyTorch is never a dependency of this package. Install it in a separate environment and pass its
interpreter::

  python3 -m venv /tmp/torch-env
  /tmp/torch-env/bin/pip install torch==2.13.0 diffusers==0.42.1
  python benchmarks/vs_pytorch.py --torch_python=/tmp/torch-env/bin/python

``--baseline_root=DIR`` adds a JAX worker running another checkout of this codebase (first row),
for before / after numbers of a change measured in the same alternation.

Without ``--torch_python`` (and without torch importable here) the PyTorch column is skipped.
``--xla_flags=F`` (repeatable) adds a JAX worker running under XLA_FLAGS=F, to compare the CPU
backend's options in the same alternation (each row names its flags; '' = none). Writes
``benchmarks/results/vs_pytorch_<device>.md``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PARAMS = 35_746_307  # the released DDPM CIFAR-10 U-Net
# The step's hyper-parameters (configs/cifar10/ddpm.py).
LR, WARMUP, CLIP, EMA, T_MIN = 2e-4, 5000, 1.0, 0.9999, 1e-5
BETA_MIN, BETA_MAX = 0.1, 20.0
# google/ddpm-cifar10-32's UNet2DModel config (sizes only; the rest are diffusers' defaults,
# which are DDPM's: positional time embedding, 1 attention head, GroupNorm(32), SiLU).
DIFFUSERS_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, norm_num_groups=32, dropout=0.1, attention_head_dim=None,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


# ------------------------------------------------------------------------------------ workers
def _jax_worker(batch: int, root: str = ROOT):
  """Builds the jitted step of the checkout at ``root``; returns (run(n) -> [seconds per step],
  info). Only the library's public API is used (not train_throughput.build_step), so that a
  --baseline_root checkout older than these benchmarks builds the same step."""
  sys.path.insert(0, root)
  import jax
  import jax.numpy as jnp
  from diffusion import training
  from diffusion.models import get_model, unet
  from diffusion.parameterization import Parameterization
  from diffusion.schedules import get_schedule
  if not os.path.realpath(training.__file__).startswith(os.path.realpath(root) + os.sep):
    raise SystemExit(f"imported {training.__file__}, not the checkout at {root}")

  net = get_model("ddpm_unet", **unet.preset("cifar10"))
  opt = training.make_optimizer(training.OptimConfig(lr=LR, warmup_steps=WARMUP, grad_clip=CLIP))
  step_fn = training.make_train_step(net, get_schedule("vp", beta_min=BETA_MIN,
                                                       beta_max=BETA_MAX, t_min=T_MIN),
                                     Parameterization(kind="eps"), opt,
                                     training.StepConfig(ema_decay=EMA))
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (batch, 32, 32, 3), jnp.float32)
  state = jax.jit(lambda k: training.init_state(net, opt, k, x[:1]))(key)
  box = {"state": state}
  jitted = jax.jit(step_fn, donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = jitted.lower(state, {"x": x}).compile()
  compile_s = time.perf_counter() - t0

  def run(n: int) -> List[float]:
    out = []
    for _ in range(n):
      t = time.perf_counter()
      box["state"], m = compiled(box["state"], {"x": x})
      jax.block_until_ready(box["state"])
      out.append(time.perf_counter() - t)
    assert bool(jnp.isfinite(m["loss"])), "non-finite loss"
    return out

  run(1)  # warm-up
  info = dict(framework=f"jax {jax.__version__}", params=training.count_params(state.params),
              compile_s=compile_s, xla_flags=os.environ.get("XLA_FLAGS", ""),
              threads=os.cpu_count())
  if os.path.realpath(root) != os.path.realpath(ROOT):
    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    info["framework"] += f", checkout {rev or root}"
  return run, info


def _torch_worker(batch: int, channels_last: bool, device: str = "cpu"):
  """The same step in PyTorch eager with diffusers' UNet2DModel on ``device`` ('cpu' | 'cuda')."""
  import math

  import diffusers
  import torch

  torch.manual_seed(0)
  model = diffusers.UNet2DModel(**DIFFUSERS_CONFIG).train()
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  dev = torch.device(device)
  model = model.to(device=dev, memory_format=fmt)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  params = [p for p in model.parameters()]
  ema = [p.detach().clone() for p in params]
  opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / WARMUP, 1.0))
  x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)

  def step():
    t = T_MIN + (1 - T_MIN) * torch.rand(batch, device=dev)
    log_alpha = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    alpha = log_alpha.exp().view(-1, 1, 1, 1)
    sigma = (1 - alpha**2).sqrt()
    noise = torch.randn_like(x)
    out = model(alpha * x + sigma * noise, t * 999).sample
    loss = (out - noise).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()
    sched.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - EMA)
    return loss.detach()

  def run(n: int) -> List[float]:
    out = []
    for _ in range(n):
      t0 = time.perf_counter()
      loss = step()
      sync()
      out.append(time.perf_counter() - t0)
    assert math.isfinite(float(loss)), "non-finite loss"
    return out

  t0 = time.perf_counter()
  run(1)  # warm-up (oneDNN primitive creation)
  info = dict(framework=f"torch {torch.__version__} + diffusers {diffusers.__version__}"
              + (" (channels_last)" if channels_last else ""),
              params=sum(p.numel() for p in params), compile_s=time.perf_counter() - t0,
              threads=torch.get_num_threads())
  return run, info


def worker_main(kind: str, batch: int, channels_last: bool, root: str, device: str) -> int:
  """Line protocol: prints one JSON line of info, then answers each stdin line 'N' with the
  N step times as one JSON line; 'quit' ends."""
  run, info = (_jax_worker(batch, root) if kind == "jax" else
               _torch_worker(batch, channels_last, device))
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      break
    print(json.dumps(run(int(line))), flush=True)
  return 0


# ------------------------------------------------------------------------------------- parent
class Worker:
  """A worker process speaking ``worker_main``'s protocol."""

  def __init__(self, name: str, python: str, args: List[str], env: Dict[str, str]):
    self.name = name
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), *args], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info: Dict[str, Any] = self._read()
    self.times: List[float] = []

  def _read(self) -> Any:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.name} worker exited with code {self.proc.wait()} "
                         "(its error is printed above)")
    return json.loads(line)

  def run(self, n: int) -> None:
    self.proc.stdin.write(f"{n}\n")
    self.proc.stdin.flush()
    self.times += self._read()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.flush()
      self.proc.wait()


def torch_interpreter(arg: Optional[str]) -> Optional[str]:
  """The interpreter for the PyTorch worker: --torch_python, else this one if it has torch."""
  if arg:
    if not os.path.exists(arg):
      raise SystemExit(f"--torch_python={arg!r} does not exist")
    return arg
  if importlib.util.find_spec("torch") and importlib.util.find_spec("diffusers"):
    return sys.executable
  return None


def paired_ratio(w: "Worker", ref: "Worker", steps: int) -> float:
  """Throughput of ``w`` over ``ref``: the median over rounds of ref's mean step time in the
  round over w's in the same round (adjacent in time, so a drifting host load cancels)."""
  def per_round(x: "Worker") -> List[float]:
    return [statistics.mean(x.times[i:i + steps]) for i in range(0, len(x.times), steps)]
  return statistics.median(r / t for r, t in zip(per_round(ref), per_round(w)))


def table(workers: List[Worker], batch: int, rounds: int, steps: int, cmd: str,
          load: tuple) -> str:
  import platform as pf
  ref = next((w for w in workers if w.name == "torch"), workers[0])
  rows = []
  for w in workers:
    med = statistics.median(w.times)
    name = w.info["framework"]
    if w.info.get("xla_flags"):
      name += f", XLA_FLAGS=`{w.info['xla_flags']}`"
    rows.append(f"| {name} | {w.info['params']:,} | {w.info['threads']} | "
                f"{w.info['compile_s']:.1f} | {med:.2f} | {min(w.times):.2f} | "
                f"{batch / med:.2f} | {paired_ratio(w, ref, steps):.2f}x |")
  lines = [
      "# DDPM CIFAR-10 U-Net train step: this codebase (JAX) vs PyTorch + diffusers",
      "",
      f"Measured by `{cmd}` on {pf.processor() or pf.machine()}, {os.cpu_count()} CPU cores. "
      f"Batch {batch}, float32, the full step (module docstring of benchmarks/vs_pytorch.py); "
      f"{rounds} alternating rounds of {steps} steps per worker after a warm-up; median and "
      f"best step time over the {rounds * steps} timed steps. Throughput ratio: the median over "
      f"rounds of (the {ref.name} worker's step time / this worker's) within each round, "
      f"robust to a drifting host load. Host load average (1 min) at start / end: "
      f"{load[0]:.1f} / {load[1]:.1f}.",
      "",
      f"| framework | parameters | threads | compile / warm-up s | median s/step | best s/step "
      f"| images/s (median) | throughput vs {ref.name} |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
      *rows,
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=2, help="timed steps per framework per round")
  p.add_argument("--torch_python", default=None, help="interpreter with torch and diffusers")
  p.add_argument("--channels_last", action="store_true", help="PyTorch in channels_last")
  p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                 help="where both frameworks run (JAX_PLATFORMS for the JAX workers)")
  p.add_argument("--xla_flags", action="append", default=None,
                 help="XLA_FLAGS of a JAX worker (repeat for several workers)")
  p.add_argument("--baseline_root", default=None,
                 help="another checkout of this codebase (e.g. `git worktree add /tmp/old REV`):"
                      " adds a JAX worker running its code, for before / after comparisons")
  p.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)  # the worker's checkout
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  for name in ("batch", "rounds", "steps"):
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.worker:
    return worker_main(args.worker, args.batch, args.channels_last, args.root, args.device)
  if args.baseline_root and not os.path.isdir(os.path.join(args.baseline_root, "diffusion")):
    raise SystemExit(f"--baseline_root={args.baseline_root!r} is not a checkout of this "
                     "codebase (no diffusion/ folder)")

  load0 = os.getloadavg()
  common = ["--batch", str(args.batch), "--device", args.device]
  workers = []
  jobs = [(ROOT, f) for f in args.xla_flags or [None]]
  if args.baseline_root:
    jobs.insert(0, (os.path.abspath(args.baseline_root), (args.xla_flags or [None])[0]))
  for i, (root, xla_flags) in enumerate(jobs):
    env = dict(os.environ)
    if xla_flags is not None:
      env["XLA_FLAGS"] = xla_flags
    env["JAX_PLATFORMS"] = args.device
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile time is part of the table
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    workers.append(Worker(f"jax{i}", sys.executable,
                          ["--worker", "jax", "--root", root, *common], env))
    print(f"jax worker {i} ready: {workers[-1].info}", flush=True)
  tpy = torch_interpreter(args.torch_python)
  if tpy is None:
    print("PyTorch column skipped: torch/diffusers not importable here and no --torch_python "
          "(see this script's docstring for a separate environment)", flush=True)
  else:
    extra = ["--channels_last"] if args.channels_last else []
    workers.append(Worker("torch", tpy, ["--worker", "torch", *common, *extra], dict(os.environ)))
    print(f"torch worker ready: {workers[-1].info}", flush=True)
  try:
    for w in workers:
      if w.info["params"] != PARAMS:
        raise SystemExit(f"{w.name}: {w.info['params']:,} parameters, expected {PARAMS:,}")
    for r in range(args.rounds):
      for w in workers:
        w.run(args.steps)
        print(f"round {r + 1}: {w.name} {w.times[-args.steps:]}", flush=True)
  finally:
    for w in workers:
      w.close()
  cmd = " ".join(["python benchmarks/vs_pytorch.py",
                  shlex.join(argv if argv is not None else sys.argv[1:])]).strip()
  md = table(workers, args.batch, args.rounds, args.steps, cmd, (load0[0], os.getloadavg()[0]))
  out = args.out or os.path.join(RESULTS, f"vs_pytorch_{args.device}.md")
  from train_throughput import write_table  # this script's folder is on sys.path
  write_table(md, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
