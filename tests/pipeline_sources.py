"""Random-access sources for the input-pipeline tests, importable by spawned worker processes
(numpy and diffusion.data.digits only: a worker imports this module to unpickle its factory)."""
from typing import Any, Dict, Tuple

import numpy as np

from diffusion.data import digits


class RandomSource:
  """``n`` deterministic uint8 images of ``shape`` (image i from ``default_rng([seed, i])``),
  labels ``i % 10``; counts its reads in ``reads``."""

  def __init__(self, n: int, shape: Tuple[int, int, int] = (32, 32, 3), seed: int = 0):
    self.n, self.shape, self.seed, self.reads = n, tuple(shape), seed, 0

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> Dict[str, Any]:
    self.reads += 1
    rng = np.random.default_rng([self.seed, int(i)])
    return {"image": rng.integers(0, 256, self.shape, dtype=np.uint8), "label": int(i) % 10}


class FaultyDigits:
  """The digits train split whose example ``bad`` raises OSError."""

  def __init__(self, bad: int):
    self.x, self.y = digits.load_digits("train")
    self.bad = bad

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, i: int) -> Dict[str, Any]:
    if i == self.bad:
      raise OSError(f"corrupt record {i}")
    return {"image": self.x[i], "label": int(self.y[i])}
