"""Sample sets in shards: <dir>/shard_<k>.npz, written atomically, resumed from the finished ones.

A set of N samples from one checkpoint is cut into shards of ``shard_size`` (the last one may be
smaller): shard k holds samples [k * shard_size, min((k + 1) * shard_size, N)). Sample i depends
only on (key, i) (``diffusion.parallel.batch_sampler``), so a set generated in one go, resumed
after an interruption, or generated on another number of devices or hosts is the same set.

Each shard file holds ``x`` (n, *shape), ``start`` (its first sample's index), ``nfe`` and
``fingerprint``: a JSON string of what defines the samples (seed, sampler settings, data shape,
shard size). On resume, a finished shard is loaded, not regenerated, after checking its start,
shape and fingerprint; one that fails a check (or cannot be read) is an error naming the file:
it is never overwritten or deleted (the run cannot prove how it came to be). Only a temporary
file ``.shard_<k>.tmp.npz`` (written, not yet renamed: provably incomplete) is overwritten, and
the last shard of a smaller set (e.g. 297 samples, later 1,000 for FID) is extended: its samples
are checked and kept as the new shard's first ones (sample i depends on (key, i) only).

``read_samples(directory)`` returns the samples of the finished shards, in order, as one
(N, H, W, C) (or (N, D)) array, e.g. for FID / KID.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np

from diffusion.io_utils import atomic_write

_NAME = re.compile(r"^shard_(\d{5,})\.npz$")


class ShardError(ValueError):
  """A shard file on disk does not belong to this sample set or cannot be read."""


def shard_name(k: int) -> str:
  return f"shard_{k:05d}.npz"


def shard_ranges(num_samples: int, shard_size: int) -> List[Tuple[int, int, int]]:
  """[(k, start, stop)] of the shards of ``num_samples`` samples, ``shard_size`` each."""
  if num_samples < 1 or shard_size < 1:
    raise ValueError(f"need num_samples >= 1 and shard_size >= 1, got {num_samples}, "
                     f"{shard_size}")
  return [(k, a, min(a + shard_size, num_samples))
          for k, a in enumerate(range(0, num_samples, shard_size))]


def fingerprint(fields: Dict[str, Any]) -> str:
  """The canonical JSON string of ``fields`` (what defines a sample set)."""
  return json.dumps(fields, sort_keys=True, default=str)


def write_shard(path: str, x: np.ndarray, start: int, fprint: str, nfe: int) -> None:
  """Writes one shard atomically (a temporary file, then a rename)."""
  d, name = os.path.split(path)
  os.makedirs(d, exist_ok=True)
  tmp = os.path.join(d, "." + name[:-len(".npz")] + ".tmp.npz")
  with atomic_write(path, "wb", tmp=tmp) as f:
    np.savez(f, x=x, start=np.int64(start), nfe=np.int64(nfe), fingerprint=np.str_(fprint))


def read_shard(path: str, start: Optional[int] = None, count: Optional[int] = None,
               shape: Optional[Sequence[int]] = None,
               fprint: Optional[str] = None) -> Tuple[np.ndarray, int]:
  """(x (n, *shape), nfe) of the shard at ``path``; each given expectation (its first index,
  sample count, sample shape, fingerprint) is checked. Raises ShardError naming the file."""
  what = f"sample shard {path}"
  fix = "move it (or its folder) aside to generate it again"
  try:
    with np.load(path, allow_pickle=False) as z:
      x, s0, nfe, fp = z["x"], int(z["start"]), int(z["nfe"]), str(z["fingerprint"])
  except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise ShardError(f"{what} cannot be read ({type(e).__name__}: {e}); {fix}") from None
  if start is not None and s0 != start:
    raise ShardError(f"{what} starts at sample {s0}, expected {start}; {fix}")
  if count is not None and len(x) != count:
    raise ShardError(f"{what} holds {len(x)} samples, expected {count}; {fix}")
  if shape is not None and tuple(x.shape[1:]) != tuple(shape):
    raise ShardError(f"{what} has samples of shape {tuple(x.shape[1:])}, expected "
                     f"{tuple(shape)}; {fix}")
  if fprint is not None and fp != fprint:
    raise ShardError(f"{what} was generated with other settings ({fp}; now {fprint}); restore "
                     f"those settings, or {fix}")
  return x, nfe


def finished_shards(directory: str) -> List[int]:
  """Indices k of the files shard_<k>.npz in ``directory``, sorted (none: [])."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m)


