"""A converted diffusers VAE's reconstructions of real images, next to diffusers' own.

Encode -> decode (z = the posterior mean) of a diffusers ``AutoencoderKL`` folder (config.json +
weights: a downloaded stabilityai/sd-vae-ft-mse or sd-vae-ft-ema, an SD pipeline's 'vae/') after
``diffusion.convert.diffusers_vae.convert``, on fixed inputs that need no download. torch and jax
do not have to share an interpreter, so there are two stages:

  # 1. (optional) diffusers' reconstructions, in an environment with torch + diffusers
  #    (+ numpy, pillow, scikit-learn; jax not needed):
  TORCH_ENV/bin/python benchmarks/vae_reconstruction.py --stage=diffusers \\
      --source=sd-vae-ft-mse --size=256 --out=/tmp/sd_vae_ft_mse_256.npz
  # 2. ours, in the project's environment, with diffusers' column read from stage 1:
  python benchmarks/vae_reconstruction.py --source=sd-vae-ft-mse --size=256 \\
      --diffusers_npz=/tmp/sd_vae_ft_mse_256.npz --dtypes float32 bfloat16 \\
      --name=sd_vae_ft_mse_256

Inputs (``build_inputs``: numpy / PIL / scikit-learn only, so both stages make the same bytes;
stage 2 checks that stage 1's inputs are bit-identical to its own and that its weights file has
the same sha256):
  photos   scikit-learn's two sample photos (``sklearn.datasets.load_sample_images``: china.jpg,
           flower.jpg, 427x640x3) cropped to --size x --size by ADM's centre crop
           (``diffusion.data.images.adm_center_crop``: BOX halvings, BICUBIC resize of the short
           side, centre crop; Dhariwal & Nichol 2021);
  digits   four of scikit-learn's 8x8 digits (``diffusion.data.digits``, split 'all', indices
           DIGIT_INDICES: the digits 0, 3, 5, 8), grey levels 0..16 -> uint8 round(v 255 / 16),
           upsampled to --size by PIL's NEAREST (default: each pixel a size/8 block) or BICUBIC
           (--digit_resize), repeated to RGB.
  A 1-channel VAE gets the photos as PIL's "L" (ITU-R 601 luma) and the digits unrepeated.
  Pixels k in 0..255 -> x = k / 127.5 - 1 in [-1, 1] (NHWC float32).

Per image and compute dtype (float32; bfloat16 with --dtypes: parameters stay float32):
  MSE        mean (x_rec - x)^2 on [-1, 1], x_rec as decoded (not clipped)
  PSNR dB    10 log10(255^2 / mean (k_rec - k)^2) on uint8 pixels, k_rec = rint((clip(x_rec, -1,
             1) + 1) 127.5) (diffusers' VaeImageProcessor.postprocess: clamp, x 255, round; not
             ``images.quantize``, whose bins suit dequantized training data, while these inputs
             lie on the grid k / 127.5 - 1), via ``autoencoding.reconstruction_metrics``
  z mean/std over the posterior mean's elements (unscaled: LDM's latents are
             scaling_factor (z - shift_factor), the header gives both factors)
and with --diffusers_npz, diffusers' MSE / PSNR of its float32 reconstructions of the same inputs,
max |z_ours - z_diffusers|, max |x_rec ours - x_rec diffusers| and the share of uint8 pixels that
differ. Writes the markdown table to benchmarks/results/vae_reconstruction_<name>.md (--name,
default the folder's name and the size); --note adds a line (e.g. "random weights").
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from hardware import with_machine_line  # noqa: E402

from diffusion.convert import diffusers_vae  # noqa: E402  (numpy only: no jax, no torch)
from diffusion.convert.diffusers_unet import find_weights, read_json  # noqa: E402
from diffusion.io_utils import sha256_file  # noqa: E402  (stdlib only)

RESULTS = os.path.join(ROOT, "benchmarks", "results")
PHOTOS = ("china.jpg", "flower.jpg")
DIGIT_INDICES = (0, 3, 5, 8)  # of digits.load_digits('all'): the digits 0, 3, 5, 8
DIGIT_RESIZES = ("nearest", "bicubic")
DTYPES = ("float32", "bfloat16")
STAGES = ("ours", "diffusers")


# -- inputs (numpy / PIL / scikit-learn: both stages) --------------------------------------------


def _photo(name: str) -> np.ndarray:
  from sklearn.datasets import load_sample_images  # local: sklearn is heavy
  data = load_sample_images()
  by_name = {os.path.basename(f): im for f, im in zip(data.filenames, data.images)}
  if name not in by_name:
    raise ValueError(f"scikit-learn's sample images are {sorted(by_name)}, not {name!r}")
  return np.asarray(by_name[name], np.uint8)


def digit_image(index: int, size: int, resize: str) -> Tuple[np.ndarray, int]:
  """(uint8 (size, size) grey image, label) of digit ``index`` of the 'all' split: levels
  0..16 -> round(v 255 / 16), then PIL NEAREST or BICUBIC to size x size."""
  from PIL import Image
  from diffusion.data import digits
  if resize not in DIGIT_RESIZES:
    raise ValueError(f"digit_resize must be one of {DIGIT_RESIZES}, got {resize!r}")
  images, labels = digits.load_digits("all")
  grey = np.rint(images[index, :, :, 0].astype(np.float64) * (255.0 / (digits.LEVELS - 1)))
  pil = Image.fromarray(grey.astype(np.uint8))  # 2-D uint8: mode "L"
  method = Image.NEAREST if resize == "nearest" else Image.BICUBIC
  return np.asarray(pil.resize((size, size), resample=method)), int(labels[index])


def build_inputs(size: int, channels: int = 3, digit_resize: str = "nearest"
                 ) -> Tuple[List[str], np.ndarray]:
  """The fixed test images (module docstring): (names, uint8 (N, size, size, channels)), the
  photos PHOTOS then the digits DIGIT_INDICES. Deterministic; numpy / PIL / scikit-learn only."""
  from PIL import Image
  from diffusion.data.images import adm_center_crop
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3 (grey or RGB images), got {channels!r}")
  names, out = [], []
  for name in PHOTOS:
    img = Image.fromarray(_photo(name))
    if channels == 1:
      img = img.convert("L")
    out.append(adm_center_crop(img, size).reshape(size, size, channels))
    names.append(os.path.splitext(name)[0])
  for index in DIGIT_INDICES:
    grey, label = digit_image(index, size, digit_resize)
    out.append(np.repeat(grey[:, :, None], channels, axis=2))
    names.append(f"digit {label} (#{index}, {digit_resize})")
  return names, np.stack(out)


def to_model_range(pixels: np.ndarray) -> np.ndarray:
  """uint8 k -> float32 k / 127.5 - 1 in [-1, 1]."""
  return (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def to_pixels(x: np.ndarray) -> np.ndarray:
  """[-1, 1] -> uint8 rint((clip(x, -1, 1) + 1) 127.5) (diffusers' postprocess)."""
  x = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
  return np.rint((x + 1.0) * 127.5).astype(np.uint8)


def folder_config(source: str) -> Dict[str, Any]:
  """The folder's AutoencoderKL config (diffusers' defaults filled in), checked for this
  benchmark: as many output channels as input channels, 1 or 3."""
  cfg, _ = diffusers_vae.vae_config(read_json(os.path.join(source, "config.json")))
  if cfg["in_channels"] != cfg["out_channels"] or cfg["in_channels"] not in (1, 3):
    raise ValueError(f"{source!r}: reconstruction needs in_channels == out_channels in (1, 3), "
                     f"got {cfg['in_channels']} -> {cfg['out_channels']}")
  return cfg


def check_size(size: int, cfg: Mapping[str, Any]) -> None:
  f = 2 ** (len(cfg["block_out_channels"]) - 1)
  if size < 1 or size % f:
    raise ValueError(f"--size={size} must be a positive multiple of the VAE's downsampling "
                     f"factor {f} (block_out_channels {cfg['block_out_channels']})")


# -- stage 1: diffusers (torch; no jax) ----------------------------------------------------------


def diffusers_stage(source: str, size: int, digit_resize: str, out: str, command: str = ""
                    ) -> Dict[str, Any]:
  """diffusers' float32 reconstructions of ``build_inputs``: ``AutoencoderKL.from_pretrained``
  on the same weights file that ``convert`` reads, ``encode(x).latent_dist.mean`` and
  ``decode(mean).sample``, one image at a time. Writes ``out`` (.npz): names, inputs (uint8
  NHWC), mean and rec (float32 NHWC) and meta (JSON: weights sha256, versions, size, the
  ``command`` that ran it)."""
  import diffusers
  import PIL
  import sklearn
  import torch
  cfg = folder_config(source)
  check_size(size, cfg)
  weights = find_weights(source)
  names, pixels = build_inputs(size, cfg["in_channels"], digit_resize)
  vae = diffusers.AutoencoderKL.from_pretrained(
      source, use_safetensors=weights.endswith(".safetensors"), torch_dtype=torch.float32).eval()
  means, recs = [], []
  t0 = time.time()
  with torch.no_grad():
    for i, x in enumerate(to_model_range(pixels)):
      xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
      mean = vae.encode(xt).latent_dist.mean
      rec = vae.decode(mean).sample
      means.append(mean[0].permute(1, 2, 0).numpy())
      recs.append(rec[0].permute(1, 2, 0).numpy())
      print(f"diffusers: {names[i]} done ({time.time() - t0:.1f} s)", flush=True)
  meta = dict(command=command, size=size, digit_resize=digit_resize,
              weights=os.path.basename(weights),
              sha256=sha256_file(weights), seconds=time.time() - t0,
              versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                            numpy=np.__version__, pillow=PIL.__version__,
                            sklearn=sklearn.__version__))
  write_reference(out, names, pixels, np.stack(means), np.stack(recs), meta)
  print(f"wrote {out}")
  return meta


