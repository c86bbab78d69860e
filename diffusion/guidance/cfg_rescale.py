"""Classifier-free guidance with the std rescale of Lin, Liu, Li & Yang, "Common Diffusion Noise
Schedules and Sample Steps are Flawed" (WACV 2024), sec. 3.4, eq. 15-16, Alg. 2."""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp

from diffusion.guidance.base import (Array, Denoiser, _check_finite, check_denoiser,
                                     check_interval, check_null_label, check_space,
                                     cond_and_uncond, from_space, in_interval, to_space,
                                     with_info)


def per_sample_std(a: Array) -> Array:
  """Population std over all non-batch axes, (B, 1, ...). (torch's default is Bessel-corrected;
  only ratios of two stds of the same size are used, where the correction cancels.)"""
  axes = tuple(range(1, a.ndim))
  return jnp.std(a, axis=axes, keepdims=True)


def rescale_combine(pred_c: Array, pred_u: Array, weight: float, phi: float) -> Array:
  """Lin et al. 2024, eq. 15-16 (Alg. 2) on predictions of one space, (B, ...):

    g     = pred_u + w (pred_c - pred_u)                  (CFG, scale w)
    g_res = g * std(pred_c) / std(g)                      (eq. 15, per sample)
    out   = phi g_res + (1 - phi) g                       (eq. 16)

  = diffusers' ``rescale_noise_cfg(g, pred_c, guidance_rescale=phi)``."""
  dt = pred_c.dtype
  g = pred_c + jnp.asarray(weight - 1.0, dt) * (pred_c - pred_u)  # exactly pred_c at w = 1
  factor = per_sample_std(pred_c) / per_sample_std(g)
  return g * (jnp.asarray(phi, dt) * factor + jnp.asarray(1.0 - phi, dt))


def rescaled_classifier_free(denoise: Denoiser, weight: float, *, null_label: int,
                             phi: float = 0.7, space: str = "v", schedule=None,
                             interval: Optional[Tuple[float, float]] = None) -> Denoiser:
  """CFG rescale (Lin et al. 2024, sec. 3.4) of a conditional denoiser, as a denoiser.

  x0_c, x0_u come from ONE batched call on [x; x] (``batch_multiplier`` 2), are mapped to the
  prediction ``space`` at (x_t, t) (``guidance.base.space_coefficients``), combined there by
  ``rescale_combine`` (CFG at scale w, the result's per-sample std rescaled to the conditional
  prediction's, mixed with the unrescaled one by phi) and mapped back to x0.

  The space matters: CFG itself is affine, so it is the same in every space, but the std rescale
  is not (std(a x + b x0) is not a x + b std(x0)); phi = 0 is CFG in every space. The paper's
  Alg. 2 acts on the v prediction of its v-prediction models (default ``space='v'``, v = alpha
  eps - sigma x0); diffusers' ``rescale_noise_cfg`` acts on whatever the network predicts
  (``space='eps'`` for an epsilon model, 'v' for a v model); 'x0' and 'velocity' are offered for
  comparison. Every space but 'x0' needs ``schedule`` and sigma(t) > 0, and its map back to x0
  divides by the coefficient of x0 in it (alpha/sigma for 'eps': do not use 'eps' where alpha =
  0, at a zero-terminal-SNR start; 'v' is finite there).

  Args:
    denoise: conditional denoiser ``(x (B, ...), t (B,), cond) -> x0_hat``; cond holds labels.
    weight: finite guidance scale w (w = 1: the plain conditional).
    null_label: the NULL label (= num_classes), an int >= 1.
    phi: rescale mix in [0, 1] (paper: 0.7; 0: plain CFG).
    space: 'v' (paper), 'eps' (diffusers on an epsilon model), 'x0' or 'velocity'.
    schedule: the ``diffusion.schedules.Schedule`` (needed unless space='x0').
    interval: None or (t_lo, t_hi): guidance only there, elsewhere the plain conditional.
  """
  check_denoiser(denoise)
  w = _check_finite("weight", weight)
  phi = _check_finite("phi", phi)
  if not 0.0 <= phi <= 1.0:
    raise ValueError(f"cfg_rescale: phi must be in [0, 1] (0: plain CFG), got {phi!r}")
  space = check_space(space, schedule, "cfg_rescale")
  null = check_null_label(null_label)
  interval = check_interval(interval)

  def guided(x, t, cond=None):
    x0_c, x0_u, tb = cond_and_uncond(denoise, x, t, cond, null, "cfg_rescale guidance")
    pc = to_space(x0_c, x, tb, schedule, space)
    pu = to_space(x0_u, x, tb, schedule, space)
    x0 = from_space(rescale_combine(pc, pu, w, phi), x, tb, schedule, space)
    if interval is not None:
      x0 = jnp.where(in_interval(tb, interval, x0), x0, x0_c)
    return x0

  return with_info(guided, denoise, "rescaled_classifier_free", batch_multiplier=2)
