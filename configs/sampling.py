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
JAX), so the hyper-parameters are the static table ``HYPERPARAMETER_TYPES``.
tests/test_config_files.py checks that it equals the registry's hyper-parameters and their types
exactly: a sampler with a new hyper-parameter fails that test, which names the entry to add.
"""
from __future__ import annotations

import math
from typing import Dict

import ml_collections
from ml_collections import config_dict


# {hyper-parameter name: type} over all registered samplers (the type of its default; int and
# float defaults of one name make it float). Checked against diffusion.samplers by
# tests/test_config_files.py.
HYPERPARAMETER_TYPES: Dict[str, type] = {
    "S_churn": float,
    "S_max": float,
    "S_min": float,
    "S_noise": float,
    "atol": float,
    "d2_weight": str,
    "eta": float,
    "final_denoise": bool,
    "h_init": float,
    "lower_order_final": bool,
    "max_steps": int,
    "n_corrector": int,
    "order": int,
    "predictor": str,
    "r": float,
    "rtol": float,
    "snr": float,
    "solver": str,
    "step_size": str,
    "theta": float,
    "variables": str,
    "variance": str,
    "variant": str,
    "warmup": bool,
}


def hyperparameter_types() -> Dict[str, type]:
  """{hyper-parameter name: type} over all registered samplers (a copy of the static table)."""
  return dict(HYPERPARAMETER_TYPES)


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


def non_default_fields(c: ml_collections.ConfigDict) -> Dict[str, object]:
  """The fields to pass to build_sampler: all but RUN_FIELDS, None ones dropped."""
  return {k: v for k, v in c.to_dict().items()
          if k not in RUN_FIELDS and v is not None
          and not (isinstance(v, float) and math.isnan(v))}
