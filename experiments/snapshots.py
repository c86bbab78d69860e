"""EDM2's post-hoc EMA snapshots (Karras et al. 2024, Sec. 3, App. C): the power-function EMAs a
run writes (``write_snapshots``, called by the train loop) and reads back (``read_snapshots``,
for experiments.posthoc_ema, which reconstructs an EMA of any length from them).

A run with ``training.ema_profiles`` (sigma_rel values, EDM2: (0.05, 0.10)) keeps one
power-function EMA per profile in its train state (``training.PowerEMAState``) and, whenever
``training.ema_snapshot_every`` steps are crossed, writes each one to

  W/ema_snapshots/step_<step:08d>_sigma_rel_<sigma_rel>.npz

an npz of the EMA's parameters (one array per leaf, keyed by its '/'-joined key path as in
``checkpoint.tree_signature``) and the scalars __step__ (training step), __t__ (updates the EMA
has seen: step - skipped steps), __sigma_rel__ and __gamma__. npz rather than orbax: a snapshot
is a small, write-once parameter file read back on the host into a known tree, with no
shardings, optimizer state or async machinery to manage, and thousands of them stay cheap to
list and read. Writes are atomic and never overwrite: the file is written under a temporary
name and hard-linked to its final name, which fails if a snapshot of that step exists (a resumed
run recomputes the same values bit for bit and keeps the first file).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Sequence

import jax
import numpy as np

from diffusion import checkpoint, parallel, posthoc_ema

PyTree = Any
SNAPSHOT_DIR = "ema_snapshots"
_META = ("__step__", "__t__", "__sigma_rel__", "__gamma__")


class Snapshot(NamedTuple):
  """One stored power EMA: its file, training step, update count t, profile and parameters."""
  path: str
  step: int
  t: int
  sigma_rel: float
  params: PyTree


def snapshot_name(step: int, sigma_rel: float) -> str:
  """step_<step:08d>_sigma_rel_<repr(sigma_rel)>.npz (repr: distinct values, distinct names)."""
  return f"step_{int(step):08d}_sigma_rel_{float(sigma_rel)!r}.npz"


def _leaf_names(tree: PyTree) -> List[str]:
  return [p for p, _, _ in checkpoint.tree_signature(tree)]


def _write_new(path: str, arrays: Dict[str, np.ndarray]) -> bool:
  """Writes an npz atomically unless ``path`` exists; True if written. The data is fsynced
  under a temporary name, then hard-linked to ``path`` (fails if it exists: never overwrites;
  ``diffusion.io_utils.atomic_write`` replaces, which a snapshot must not)."""
  d = os.path.dirname(path)
  tmp = os.path.join(d, f".tmp.{os.getpid()}.{os.path.basename(path)}")  # ends in .npz
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_snapshots(workdir: str, state, profiles: Sequence[float], step: int,
                    is_main: bool = True) -> List[str]:
  """Writes each power EMA of ``state`` (a training.PowerEMAState, one EMA per sigma_rel of
  ``profiles``) to <workdir>/ema_snapshots/; returns the paths written (existing snapshots are
  kept). Every process must call it (sharded EMAs are gathered); ``is_main`` writes."""
  host = parallel.to_host((state.power_ema, state.step, state.num_skipped))
  emas, at, skipped = host
  if int(at) != int(step):
    raise ValueError(f"the state is at step {int(at)}, not {step}")
  if not is_main:
    return []
  out_dir = os.path.join(workdir, SNAPSHOT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for ema, sigma_rel in zip(emas, profiles):
    arrays = dict(zip(_leaf_names(ema), jax.tree_util.tree_leaves(ema)))
    arrays.update(__step__=np.int64(step), __t__=np.int64(int(at) - int(skipped)),
                  __sigma_rel__=np.float64(sigma_rel),
                  __gamma__=np.float64(posthoc_ema.gamma_of_sigma_rel(sigma_rel)))
    path = os.path.join(out_dir, snapshot_name(step, sigma_rel))
    if _write_new(path, arrays):
      written.append(path)
  return written


def read_snapshots(workdir: str, template: PyTree) -> List[Snapshot]:
  """Every snapshot in <workdir>/ema_snapshots/, sorted by (step, sigma_rel), its parameters in
  the structure of ``template`` (a params tree of arrays or ShapeDtypeStructs). A file whose
  leaves differ from the template's is a ValueError naming it."""
  d = os.path.join(workdir, SNAPSHOT_DIR)
  names = sorted(n for n in os.listdir(d) if n.endswith(".npz") and not n.startswith(".")) \
      if os.path.isdir(d) else []
  leaves, treedef = jax.tree_util.tree_flatten(template)
  keys = _leaf_names(template)
  out = []
  for n in names:
    path = os.path.join(d, n)
    with np.load(path) as z:
      stored = set(z.files) - set(_META)
      if stored != set(keys) or not set(_META) <= set(z.files):
        raise ValueError(f"snapshot {path} holds other parameters than this config's network "
                         f"({len(stored ^ set(keys))} leaves differ, e.g. "
                         f"{sorted(stored ^ set(keys))[:3]})")
      arrays = []
      for k, ref in zip(keys, leaves):
        a = z[k]
        if a.shape != tuple(ref.shape) or a.dtype != ref.dtype:
          raise ValueError(f"snapshot {path}: leaf {k} is {a.dtype}{list(a.shape)}, the "
                           f"network's is {ref.dtype}{list(ref.shape)}")
        arrays.append(a)
      out.append(Snapshot(path, int(z["__step__"]), int(z["__t__"]), float(z["__sigma_rel__"]),
                          jax.tree_util.tree_unflatten(treedef, arrays)))
  return sorted(out, key=lambda s: (s.step, s.sigma_rel))
