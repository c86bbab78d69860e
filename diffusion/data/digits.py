"""scikit-learn's 8x8 handwritten digits as a small embedded image dataset.

1,797 grey-level images of 8x8 pixels (the UCI "optical recognition of handwritten digits"
test set, each pixel a count 0..16 over a 4x4 block of a 32x32 bitmap: 17 grey levels), with
labels 0..9. It ships inside scikit-learn, so it needs no download and is the image dataset for
CPU experiments and tests.

Fixed split (in the order of scikit-learn's file): ``train`` = the first 1,500 images,
``test`` = the last 297; ``all`` = all 1,797. The split is by position, not by writer.

Pixel values map to [-1, 1] via ``diffusion.data.images``: uniform dequantization
``(x + u) / 17`` with ``u ~ U[0, 1)`` (17 levels), then ``2 v - 1``; without dequantization
``x / 16 * 2 - 1``.
"""
import functools
from typing import Dict, Tuple, Union

import numpy as np

NUM_IMAGES = 1797
NUM_TEST = 297
NUM_TRAIN = NUM_IMAGES - NUM_TEST  # 1500
LEVELS = 17  # grey levels 0..16
SHAPE = (8, 8, 1)
NUM_CLASSES = 10
SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _load_all() -> Tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits as sk_load_digits  # local: sklearn is heavy
  d = sk_load_digits()
  images = d.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1), values 0..16
  labels = d.target.astype(np.int32)
  if images.shape != (NUM_IMAGES, *SHAPE) or images.max() != LEVELS - 1:
    raise RuntimeError(f"unexpected scikit-learn digits: shape {images.shape}, "
                       f"max {images.max()}")
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_digits(split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
  """The digits of ``split`` as arrays.

  Returns:
    images: (N, 8, 8, 1) uint8 in 0..16 (read-only); labels: (N,) int32 in 0..9.
    N = 1500 (train), 297 (test) or 1797 (all).
  """
  images, labels = _load_all()
  if split == "train":
    sl = slice(0, NUM_TRAIN)
  elif split == "test":
    sl = slice(NUM_TRAIN, NUM_IMAGES)
  elif split == "all":
    sl = slice(0, NUM_IMAGES)
  else:
    raise ValueError(f"unknown digits split {split!r}; accepted: {SPLITS}")
  return images[sl], labels[sl]


class DigitsSource:
  """Random-access source with the interface of ``tfds.data_source``: ``len(src)`` and
  ``src[i] -> {'image': (8, 8, 1) uint8, 'label': int}``."""

  def __init__(self, split: str = "train"):
    self.split = split
    self.images, self.labels = load_digits(split)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> Dict[str, Union[np.ndarray, int]]:
    return {"image": self.images[i], "label": int(self.labels[i])}
