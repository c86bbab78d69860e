"""Sampling config: which sampler, how many steps, which time grid, and its hyper-parameters.

Used as ``config.sampling`` by configs/base.py. From the command line, e.g.

  python -m experiments.main --config=configs/toy/8gaussians_vp.py --mode=sample \
      --config.sampling.sampler=dpmpp_2m --config.sampling.num_steps=10 \
      --config.sampling.grid=logsnr

Every hyper-parameter of every registered sampler has one field here, defaulting to None, which
means "the sampler's own default" (the driver passes only the fields that are not None to
``diffusion.samplers.build_sampler``, which rejects names the chosen sampler does not accept).
A plain ``None`` field cannot be overridden by ml_collections' config flags (its type is NoneType),
so each field is a typed placeholder, ``config_dict.placeholder(float)`` etc.: its value is None
until set, and ``--config.sampling.snr=0.1`` sets it to the float 0.1. The fields are read from the
samplers' signatures, so a newly registered sampler's hyper-parameters appear here automatically.
"""
from __future__ import annotations

import math
from typing import Dict

import ml_collections
from ml_collections import config_dict


def hyperparameter_types() -> Dict[str, type]:
  """{hyper-parameter name: type} over all registered samplers (types from their defaults)."""
  from diffusion.samplers import registered_samplers, sampler_info
  types: Dict[str, type] = {}
  for name in registered_samplers():
    for k, v in sampler_info(name).defaults().items():
      tp = type(v)
      if tp not in (bool, int, float, str):
        raise ValueError(f"sampler {name!r}: hyper-parameter {k!r} has a default of type "
                         f"{tp.__name__}; configs need bool, int, float or str")
      prev = types.get(k)
      if prev is not None and prev is not tp:
        if {prev, tp} == {int, float}:
          tp = float
        else:
          raise ValueError(f"hyper-parameter {k!r} has type {prev.__name__} in one sampler and "
                           f"{tp.__name__} in {name!r}")
      types[k] = tp
  return types


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.sampler = "heun"  # a name from diffusion.samplers.registered_samplers()
  c.num_steps = 18  # grid intervals N (NFE depends on the sampler: see docs/samplers.md)
  c.grid = "karras"  # uniform | karras | logsnr | quadratic | logsnr_power[:kappa]
  c.rho = 7.0  # Karras grid exponent
  c.t_min = config_dict.placeholder(float)  # None: the schedule's t_min
  c.t_max = config_dict.placeholder(float)  # None: the schedule's t_max
  c.logsnr_min = config_dict.placeholder(float)  # None: no clipping of the grid's noisy end
  c.logsnr_max = config_dict.placeholder(float)  # None: no clipping of the grid's clean end
  c.num_samples = 10_000
  c.batch_size = 1_000
  for name, tp in sorted(hyperparameter_types().items()):
    c[name] = config_dict.placeholder(tp)
  return c


def non_default_fields(c: ml_collections.ConfigDict) -> Dict[str, object]:
  """The fields to pass to build_sampler: all but num_samples / batch_size, None ones dropped."""
  return {k: v for k, v in c.to_dict().items()
          if k not in ("num_samples", "batch_size") and v is not None
          and not (isinstance(v, float) and math.isnan(v))}
