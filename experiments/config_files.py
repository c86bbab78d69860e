"""Loading an experiment config file the way ``--config=FILE[:arg]`` does, and importing the
user modules it names (``config.imports``).

Its own module so that library code (validate, distill, conditioning) can load a teacher's or a
classifier's config file without importing experiments.main, whose absl flags may be defined
only once per process (``python -m experiments.main`` runs it as __main__, and a second import
under its module name would define them again: DuplicateFlagError).
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import ml_collections

from diffusion.config_checks import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path[:arg]`` the way config_flags does (get_config() or get_config(arg))."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} is not a file")
  mod_spec = importlib.util.spec_from_file_location("_experiment_config", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def import_user_modules(config: ml_collections.ConfigDict) -> None:
  """Imports the modules named in ``config.imports`` (dotted names importable from the working
  directory or sys.path), so that what they register (an objective, a sampler, a network, a
  schedule) exists before the config is validated. ConfigError naming a module that does not
  import."""
  names = config.get("imports", ())
  if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
    raise ConfigError(f"config.imports={names!r} must be a tuple of module names, e.g. "
                      f"('my_project.objectives',)")
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as e:  # a missing module or a failing import inside it: named, one line
      raise ConfigError(f"config.imports: cannot import {name!r}: {type(e).__name__}: {e}"
                        ) from None
