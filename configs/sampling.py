"""Sampling config: which sampler, how many steps, which time grid, and its hyper-parameters.

Used as ``config.sampling`` by configs/base.py. From the command line, e.g.

  python -m experiments.main --config=configs/toy/8gaussians_vp.py --mode=sample \
      --config.sampling.sampler=dpmpp_2m --config.sampling.num_steps=10 \
      --config.sampling.grid=logsnr

Every hyper-parameter of every registered sampler has one field here, defaulting to None, which
means "the sampler's own default" (the driver passes only the fields that are not None to
``diffusion.samplers.build_sampler``; experiments/validate.py refuses, before any work, a field the
chosen sampler does not accept). A plain ``None`` field cannot be overridden by ml_collections'
config flags (its type is NoneType), so each field is a typed placeholder,
``config_dict.placeholder(float)`` etc.: its value is None until set, and
``--config.sampling.snr=0.1`` sets it to the float 0.1.

Configs are data: this file imports ml_collections only (not the samplers, which would import
JAX), so the hyper-parameters ``HYPERPARAMETER_TYPES`` are read from the registered samplers'
signatures in diffusion/samplers/ with ``ast`` (``hyperparameter_types``): a sampler with a new
hyper-parameter gets its config field by itself. tests/test_config_files.py checks the table
against the live registry. (A sampler registered in a user's module, ``config.imports``, takes
its hyper-parameters' defaults: the config file is built before that module is imported.)
"""
from __future__ import annotations

import ast
import math
import os
from typing import Dict

import ml_collections
from ml_collections import config_dict


# realpath: a configs/ folder linked into another directory still finds the repository's.
_SAMPLERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                             "diffusion", "samplers")


def _literal_type(node: ast.expr, where: str) -> type:
  if isinstance(node, ast.Constant) and type(node.value) in (bool, int, float, str):
    return type(node.value)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):  # -1, -0.5
    return _literal_type(node.operand, where)
  if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "math":  # math.inf
    return float
  if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("float", "int", "str", "bool"):
    return {"float": float, "int": int, "str": str, "bool": bool}[node.func.id]  # float("inf")
  raise ValueError(f"{where}: a sampler hyper-parameter's default must be a bool, int, float or "
                   f"str literal (configs read it without importing the sampler)")


def _registers_sampler(fn: ast.FunctionDef) -> bool:
  return any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_sampler"
             for d in fn.decorator_list)


def hyperparameter_types() -> Dict[str, type]:
  """{hyper-parameter name: type} over all samplers registered in diffusion/samplers/: the
  keyword-only arguments (but the registry's common ones) of every function decorated with
  ``register_sampler``, typed by their default (int and float defaults of one name make it
  float). Read from the source with ``ast``, so this data file imports neither the samplers nor
  JAX; tests/test_config_files.py checks it against the live registry."""
  with open(os.path.join(_SAMPLERS_DIR, "registry.py")) as f:
    registry = ast.parse(f.read())
  common = next(ast.literal_eval(n.value) for n in registry.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "COMMON_ARGS")
  types: Dict[str, type] = {}
  for name in sorted(os.listdir(_SAMPLERS_DIR)):
    if not name.endswith(".py"):
      continue
    with open(os.path.join(_SAMPLERS_DIR, name)) as f:
      tree = ast.parse(f.read())
    for fn in ast.walk(tree):
      if not (isinstance(fn, ast.FunctionDef) and _registers_sampler(fn)):
        continue
      for arg, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
        if arg.arg in common or default is None:
          continue
        tp = _literal_type(default, f"diffusion/samplers/{name}: {fn.name}({arg.arg}=...)")
        prev = types.get(arg.arg)
        types[arg.arg] = float if prev is not None and {prev, tp} == {int, float} else tp
  return dict(sorted(types.items()))


# {hyper-parameter name: type} over all registered samplers, derived from their signatures.
HYPERPARAMETER_TYPES: Dict[str, type] = hyperparameter_types()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.sampler = "heun"  # a name from diffusion.samplers.registered_samplers()
  c.num_steps = 18  # grid intervals N (NFE depends on the sampler: see docs/samplers.md)
  # uniform | karras | logsnr | quadratic | logsnr_power[:kappa] | linspace | leading[:offset] |
  # trailing | ays_sd15 | ays_sdxl | ays_svd | ays:<costs file> | fitted:<grids file> (the last
  # two written by `python -m experiments.search_grid --method=ays|fit`; docs/samplers.md)
  c.grid = "karras"
  c.rho = 7.0  # Karras grid exponent
  c.t_min = config_dict.placeholder(float)  # None: the schedule's t_min
  c.t_max = config_dict.placeholder(float)  # None: the schedule's t_max
  c.logsnr_min = config_dict.placeholder(float)  # None: no clipping of the grid's noisy end
  c.logsnr_max = config_dict.placeholder(float)  # None: no clipping of the grid's clean end
  # An explicit time grid t_0 = t_max > ... > t_N (num_steps + 1 floats, inside the schedule's
  # range), e.g. one found by `python -m experiments.search_grid` (docs/few_step.md); set, it
  # replaces grid / rho / t_min / t_max / logsnr_min / logsnr_max (which are then not passed).
  # None: the grid those fields build (older runs' behaviour).
  c.time_grid = config_dict.placeholder(tuple)
  # Clip every x0_hat to the data range [-1, 1] before the sampler uses it (DDPM's and DDIM's
  # released samplers do, clip_denoised=True); images only. Not a sampler hyper-parameter.
  c.clip_denoised = False
  # The dtype the network computes in while sampling: 'float32' | 'bfloat16' (parameters cast
  # once, inputs cast, output cast back to float32; the sampler's state and arithmetic stay
  # float32). Read by sample, eval and sweep (the likelihood and ELBO of eval stay float32).
  c.compute_dtype = "float32"
  c.num_samples = 10_000
  c.batch_size = 1_000
  for name, tp in sorted(hyperparameter_types().items()):
    c[name] = config_dict.placeholder(tp)
  return c


# Fields of config.sampling that are not build_sampler arguments.
RUN_FIELDS = ("num_samples", "batch_size", "clip_denoised", "compute_dtype")
# Fields that build the time grid; not passed when sampling.time_grid gives it explicitly.
GRID_BUILD_FIELDS = ("grid", "rho", "t_min", "t_max", "logsnr_min", "logsnr_max")


def builder_fields(fields: Dict[str, object]) -> Dict[str, object]:
  """``fields`` (config.sampling as a dict) less the GRID_BUILD_FIELDS when time_grid is set
  (build_sampler refuses both), with time_grid as a list (as it reads back from JSON,
  so result settings that hold it compare equal); unchanged otherwise."""
  if fields.get("time_grid") is None:
    return {k: v for k, v in fields.items() if k != "time_grid"}
  out = {k: v for k, v in fields.items() if k not in GRID_BUILD_FIELDS}
  out["time_grid"] = list(fields["time_grid"])
  return out


def non_default_fields(c: ml_collections.ConfigDict) -> Dict[str, object]:
  """The fields to pass to build_sampler: all but RUN_FIELDS, None ones dropped, and the grid's
  building fields dropped when time_grid is set (``builder_fields``)."""
  return builder_fields({k: v for k, v in c.to_dict().items()
                         if k not in RUN_FIELDS and v is not None
                         and not (isinstance(v, float) and math.isnan(v))})
