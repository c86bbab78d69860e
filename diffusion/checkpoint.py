"""Checkpoints (orbax), the run's config next to them, a workdir identity check and a run lock.

Layout of a workdir:
  config.json            the resolved config of the run (every field)
  checkpoints/<step>/    orbax checkpoints: 'state' (the TrainState) and 'meta' (json)
  run.lock               the PID (and host) of the process training in this workdir

Restores always use an abstract target (``jax.ShapeDtypeStruct`` with shardings), so arrays come
back with the shardings of the current mesh. A checkpoint that cannot be read (truncated or
half-written files) is moved aside to ``corrupt_checkpoints/`` with a warning, and the previous
one is restored.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import orbax.checkpoint as ocp

PyTree = Any
CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
CKPT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"

log = logging.getLogger(__name__)


class WorkdirMismatchError(RuntimeError):
  """The workdir holds checkpoints of a different experiment."""


class WorkdirLockedError(RuntimeError):
  """Another live process is training in this workdir."""


# -- config and identity --------------------------------------------------------------------------


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _normalize(v):
  return list(v) if isinstance(v, tuple) else v


def config_diff(old: Dict[str, Any], new: Dict[str, Any],
                fields: Sequence[str]) -> List[Tuple[str, Any, Any]]:
  """Differences (key, old, new) between two nested dicts, restricted to keys equal to or under
  one of ``fields`` (dotted prefixes such as 'model' or 'data.name')."""
  fo, fn = flatten(old), flatten(new)
  def relevant(k):
    return any(k == f or k.startswith(f + ".") for f in fields)
  keys = sorted(k for k in set(fo) | set(fn) if relevant(k))
  missing = object()
  diffs = []
  for k in keys:
    a, b = _normalize(fo.get(k, missing)), _normalize(fn.get(k, missing))
    if a != b:
      diffs.append((k, None if a is missing else a, None if b is missing else b))
  return diffs


def read_config(workdir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_config(workdir: str, config: Dict[str, Any]) -> None:
  """Writes the resolved config atomically to <workdir>/config.json."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + f".tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def has_checkpoints(workdir: str) -> bool:
  d = os.path.join(workdir, CKPT_DIR)
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def check_identity(workdir: str, config: Dict[str, Any], fields: Sequence[str]) -> None:
  """Refuses (WorkdirMismatchError) a workdir whose checkpoints come from a config differing in
  ``fields``. Checkpoints without a config.json are refused too (their origin is unknown)."""
  if not has_checkpoints(workdir):
    return
  old = read_config(workdir)
  if old is None:
    raise WorkdirMismatchError(
        f"workdir {workdir!r} holds checkpoints but no {CONFIG_FILE}; refusing to resume or "
        f"overwrite them. Use another --workdir.")
  diffs = config_diff(old, config, fields)
  if diffs:
    lines = "\n".join(f"  {k}: workdir has {a!r}, this run has {b!r}" for k, a, b in diffs)
    raise WorkdirMismatchError(
        f"workdir {workdir!r} holds checkpoints of a different experiment; refusing to start "
        f"(nothing was changed). Differing fields:\n{lines}\nUse another --workdir, or restore "
        f"these fields to resume.")


# -- lock -----------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class RunLock:
  """An exclusive lock on a workdir: <workdir>/run.lock holds 'pid host'.

  A lock left by a dead process on this host is taken over with a warning; a live one is
  refused with WorkdirLockedError. Use as a context manager, or acquire() / release().
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False

  def acquire(self) -> "RunLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    host = socket.gethostname()
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._owner()
        if owner is None:
          continue  # released meanwhile, or unreadable: retry
        pid, owner_host = owner
        if owner_host == host and not _pid_alive(pid):
          log.warning("taking over the stale lock %s of dead process %d", self.path, pid)
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        raise WorkdirLockedError(
            f"workdir {os.path.dirname(self.path)!r} is in use by process {pid} on {owner_host} "
            f"(lock file {self.path}); refusing to run a second job on it. If that process is "
            f"gone, delete the lock file.")
      with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {host}\n")
      self.held = True
      return self
    raise WorkdirLockedError(f"could not acquire the lock {self.path}")

  def _owner(self) -> Optional[Tuple[int, str]]:
    try:
      with open(self.path) as f:
        pid, host = f.read().split()[:2]
      return int(pid), host
    except (FileNotFoundError, ValueError):
      return None

  def release(self) -> None:
    if self.held:
      owner = self._owner()
      if owner is not None and owner[0] == os.getpid():
        os.remove(self.path)
      self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# -- checkpoints ----------------------------------------------------------------------------------


def abstract_like(tree: PyTree, shardings: Optional[PyTree] = None) -> PyTree:
  """ShapeDtypeStructs (with shardings when given) for every array leaf of ``tree``."""
  if shardings is None:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  """orbax CheckpointManager over <workdir>/checkpoints: async saves, bounded history,
  restores into an abstract target, fallback past unreadable checkpoints."""

  def __init__(self, workdir: str, max_to_keep: Optional[int] = 3, async_save: bool = True):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CKPT_DIR))
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options,
                                 item_names=("state", "meta"))

  def all_steps(self) -> List[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: PyTree, meta: Optional[Dict[str, Any]] = None,
           force: bool = True) -> bool:
    """Starts an (async) save of ``state`` and the json ``meta`` at ``step``."""
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(dict(meta or {}))), force=force)

  def restore(self, abstract_state: PyTree,
              step: Optional[int] = None) -> Tuple[Optional[PyTree], Dict[str, Any], Optional[int]]:
    """Restores (state, meta, step) into ``abstract_state``'s shapes, dtypes and shardings.

    Without ``step``, tries the newest checkpoint first and falls back to older ones when one
    cannot be read (moved to corrupt_checkpoints/ with a warning). Returns (None, {}, None)
    when there is nothing to restore.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for s in steps:
      try:
        out = self.manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                       meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {}), s
      except Exception as e:  # noqa: BLE001 -- any read error means the checkpoint is unusable
        if step is not None:
          raise
        self._quarantine(s, e)
    return None, {}, None

  def _quarantine(self, step: int, err: Exception) -> None:
    src = os.path.join(self.directory, str(step))
    log.warning("checkpoint at step %d in %s cannot be restored (%s: %s); moving it to %s and "
                "trying the previous one", step, self.directory, type(err).__name__,
                str(err).splitlines()[0][:300] if str(err) else "", CORRUPT_DIR)
    if jax.process_index() == 0 and os.path.exists(src):
      dst_root = os.path.join(self.workdir, CORRUPT_DIR)
      os.makedirs(dst_root, exist_ok=True)
      dst = os.path.join(dst_root, str(step))
      n = 0
      while os.path.exists(dst):
        n += 1
        dst = os.path.join(dst_root, f"{step}.{n}")
      shutil.move(src, dst)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
