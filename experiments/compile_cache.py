"""The persistent XLA compilation cache of the command-line entry points, on by default.

A second run of the same step (a resumed job, sample / eval after train, a re-run benchmark)
then loads the compiled executable instead of recompiling it (minutes on CPU for the CIFAR-10
U-Nets). JAX keys each entry by the program, the XLA flags, the jax / jaxlib versions and the
device, so a stale entry is never used; deleting the folder is always safe.

Where (first that applies): ``--compilation_cache=DIR``; ``$JAX_COMPILATION_CACHE_DIR``;
``$XDG_CACHE_HOME/diffusion_jax/xla``; ``~/.cache/diffusion_jax/xla``. ``--compilation_cache=off``
turns it off.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import jax

OFF = "off"


def default_dir(environ: Mapping[str, str] = os.environ) -> str:
  """The cache folder when no flag is given (see the module docstring)."""
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return environ["JAX_COMPILATION_CACHE_DIR"]
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "diffusion_jax", "xla")


def resolve(flag: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The folder to use for ``--compilation_cache=flag`` (None or '' = the default; 'off' = None).
  A path that exists but is not a folder is a ValueError naming it."""
  if flag == OFF:
    return None
  path = os.path.abspath(os.path.expanduser(flag or default_dir(environ)))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--compilation_cache={path!r} is not a folder; give a folder or "
                     f"'{OFF}'")
  return path


def enable(flag: Optional[str], min_compile_secs: float = 1.0) -> Optional[str]:
  """Turns the persistent cache on at ``resolve(flag)`` for programs that took at least
  ``min_compile_secs`` to compile (unless $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS sets it);
  returns the folder (None: off)."""
  path = resolve(flag)
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
  return path
