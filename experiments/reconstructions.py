"""An autoencoder's reconstructions of held-out images (training.objective 'autoencoder'): the
images, the reconstruction of a batch, and the grid of originals above their reconstructions.
The train driver plots them where a denoiser's run plots samples; eval scores them
(experiments/evaluate.py, ``autoencoder_metrics``).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import autoencoding, networks
from diffusion.data import images
from experiments import build, plots

Config = ml_collections.ConfigDict
GRID_IMAGES = 32  # held-out images (and their reconstructions) in a grid
GRID_COLUMNS = 8


def bin_centres(levels: np.ndarray, num_levels: int) -> np.ndarray:
  """Integer levels k -> the centres of their dequantization bins x = 2 (k + 1/2) / L - 1
  (float32): the mean of what training feeds for k (``images``' 2 (k + u) / L - 1)."""
  return (2.0 * (levels.astype(np.float64) + 0.5) / num_levels - 1.0).astype(np.float32)


def heldout_images(config: Config, n: int) -> Tuple[np.ndarray, np.ndarray, int]:
  """(levels k (n', H, W, C) int32, x (n', H, W, C) float32, L): the first n test images (n'
  = n, or fewer when the split is smaller) as integer levels and as ``bin_centres``."""
  num_levels = images.num_levels(config.data.name)
  levels = build.heldout(config, n, levels=True)
  return levels, bin_centres(levels, num_levels), num_levels


def reconstruct(net, params, x) -> Dict[str, Any]:
  """The autoencoder ``net`` with ``params`` on x (B, H, W, C): {'x_rec': decode(mean) (no
  posterior draw), 'mean' (B, h, w, c), 'posterior_std' (B,) the mean of exp(logvar / 2),
  'kl' (B,) KL(q(z | x) || N(0, I)) in nats}, float32 (jnp; jit it)."""
  encode, decode = networks.eval_autoencoder(net, params)
  mean, logvar = encode(x)
  std = jnp.exp(0.5 * logvar)
  return {"x_rec": decode(mean), "mean": mean,
          "posterior_std": jnp.mean(std.reshape(std.shape[0], -1), axis=-1),
          "kl": autoencoding.gaussian_kl(mean, logvar)}


def grid(x: np.ndarray, x_rec: np.ndarray, path: str, ncols: int = GRID_COLUMNS):
  """Originals and their reconstructions (n, H, W, C) in [-1, 1] as a grid saved to ``path``:
  rows of ``ncols`` originals, each above the row of their reconstructions. Returns the
  figure."""
  if x.shape != x_rec.shape:
    raise ValueError(f"originals {x.shape} and reconstructions {x_rec.shape} differ in shape")
  rows = []
  for start in range(0, len(x), ncols):
    a, b = x[start:start + ncols], x_rec[start:start + ncols]
    pad = np.zeros((ncols - len(a),) + x.shape[1:], np.float32)
    rows += [np.concatenate([a, pad]), np.concatenate([b, pad])]
  return plots.image_grid(np.concatenate(rows), path, ncols=ncols)