def write_reference(path: str, names: Sequence[str], pixels: np.ndarray, mean: np.ndarray,
                    rec: np.ndarray, meta: Mapping[str, Any]) -> None:
  """The stage-1 file: names, inputs (uint8 NHWC), mean, rec (float32 NHWC), meta (JSON)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, names=np.asarray(list(names)), inputs=pixels.astype(np.uint8),
           mean=mean.astype(np.float32), rec=rec.astype(np.float32),
           meta=np.asarray(json.dumps(dict(meta), sort_keys=True)))


def read_reference(path: str, names: Sequence[str], pixels: np.ndarray, sha256: str
                   ) -> Dict[str, Any]:
  """Stage 1's file, checked against this stage: the same image names, bit-identical inputs
  (else a different PIL / scikit-learn made them) and the same weights file (sha256)."""
  with np.load(path) as z:
    ref = {k: z[k] for k in z.files}
  meta = json.loads(str(ref["meta"]))
  ref_names = [str(n) for n in ref["names"]]
  if ref_names != list(names):
    raise ValueError(f"{path}: images {ref_names}, this run's are {list(names)} "
                     f"(--size / --digit_resize differ?)")
  if ref["inputs"].shape != pixels.shape or not np.array_equal(ref["inputs"], pixels):
    diff = (int(np.sum(ref["inputs"] != pixels)) if ref["inputs"].shape == pixels.shape
            else f"shape {ref['inputs'].shape} vs {pixels.shape}")
    raise ValueError(f"{path}: its inputs differ from this run's ({diff}); made with "
                     f"{meta.get('versions')} and size {meta.get('size')}, "
                     f"digit_resize {meta.get('digit_resize')!r}")
  if meta["sha256"] != sha256:
    raise ValueError(f"{path} was made from weights with sha256 {meta['sha256']}, not the "
                     f"converted file's {sha256}")
  ref["meta"] = meta
  return ref


# -- stage 2: ours (jax) -------------------------------------------------------------------------


def reconstruct(conv, pixels: np.ndarray, dtype: str) -> Tuple[np.ndarray, np.ndarray]:
  """Our (posterior mean z, x_rec = decode(z)), float32 NHWC, of uint8 ``pixels``, one image at a
  time, compute dtype ``dtype`` (parameters float32)."""
  import jax
  import jax.numpy as jnp
  from diffusion.models import get_model
  net = get_model(conv.model, **conv.net, dtype=jnp.dtype(dtype))
  params = jax.tree_util.tree_map(jnp.asarray, conv.params)
  encode = jax.jit(lambda p, x: net.apply({"params": p}, x, method="encode")[0])
  decode = jax.jit(lambda p, z: net.apply({"params": p}, z, method="decode"))
  means, recs = [], []
  for x in to_model_range(pixels):
    z = encode(params, x[None])
    means.append(np.asarray(z[0], np.float32))
    recs.append(np.asarray(decode(params, z)[0], np.float32))
  return np.stack(means), np.stack(recs)


def image_metrics(pixels: np.ndarray, rec: np.ndarray) -> Dict[str, float]:
  """{'mse', 'psnr'} of one image (module docstring): pixels uint8 (H, W, C), rec float."""
  from diffusion.autoencoding import ReconstructionStats
  stats = ReconstructionStats()
  stats.update(pixels[None].astype(np.int32), to_model_range(pixels)[None], rec[None],
               to_pixels(rec)[None].astype(np.int32))
  m = stats.result(256)
  return {"mse": m["mse"], "psnr": m["psnr"]}


def compare(pixels: np.ndarray, mean: np.ndarray, rec: np.ndarray,
            ref: Optional[Mapping[str, np.ndarray]], names: Sequence[str], dtype: str
            ) -> List[Dict[str, Any]]:
  """One row per image: ours (mse, psnr, z_mean, z_std), and with ``ref`` (stage 1) diffusers'
  mse / psnr, max |dz|, max |d x_rec| and the share of differing uint8 pixels."""
  rows = []
  for i, name in enumerate(names):
    row = dict(image=name, dtype=dtype, **image_metrics(pixels[i], rec[i]),
               z_mean=float(np.mean(mean[i], dtype=np.float64)),
               z_std=float(np.std(mean[i], dtype=np.float64)))
    if ref is not None:
      theirs = image_metrics(pixels[i], ref["rec"][i])
      row.update(ref_mse=theirs["mse"], ref_psnr=theirs["psnr"],
                 dz=float(np.max(np.abs(mean[i].astype(np.float64) - ref["mean"][i]))),
                 drec=float(np.max(np.abs(rec[i].astype(np.float64) - ref["rec"][i]))),
                 dpix=float(np.mean(to_pixels(rec[i]) != to_pixels(ref["rec"][i]))))
    rows.append(row)
  return rows


def _fmt(v: float, spec: str) -> str:
  return "inf" if v == float("inf") else format(v, spec)


def to_markdown(rows: Sequence[Mapping[str, Any]], header: Sequence[str], with_ref: bool) -> str:
  cols = ["image", "compute", "MSE", "PSNR dB", "z mean", "z std"]
  if with_ref:
    cols += ["diffusers MSE", "diffusers PSNR dB", "max abs dz", "max abs d x_rec",
             "uint8 differing"]
  lines = list(header) + ["", "| " + " | ".join(cols) + " |",
                          "|---|---|" + "---:|" * (len(cols) - 2)]
  for r in rows:
    cells = [r["image"], r["dtype"], f"{r['mse']:.3e}", _fmt(r["psnr"], ".2f"),
             f"{r['z_mean']:.3f}", f"{r['z_std']:.3f}"]
    if with_ref:
      cells += [f"{r['ref_mse']:.3e}", _fmt(r["ref_psnr"], ".2f"), f"{r['dz']:.1e}",
                f"{r['drec']:.1e}", f"{100 * r['dpix']:.3f}%"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def ours_stage(args: argparse.Namespace) -> Dict[str, Any]:
  """Stage 2: convert ``args.source``, reconstruct the inputs in each of ``args.dtypes``,
  compare with stage 1 (``args.diffusers_npz``, optional). Returns dict(rows, markdown, names,
  pixels, outputs={dtype: (mean, rec)})."""
  import jax
  from diffusion.models import layers
  cfg = folder_config(args.source)
  check_size(args.size, cfg)
  t0 = time.time()
  conv = diffusers_vae.convert(args.source)
  convert_s = time.time() - t0
  names, pixels = build_inputs(args.size, conv.image_channels, args.digit_resize)
  ref = (read_reference(args.diffusers_npz, names, pixels, conv.source["sha256"])
         if args.diffusers_npz else None)
  rows, seconds, outputs = [], {}, {}
  for dt in args.dtypes:
    t0 = time.time()
    outputs[dt] = reconstruct(conv, pixels, dt)
    seconds[dt] = time.time() - t0
    rows += compare(pixels, *outputs[dt], ref, names, dt)
    print(f"ours {dt}: {len(names)} images in {seconds[dt]:.1f} s", flush=True)
  dev = jax.devices()[0]
  where = (f"{dev.platform} ({os.cpu_count()} cores)" if dev.platform == "cpu"
           else f"{dev.platform} ({dev.device_kind})")
  f = 2 ** (len(cfg["block_out_channels"]) - 1)
  lat = f"{args.size // f}x{args.size // f}x{cfg['latent_channels']}"
  header = [f"# VAE reconstruction: {args.name}", ""]
  if args.note:
    header += [f"**{args.note}**", ""]
  header += [
      f"Command: `{args.command}` (jax {jax.__version__}, {where}; ours: conversion {convert_s:.1f} s, "
      + ", ".join(f"{dt} {s:.1f} s" for dt, s in seconds.items())
      + " for every image, compilation included).", "",
      f"VAE: `{os.path.basename(os.path.normpath(args.source))}` "
      f"({os.path.basename(conv.source['weights'])}, sha256 {conv.source['sha256'][:16]}..., "
      f"{layers.count_params(conv.params):,d} parameters), block_out_channels "
      f"{cfg['block_out_channels']}, layers_per_block {cfg['layers_per_block']}, "
      f"{args.size}x{args.size}x{conv.image_channels} -> {lat}; scaling_factor "
      f"{conv.scaling_factor}, shift_factor {conv.shift_factor}.", "",
      f"Inputs: scikit-learn's china.jpg and flower.jpg, ADM centre crop to {args.size}; "
      f"scikit-learn digits #{', #'.join(map(str, DIGIT_INDICES))} (levels x 255 / 16, "
      f"{args.digit_resize.upper()} upsampled to {args.size}"
      + (", repeated to RGB" if conv.image_channels == 3 else "")
      + "); x = k / 127.5 - 1. z = the posterior mean; x_rec = decode(z). MSE on [-1, 1] "
      "(x_rec unclipped); PSNR on uint8 (x_rec clipped to [-1, 1], x 127.5 + 127.5, rounded "
      "to the nearest), peak 255. z mean / std: over the unscaled posterior mean of the image. "
      "Compute dtype as listed; parameters float32."]
  if ref is not None:
    m = ref["meta"]
    header += ["", f"diffusers: `AutoencoderKL.from_pretrained` float32 on the same weights "
               f"file and bit-identical inputs (stage 1: `{m.get('command', '?')}`, "
               f"{m['versions']}, {m['seconds']:.1f} s); max abs dz and d x_rec: ours minus "
               f"diffusers' float32 (its columns repeat on the bfloat16 rows); uint8 "
               f"differing: the share of uint8 pixel values that differ."]
  return dict(rows=rows, markdown=to_markdown(rows, header, ref is not None), names=names,
              pixels=pixels, outputs=outputs)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The command line (module docstring), checked; ``command`` holds it for the results."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--source", required=True, help="diffusers AutoencoderKL folder")
  ap.add_argument("--stage", default="ours", choices=STAGES,
                  help="'diffusers': stage 1 (torch env, writes --out); 'ours': stage 2")
  ap.add_argument("--size", type=int, default=256, help="image height = width")
  ap.add_argument("--digit_resize", default="nearest", choices=DIGIT_RESIZES)
  ap.add_argument("--out", default=None, help="stage 1: the .npz to write")
  ap.add_argument("--diffusers_npz", default=None, help="stage 2: stage 1's .npz")
  ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=DTYPES)
  ap.add_argument("--name", default=None,
                  help="results file benchmarks/results/vae_reconstruction_<name>.md (default: "
                       "the folder's name and the size)")
  ap.add_argument("--note", default="", help="a line under the title (e.g. 'random weights')")
  ap.add_argument("--results", default=None, help="write the table here instead")
  argv = list(sys.argv[1:] if argv is None else argv)
  args = ap.parse_args(argv)
  if args.stage == "diffusers" and not args.out:
    ap.error("--stage=diffusers needs --out=FILE.npz")
  if args.stage == "ours" and args.out:
    ap.error("--out is for --stage=diffusers; stage 'ours' writes --results / --name")
  args.name = args.name or f"{os.path.basename(os.path.normpath(args.source))}_{args.size}"
  args.command = shlex.join(["python", "benchmarks/vae_reconstruction.py"] + argv)
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  if args.stage == "diffusers":
    diffusers_stage(args.source, args.size, args.digit_resize, args.out,
                    command=args.command.replace("python ", "TORCH_ENV/bin/python ", 1))
    return 0
  md = ours_stage(args)["markdown"]
  out = args.results or os.path.join(RESULTS, f"vae_reconstruction_{args.name}.md")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write(with_machine_line(md))
  print(md)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
