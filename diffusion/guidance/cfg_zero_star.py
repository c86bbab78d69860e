"""CFG-Zero* (Fan, Zheng, Li, Yang, Loy, Ding, Sun, Wu, "CFG-Zero*: Improved Classifier-Free
Guidance for Flow Matching Models", 2025): the optimized scale s* and zero-init."""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp

from diffusion.guidance.base import (Array, Denoiser, _check_finite, _per_sample, check_denoiser,
                                     check_interval, check_null_label, check_space,
                                     cond_and_uncond, from_space, in_interval, per_sample_sum,
                                     to_space, with_info)


def optimized_scale(pred_c: Array, pred_u: Array, eps: float = 1e-8) -> Array:
  """s* = <pred_c, pred_u> / (||pred_u||^2 + eps) per sample over all non-batch axes, (B, 1, ...)
  (Fan et al. 2025, eq. 7 / Alg. 1; eps as the reference's ``cfg_zero_star_scale``)."""
  return per_sample_sum(pred_c * pred_u) / (per_sample_sum(pred_u * pred_u) + eps)


def zero_star_combine(pred_c: Array, pred_u: Array, weight: float, *, optimized: bool = True,
                      eps: float = 1e-8) -> Array:
  """pred = s* pred_u + w (pred_c - s* pred_u) (Fan et al. 2025, Alg. 1), written as
  pred_c + (w - 1)(pred_c - s* pred_u) (exactly pred_c at w = 1); ``optimized=False``: s* = 1,
  plain CFG."""
  su = optimized_scale(pred_c, pred_u, eps) * pred_u if optimized else pred_u
  return pred_c + jnp.asarray(weight - 1.0, pred_c.dtype) * (pred_c - su)


def zero_velocity_x0(x: Array, t: Array, schedule) -> Array:
  """The x0 prediction whose PF-ODE velocity alpha' x0 + sigma' eps (eps = (x - alpha x0)/sigma)
  is zero: x0 = sigma' x / (sigma' alpha - alpha' sigma). x0 = x for rectified flow (alpha = 1 - t,
  sigma = t) and for VE / EDM (alpha = 1)."""
  al, sg = _per_sample(schedule.alpha(t), x), _per_sample(schedule.sigma(t), x)
  da, ds = _per_sample(schedule.dalpha_dt(t), x), _per_sample(schedule.dsigma_dt(t), x)
  return ds * x / (ds * al - da * sg)


def classifier_free_zero_star(denoise: Denoiser, weight: float, *, null_label: int,
                              schedule=None, space: str = "velocity", optimized: bool = True,
                              zero_init_t: Optional[float] = None, eps: float = 1e-8,
                              interval: Optional[Tuple[float, float]] = None) -> Denoiser:
  """CFG-Zero* (Fan et al. 2025) of a conditional denoiser, as a denoiser.

  x0_c, x0_u come from ONE batched call on [x; x] (``batch_multiplier`` 2) and are mapped to the
  prediction ``space`` (``guidance.base.space_coefficients``), where

    s*   = <v_c, v_u> / ||v_u||^2                   (per sample, eq. 7)
    v    = s* v_u + w (v_c - s* v_u)                (Alg. 1; w the CFG scale, w = 1: v_c)

  is mapped back to x0. The paper defines the projection in the velocity space of flow matching
  (v = eps - x0 for alpha = 1 - t, sigma = t): default ``space='velocity'``, the PF-ODE velocity
  dx/dt = alpha' x0 + sigma' eps of any schedule, which is that velocity for rectified flow and,
  as s* is invariant to a per-sample scaling, the same for any reparametrisation of time. s* is
  not invariant to the x-dependent offsets between spaces ('x0', 'eps', 'v' give other s*), so
  the space is a flag. With s* = 1 (``optimized=False``) it is CFG at scale w in every space.

  Zero-init (sec. 4.2): the reference outputs a zero velocity for the first K sampler steps
  (diffusers: steps i < zero_init_steps). A transformer sees t, not the step index, so here it is
  a time: for t > ``zero_init_t`` the output is the x0 of zero PF-ODE velocity,
  ``zero_velocity_x0`` (x0 = x for rectified flow, where an Euler / DDIM step then keeps x
  exactly; for other schedules x is kept only up to the solver's error). To zero the first K
  steps of a grid t_0 > t_1 > ..., choose t_K < zero_init_t < t_{K-1} and check that no
  intermediate evaluation of a multi-stage solver falls above it unintentionally. Zero-init
  applies whatever the ``interval``; None disables it.

  Args:
    denoise: conditional denoiser ``(x (B, ...), t (B,), cond) -> x0_hat``; cond holds labels.
    weight: finite guidance scale w.
    null_label: the NULL label (= num_classes), an int >= 1.
    schedule: the ``diffusion.schedules.Schedule`` (needed unless space='x0' and no zero-init).
    space: 'velocity' (paper), 'eps', 'v' or 'x0'.
    optimized: use s* (True, paper) or s* = 1 (plain CFG).
    zero_init_t: None, or the time above which the velocity is zeroed.
    eps: added to ||v_u||^2 (the reference's 1e-8), >= 0.
    interval: None or (t_lo, t_hi): guidance only there, elsewhere the plain conditional.
  """
  check_denoiser(denoise)
  w = _check_finite("weight", weight)
  if not isinstance(optimized, bool):
    raise TypeError(f"cfg_zero_star: optimized must be a bool, got {optimized!r}")
  e = _check_finite("eps", eps)
  if e < 0:
    raise ValueError(f"cfg_zero_star: eps must be >= 0, got {eps!r}")
  space = check_space(space, schedule, "cfg_zero_star")
  if zero_init_t is not None:
    zero_init_t = _check_finite("zero_init_t", zero_init_t)
    check_space("velocity", schedule, "cfg_zero_star with zero_init_t")
  null = check_null_label(null_label)
  interval = check_interval(interval)

  def guided(x, t, cond=None):
    x0_c, x0_u, tb = cond_and_uncond(denoise, x, t, cond, null, "cfg_zero_star guidance")
    pc = to_space(x0_c, x, tb, schedule, space)
    pu = to_space(x0_u, x, tb, schedule, space)
    x0 = from_space(zero_star_combine(pc, pu, w, optimized=optimized, eps=e), x, tb, schedule,
                    space)
    if interval is not None:
      x0 = jnp.where(in_interval(tb, interval, x0), x0, x0_c)
    if zero_init_t is not None:
      zero = _per_sample(tb > zero_init_t, x0).astype(bool)
      x0 = jnp.where(zero, zero_velocity_x0(x, tb, schedule), x0)
    return x0

  return with_info(guided, denoise, "classifier_free_zero_star", batch_multiplier=2)
