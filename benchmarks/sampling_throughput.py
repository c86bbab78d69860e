"""Sampling throughput of the CIFAR-10 networks: images/s of the main samplers at their paper NFE.

  python benchmarks/sampling_throughput.py --nets ddpm ddpmpp ncsnpp \\
      --samplers ddpm ddim heun dpmpp_2m pc --batch 128 --dtypes float32 bfloat16 \\
      [--nfe_scale 1.0] [--repeats 2] [--out PATH]

Networks: the configs configs/cifar10/ddpm.py (DDPM U-Net, 'ddpm_unet' with the 'cifar10'
preset, VP), ddpmpp_cont_vp.py (DDPM++ cont., VP) and ncsnpp_cont_ve.py (NCSN++ cont., VE):
their schedule, parameterization and network, with random weights (``random_params``: the cost
of a network call does not depend on its weights), on 32x32x3 inputs. Each (network, sampler, dtype)
is one ``jax.jit`` of the whole sampler (``build_sampler(jit=False)`` on the denoiser of
``diffusion.networks.eval_denoiser``, the one sample / eval / sweep use; dtype is its
``compute_dtype``, the sampler's state stays float32), the parameters an argument:

  compile s    ``jit(...).lower(...).compile()`` (tracing + XLA), persistent cache off;
  s per NFE    the fastest of ``--repeats`` timed runs after one warm-up run, divided by the NFE
               it ran (the registry's exact count);
  images/s     batch / (s per NFE x the paper NFE): the throughput at the paper's step count.

Paper settings (sampler: steps, grid, NFE): ddpm 1000 uniform (Ho et al. 2020, 1000 NFE + the
final denoise); ddim 100 uniform (Song et al. 2021); heun 18 Karras (EDM, Karras et al. 2022:
35 NFE + final denoise); dpmpp_2m 20 logSNR (Lu et al. 2022); euler_maruyama 1000 uniform and
pc 1000 uniform with one Langevin corrector (score SDE, Song et al. 2021: 2000 NFE, NCSN++ VE's
sampler). The probability-flow ODE with RK45 (score SDE) is adaptive: its NFE depends on the
tolerance and the network, so it is not in the table. ``--nfe_scale F`` < 1 runs every sampler
with round(F x steps) steps (at least 2) for a quick run; s per NFE is measured at that count
and images/s is extrapolated to the paper NFE (the per-NFE cost is the same: one network call
on the batch, plus the sampler's elementwise update).

Writes a markdown table (default benchmarks/results/sampling_throughput_<platform>.md) and the
same rows as JSON next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffusion import networks
from diffusion.samplers import build_sampler, sampler_info  # noqa: E402
from experiments import build  # noqa: E402
from experiments.config_files import load_config_file  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
IMAGE_SHAPE = (32, 32, 3)  # CIFAR-10

# name -> (config file, description)
NETS = {
    "ddpm": ("configs/cifar10/ddpm.py", "DDPM U-Net (VP)"),
    "ddpmpp": ("configs/cifar10/ddpmpp_cont_vp.py", "DDPM++ cont. (VP)"),
    "ncsnpp": ("configs/cifar10/ncsnpp_cont_ve.py", "NCSN++ cont. (VE)"),
}
# sampler -> (paper steps, grid, hyper-parameters, paper)
SAMPLERS = {
    "ddpm": (1000, "uniform", {}, "Ho et al. 2020, ancestral"),
    "ddim": (100, "uniform", {}, "Song et al. 2021, DDIM"),
    "heun": (18, "karras", {}, "Karras et al. 2022, EDM Alg. 1"),
    "dpmpp_2m": (20, "logsnr", {}, "Lu et al. 2022, DPM-Solver++(2M)"),
    "euler_maruyama": (1000, "uniform", {}, "Song et al. 2021, reverse SDE"),
    "pc": (1000, "uniform", {"predictor": "reverse_diffusion", "n_corrector": 1, "snr": 0.16},
           "Song et al. 2021, PC (reverse diffusion + Langevin)"),
}
DTYPES = ("float32", "bfloat16")


def scaled_steps(steps: int, nfe_scale: float) -> int:
  """round(nfe_scale x steps), at least 2 (multistep samplers need two steps to be themselves)."""
  return max(2, int(round(steps * nfe_scale)))


def net_setup(name: str):
  """(schedule, parameterization, network, params (random init)) of the network ``name``."""
  if name not in NETS:
    raise ValueError(f"unknown net {name!r}; accepted: {sorted(NETS)}")
  config = load_config_file(os.path.join(ROOT, NETS[name][0]))
  net = build.model(config)
  x = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  shapes = jax.eval_shape(lambda k: net.init(k, x, jnp.zeros((1,), jnp.float32))["params"],
                          jax.random.PRNGKey(0))
  return build.schedule(config), build.parameterization(config), net, random_params(shapes)


def random_params(shapes, seed: int = 0):
  """Parameters of the given shapes without compiling the network's init (minutes on a CPU):
  kernels N(0, 1/fan_in), norm scales 1, biases 0."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  out = []
  for k, (path, sd) in zip(keys, leaves):
    name = str(path[-1])
    if len(sd.shape) >= 2:
      fan_in = int(np.prod(sd.shape[:-1]))
      out.append(jax.random.normal(k, sd.shape, sd.dtype) / np.sqrt(fan_in))
    else:
      out.append(jnp.full(sd.shape, 1.0 if "scale" in name else 0.0, sd.dtype))
  return jax.tree_util.tree_unflatten(tree, out)


