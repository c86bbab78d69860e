"""Latent datasets: an image dataset encoded by an autoencoder, on disk and as training batches.

A folder written by ``python -m experiments.encode`` holds

  latents.json     the manifest: ``made_by`` (what the latents are a function of: the
                   autoencoder's config file, workdir, checkpoint step and the sha256 of its
                   parameters; the image dataset, split, size and preprocessing),
                   ``fingerprint`` (sha256 of ``made_by``), the latent and image shapes, the
                   number of images and classes, the shard size, one entry per finished shard
                   (its file's sha256), and once complete the per-channel statistics of the
                   posterior samples (``diffusion.latent.channel_stats``; EDM2's normalisation)
  shard_<k>.npz    images [k S, (k + 1) S) in file order: ``mean``, ``std`` (n, h, w, c) float32
                   (the encoder's diagonal Gaussian posterior) and ``label`` (n,) int32

Training batches (:class:`LatentIterator`) follow the image pipeline's conventions
(``diffusion.data.images``): epoch e is the permutation ``default_rng([seed, e])`` of the N
latents, step i of process p reads stream positions ``[(i P + p) B, (i P + p + 1) B)``, and its
randomness (here the posterior noise eps) comes from ``default_rng([seed, 1, i, p])``. So batch i
is a function of (seed, i, p) only, and a run resumed at step k reads exactly batches k, k+1, ...
Each batch is ``{'x': norm.normalize(mean + std * eps) (B, h, w, c) float32, 'label': (B,)}``
(``posterior='mean'``: eps = 0).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from diffusion import latent as latent_lib

MANIFEST = "latents.json"
FORMAT = 1
_NOISE_TAG = 1  # as diffusion.data.images: per-step randomness [seed, 1, step, process]


class LatentDatasetError(ValueError):
  """A latent folder that is missing, incomplete, of another making, or whose files changed."""


def shard_name(k: int) -> str:
  return f"shard_{k:05d}.npz"


def fingerprint(made_by: Dict[str, Any]) -> str:
  """sha256 of the canonical JSON of ``made_by``."""
  return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: str) -> Optional[Dict[str, Any]]:
  """The manifest of ``folder``, or None when it has none."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def encode_shard(mean: np.ndarray, std: np.ndarray, label: np.ndarray) -> bytes:
  """The bytes of one shard file (an uncompressed npz)."""
  buf = io.BytesIO()
  np.savez(buf, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
           label=np.asarray(label, np.int32))
  return buf.getvalue()


def _read_shard(folder: str, entry: Dict[str, Any], latent_shape: Tuple[int, ...]
                ) -> Dict[str, np.ndarray]:
  path = os.path.join(folder, shard_name(entry["index"]))
  if not os.path.exists(path):
    raise LatentDatasetError(f"{path} is listed in {MANIFEST} but missing; re-run "
                             f"experiments.encode with the same arguments to write it again")
  with open(path, "rb") as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if digest != entry["sha256"]:
    raise LatentDatasetError(f"{path}: sha256 {digest[:12]}... differs from the manifest's "
                             f"{entry['sha256'][:12]}...: the file changed after it was written")
  with np.load(io.BytesIO(data)) as z:
    out = {k: z[k] for k in ("mean", "std", "label")}
  n = int(entry["count"])
  if out["mean"].shape != (n,) + latent_shape or out["std"].shape != out["mean"].shape:
    raise LatentDatasetError(f"{path}: mean / std of shape {out['mean'].shape} / "
                             f"{out['std'].shape}, expected {(n,) + latent_shape}")
  return out


