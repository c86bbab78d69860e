"""Throughput (images/s) of the 'folder' image source (diffusion/data/folder.py) on generated JPEGs.

Writes ``--images`` JPEGs (quality 90) of ImageNet-like sizes (sides uniform in 300..500: a ramp,
a texture and seeded noise) into ``--folder`` (a temporary folder by default; kept and reused
when given) as ``train/<class>/<i>.JPEG`` over 10 classes, then times, one process each:

* listing (``FolderSource``), and decoding alone (PIL + RGB conversion, one image at a time);
* per image (best of 3 passes): ADM's crop (``images.adm_center_crop``) and the 'center' crop +
  bilinear resize, from the decoded arrays;
* ``make_image_dataset("folder", "train", batch_size=25, image_size=--size, random_flip=True,
  cache_decoded=False)`` drained for 16 batches after one warm-up batch, synchronous and with
  2 threads (``workers=2``), 2 threads + 2 decoding threads per batch (``num_threads=2``) and
  2 spawned processes (``worker_type='process'``).

  python benchmarks/folder_pipeline.py
  python benchmarks/folder_pipeline.py --images 200 --size 256 --folder /tmp/jpeg200
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from diffusion.data import folder, images  # noqa: E402

BATCH, STEPS = 25, 16


def write_jpegs(root: str, n: int, classes: int = 10) -> None:
  """``n`` JPEGs of ImageNet-like sizes under root/train/<class>/."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(n):
    h, w = rng.integers(300, 501, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 64 * 4], -1)
    img = (img + rng.integers(0, 32, (h, w, 3))).clip(0, 255).astype(np.uint8)
    d = os.path.join(root, "train", f"n{i % classes:08d}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img).save(os.path.join(d, f"{i:05d}.JPEG"), quality=90)


def ms_per_image(fn, n: int, reps: int = 3) -> float:
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    for i in range(n):
      fn(i)
    best = min(best, (time.perf_counter() - t) / n)
  return 1e3 * best


def pipeline_rate(root: str, size: int, **kw) -> float:
  """images/s of STEPS batches after a warm-up batch."""
  it = images.make_image_dataset("folder", "train", batch_size=BATCH, seed=0, data_dir=root,
                                 image_size=size, cache_decoded=False, random_flip=True, **kw)
  with it:
    next(it)
    t = time.perf_counter()
    n = sum(len(next(it)["label"]) for _ in range(STEPS))
    return n / (time.perf_counter() - t)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=200)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--folder", default=None, help="where the JPEGs are (written if absent)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = args.folder or tmp
    if not os.path.isdir(os.path.join(root, "train")):
      write_jpegs(root, args.images)
    t = time.perf_counter()
    src = folder.FolderSource(os.path.join(root, "train"))
    listing = time.perf_counter() - t
    decoded = [src[i]["image"] for i in range(len(src))]
    mean_hw = np.mean([d.shape[:2] for d in decoded], 0).round()
    print(f"{len(src)} JPEGs, mean size {mean_hw} (H, W); listing: {1e3 * listing:.0f} ms; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"decode + RGB:           {ms_per_image(lambda i: src[i], len(src)):6.2f} ms/image")
    print(f"ADM crop:               "
          f"{ms_per_image(lambda i: images.adm_center_crop(decoded[i], args.size), len(src)):6.2f}"
          f" ms/image")
    center = lambda i: images._resize(images._center_crop(decoded[i], 0), args.size)  # noqa: E731
    print(f"center crop + bilinear: {ms_per_image(center, len(src)):6.2f} ms/image")
    for label, kw in [("adm, synchronous", {}), ("center, synchronous", dict(crop="center")),
                      ("adm, 2 threads", dict(workers=2)),
                      ("adm, 2 threads, num_threads=2", dict(workers=2, num_threads=2)),
                      ("adm, 2 processes", dict(workers=2, worker_type="process"))]:
      print(f"pipeline {label:30s} {pipeline_rate(root, args.size, **kw):7.0f} images/s")


if __name__ == "__main__":
  main()
