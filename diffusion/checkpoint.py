"""Checkpoints (orbax), the run's config next to them, a workdir identity check and a run lock.

Layout of a workdir:
  config.json                      the resolved config of the run (every field)
  checkpoints/<step>/              orbax checkpoints: 'state' (the TrainState), 'meta' (json)
  checkpoints/<step>/integrity.json  sha256 and size of every file of the step, written after
                                   orbax finalized the save (see INTEGRITY_FILE)
  corrupt_checkpoints/<step>[.n]/  checkpoints proven corrupt, set aside by a train run
  run.lock                         the PID (and host) of the process training in this workdir

Nothing saved is lost. A restore goes newest first and, per checkpoint:
  1. checks its files against integrity.json. A checkpoint whose files differ from what was
     written (missing, other size, other sha256) is proven corrupt: skipped with one warning line,
     and the previous one is tried. A train run moves it to corrupt_checkpoints/ once an older
     checkpoint restored (or a fresh start was allowed); sample / eval (``read_only``) move nothing.
  2. compares the state-tree signature saved in its meta (key path, shape, dtype of every leaf)
     with the abstract state of this run: a difference is a CheckpointMismatchError naming a few
     leaves and the config fields that differ from the checkpoint's config; nothing is changed.
  3. restores into the abstract target (``jax.ShapeDtypeStruct`` with shardings), so arrays come
     back with the shardings of the current mesh. OSError and MemoryError propagate as they are;
     any other failure is a CheckpointRestoreError naming the step: not proof of corruption, so
     the checkpoint stays where it is.
``restore_field`` (sample, eval, sweep) restores one field of the state, e.g. 'ema_params' (a
learned schedule's parameters included), with the same steps 1-3 restricted to that field's leaves:
the optimizer state is neither read nor needed, so a run trained with other optimizer settings is
sampled; ``check_identity(..., ignore=("optim",))`` is the matching identity check.
A checkpoint without integrity.json (saved by an older version, or killed in the instant between
orbax's finalization and the manifest write) is used when it restores; integrity.json is not
written for it afterwards, as flipped bytes would then be certified.

When checkpoints exist but every one is proven corrupt, restore raises NoUsableCheckpointError and
changes nothing, unless the caller allows a fresh start (train's --allow_fresh_start).
Library output (orbax logs, tensorstore's 'Event loop is closed' tracebacks) is held back during
restores: a failed restore reports one line per checkpoint.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import socket
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from diffusion.io_utils import atomic_write, read_json, sha256_file

PyTree = Any
CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
CKPT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
INTEGRITY_FILE = "integrity.json"
# Reserved keys of the json meta: the state-tree signature and the config at save time.
SIGNATURE_KEY = "_state_signature"
CONFIG_KEY = "_config"

log = logging.getLogger(__name__)


class WorkdirMismatchError(RuntimeError):
  """The workdir holds checkpoints of a different experiment."""


class WorkdirLockedError(RuntimeError):
  """Another live process is training in this workdir."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be used; nothing was moved or changed."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint's state tree (key paths, shapes, dtypes) differs from this run's."""


class CheckpointRestoreError(CheckpointError):
  """A checkpoint not proven corrupt failed to restore."""


class NoUsableCheckpointError(CheckpointError):
  """Checkpoints exist but every one is proven corrupt, and a fresh start was not allowed."""


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
  return read_json(os.path.join(workdir, CONFIG_FILE))


def write_config(workdir: str, config: Dict[str, Any]) -> None:
  """Writes the resolved config atomically to <workdir>/config.json."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with atomic_write(path, tmp=path + f".tmp{os.getpid()}") as f:
    json.dump(config, f, indent=2, sort_keys=True, default=str)


