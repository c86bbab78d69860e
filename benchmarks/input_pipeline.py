"""Throughput (images/s) of the image input pipeline alone, by number of prefetch workers.

``make_image_dataset("cifar10", "train", batch_size=128, random_flip=True, workers=W)`` (the
training pipeline of diffusion/data/images.py: shuffled indices, per-example reads, uniform
dequantization, flips; W threads computing whole batches ahead, ``prefetch`` per thread) is
drained as fast as possible for W in 0 (synchronous) / 1 / 2 / 4, on two offline
cifar10-shaped sources (no dataset download, no TensorFlow):

* ``png``: N synthetic 32x32x3 images PNG-encoded once with PIL; each read decodes one with
  PIL, as ``tfds.data_source`` does for cifar10's array_record records without OpenCV (the
  array_record file read itself is not included);
* ``mock``: ``tfds.testing.mock_data`` (the tests' source): each read draws a random uint8
  image with numpy.

Writes ``benchmarks/results/input_pipeline_<platform>.md`` (platform of jax.devices()[0]).
With ``--step_images_per_s`` (a train step's measured images/s, e.g. the DDPM CIFAR-10 U-Net's)
it adds the ratio pipeline / step (above 1: the pipeline alone is faster than that step) and a
second drain in which the consumer waits ``batch / step_images_per_s`` seconds per batch
without holding the GIL (``time.sleep``: a stand-in for waiting on the device) -- the images/s
of pipeline + simulated step, which prefetch should bring from ``1 / (1/p + 1/s)``
(synchronous) towards ``min(p, s)``.

  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --step_images_per_s 2500 --seconds 5
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from diffusion.data import images  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPE = (32, 32, 3)
DEFAULTS = dict(workers=[0, 1, 2, 4], sources=["png", "mock"], batch=128, seconds=3.0,
                num_examples=10_000, prefetch=2)


class PngSource:
  """``num_examples`` cifar10-shaped records: PNG bytes decoded by PIL on every read."""

  def __init__(self, num_examples: int, seed: int = 0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    # Smooth random images (a coarse 8x8 grid upsampled, plus noise): PNG sizes like photos'.
    base = rng.integers(0, 256, (num_examples, 8, 8, 3)).repeat(4, 1).repeat(4, 2)
    noise = rng.integers(-8, 9, (num_examples,) + SHAPE)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, num_examples)
    self._records = []
    for img, label in zip(pixels, labels):
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG")
      self._records.append((buf.getvalue(), int(label)))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> Dict[str, Any]:
    from PIL import Image
    data, label = self._records[int(i)]
    with Image.open(io.BytesIO(data)) as im:
      return {"image": np.asarray(im.convert("RGB")), "label": label}


def drain(it, seconds: float, step_s: float = 0.0, min_batches: int = 5) -> Dict[str, float]:
  """Pulls batches from ``it`` for about ``seconds`` after one warm-up batch (which starts the
  prefetch threads), sleeping ``step_s`` after each (a simulated train step); images/s over
  the timed batches."""
  next(it)
  n, k, t0 = 0, 0, time.perf_counter()
  while k < min_batches or time.perf_counter() - t0 < seconds:
    b = next(it)
    n, k = n + len(b["label"]), k + 1
    if step_s:
      time.sleep(step_s)
  dt = time.perf_counter() - t0
  return {"images": n, "seconds": dt, "images_per_s": n / dt}


def bench_source(source: str, workers: List[int], args) -> List[Dict[str, Any]]:
  """The rows of one source: images/s for each number of workers."""
  import tensorflow_datasets as tfds
  if source == "png":
    t0 = time.perf_counter()
    src = PngSource(args.num_examples)
    print(f"png: encoded {len(src)} images in {time.perf_counter() - t0:.1f} s", flush=True)
    ctx = tfds.testing.mock_data(num_examples=len(src),
                                 as_data_source_fn=lambda *a, **k: src)
  else:
    ctx = tfds.testing.mock_data(num_examples=args.num_examples)
  rows = []
  with ctx:
    for w in workers:
      with images.make_image_dataset("cifar10", "train", batch_size=args.batch, seed=0,
                                     random_flip=True, workers=w,
                                     prefetch=args.prefetch) as it:
        assert it.image_shape == SHAPE
        r = drain(it, args.seconds)
      r.update(source=source, workers=w)
      print(f"{source}: workers {w}: {r['images_per_s']:,.0f} images/s", flush=True)
      if args.step_images_per_s:
        with images.make_image_dataset("cifar10", "train", batch_size=args.batch, seed=0,
                                       random_flip=True, workers=w,
                                       prefetch=args.prefetch) as it:
          r["with_step"] = drain(it, args.seconds, args.batch / args.step_images_per_s)[
              "images_per_s"]
        print(f"{source}: workers {w} + simulated step: {r['with_step']:,.0f} images/s",
              flush=True)
      rows.append(r)
  return rows


def table(rows: List[Dict[str, Any]], step_ips: Optional[float]) -> List[str]:
  head = "| source | workers | images/s | speed-up vs workers 0 |"
  sep = "|---|---:|---:|---:|"
  if step_ips:
    head += " pipeline / train step | pipeline + simulated step, images/s |"
    sep += "---:|---:|"
  lines = [head, sep]
  base = {r["source"]: r["images_per_s"] for r in rows if r["workers"] == 0}
  for r in rows:
    speed = (f"{r['images_per_s'] / base[r['source']]:.2f}x" if r["source"] in base else "-")
    line = f"| {r['source']} | {r['workers']} | {r['images_per_s']:,.0f} | {speed} |"
    if step_ips:
      line += f" {r['images_per_s'] / step_ips:.2f} | {r['with_step']:,.0f} |"
    lines.append(line)
  return lines


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workers", type=int, nargs="+", default=DEFAULTS["workers"])
  p.add_argument("--sources", nargs="+", default=DEFAULTS["sources"], choices=["png", "mock"])
  p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
  p.add_argument("--prefetch", type=int, default=DEFAULTS["prefetch"],
                 help="batches ahead per worker")
  p.add_argument("--seconds", type=float, default=DEFAULTS["seconds"],
                 help="timed seconds per (source, workers)")
  p.add_argument("--num_examples", type=int, default=DEFAULTS["num_examples"])
  p.add_argument("--step_images_per_s", type=float, default=None,
                 help="a train step's images/s (e.g. the DDPM CIFAR-10 U-Net's), for the ratio")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if any(w < 0 for w in args.workers) or args.prefetch < 1 or args.batch < 1:
    p.error(f"need workers >= 0, prefetch >= 1, batch >= 1; got workers={args.workers}, "
            f"prefetch={args.prefetch}, batch={args.batch}")
  import jax
  platform = jax.devices()[0].platform
  load0, t_start = os.getloadavg(), time.time()
  rows = [r for s in args.sources for r in bench_source(s, args.workers, args)]
  load1 = os.getloadavg()
  flags = []
  for k, v in DEFAULTS.items():
    got = getattr(args, k)
    if got != v:
      flags.append(f"--{k} {' '.join(map(str, got)) if isinstance(got, list) else got}")
  if args.step_images_per_s:
    flags.append(f"--step_images_per_s {args.step_images_per_s:g}")
  cmd = " ".join(["python benchmarks/input_pipeline.py"] + flags)
  lines = [
      f"# Image input pipeline throughput ({platform} host)", "",
      f"Measured by `{cmd}` ({os.cpu_count()} CPU cores; numpy {np.__version__}). "
      f"`make_image_dataset('cifar10', 'train', batch_size={args.batch}, random_flip=True, "
      f"workers=W, prefetch={args.prefetch})` drained as fast as possible for "
      f"{args.seconds:g} s after one warm-up batch, on {args.num_examples:,} offline "
      f"cifar10-shaped examples; sources in the docstring of benchmarks/input_pipeline.py "
      f"(`png`: PIL PNG decode per read as tfds does; `mock`: tfds.testing.mock_data).", "",
      f"Host load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on "
      f"{os.cpu_count()} cores (a shared host: lower bounds). Wall time "
      f"{time.time() - t_start:.0f} s.", "",
  ] + table(rows, args.step_images_per_s)
  if args.step_images_per_s:
    s_ips = args.step_images_per_s
    lines += ["", f"Train step: {s_ips:g} images/s (given). A ratio above 1: the pipeline alone "
              "is faster than the step. The last column drains the pipeline with a simulated "
              f"step (sleep {args.batch / s_ips * 1e3:.1f} ms per batch, GIL released): "
              f"{s_ips:g} images/s there means the pipeline is fully hidden behind the step."]
  else:
    lines += ["", "No train-step throughput given: pass `--step_images_per_s` (the DDPM "
              "CIFAR-10 U-Net step's images/s on the training device) for the ratio."]
  md = "\n".join(lines) + "\n"
  out = args.out or os.path.join(RESULTS, f"input_pipeline_{platform}.md")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write(md)
  print(md)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
