"""Entry point: ``python -m experiments.main --config=FILE --workdir=DIR --mode=MODE``, MODE one
of train, sample, eval, sweep (FID against NFE on one checkpoint) and pairs (reflow's (noise,
sample) pairs of a trained flow).

Any config field can be overridden, ``--config.training.num_steps=2000``. ml_collections'
config_flags fails on an unknown key with a bare AttributeError; here the overrides are checked
first, and an unknown key is an error listing the valid keys (close matches first).
"""
from __future__ import annotations

import difflib
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from experiments.config_files import load_config_file  # noqa: F401 (the entry point's name for it)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/toy/checkerboard_vp.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "sweep", "pairs"],
                          "What to run (sweep: FID against NFE, experiments/sweep.py; pairs: "
                          "reflow's (noise, sample) pairs, experiments/reflow.py).")
_ALLOW_FRESH_START = flags.DEFINE_bool(
    "allow_fresh_start", False, "train: when every checkpoint of the workdir is proven corrupt, "
    "set them aside in corrupt_checkpoints/ and start from step 0 (refused otherwise).")

_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Persistent XLA compilation cache folder, or 'off' (default: "
    "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/diffusion_jax/xla; experiments/compile_cache.py).")

MODES = ("train", "sample", "eval", "sweep", "pairs")


class ConfigKeyError(ValueError):
  """A --config.<key> override names no field of the config."""


def config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> List[str]:
  """Dotted names of every overridable (leaf) field, sorted."""
  out = []
  for k, v in config.items():
    name = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      out += config_keys(v, name + ".")
    else:
      out.append(name)
  return sorted(out)


def overridden(config: ml_collections.ConfigDict,
               overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-key ``overrides`` ({'guidance.weight': 3.0}) set, as the
  command line's --config.<key>=<value> would; an unknown key raises KeyError naming it."""
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    if last not in node:
      raise KeyError(f"config has no field {key!r}")
    node[last] = value
  return c


def override_keys(argv: Sequence[str]) -> List[str]:
  """The keys of the ``--config.<key>[=value]`` arguments in ``argv`` (also ``--noconfig.x``)."""
  keys = []
  for a in argv:
    for pre in ("--config.", "-config.", "--noconfig.", "-noconfig."):
      if a.startswith(pre):
        keys.append(a[len(pre):].split("=", 1)[0])
  return keys


def config_spec(argv: Sequence[str]) -> Optional[str]:
  """The value of --config in argv, or None."""
  for i, a in enumerate(argv):
    for pre in ("--config=", "-config="):
      if a.startswith(pre):
        return a[len(pre):]
    if a in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_overrides(config: ml_collections.ConfigDict, keys: Sequence[str]) -> None:
  """Raises ConfigKeyError for keys that are not fields of ``config``, listing the valid ones."""
  valid = config_keys(config)
  bad = [k for k in keys if k not in valid]
  if not bad:
    return
  lines = []
  for k in bad:
    close = difflib.get_close_matches(k, valid, n=3, cutoff=0.6)
    lines.append(f"  --config.{k}" + (f"  (did you mean: {', '.join(close)}?)" if close else ""))
  raise ConfigKeyError("unknown config key(s):\n" + "\n".join(lines) +
                       "\nvalid keys:\n  " + "\n  ".join(valid))


def _usage_error(message: str) -> None:
  """Prints ``error: message`` to stderr and exits with status 2 (a usage error)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def check_config_file(spec: Optional[str], keys: Sequence[str]) -> None:
  """Before absl parses the flags (whose config loader fails with a traceback): the --config file
  exists and loads, and every override key names one of its fields; else a one-line error, exit 2."""
  if not spec:
    return
  try:
    config = load_config_file(spec)
  except FileNotFoundError as e:
    _usage_error(str(e))
  except Exception as e:  # noqa: BLE001 -- an error in the config file's own code: one line, exit 2
    _usage_error(f"cannot load config {spec!r}: {type(e).__name__}: {e}")
  if keys:
    try:
      check_overrides(config, keys)
    except ConfigKeyError as e:
      _usage_error(str(e))


def parse_flags(argv: List[str]) -> List[str]:
  """absl flag parsing, preceded by the checks of the --config file and its overrides."""
  check_config_file(config_spec(argv), override_keys(argv))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpshort for the flags.", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if config is None or not workdir:
    raise app.UsageError("--config and --workdir are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from diffusion import checkpoint, parallel, training
  from experiments.errors import ConfigError
  from experiments.validate import validate_config
  try:
    validate_config(config, mode)  # the device-independent checks, before JAX starts
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  from experiments import compile_cache
  try:
    compile_cache.enable(_COMPILATION_CACHE.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if config.parallel.distributed:
    parallel.initialize_distributed(config.parallel.coordinator_address,
                                    config.parallel.num_processes, config.parallel.process_id)
  from experiments import evaluate, reflow, sample, sweep, train
  expected = (ValueError, FileNotFoundError, checkpoint.WorkdirMismatchError,
              checkpoint.WorkdirLockedError, checkpoint.CheckpointError,
              training.NonFiniteError)
  try:
    if mode == "train":
      train.train(config, workdir, allow_fresh_start=_ALLOW_FRESH_START.value)
    elif mode == "sample":
      sample.run(config, workdir)
    elif mode == "sweep":
      sweep.run(config, workdir)
    elif mode == "pairs":
      reflow.run(config, workdir)
    else:
      evaluate.run(config, workdir)
  except expected as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  from experiments import signals  # one line, no traceback, for a signal before or after a run
  signals.exit_on_signal()
  app.run(main, flags_parser=parse_flags)
