"""Released-checkpoint conversion, checked at full size (docs/convert.md).

1. The DDPM CIFAR-10 U-Net: a diffusers UNet2DModel with google/ddpm-cifar10-32's exact config
   and random weights (made in a torch + diffusers scratch environment by
   ``tests/data/convert/make_diffusers_fixtures.py --full_cifar10=DIR``: 35,746,307
   parameters, safetensors with the current attention names and a torch .bin with the
   deprecated ones, plus diffusers' float64 outputs), converted here without torch and compared
   with diffusers' outputs in float32 and float64.
2. The model of diffusers' own unconditional training example
   (examples/unconditional_image_generation/train_unconditional.py: UNet2DModel's class defaults,
   norm_eps 1e-5, downsample_padding 1, flip_sin_to_cos, freq_shift 0, 64 attention heads of 8
   channels; 113,673,219 parameters at 64x64), saved as its DDPMPipeline (unet/ + scheduler/)
   with random weights by ``make_diffusers_fixtures.py --full_train_example=DIR``, optional.
3. The schedule mapping: DDPM's 1000 discrete betas as ``vp_discrete`` (exact at its steps)
   against the continuous VP SDE with c = 999 t (the reference convention): their logSNR gap and
   the step-index offset at equal logSNR, over t in [1e-3, 1].

  python benchmarks/convert_check.py --diffusers=/path/to/ddpm_cifar10_full \
      [--train_example=/path/to/train_example_full]

Writes benchmarks/results/convert_check.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def network_row(label: str, src: str, ref_path: str, scheduler_config=None) -> dict:
  """Converts the model folder ``src`` and compares its output with diffusers' float64 one."""
  import jax
  import jax.numpy as jnp
  from diffusion.convert import diffusers_unet
  from diffusion.models import get_model
  ref = np.load(ref_path)
  t0 = time.time()
  conv = diffusers_unet.convert(src, scheduler_config=scheduler_config)
  secs = time.time() - t0
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(conv.params))
  errs = {}
  for dt in ("float32", "float64"):
    with jax.enable_x64(dt == "float64"):
      net = get_model("ddpm_unet", **conv.net, dtype=jnp.dtype(dt))
      p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), conv.params)
      x = jnp.asarray(ref["x"].transpose(0, 2, 3, 1), dt)
      out = np.asarray(net.apply({"params": p}, x, jnp.asarray(ref["timesteps"], dt)),
                       np.float64).transpose(0, 3, 1, 2)
    errs[dt] = float(np.abs(out - ref["out"]).max() / np.abs(ref["out"]).max())
  return dict(source=label, params=n, convert_s=secs, rel_err_f32=errs["float32"],
              rel_err_f64=errs["float64"], images=int(ref["x"].shape[0]),
              size=int(ref["x"].shape[-1]))


def network_rows(folder: str, train_example=None):
  ref, sched = os.path.join(folder, "reference.npz"), os.path.join(folder, "scheduler_config.json")
  rows = [network_row("DDPM CIFAR-10, safetensors, current names", folder, ref, sched),
          network_row("DDPM CIFAR-10, .bin, deprecated attention names",
                      os.path.join(folder, "bin_legacy"), ref, sched)]
  if train_example:  # a saved DDPMPipeline: the scheduler is found in ../scheduler/
    rows.append(network_row("train_unconditional.py (UNet2DModel defaults), safetensors",
                            os.path.join(train_example, "unet"),
                            os.path.join(train_example, "reference.npz")))
  return rows


def schedule_rows():
  from diffusion import schedules
  d, v = schedules.DiscreteVP(), schedules.VP()
  t = np.linspace(1e-3, 1.0, 200_001)
  gap = np.abs(d.logsnr(t) - v.logsnr(t))
  # At the VP's noise level at t, the discrete model expects index d.discrete_index(t'), where
  # t' has the same logSNR on the discrete schedule; the VP convention feeds 999 t instead.
  offset = np.abs(d.discrete_index(d.t_from_logsnr(v.logsnr(t))) - 999 * t)
  knots = (np.arange(1000) + 1) / 1000
  knot_err = np.abs(d.alpha(knots)**2 - np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))).max()
  return dict(max_logsnr_gap=float(gap.max()), t_of_max_gap=float(t[gap.argmax()]),
              max_index_offset=float(offset.max()), t_of_max_offset=float(t[offset.argmax()]),
              mean_index_offset=float(offset.mean()), discrete_knot_err=float(knot_err))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--diffusers", required=True, help="the --full_cifar10 folder")
  ap.add_argument("--train_example", default=None, help="the --full_train_example folder")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "convert_check"))
  args = ap.parse_args()
  net, sched = network_rows(args.diffusers, args.train_example), schedule_rows()
  lines = ["# Released-checkpoint conversion, full size", "",
           "`python benchmarks/convert_check.py --diffusers=<full-size folder> "
           "--train_example=<full-size folder>`", "",
           "The DDPM CIFAR-10 U-Net (google/ddpm-cifar10-32's config) and the model of diffusers' "
           "train_unconditional.py (UNet2DModel's class defaults, 64x64), random weights, "
           "converted without torch, against diffusers' float64 output (max |ours - theirs| / "
           "max |theirs|; timesteps 0, 17.5, 500, 999 for 4 images, 0 and 999 for 2):", "",
           "| source | parameters | images | convert (s) | rel. error float32 | "
           "rel. error float64 |",
           "|---|---|---|---|---|---|"]
  for r in net:
    lines.append(f"| {r['source']} | {r['params']:,} | {r['images']} x {r['size']}px | "
                 f"{r['convert_s']:.1f} | {r['rel_err_f32']:.1e} | {r['rel_err_f64']:.1e} |")
  lines += ["", "DDPM's 1000 linear betas 1e-4..0.02: `vp_discrete` against the continuous VP "
            "SDE (beta 0.1..20) with the network input c = 999 t, over t in [1e-3, 1]:", "",
            f"- vp_discrete at DDPM's steps t_n = (n+1)/1000: max |alpha^2 - prod(1 - beta)| = "
            f"{sched['discrete_knot_err']:.1e}",
            f"- logSNR gap: max {sched['max_logsnr_gap']:.3f} (at t = "
            f"{sched['t_of_max_gap']:.3f})",
            f"- step-index offset at equal logSNR (what the network is fed against what it was "
            f"trained with at that noise level): max {sched['max_index_offset']:.2f} steps (at "
            f"t = {sched['t_of_max_offset']:.3f}), mean {sched['mean_index_offset']:.2f}"]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  from benchmarks.hardware import with_machine_line
  with open(args.out + ".md", "w") as f:
    f.write(with_machine_line(text))
  with open(args.out + ".json", "w") as f:
    json.dump(dict(network=net, schedule=sched), f, indent=1)


if __name__ == "__main__":
  main()
