"""What eval and sweep share: the checkpoints to evaluate, the eval/ folder, FID / KID of a run's
samples against reference statistics (python -m experiments.reference_stats), and the sliced
Wasserstein distance and MMD of samples to held-out data."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import ml_collections
import numpy as np

from diffusion import checkpoint
from diffusion.data import images
from diffusion.metrics import fid, inception, mmd, sliced_wasserstein
from experiments import writers

Config = ml_collections.ConfigDict

EVAL_DIR = "eval"  # <workdir>/eval: the results of --mode=eval and --mode=sweep


# -- which checkpoints ---------------------------------------------------------------------------


def checkpoint_steps(workdir: str) -> List[int]:
  """The steps of the checkpoints in ``workdir`` (sorted; [] if none)."""
  if not checkpoint.has_checkpoints(workdir):
    return []
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def steps_to_evaluate(ecfg: Config, available: List[int], where: str) -> List[Optional[int]]:
  """eval.all_checkpoints: all of ``available``; else [eval.step], where None stands for the
  newest checkpoint that passes its integrity check (found when restoring). Raises
  FileNotFoundError (one line, listing the available steps) for a step without a checkpoint."""
  if not available:
    raise FileNotFoundError(f"no checkpoints in {where}; train first (--mode=train)")
  if ecfg.all_checkpoints:
    return list(available)
  if ecfg.step is None:
    return [None]
  if ecfg.step not in available:
    raise FileNotFoundError(f"config.eval.step={ecfg.step}: no checkpoint at that step in "
                            f"{where}; available steps: {available} (omit --config.eval.step "
                            f"for the newest, or set --config.eval.all_checkpoints=True)")
  return [int(ecfg.step)]


# -- any data: distances to held-out data ---------------------------------------------------------


def sample_distances(config: Config, x: np.ndarray, held: np.ndarray) -> Dict[str, float]:
  """{'sliced_wasserstein', 'mmd'} of samples x (n, ...) against held-out data (m, ...), both
  flattened to float32 vectors: SW_2 over config.eval.sw_projections directions drawn from
  config.seed, and the unbiased MMD^2 of the first config.eval.mmd_points of each (both need
  n, m >= 2). The sample metrics of --mode=eval and of a toy --mode=sweep's cells."""
  flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)  # noqa: E731
  e, m = config.eval, int(config.eval.mmd_points)
  return {"sliced_wasserstein": float(sliced_wasserstein(flat(x), flat(held), config.seed,
                                                         num_projections=int(e.sw_projections))),
          "mmd": float(mmd(flat(x[:m]), flat(held[:m])))}


# -- images: FID / KID ----------------------------------------------------------------------------


def fid_pixels(x: np.ndarray, dataset: str, rounding: str = "levels") -> np.ndarray:
  """Model samples (n, H, W, C) in [-1, 1] -> uint8 pixels for Inception.

  'levels' (default): each sample is snapped to the dataset's L levels by the inverse of the
  training data's dequantization (``images.quantize``), then mapped to pixels exactly as the
  reference statistics map the data (``to_uint8(to_float(k, L))``: k itself for 256 levels,
  round(k 255 / 16) for the 17-level digits). 'nearest': ``to_uint8(x)`` (EDM's
  ``x * 127.5 + 128`` truncated); 'floor': score SDE's ``clip((x + 1) / 2 * 255)`` truncated.
  """
  if rounding != "levels":
    return inception.to_uint8(x, rounding)
  levels = images.num_levels(dataset)
  return inception.to_uint8(images.to_float(images.quantize(x, levels), levels))


def load_fid_stats(config: Config) -> fid.Stats:
  """The reference statistics of config.eval.fid_stats, refused (one line) unless they are of
  config.data.name at the run's resolution and crop (data.crop) and of the installed Inception
  weights."""
  stats = fid.load_stats(config.eval.fid_stats)
  resolution = images.image_shape(config.data.name, config.data.image_size)[0]
  fid.check_compatible(stats, config.data.name, resolution,
                       weights_sha256=inception.weights_sha256(),
                       crop=images.resolve_crop(config.data.name, config.data.crop))
  return stats


def fid_metrics(config: Config, x: np.ndarray, stats, inception_params) -> Dict[str, Any]:
  """FID, KID (with its std over subsets) and the settings, of samples x (n, H, W, C)."""
  e = config.eval
  out = fid.image_metrics(fid_pixels(x, config.data.name, e.fid_rounding), stats,
                          dataset=config.data.name, resolution=int(x.shape[1]),
                          params=inception_params, batch_size=int(e.inception_batch_size),
                          kid_subsets=int(e.kid_subsets), kid_subset_size=int(e.kid_subset_size),
                          seed=int(config.seed),
                          progress=writers.Progress("Inception features", len(x), "images"))
  out["fid_num_samples"] = out.pop("num_samples")
  out["fid_rounding"] = e.fid_rounding
  out["fid_stats"] = os.path.basename(e.fid_stats)
  return out
