"""Loading an experiment config file the way ``--config=FILE[:arg]`` does.

Its own module so that library code (validate, distill, conditioning) can load a teacher's or a
classifier's config file without importing experiments.main, whose absl flags may be defined
only once per process (``python -m experiments.main`` runs it as __main__, and a second import
under its module name would define them again: DuplicateFlagError).
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections


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
