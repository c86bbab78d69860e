"""PNG figures of a run: data vs samples, a learned density, image grids, a sweep's metrics
against NFE (matplotlib, Agg)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402


def scatter(data: np.ndarray, samples: np.ndarray, path: str, title: str = "",
            extent: float = 4.5, labels: Optional[np.ndarray] = None,
            data_title: str = "data", samples_title: Optional[str] = None):
  """Side-by-side scatter of data (n, 2) and samples (m, 2), the samples coloured by ``labels``
  (m,) when given; saved to ``path``. Returns the figure."""
  fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
  axes[0].scatter(data[:, 0], data[:, 1], s=1, alpha=0.5)
  axes[0].set_title(data_title)
  if labels is None:
    axes[1].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5)
  else:
    axes[1].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5, c=labels, cmap="tab10")
  axes[1].set_title(samples_title or ("samples" if labels is None else "samples (colour: class)"))
  for ax in axes:
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
  if title:
    fig.suptitle(title)
  _save(fig, path)
  return fig


def density(logp: np.ndarray, extent: float, path: str, title: str = ""):
  """Heat map of exp(logp) on a (G, G) grid over [-extent, extent]^2 (row i = y_i)."""
  fig, ax = plt.subplots(figsize=(4.5, 4))
  im = ax.imshow(np.exp(logp), origin="lower", extent=(-extent, extent, -extent, extent),
                 cmap="viridis")
  fig.colorbar(im, ax=ax)
  ax.set_title(title or "model density (PF-ODE)")
  _save(fig, path)
  return fig


def image_grid(images: np.ndarray, path: str, ncols: Optional[int] = None):
  """Grid of NHWC images in [-1, 1]; saved to ``path``."""
  n, h, w, c = images.shape
  ncols = ncols or int(np.ceil(np.sqrt(n)))
  nrows = int(np.ceil(n / ncols))
  grid = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, ncols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = (
        np.clip(images[i], -1, 1) + 1) / 2
  fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None)
  ax.axis("off")
  _save(fig, path)
  return fig


def metric_vs_nfe(cells: Sequence[Mapping[str, Any]], samplers: Sequence[str],
                  panels: Sequence[Tuple[str, str, float]], path: str, title: str = ""):
  """One panel per (metric, label, scale) of ``panels``: each cell's ``metric`` x scale against
  its exact NFE (``cell['nfe']``), one line per sampler of ``samplers`` through its cells in
  order of NFE (``cells``: dicts with 'sampler', 'nfe', 'nfe_budget' and the metrics, e.g. a
  sweep's). Log x with ticks at the budgets; log y where every value is positive (a metric that
  can be negative, the unbiased MMD^2, stays linear). Saved to ``path``; returns the figure."""
  fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
  budgets = sorted({int(c["nfe_budget"]) for c in cells})
  for ax, (metric, label, scale) in zip(axes[0], panels):
    values = []
    for name in samplers:
      points = sorted((int(c["nfe"]), float(c[metric]) * scale) for c in cells
                      if c["sampler"] == name and metric in c)
      if points:
        ax.plot(*zip(*points), marker="o", label=name)
        values += [v for _, v in points]
    ax.set_xscale("log")
    if values and min(values) > 0:
      ax.set_yscale("log")
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("NFE (ticks: budgets; points: exact NFE)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
  axes[0][0].legend(fontsize="small")
  if title:
    fig.suptitle(title)
  _save(fig, path)
  return fig


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")


def close(fig) -> None:
  plt.close(fig)