class LatentDataset:
  """A complete latent folder, read into memory (every shard's sha256 checked).

  Attributes: folder, manifest, mean / std (N, h, w, c) float32, labels (N,) int32,
  latent_shape (h, w, c), image_shape (H, W, C), num_classes, channel_stats (mean (c,),
  std (c,)).
  """

  def __init__(self, folder: str):
    m = read_manifest(folder)
    if m is None:
      raise LatentDatasetError(f"latent.dataset={folder!r} holds no {MANIFEST}; write it with "
                               f"`python -m experiments.encode --out={folder} ...`")
    if m.get("format") != FORMAT:
      raise LatentDatasetError(f"{folder}/{MANIFEST}: format {m.get('format')!r}, this code "
                               f"reads format {FORMAT}")
    if not m.get("complete"):
      done = len(m.get("shards", []))
      raise LatentDatasetError(f"latent.dataset={folder!r} is incomplete ({done} of "
                               f"{m['num_shards']} shards): resume it with the same "
                               f"experiments.encode command")
    self.folder, self.manifest = folder, m
    self.latent_shape = tuple(int(v) for v in m["latent_shape"])
    self.image_shape = tuple(int(v) for v in m["image_shape"])
    self.num_classes = int(m["num_classes"])
    shards = sorted(m["shards"], key=lambda e: e["index"])
    parts = [_read_shard(folder, e, self.latent_shape) for e in shards]
    self.mean = np.concatenate([p["mean"] for p in parts])
    self.std = np.concatenate([p["std"] for p in parts])
    self.labels = np.concatenate([p["label"] for p in parts]).astype(np.int32)
    if len(self.mean) != int(m["num_examples"]):
      raise LatentDatasetError(f"{folder}: the shards hold {len(self.mean)} latents, the "
                               f"manifest says {m['num_examples']}")
    stats = m["channel_stats"]
    self.channel_stats = (np.asarray(stats["mean"]), np.asarray(stats["std"]))

  def __len__(self) -> int:
    return len(self.mean)


def manifest_facts(folder: str) -> Dict[str, Any]:
  """The manifest of a complete folder without reading its shards (start-up checks, shapes)."""
  m = read_manifest(folder)
  if m is None:
    raise LatentDatasetError(f"latent.dataset={folder!r} holds no {MANIFEST}; write it with "
                             f"`python -m experiments.encode --out={folder} ...`")
  if not m.get("complete"):
    raise LatentDatasetError(f"latent.dataset={folder!r} is incomplete ({len(m['shards'])} of "
                             f"{m['num_shards']} shards): resume it with the same "
                             f"experiments.encode command")
  return m


def stream_indices(step: int, *, num_examples: int, batch_size: int, seed: int,
                   process_index: int, process_count: int) -> np.ndarray:
  """(B,) indices of process p's examples at ``step`` in the endless shuffled stream (the
  module docstring; the convention of ``diffusion.data.images.ImageIterator.indices``)."""
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  start = (step * process_count + process_index) * batch_size
  pos = start + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = _permutation(seed, int(e), num_examples)[offsets[sel]]
  return out


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  perm.setflags(write=False)
  return perm


class LatentIterator(Iterator[Dict[str, np.ndarray]]):
  """Endless training batches of a :class:`LatentDataset` (the module docstring).

  norm: the ``diffusion.latent.LatentNorm`` applied to every sample; posterior: 'sample' or
  'mean'; batch_size: per process.
  """

  def __init__(self, ds: LatentDataset, norm: latent_lib.LatentNorm, *, posterior: str,
               batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
               start_step: int = 0):
    if posterior not in latent_lib.POSTERIORS:
      raise ValueError(f"latent.posterior={posterior!r}; accepted: {latent_lib.POSTERIORS}")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.ds, self.norm, self.posterior = ds, norm, posterior
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.step = int(start_step)

  def batch(self, step: int) -> Dict[str, np.ndarray]:
    """The batch of ``step`` on this process: {'x': (B, h, w, c) float32, 'label': (B,)}."""
    idx = stream_indices(step, num_examples=len(self.ds), batch_size=self.batch_size,
                         seed=self.seed, process_index=self.process_index,
                         process_count=self.process_count)
    mean, std = self.ds.mean[idx], self.ds.std[idx]
    noise = None
    if self.posterior == "sample":
      rng = np.random.default_rng([self.seed, _NOISE_TAG, step, self.process_index])
      noise = rng.standard_normal(mean.shape, dtype=np.float32)
    z = latent_lib.posterior_sample(mean, std, noise)
    return {"x": np.ascontiguousarray(self.norm.normalize(z), np.float32),
            "label": self.ds.labels[idx]}

  def __iter__(self) -> "LatentIterator":
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    out = self.batch(self.step)
    self.step += 1
    return out


def shard_plan(num_examples: int, shard_size: int) -> List[Tuple[int, int, int]]:
  """[(k, start, stop)] of the shards of ``num_examples`` images, ``shard_size`` each."""
  if num_examples < 1 or shard_size < 1:
    raise ValueError(f"need num_examples >= 1 and shard_size >= 1, got {num_examples}, "
                     f"{shard_size}")
  return [(k, a, min(a + shard_size, num_examples))
          for k, a in enumerate(range(0, num_examples, shard_size))]