def read_samples(directory: str, num_samples: Optional[int] = None) -> np.ndarray:
  """The samples of the shards shard_00000, shard_00001, ... in ``directory`` as one array
  (N, H, W, C) (images) or (N, D), in sample order; the first ``num_samples`` if given (an
  error if there are fewer). Checks that the shards are contiguous."""
  xs, total = [], 0
  for k in finished_shards(directory):
    if num_samples is not None and total >= num_samples:
      break
    path = os.path.join(directory, shard_name(k))
    x, _ = read_shard(path, start=total)  # the shards must follow one another
    xs.append(x)
    total += len(x)
  if num_samples is not None and total < num_samples:
    raise ShardError(f"{directory} holds {total} samples in finished shards, fewer than the "
                     f"{num_samples} asked for; run --mode=eval to generate the rest")
  if not xs:
    raise ShardError(f"no sample shards in {directory}")
  x = np.concatenate(xs)
  return x if num_samples is None else x[:num_samples]


def generate(directory: str, num_samples: int, shard_size: int, shape: Sequence[int],
             draw: Callable[[int], Tuple[np.ndarray, Dict[str, Any]]], batch_size: int,
             fprint: str, *, write: bool = True,
             progress: Optional[Callable[[int], Callable[[int], None]]] = None,
             guard: Callable[[], ContextManager] = contextlib.nullcontext,
             say: Callable[[str], None] = print) -> Tuple[np.ndarray, int]:
  """The first ``num_samples`` samples (num_samples, *shape) and their NFE, from the finished
  shards in ``directory`` and, for the others, ``draw``.

  ``draw(start) -> (x (batch_size, *shape), info)``: samples start .. start + batch_size - 1
  (``experiments.generate.batch_generator``). Missing shards are generated batch by batch from
  their first index and written (``write``: process 0 only; every process draws, the draws are
  collective) inside ``guard()`` (e.g. a signal deferral, so no write is cut short). A shard
  holding a non-finite sample is not written (its samples are returned all the same): the
  caller counts them (``experiments.results.check_finite``) and refuses the set, and a later run
  draws that shard again.
  ``progress(total)``, if given, makes the callback ``report(done)`` called after each batch,
  total and done counting the samples generated now (not those read back).
  """
  ranges = shard_ranges(num_samples, shard_size)
  have: Dict[int, Tuple[np.ndarray, int]] = {}
  for k in finished_shards(directory):
    if k < len(ranges):
      _, a, b = ranges[k]
      x, nfe = read_shard(os.path.join(directory, shard_name(k)), start=a, shape=shape,
                          fprint=fprint)
      if len(x) > shard_size:
        raise ShardError(f"sample shard {os.path.join(directory, shard_name(k))} holds "
                         f"{len(x)} samples, more than the shard size {shard_size}")
      have[k] = (x[:b - a], nfe)  # a last shard of a smaller set is extended below
  old = sum(len(x) for x, _ in have.values())
  todo = num_samples - old
  if old:
    say(f"sampling: {old:,} of {num_samples:,} samples already in {directory}; "
        f"generating {todo:,}")
  xs, nfe, done = [], -1, 0
  report = progress(todo) if (progress is not None and todo) else None
  for k, a, b in ranges:
    parts = []
    if k in have:
      x, nfe = have[k]
      parts.append(x)
    for first in range(a + sum(len(p) for p in parts), b, batch_size):
      x, info = draw(first)
      parts.append(np.asarray(x)[:min(batch_size, b - first)])
      nfe = int(np.asarray(info.get("nfe", -1)))
      done += len(parts[-1])
      if report is not None:
        report(done)
    x = np.concatenate(parts)
    finite = bool(np.all(np.isfinite(x)))  # a shard with NaN / Inf is never written
    if write and finite and (k not in have or len(have[k][0]) < len(x)):
      with guard():  # a new shard, or a shorter one extended: its samples are kept as they are
        write_shard(os.path.join(directory, shard_name(k)), x, a, fprint, nfe)
    xs.append(x)
  return np.concatenate(xs), nfe
