"""The command line of the entry points (``experiments.main``, ``experiments.posthoc_ema``): the
modes, the flags, and the checks of ``--config=FILE`` and its ``--config.<key>=<value>`` overrides
before absl parses them.

ml_collections' config_flags fails on an unknown key with a bare AttributeError; here the
overrides are checked first, and an unknown key is an error naming close matches and the valid
keys of its section (``--config.training.num_stepz``: the keys under training.), or the sections
when the section itself is unknown. JAX-free: these run before JAX is imported.
"""
from __future__ import annotations

import difflib
import shlex
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from experiments.config_files import load_config_file

# The modes of ``experiments.main --mode`` (the one list: the flag, validate and the dispatch).
MODES = ("train", "sample", "eval", "sweep", "pairs")


class Flags(NamedTuple):
  """The flag holders of ``define_flags``."""
  config: Any
  workdir: Any
  mode: Any
  allow_fresh_start: Any
  compilation_cache: Any


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 sys_argv: Optional[List[str]] = None) -> Flags:
  """Defines the entry point's flags (--config with overrides, --workdir, --mode,
  --allow_fresh_start, --compilation_cache) on absl's global FLAGS; call it once per process,
  from the program's ``__main__`` (a module that defined them on import could not be imported
  next to another that does). ``flag_values`` / ``sys_argv`` (the command line whose
  --config.<key> overrides to accept; default sys.argv): a command line parsed in-process, on
  fresh ``flags.FlagValues()`` (tests/test_doc_commands.py)."""
  fv = dict(flag_values=flag_values)
  return Flags(
      config=config_flags.DEFINE_config_file(
          "config", None, "Experiment config file, e.g. configs/toy/checkerboard_vp.py.",
          lock_config=True, sys_argv=sys_argv, **fv),
      workdir=flags.DEFINE_string("workdir", None,
                                  "Directory for checkpoints, logs and results.", **fv),
      mode=flags.DEFINE_enum("mode", "train", list(MODES),
                             "What to run (sweep: FID / KID, or on toy data SW / MMD, against NFE, "
                             "experiments/sweep.py; pairs: "
                             "reflow's (noise, sample) pairs, experiments/reflow.py).", **fv),
      allow_fresh_start=flags.DEFINE_bool(
          "allow_fresh_start", False, "train: when every checkpoint of the workdir is proven "
          "corrupt, set them aside in corrupt_checkpoints/ and start from step 0 (refused "
          "otherwise).", **fv),
      compilation_cache=flags.DEFINE_string(
          "compilation_cache", None, "Persistent XLA compilation cache folder, or 'off' "
          "(default: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/diffusion_jax/xla; "
          "experiments/compile_cache.py).", **fv))


class ConfigKeyError(ValueError):
  """A --config.<key> override names no field of the config."""


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted key, value) of every leaf field of ``config``."""
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def config_keys(config: ml_collections.ConfigDict) -> List[str]:
  """Dotted names of every overridable (leaf) field, sorted."""
  return sorted(k for k, _ in leaves(config))


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


def _flag_value(value: Any) -> str:
  """``value`` as a --config.<key>=<value> override spells it (config_flags parses it back)."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return value if isinstance(value, str) else repr(value)


def override_args(base: ml_collections.ConfigDict,
                  config: ml_collections.ConfigDict) -> Tuple[List[str], List[str]]:
  """(the shell-quoted ``--config.<key>=<value>`` arguments that turn ``base``, a config file's
  get_config(), into ``config``; the keys whose value no override can set: None, or a key that
  ``base`` lacks)."""
  base_values = dict(leaves(base))
  args, unsettable = [], []
  for key, value in leaves(config):
    if key in base_values and base_values[key] == value:
      continue
    if value is None or key not in base_values:
      unsettable.append(key)
    else:
      args.append(shlex.quote(f"--config.{key}={_flag_value(value)}"))
  return args, unsettable


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


def _section(config: ml_collections.ConfigDict, key: str) -> Optional[str]:
  """The top-level section a dotted ``key`` is in (``training`` for training.num_stepz), or None
  when its first part names no section of ``config``."""
  head = key.split(".", 1)[0]
  return head if isinstance(config.get(head), ml_collections.ConfigDict) else None


def check_overrides(config: ml_collections.ConfigDict, keys: Sequence[str]) -> None:
  """Raises ConfigKeyError for keys that are not fields of ``config``: each with its close matches
  among all the keys, then the valid keys of its section only (``training.*`` for
  training.num_stepz), or, for a key whose section does not exist, the sections and the
  top-level fields."""
  valid = config_keys(config)
  bad = [k for k in keys if k not in valid]
  if not bad:
    return
  lines = []
  for k in bad:
    close = difflib.get_close_matches(k, valid, n=3, cutoff=0.6)
    lines.append(f"  --config.{k}" + (f"  (did you mean: {', '.join(close)}?)" if close else ""))
  listed = []
  for k in bad:
    section = _section(config, k)
    if section in listed:
      continue
    listed.append(section)
    if section is None:
      sections = [n for n, v in config.items() if isinstance(v, ml_collections.ConfigDict)]
      fields = [n for n, v in config.items() if not isinstance(v, ml_collections.ConfigDict)]
      lines.append("config sections: " + ", ".join(sorted(sections)) +
                   "; top-level fields: " + ", ".join(sorted(fields)))
    else:
      lines.append(f"valid keys of {section}:\n  " +
                   "\n  ".join(v for v in valid if v.startswith(section + ".")))
  raise ConfigKeyError("unknown config key(s):\n" + "\n".join(lines))


def usage_error(message: str) -> None:
  """Prints ``error: message`` to stderr and exits with status 2 (a usage error)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def check_config_file(spec: Optional[str], keys: Sequence[str]) -> None:
  """Before absl parses the flags (whose config loader fails with a traceback): the --config file
  exists and loads, and every override key names one of its fields; else a one-line error and
  exit status 2."""
  if not spec:
    return
  try:
    config = load_config_file(spec)
  except FileNotFoundError as e:
    usage_error(str(e))
  except Exception as e:  # noqa: BLE001 -- an error in the config file's own code: one line, exit 2
    usage_error(f"cannot load config {spec!r}: {type(e).__name__}: {e}")
  if keys:
    try:
      check_overrides(config, keys)
    except ConfigKeyError as e:
      usage_error(str(e))


def parse_flags(argv: List[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """absl flag parsing, preceded by the checks of the --config file and its overrides."""
  check_config_file(config_spec(argv), override_keys(argv))
  try:
    return flag_values(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpshort for the flags.", file=sys.stderr)
    sys.exit(2)


def check_command(parsed: Flags, argv: Sequence[str]) -> None:
  """The parsed command line is complete: no positional arguments left in ``argv`` (what
  absl's parsing returns, the program name first), --config and --workdir given; else
  app.UsageError."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  if parsed.config.value is None or not parsed.workdir.value:
    raise app.UsageError("--config and --workdir are required")
