"""Shared pieces of the posterior samplers (``dps``, ``daps``, ``ddrm``): argument checks, the
label-only inner denoiser, per-sample noise and the returned info."""
from __future__ import annotations

from typing import Any, Dict

import jax.numpy as jnp
import numpy as np

from diffusion import guidance
from diffusion.inverse.operators import LinearOperator
from diffusion.samplers import engine
from diffusion.schedules import Schedule

Array = Any


def check_op(op) -> LinearOperator:
  if not isinstance(op, LinearOperator):
    raise TypeError(f"op must be a diffusion.inverse operator (Inpainting, Colorization, "
                    f"SuperResolution, MatrixOperator), got {op!r}")
  return op


def check_int(name: str, v, lo: int = 1) -> int:
  if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
  return int(v)


def check_choice(name: str, v, accepted) -> str:
  if not isinstance(v, str) or v not in accepted:
    raise ValueError(f"{name}={v!r}; accepted: {tuple(accepted)}")
  return v


def check_call(denoise, schedule, x_T, time_grid, cond, op: LinearOperator) -> np.ndarray:
  """The sampler-call checks (before tracing): callable denoiser, a Schedule, cond holding a
  well-shaped observation for x_T, a checked decreasing host grid (returned, float64)."""
  if not callable(denoise):
    raise TypeError(f"denoise must be a callable denoise(x, t, cond), got {denoise!r}")
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  op.check(tuple(x_T.shape), cond)
  return engine.check_grid(time_grid, schedule)


def inner(denoise, cond):
  """The inner denoiser with the class labels of ``cond`` (if any): (x, t) -> x0_hat."""
  label = guidance.label_of(cond)
  return lambda x, t: denoise(x, t, label)


def observation(op: LinearOperator, cond, dtype) -> Array:
  """cond['y'] restricted to the observation space (``op.observed``), in ``dtype``."""
  return op.observed(jnp.asarray(cond["y"]).astype(dtype), cond)


def per_sample_norm(v: Array) -> Array:
  """||v_b|| over all but the leading axis, shaped (B, 1, ...) to broadcast against v."""
  red = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(v * v, axis=red, keepdims=True))


def normal(keys, counter, like: Array) -> Array:
  """Sample b's normal(fold_in(keys[b], counter)) of like's per-sample shape and dtype."""
  return engine.per_sample_normal(keys, counter, like.shape[1:], like.dtype)


def info(name: str, denoise, nfe: int, network_vjp: bool) -> Dict[str, Any]:
  """The sampler's info: the true denoiser-call count and the cost of a call (the wrapped
  denoiser's batch multiplier, whether it back-propagates)."""
  base = guidance.denoiser_info(denoise)
  return {"nfe": int(nfe), "method": name, "batch_multiplier": base["batch_multiplier"],
          "network_vjp": bool(base["network_vjp"] or network_vjp),
          "transforms": tuple(base["transforms"]) + (name,)}