def has_checkpoints(workdir: str) -> bool:
  d = os.path.join(workdir, CKPT_DIR)
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def _under(key: str, prefixes: Sequence[str]) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_identity(workdir: str, config: Dict[str, Any], fields: Sequence[str],
                   ignore: Sequence[str] = ()) -> None:
  """Refuses (WorkdirMismatchError) a workdir whose checkpoints come from a config differing in
  ``fields``. Checkpoints without a config.json are refused too (their origin is unknown).

  ``ignore``: dotted prefixes left out of the comparison even where ``fields`` name them (or a
  field under them): a subset of the identity. Sample / eval restore only the EMA parameters
  (``Checkpointer.restore_field``), so they pass ``ignore=("optim",)``: a run whose optimizer
  settings differ (optim.name, optim.grad_clip) is still sampled. Train passes nothing: any
  difference that changes the state's structure is refused."""
  if not has_checkpoints(workdir):
    return
  old = read_config(workdir)
  if old is None:
    raise WorkdirMismatchError(
        f"workdir {workdir!r} holds checkpoints but no {CONFIG_FILE}; refusing to resume or "
        f"overwrite them. Use another --workdir.")
  diffs = [d for d in config_diff(old, config, fields) if not _under(d[0], ignore)]
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


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def tree_signature(tree: PyTree) -> List[List[Any]]:
  """[[key path, shape, dtype], ...] for every leaf: what a restore target must match. Paths
  are '/'-joined key names ('opt_state/1/0/mu/Dense_0/bias'), independent of jax's keystr."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [["/".join(_key_name(k) for k in p), [int(d) for d in x.shape], str(x.dtype)]
          for p, x in leaves]


def signature_diff(saved: Sequence[Sequence[Any]], current: Sequence[Sequence[Any]],
                   limit: int = 3) -> Tuple[int, List[str]]:
  """(number of differing leaves, descriptions of the first ``limit``) between two signatures."""
  a = {p: (tuple(sh), dt) for p, sh, dt in saved}
  b = {p: (tuple(sh), dt) for p, sh, dt in current}
  out = []
  for p in sorted(set(a) | set(b)):
    if p not in b:
      out.append(f"{p} is in the checkpoint only")
    elif p not in a:
      out.append(f"{p} is in this run only")
    elif a[p] != b[p]:
      out.append(f"{p} is {a[p][1]}{list(a[p][0])} in the checkpoint, {b[p][1]}{list(b[p][0])} "
                 f"in this run")
  return len(out), out[:limit]


def _step_files(step_dir: str) -> List[str]:
  """Paths (relative, '/'-separated, sorted) of every file under step_dir but integrity.json."""
  out = []
  for dirpath, _, files in os.walk(step_dir):
    for f in files:
      rel = os.path.relpath(os.path.join(dirpath, f), step_dir).replace(os.sep, "/")
      if not rel.startswith(INTEGRITY_FILE):  # the manifest and its temporary files
        out.append(rel)
  return sorted(out)


def write_integrity(step_dir: str) -> Dict[str, Any]:
  """Writes <step_dir>/integrity.json (atomically): {"version": 1, "files": {relpath: {"size",
  "sha256"}}} for every file of a finalized checkpoint. Returns the manifest."""
  files = {}
  for rel in _step_files(step_dir):
    p = os.path.join(step_dir, rel)
    files[rel] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
  manifest = {"version": 1, "files": files}
  path = os.path.join(step_dir, INTEGRITY_FILE)
  with atomic_write(path, tmp=f"{path}.tmp{os.getpid()}", fsync=True) as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  return manifest


def check_integrity(step_dir: str) -> Tuple[Optional[bool], str]:
  """(True, "") when every file listed in integrity.json has its size and sha256; (False, why)
  when one differs or is missing: the checkpoint is proven corrupt; (None, why) when there is no
  readable manifest: nothing is proven. OSErrors while reading the data files propagate."""
  path = os.path.join(step_dir, INTEGRITY_FILE)
  try:
    with open(path) as f:
      files = json.load(f)["files"]
    entries = [(rel, int(e["size"]), str(e["sha256"])) for rel, e in files.items()]
  except FileNotFoundError:
    return None, f"it has no {INTEGRITY_FILE}"
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    return None, f"its {INTEGRITY_FILE} is unreadable ({type(e).__name__})"
  for rel, size, digest in sorted(entries):
    p = os.path.join(step_dir, rel)
    if not os.path.isfile(p):
      return False, f"file {rel} is missing"
    actual = os.path.getsize(p)
    if actual != size:
      return False, f"file {rel} has {actual} bytes, {size} were written"
    if sha256_file(p) != digest:
      return False, f"file {rel} differs from what was written (sha256)"
  return True, ""


_NOISY_LOGGERS = ("absl", "orbax", "asyncio", "tensorstore", "jax._src.distributed")


def _is_loop_closed_noise(exc: Optional[BaseException]) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _Quiet:
  """Holds back library output around orbax calls.

  orbax logs failures (with tracebacks) through absl; when one array read fails, orbax's event
  loop closes while tensorstore still completes the other reads, and each completion prints a
  'RuntimeError: Event loop is closed' traceback from a tensorstore thread, possibly later. The
  loggers are raised to CRITICAL for the duration; the 'Event loop is closed' reports (and only
  they) are dropped from then on by a filter on sys.excepthook / sys.unraisablehook /
  threading.excepthook, installed once.
  """

  _installed = False
  _lock = threading.Lock()

  @classmethod
  def _install_filters(cls) -> None:
    with cls._lock:
      if cls._installed:
        return
      cls._installed = True
      old_except, old_unraisable, old_thread = (sys.excepthook, sys.unraisablehook,
                                                threading.excepthook)

      def excepthook(tp, value, tb):
        if not _is_loop_closed_noise(value):
          old_except(tp, value, tb)

      def unraisablehook(u):
        if not _is_loop_closed_noise(u.exc_value):
          old_unraisable(u)

      def thread_hook(args):
        if not _is_loop_closed_noise(args.exc_value):
          old_thread(args)

      sys.excepthook, sys.unraisablehook, threading.excepthook = (excepthook, unraisablehook,
                                                                   thread_hook)

  def __enter__(self):
    self._install_filters()
    self._levels = []
    for name in _NOISY_LOGGERS:
      lg = logging.getLogger(name)
      self._levels.append((lg, lg.level))
      lg.setLevel(logging.CRITICAL)
    return self

  def __exit__(self, *exc):
    if exc[0] is not None:
      gc.collect()  # report abandoned asyncio tasks now, while their loggers are quiet
    for lg, level in self._levels:
      lg.setLevel(level)


def _first_line(e: BaseException, n: int = 300) -> str:
  text = str(e).strip()
  line = text.splitlines()[0] if text else ""
  return f"{type(e).__name__}: {line[:n]}"


class Checkpointer:
  """orbax CheckpointManager over <workdir>/checkpoints: async saves with an integrity manifest,
  bounded history, restores into an abstract target that skip proven-corrupt checkpoints.

  ``config``: the run's config dict, saved in each checkpoint's meta (and named in mismatch
  errors). ``read_only``: nothing under the workdir is created, moved or written (sample, eval).
  ``allow_fresh_start``: restore() may return no state when every checkpoint is proven corrupt
  (otherwise NoUsableCheckpointError). ``keep_period``: checkpoints at multiples of it are never
  deleted by ``max_to_keep`` (progressive distillation's rounds).
  """

  def __init__(self, workdir: str, max_to_keep: Optional[int] = 3, async_save: bool = True,
               config: Optional[Dict[str, Any]] = None, read_only: bool = False,
               allow_fresh_start: bool = False, keep_period: Optional[int] = None):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CKPT_DIR))
    self.config = (json.loads(json.dumps(config, default=str, sort_keys=True))
                   if config is not None else None)
    self.read_only = read_only
    self.allow_fresh_start = allow_fresh_start
    self.async_save = async_save and not read_only
    with _Quiet():  # read_only options log warnings about the fields they override
      if read_only:
        self._options = ocp.CheckpointManagerOptions(
            read_only=True, create=False, max_to_keep=None, enable_async_checkpointing=False)
      else:
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
            keep_period=keep_period)
    self._manifest_thread: Optional[threading.Thread] = None
    self._manifest_error: Optional[BaseException] = None
    self._field_manager: Optional[ocp.CheckpointManager] = None  # see _restore_manager
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    with _Quiet():  # read_only logs a warning
      return ocp.CheckpointManager(self.directory, options=self._options,
                                   item_names=("state", "meta"))

  def _restore_manager(self, field: Optional[str]) -> ocp.CheckpointManager:
    """self.manager for whole states; for one field, a second, read-only manager: orbax binds an
    item to the handler of its first save / restore (StandardCheckpointHandler for 'state'), and
    a partial restore needs PyTreeCheckpointHandler."""
    if field is None:
      return self.manager
    if self._field_manager is None:
      with _Quiet():  # read_only logs a warning
        self._field_manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                                 enable_async_checkpointing=False))
    else:
      self._field_manager.reload()  # steps set aside or saved since
    return self._field_manager

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> List[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  # -- saving --

  def save(self, step: int, state: PyTree, meta: Optional[Dict[str, Any]] = None,
           force: bool = True) -> bool:
    """Starts an (async) save of ``state`` and the json ``meta`` at ``step``; integrity.json is
    written once orbax has finalized it (in a background thread for async saves)."""
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only; cannot save step {step}")
    self._join_manifest()
    if step in self.manager.all_steps():
      return False
    meta = dict(meta or {})
    meta[SIGNATURE_KEY] = tree_signature(state)
    if self.config is not None:
      meta[CONFIG_KEY] = self.config
    saved = self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)
    if saved and jax.process_index() == 0:
      if self.async_save:
        self._manifest_thread = threading.Thread(target=self._manifest_when_final, args=(step,),
                                                 name=f"integrity_{step}", daemon=True)
        self._manifest_thread.start()
      else:
        write_integrity(self.step_dir(step))
    return saved

  def _manifest_when_final(self, step: int) -> None:
    try:
      self.manager.wait_until_finished()
    except BaseException:  # noqa: BLE001 -- orbax raises this save error in the caller's thread
      return               # too (at its next save / wait); the step is not finalized: no manifest
    try:
      if os.path.isdir(self.step_dir(step)):
        write_integrity(self.step_dir(step))
    except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread by _join_manifest
      self._manifest_error = e

  def _join_manifest(self) -> None:
    t, self._manifest_thread = self._manifest_thread, None
    if t is not None:
      t.join()
    err, self._manifest_error = self._manifest_error, None
    if err is not None:
      raise err

  # -- restoring --

  def restore(self, abstract_state: PyTree, step: Optional[int] = None,
              allow_fresh_start: Optional[bool] = None
              ) -> Tuple[Optional[PyTree], Dict[str, Any], Optional[int]]:
    """Restores (state, meta, step) into ``abstract_state``'s shapes, dtypes and shardings.

    Without ``step``, tries the newest checkpoint first and skips those proven corrupt (one
    warning line each; moved to corrupt_checkpoints/ unless read_only, once an older one
    restored). Returns (None, {}, None) when there is no checkpoint, or when every one is proven
    corrupt and a fresh start is allowed; raises NoUsableCheckpointError when it is not.
    Raises CheckpointMismatchError, CheckpointRestoreError, OSError, MemoryError (nothing moved).
    """
    return self._restore(abstract_state, None, step, allow_fresh_start)

  def restore_field(self, field: str, abstract: PyTree, step: Optional[int] = None,
                    allow_fresh_start: Optional[bool] = None
                    ) -> Tuple[Optional[PyTree], Dict[str, Any], Optional[int]]:
    """Restores (state.<field>, meta, step): one field of the saved state (e.g. 'ema_params',
    which holds a learned schedule's 'schedule' parameters too) into ``abstract`` (that field's
    abstract tree), and nothing else: the other fields' arrays are not read and their structure
    is not needed, so a state saved with another optimizer (opt_state) restores its EMA params.

    As ``restore`` otherwise: every file of the checkpoint is verified against integrity.json
    first (proven-corrupt ones are skipped), and the saved signature of ``field``'s leaves (key
    path, shape, dtype) must equal ``abstract``'s (else CheckpointMismatchError).
    """
    return self._restore(abstract, field, step, allow_fresh_start)

  def _restore(self, abstract: PyTree, field: Optional[str], step: Optional[int],
               allow_fresh_start: Optional[bool]
               ) -> Tuple[Optional[PyTree], Dict[str, Any], Optional[int]]:
    if allow_fresh_start is None:
      allow_fresh_start = self.allow_fresh_start
    self._join_manifest()
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    corrupt: List[Tuple[int, str]] = []
    for s in steps:
      ok, why = check_integrity(self.step_dir(s))
      if ok is False:
        corrupt.append((s, why))
        continue
      state, meta = self._restore_one(s, abstract, field, verified=bool(ok), unverified_why=why,
                                      skipped=corrupt)
      self._set_aside(corrupt, f"restored step {s} instead")
      return state, meta, s
    if corrupt and step is not None:
      raise NoUsableCheckpointError(
          f"the checkpoint at step {step} in {self.directory} failed its integrity check "
          f"({corrupt[0][1]}); nothing was moved. Choose another step, or omit it for the newest "
          f"intact one.")
    if corrupt:
      listing = "; ".join(f"step {s}: {why}" for s, why in corrupt[:3])
      if len(corrupt) > 3:
        listing += f"; and {len(corrupt) - 3} older ones"
      if not allow_fresh_start:
        hint = ("" if self.read_only else
                " To set them aside in corrupt_checkpoints/ and train from step 0, pass "
                "--allow_fresh_start.")
        raise NoUsableCheckpointError(
            f"every checkpoint in {self.directory} failed its integrity check ({listing}); "
            f"nothing was moved.{hint}")
      self._set_aside(corrupt, "starting from step 0 (fresh start allowed)")
    return None, {}, None

  def _restore_one(self, step: int, abstract: PyTree, field: Optional[str], verified: bool,
                   unverified_why: str, skipped: Sequence[Tuple[int, str]]
                   ) -> Tuple[PyTree, Dict[str, Any]]:
    where = f"checkpoint at step {step} in {self.directory}"
    note = ("" if not skipped else
            f" (newer ones failed their integrity check and were left in place: "
            f"{', '.join(str(s) for s, _ in skipped)})")
    status = "its files match integrity.json" if verified else unverified_why
    try:
      with _Quiet():
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = dict(meta["meta"] or {})
    except (OSError, MemoryError):
      raise
    except Exception as e:  # noqa: BLE001 -- reported as a typed error, nothing is moved
      raise CheckpointRestoreError(
          f"{where} could not be read ({_first_line(e)}); {status}, so it was not moved.{note} "
          f"If it is damaged, move checkpoints/{step} out of the way to resume from an older "
          f"one.") from e
    saved_sig = meta.pop(SIGNATURE_KEY, None)
    saved_cfg = meta.pop(CONFIG_KEY, None)
    if saved_sig is not None:
      current = tree_signature(abstract)
      if field is not None:  # the field's leaves only, under their paths in the state
        current = [[f"{field}/{p}" if p else field, sh, dt] for p, sh, dt in current]
        saved_sig = [e for e in saved_sig if e[0] == field or e[0].startswith(field + "/")]
      n, diffs = signature_diff(saved_sig, current)
      if n:
        raise CheckpointMismatchError(
            f"{where} holds a state of another structure than this config builds ({n} leaves "
            f"differ: {'; '.join(diffs)}); {self._config_hint(saved_cfg)} Nothing was "
            f"changed.{note} Resume with the checkpoint's values of these fields, or use "
            f"another --workdir.")
    if field is None:
      args = ocp.args.StandardRestore(abstract)
    else:  # orbax's partial restore: leaves absent from the item are not read
      item = {field: abstract}
      args = ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True)
    try:
      with _Quiet():
        out = self._restore_manager(field).restore(step, args=ocp.args.Composite(state=args))
        out = out["state"] if field is None else out["state"][field]
    except (OSError, MemoryError):
      raise
    except Exception as e:  # noqa: BLE001 -- reported as a typed error, nothing is moved
      hint = "" if saved_sig is not None else f" {self._config_hint(saved_cfg)}"
      raise CheckpointRestoreError(
          f"{where} could not be restored ({_first_line(e)}); {status}, so it was not "
          f"moved.{hint}{note} If it is damaged, move checkpoints/{step} out of the way to "
          f"resume from an older one.") from e
    if not verified:
      log.warning("%s restored without an integrity check (%s)", where, unverified_why)
    return out, meta

  def _config_hint(self, saved_cfg: Optional[Dict[str, Any]]) -> str:
    """'config fields that differ from the checkpoint's: a (x -> y), ...' (config.json's when the
    checkpoint holds no config)."""
    source = "the checkpoint's"
    if saved_cfg is None:
      saved_cfg, source = read_config(self.workdir), f"{CONFIG_FILE}'s"
    if saved_cfg is None or self.config is None:
      return "the config it was saved with is unknown."
    diffs = [d for d in config_diff(saved_cfg, self.config, sorted(flatten(saved_cfg)) +
                                    sorted(flatten(self.config)))
             if not d[0].startswith("resolved.jax_version")]
    if not diffs:
      return f"this run's config equals {source}."
    shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in diffs[:8])
    more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    return f"config fields that differ from {source}: {shown}{more}."

  def _set_aside(self, corrupt: Sequence[Tuple[int, str]], outcome: str) -> None:
    """One warning line per proven-corrupt checkpoint; moved to corrupt_checkpoints/ unless
    read_only."""
    multi = bool(corrupt) and not self.read_only and jax.process_count() > 1
    if multi:  # every process has verified them before process 0 moves them
      multihost_utils.sync_global_devices("checkpoint_set_aside_start")
    for step, why in corrupt:
      src = self.step_dir(step)
      if self.read_only:
        log.warning("checkpoint at step %d in %s is corrupt (%s); skipped it (nothing moved), %s",
                    step, self.directory, why, outcome)
        continue
      if jax.process_index() != 0 or not os.path.exists(src):
        continue  # process 0 moves it and reports
      dst_root = os.path.join(self.workdir, CORRUPT_DIR)
      os.makedirs(dst_root, exist_ok=True)
      dst = os.path.join(dst_root, str(step))
      n = 0
      while os.path.exists(dst):
        n += 1
        dst = os.path.join(dst_root, f"{step}.{n}")
      shutil.move(src, dst)
      log.warning("checkpoint at step %d in %s is corrupt (%s); moved it to %s, %s", step,
                  self.directory, why, dst, outcome)
    if multi:
      multihost_utils.sync_global_devices("checkpoint_set_aside_done")
    if corrupt and not self.read_only:
      self.manager.reload()

  def wait(self) -> None:
    """Blocks until pending saves are finalized and have their integrity.json."""
    self.manager.wait_until_finished()
    self._join_manifest()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._field_manager is not None:
        self._field_manager.close()
      self.manager.close()