def measure(net_name: str, sampler: str, batch: int, dtype: str, nfe_scale: float,
            repeats: int, setup=None) -> Dict[str, Any]:
  """One row: compile time, seconds per NFE and images/s at the paper NFE."""
  sched, param, net, params = setup or net_setup(net_name)
  steps, grid, hp, paper = SAMPLERS[sampler]
  info = sampler_info(sampler)
  n = scaled_steps(steps, nfe_scale)
  nfe_paper = int(info.nfe(steps, info.resolve(hp)))
  run = build_sampler(sampler, sched, num_steps=n, grid=grid, jit=False, **hp)

  def sample(p, key, x_T):
    x0, out = run(networks.eval_denoiser(net, p, sched, param, compute_dtype=dtype), key, x_T)
    return x0, out["nfe"]

  key = jax.random.PRNGKey(1)
  x_T = sched.prior_sample(jax.random.PRNGKey(2), (batch,) + IMAGE_SHAPE)
  t0 = time.perf_counter()
  compiled = jax.jit(sample).lower(params, key, x_T).compile()
  compile_s = time.perf_counter() - t0
  x0, nfe = compiled(params, key, x_T)  # warm-up
  jax.block_until_ready(x0)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    x0, nfe = compiled(params, key, x_T)
    jax.block_until_ready(x0)
    times.append(time.perf_counter() - t0)
  nfe = int(nfe)
  per_nfe = min(times) / nfe
  return dict(net=net_name, sampler=sampler, paper=paper, steps=n, paper_steps=steps,
              nfe=nfe, paper_nfe=nfe_paper, batch=batch, dtype=dtype, compile_s=compile_s,
              run_s=min(times), s_per_nfe=per_nfe,
              images_per_s=batch / (per_nfe * nfe_paper),
              finite=bool(np.all(np.isfinite(np.asarray(x0)))))


def device_name() -> str:
  d = jax.devices()[0]
  if d.platform == "cpu":
    return f"cpu ({os.cpu_count()} cores)"
  return f"{d.platform} ({d.device_kind})"


def markdown(rows: List[Dict[str, Any]], command: str, nfe_scale: float, seconds: float,
             load: Optional[tuple]) -> str:
  plat = jax.devices()[0].platform
  head = [f"# Sampling throughput of the CIFAR-10 networks on {plat}", "",
          f"Command: `{command}` (jax {jax.__version__}, {device_name()}, "
          f"{jax.device_count()} device(s); total {seconds:.0f} s).", ""]
  if load is not None:
    head += [f"Host load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} on "
             f"{os.cpu_count()} cores.", ""]
  head += [f"nfe_scale = {nfe_scale:g}: each sampler ran round({nfe_scale:g} x paper steps) "
           f"steps (column NFE run); s per NFE is measured there and images/s is extrapolated "
           f"to the paper NFE (batch / (s per NFE x paper NFE))." if nfe_scale != 1.0 else
           "nfe_scale = 1: every sampler ran its paper step count.", "",
           "Random weights (`random_params`; throughput does not depend on them); compile = "
           "tracing + XLA compilation of the whole jitted sampler, persistent cache off, not part of "
           "the timed runs. dtype is the network's `sampling.compute_dtype`; the sampler's "
           "state is float32. See the module docstring of benchmarks/sampling_throughput.py "
           "for the paper settings.", "",
           "| net | sampler | paper NFE | NFE run | batch | dtype | compile s | s per NFE | "
           "images/s at paper NFE |",
           "|---|---|---:|---:|---:|---|---:|---:|---:|"]
  for r in rows:
    head.append(f"| {NETS[r['net']][1]} | `{r['sampler']}` | {r['paper_nfe']} | {r['nfe']} | "
                f"{r['batch']} | {r['dtype']} | {r['compile_s']:.1f} | {r['s_per_nfe']:.4f} | "
                f"{r['images_per_s']:.4g} |")
  head += ["", "Probability-flow ODE with RK45 (score SDE): adaptive NFE, not measured."]
  return "\n".join(head) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--nets", nargs="+", default=list(NETS), choices=sorted(NETS))
  ap.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "heun", "dpmpp_2m", "pc"],
                  choices=sorted(SAMPLERS))
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
  ap.add_argument("--nfe_scale", type=float, default=1.0)
  ap.add_argument("--repeats", type=int, default=2, help="timed runs (the fastest is kept)")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if not 0.0 < args.nfe_scale <= 1.0:
    ap.error(f"--nfe_scale must be in (0, 1], got {args.nfe_scale}")
  if args.batch < 1 or args.repeats < 1:
    ap.error(f"--batch and --repeats must be >= 1, got {args.batch}, {args.repeats}")
  jax.config.update("jax_enable_compilation_cache", False)  # compile times are measured
  out = args.out or os.path.join(RESULTS,
                                 f"sampling_throughput_{jax.devices()[0].platform}.md")
  command = "python benchmarks/sampling_throughput.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  t_start = time.time()
  rows: List[Dict[str, Any]] = []
  for net_name in args.nets:
    setup = net_setup(net_name)
    for sampler in args.samplers:
      for dtype in args.dtypes:
        row = measure(net_name, sampler, args.batch, dtype, args.nfe_scale, args.repeats,
                      setup)
        rows.append(row)
        print(json.dumps(row), flush=True)
  secs = time.time() - t_start
  load = (load0, os.getloadavg()[0]) if load0 is not None else None
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  from benchmarks.hardware import with_machine_line
  with open(out, "w") as fh:
    fh.write(with_machine_line(markdown(rows, command.strip(), args.nfe_scale, secs, load)))
  with open(os.path.splitext(out)[0] + ".json", "w") as fh:
    json.dump({"command": command.strip(), "platform": jax.devices()[0].platform,
               "device": device_name(), "nfe_scale": args.nfe_scale, "seconds": secs,
               "rows": rows}, fh, indent=1)
  print(f"wrote {out} ({secs:.0f} s)")


if __name__ == "__main__":
  main()
