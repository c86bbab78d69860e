"""Stable Diffusion's VAE converted at full size and checked against diffusers (docs: the module
docstring of diffusion/convert/diffusers_vae.py).

A diffusers AutoencoderKL with stabilityai/sd-vae-ft-mse's exact config and random weights (made
in a torch + diffusers scratch environment by
``tests/data/convert/make_vae_fixtures.py --full_sd=DIR``: 83,653,863 parameters, safetensors
with the current attention names and a torch .bin with the deprecated ones, plus diffusers'
float64 / float32 outputs on 2 images of 64x64x3) is converted here without torch, and our
encoder mean / std, decoder output and round trip are compared with diffusers' in float32 and
float64 (max |ours - diffusers| / max |diffusers|).

  python benchmarks/vae_convert_check.py --diffusers=/path/to/sd_vae_full

Writes benchmarks/results/vae_convert_check.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from hardware import with_machine_line  # noqa: E402

KEYS = ("mean", "std", "dec", "rec", "rec_noise")


def errors(conv, ref, dtype) -> dict:
  """{key: max relative error} of our network in ``dtype`` against diffusers' float64."""
  import jax
  import jax.numpy as jnp
  from diffusion.models import get_model
  net = get_model(conv.model, **conv.net, dtype=dtype)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), conv.params)
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), dtype)  # noqa: E731
  run = jax.jit(lambda p, x, n: net.apply({"params": p}, x, noise=n))
  dec = jax.jit(lambda p, z: net.apply({"params": p}, z, method="decode"))
  rec, mean, logvar = run(params, nhwc(ref["x"]), None)
  rec_noise = run(params, nhwc(ref["x"]), nhwc(ref["noise"]))[0]
  ours = dict(mean=mean, std=jnp.exp(0.5 * logvar), dec=dec(params, nhwc(ref["z"])), rec=rec,
              rec_noise=rec_noise)
  out = {}
  for k in KEYS:
    got = np.asarray(ours[k], np.float64).transpose(0, 3, 1, 2)
    out[k] = float(np.abs(got - ref[k]).max() / np.abs(ref[k]).max())
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--diffusers", required=True, help="the --full_sd folder")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                "vae_convert_check.md"))
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from diffusion.convert import diffusers_vae
  from diffusion.models import layers
  ref = np.load(os.path.join(args.diffusers, "reference.npz"))
  lines = ["# Stable Diffusion VAE: conversion checked at full size", "",
           f"Measured by `python benchmarks/vae_convert_check.py --diffusers=DIR` (jax "
           f"{jax.__version__}, {jax.devices()[0].platform}), DIR from "
           f"`tests/data/convert/make_vae_fixtures.py --full_sd=DIR`: random weights in "
           f"stabilityai/sd-vae-ft-mse's architecture, x (2, 64, 64, 3) ~ U(-1, 1). Max |ours - "
           f"diffusers| / max |diffusers float64|; diffusers' own float32 forward against its "
           f"float64 in the last row.", "",
           "| weights | parameters | compute | " + " | ".join(KEYS) + " |",
           "|---|---:|---|" + "---:|" * len(KEYS)]
  for label, src in (("safetensors, current names", args.diffusers),
                     (".bin, deprecated attention names",
                      os.path.join(args.diffusers, "bin_legacy"))):
    t0 = time.time()
    conv = diffusers_vae.convert(src)
    n = layers.count_params(conv.params)
    print(f"{label}: converted {n:,d} parameters in {time.time() - t0:.1f} s", flush=True)
    for dt_name, dt in (("float32", jnp.float32), ("float64", jnp.float64)):
      with jax.enable_x64(dt == jnp.float64):
        e = errors(conv, ref, dt)
      print(f"  {dt_name}: {e}", flush=True)
      lines.append(f"| {label} | {n:,d} | {dt_name} | "
                   + " | ".join(f"{e[k]:.1e}" for k in KEYS) + " |")
  d32 = {k: float(np.abs(ref[f"{k}_f32"] - ref[k]).max() / np.abs(ref[k]).max())
         for k in KEYS if f"{k}_f32" in ref}
  lines.append("| diffusers float32 vs its float64 | | float32 | "
               + " | ".join(f"{d32[k]:.1e}" if k in d32 else "-" for k in KEYS) + " |")
  with open(args.out, "w") as f:
    f.write(with_machine_line("\n".join(lines) + "\n"))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
