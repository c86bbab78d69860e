"""Encode / decode throughput (images/s) of the KL autoencoder (``autoencoder_kl``, Stable
Diffusion's VAE) on this host.

  python benchmarks/vae_throughput.py                       # 'sd' preset, 256x256x3, batch 4
  python benchmarks/vae_throughput.py --dtypes float32 bfloat16 --repeats 3
  python benchmarks/vae_throughput.py --preset small --size 28 --channels 1 --batch 256

Random weights (``sampling_throughput.random_params``: the cost of a network call does not
depend on its weights; no init is compiled). For each compute dtype, ``encode`` (x -> mean,
logvar) and ``decode`` (z -> x) are each one ``jax.jit`` with the parameters an argument:

  compile s   ``jit(...).lower(...).compile()`` (tracing + XLA), persistent cache off;
  s / batch   the fastest of ``--repeats`` timed runs after one warm-up run;
  images/s    batch / (s / batch);
  GFLOP/img   XLA's cost_analysis of the compiled function, per image.

Writes a markdown table to benchmarks/results/vae_throughput_<platform>.md (or --out).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hardware import with_machine_line  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion.models import autoencoder, get_model, layers  # noqa: E402
from sampling_throughput import random_params  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = ("float32", "bfloat16")


def _gflop(compiled, batch: int) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / 1e9 / batch


def time_fn(fn, args, repeats: int) -> float:
  """The fastest of ``repeats`` runs (after one warm-up), blocking on the result."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def measure(preset: str, size: int, channels: int, batch: int, dtype: str,
            repeats: int) -> List[Dict[str, Any]]:
  """Rows for encode and decode of one (preset, dtype)."""
  kw = autoencoder.preset(preset, out_channels=channels)
  net = get_model("autoencoder_kl", **kw, dtype=jnp.dtype(dtype))
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, channels), minval=-1,
                         maxval=1)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x[:1]))["params"]
  params = random_params(shapes)
  lat = autoencoder.latent_shape((size, size, channels), kw["channels"], kw["latent_channels"])
  z = jax.random.normal(jax.random.PRNGKey(2), (batch,) + lat)
  fns = {"encode": (lambda p, a: net.apply({"params": p}, a, method="encode"), x),
         "decode": (lambda p, a: net.apply({"params": p}, a, method="decode"), z)}
  rows = []
  for what, (fn, arg) in fns.items():
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, arg).compile()
    compile_s = time.perf_counter() - t0
    s = time_fn(compiled, (params, arg), repeats)
    rows.append(dict(preset=preset, what=what, dtype=dtype, batch=batch, compile_s=compile_s,
                     seconds=s, images_per_s=batch / s, gflop=_gflop(compiled, batch),
                     params=layers.count_params(shapes), latent=lat))
    print(f"{preset} {what} {dtype} batch {batch}: compile {compile_s:.1f} s, {s:.3f} s / "
          f"batch, {batch / s:.2f} images/s", flush=True)
  return rows


def to_markdown(rows, args, wall: float, load0, load1) -> str:
  dev = jax.devices()[0]
  where = (f"{dev.platform} ({os.cpu_count()} cores)" if dev.platform == "cpu"
           else f"{dev.platform} ({dev.device_kind})")
  cmd = " ".join(["python", "benchmarks/vae_throughput.py"] + sys.argv[1:])
  r0 = rows[0]
  lines = [f"# KL autoencoder ('{args.preset}' preset) throughput on {dev.platform}", "",
           f"Command: `{cmd}` (jax {jax.__version__}, {where}; total {wall:.0f} s).", "",
           f"Host load average (1 min) at start / end: {load0:.1f} / {load1:.1f} on "
           f"{os.cpu_count()} cores" + (": the host was shared, so these are lower bounds "
                                       "for an idle machine." if load0 > 1.0 else "."), "",
           f"`autoencoder_kl` with preset '{args.preset}' ({r0['params']:,} parameters), "
           f"images {args.size}x{args.size}x{args.channels} -> latents "
           f"{'x'.join(map(str, r0['latent']))}; random weights. Compile = tracing + XLA "
           f"(persistent cache off, not timed with the runs); s / batch = the fastest of "
           f"{args.repeats} runs after a warm-up; GFLOP / image from XLA's cost_analysis. "
           f"dtype is the compute dtype (parameters float32).", "",
           "| direction | dtype | device | batch | compile s | s / batch | images/s | "
           "GFLOP / image |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['what']} | {r['dtype']} | {where} | {r['batch']} | "
                 f"{r['compile_s']:.1f} | {r['seconds']:.3f} | {r['images_per_s']:.2f} | "
                 f"{r['gflop']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="sd", choices=sorted(autoencoder.PRESETS))
  p.add_argument("--size", type=int, default=256, help="image height = width")
  p.add_argument("--channels", type=int, default=3, help="image channels")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--dtypes", nargs="+", default=["float32"], choices=DTYPES)
  p.add_argument("--repeats", type=int, default=2, help="timed runs (the fastest is kept)")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  jax.config.update("jax_enable_compilation_cache", False)  # compile times are measured
  load0, t0 = os.getloadavg()[0], time.time()
  rows = []
  for dt in args.dtypes:
    rows += measure(args.preset, args.size, args.channels, args.batch, dt, args.repeats)
  md = to_markdown(rows, args, time.time() - t0, load0, os.getloadavg()[0])
  out = args.out or os.path.join(RESULTS, f"vae_throughput_{jax.devices()[0].platform}.md")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write(with_machine_line(md))
  print(md)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
