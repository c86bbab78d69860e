"""Writes an observation set for --mode=sample's inverse problems (config.inverse).

  python -m experiments.observations --config=configs/digits/vp.py --task=inpaint \
      --mask=right_half --num=8 --out=/tmp/digits_inpaint.npz

The file holds 'images' (N, ...) -- the first N held-out examples of the config's data (the test
split of an image dataset, fresh points of a toy density), the ground truth the sampling driver
shows next to the completions -- and for inpainting 'mask' (N, ...) of 0/1, 1 where a value is
observed. The driver computes the observation y = A(images) with the task's operator; a file of
real observations holds 'y' (and 'mask') instead of 'images'. For labelled data the file also
holds 'labels' (N,), each image's class, on which config.inverse.observation_labels conditions
the completions of a class-conditional model.

Masks: images 'right_half', 'bottom_half', 'center' (the central square of half the side is
missing), 'random:<p>' (each pixel missing with probability p, channels together, seeded by
--seed); 2-D toy data 'x' (the first coordinate observed) or 'y' (the second).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence, Tuple

import numpy as np

from experiments import build
from experiments.config_files import load_config_file

IMAGE_MASKS = ("right_half", "bottom_half", "center", "random:<p>")
VECTOR_MASKS = ("x", "y")
TASKS = ("inpaint", "colorize", "super_resolution")


def make_mask(kind: str, shape: Tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
  """Masks (n, *shape) float32 of 0/1 (1: observed) of ``kind`` (module docstring)."""
  if len(shape) == 1:
    if shape[0] != 2 or kind not in VECTOR_MASKS:
      raise ValueError(f"mask {kind!r} for data of shape {shape}: 2-D points accept "
                       f"{list(VECTOR_MASKS)}")
    m = np.zeros(shape, np.float32)
    m[VECTOR_MASKS.index(kind)] = 1.0
    return np.broadcast_to(m, (n,) + shape).copy()
  if len(shape) != 3:
    raise ValueError(f"masks are for 2-D points or (H, W, C) images, got data shape {shape}")
  h, w, c = shape
  m = np.ones((n, h, w, 1), np.float32)
  if kind == "right_half":
    m[:, :, w // 2:] = 0
  elif kind == "bottom_half":
    m[:, h // 2:] = 0
  elif kind == "center":
    m[:, h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0
  elif kind.startswith("random:"):
    try:
      p = float(kind.split(":", 1)[1])
    except ValueError:
      p = -1.0
    if not 0.0 < p < 1.0:
      raise ValueError(f"mask {kind!r}: 'random:<p>' needs a probability 0 < p < 1")
    m = (np.random.default_rng(seed).random((n, h, w, 1)) >= p).astype(np.float32)
  else:
    raise ValueError(f"unknown mask {kind!r}; accepted for images: {list(IMAGE_MASKS)}")
  return np.broadcast_to(m, (n, h, w, c)).copy()


def labels_of_heldout(config, n: int) -> np.ndarray:
  """(n,) int32: the classes of the first n held-out examples (the order of ``build.heldout``)."""
  _, labels = build.heldout_labelled(config, n)
  if len(labels) != n:
    raise ValueError(f"the held-out split has {len(labels)} labelled examples, fewer than {n}")
  return np.asarray(labels, np.int32)


def write(config, task: str, num: int, out: str, mask: str = "right_half",
          seed: int = 0) -> str:
  """Writes the observation file ``out`` (see the module docstring) and returns its path."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; accepted: {list(TASKS)}")
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  images = np.asarray(build.heldout(config, num), np.float32)
  arrays = {"images": images}
  if build.dataset_num_classes(config):
    arrays["labels"] = labels_of_heldout(config, len(images))
  if task == "inpaint":
    arrays["mask"] = make_mask(mask, images.shape[1:], num, seed)
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  if os.path.exists(out):
    raise FileExistsError(f"{out} exists; pass another --out (nothing was overwritten)")
  np.savez(out, **arrays)
  return out


def main(argv: Sequence[str]) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="the experiment's config file")
  ap.add_argument("--task", required=True, choices=TASKS)
  ap.add_argument("--mask", default="right_half", help="inpainting mask (module docstring)")
  ap.add_argument("--num", type=int, default=8, help="number of observations")
  ap.add_argument("--seed", type=int, default=0, help="seed of random masks")
  ap.add_argument("--out", required=True, help="the .npz to write (never overwritten)")
  args = ap.parse_args(argv)
  try:
    path = write(load_config_file(args.config), args.task, args.num, args.out, args.mask,
                 args.seed)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.num} {args.task} observations to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
