"""Adaptive Projected Guidance (APG; Sadat, Hilliges & Weber, "Eliminating Oversaturation and
Artifacts of High Guidance Scales in Diffusion Models", ICLR 2025)."""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp

from diffusion.guidance.base import (Array, Denoiser, _check_finite, check_denoiser,
                                     check_interval, check_null_label, cond_and_uncond,
                                     in_interval, per_sample_sum, with_info)

BASES = ("cond", "uncond")


def project(v: Array, onto: Array, eps: float = 1e-12) -> Tuple[Array, Array]:
  """(v_parallel, v_orthogonal) of v (B, ...) w.r.t. ``onto`` (B, ...), per sample over all
  non-batch axes (APG eq. 5): u = onto / max(||onto||, eps) (torch's ``normalize``),
  v_par = <v, u> u, v_orth = v - v_par."""
  norm = jnp.sqrt(per_sample_sum(onto * onto))
  u = onto / jnp.maximum(norm, eps)
  par = per_sample_sum(v * u) * u
  return par, v - par


def apg_combine(x0_c: Array, x0_u: Array, weight: float, *, eta: float = 1.0,
                norm_threshold: float = 0.0, momentum: float = 0.0,
                running: Optional[Array] = None, base: str = "cond") -> Tuple[Array, Array]:
  """One APG combination (Sadat et al. 2025, Alg. 1), pure: returns (x0_guided, new running).

    D     = x0_c - x0_u                                         (the CFG update, eq. 4)
    D     <- D + beta * running          (reverse momentum, eq. 9; beta = ``momentum`` < 0 in
                                          the paper, e.g. -0.5; ``running`` None or 0 at start)
    D     <- D * min(1, r / ||D||)       (norm threshold r = ``norm_threshold``, eq. 8; 0: off)
    D_par, D_orth = project(D, x0_c)     (eq. 5)
    x0    = x0_c + (w - 1) (D_orth + eta D_par)   (eq. 6-7; base 'cond', the paper's Alg. 1)

  ``base='uncond'`` gives diffusers' ``normalized_guidance`` (use_original_formulation=False):
  x0 = x0_u + w (D_orth + eta D_par), which differs from the paper's unless eta = 1 (its
  parallel part is weighted w eta - 1 instead of (w - 1) eta). With eta = 1, r = 0, beta = 0
  both are classifier-free guidance at scale w. The new running average is the D after the
  momentum step (before the threshold), as in the reference ``MomentumBuffer``."""
  d = x0_c - x0_u
  if momentum != 0.0 and running is not None:
    d = d + jnp.asarray(momentum, d.dtype) * running
  new_running = d
  if norm_threshold > 0:
    norm = jnp.sqrt(per_sample_sum(d * d))
    d = d * jnp.minimum(1.0, norm_threshold / norm)
  par, orth = project(d, x0_c)
  update = orth + jnp.asarray(eta, d.dtype) * par
  if base == "cond":
    return x0_c + jnp.asarray(weight - 1.0, d.dtype) * update, new_running
  return x0_u + jnp.asarray(weight, d.dtype) * update, new_running


def adaptive_projected_guidance(denoise: Denoiser, weight: float, *, null_label: int,
                                eta: float = 1.0, norm_threshold: float = 0.0,
                                momentum: float = 0.0, base: str = "cond",
                                interval: Optional[Tuple[float, float]] = None) -> Denoiser:
  """Adaptive Projected Guidance (Sadat et al., ICLR 2025) of a conditional denoiser, as a
  denoiser: ``apg_combine`` of x0_c = denoise(x, t, y) and x0_u = denoise(x, t, NULL), both from
  ONE batched call on [x; x] (``batch_multiplier`` 2), in x0 (the paper applies APG to the
  denoised prediction, sec. 4). Per sample, the update D = x0_c - x0_u is split into its part
  parallel to x0_c (weighted by ``eta``; eta = 0 is the paper's recommended APG) and its
  orthogonal part, after optional norm clipping to ``norm_threshold`` r:

    x0 = x0_c + (w - 1) (D_orth + eta D_par),   D <- D min(1, r / ||D||)

  w is the 'scale' convention (w = 1: the plain conditional). With eta = 1, r = 0 it is exactly
  classifier-free guidance at scale w.

  Momentum (eq. 9, D_t <- D_t + beta D_{t+1}) is STATE carried across sampler steps; a denoiser
  transformer is a pure function of (x_t, t, cond) called inside the samplers' ``lax.scan``, so
  this transformer supports only ``momentum=0`` (ValueError otherwise). The pure
  ``apg_combine(..., momentum, running)`` returns the new running average for a sampler loop
  that threads it (none of the registered ones does: momentum per call would also be ill-defined
  for multi-evaluation steps such as Heun's).

  Args:
    denoise: conditional denoiser ``(x (B, ...), t (B,), cond) -> x0_hat``; cond holds labels.
    weight: finite guidance scale w.
    null_label: the NULL (unconditional) label, = num_classes, an int >= 1.
    eta: finite weight of the parallel component (paper: 0; 1 keeps it, giving CFG).
    norm_threshold: r >= 0; 0 (default, as the reference) disables the rescaling.
    momentum: must be 0 here (see above).
    base: 'cond' (paper, Alg. 1) or 'uncond' (diffusers' ``normalized_guidance``).
    interval: None or (t_lo, t_hi): guidance only there, elsewhere the plain conditional x0_c.
  """
  check_denoiser(denoise)
  w = _check_finite("weight", weight)
  eta = _check_finite("eta", eta)
  r = _check_finite("norm_threshold", norm_threshold)
  if r < 0:
    raise ValueError(f"norm_threshold must be >= 0 (0 disables it), got {norm_threshold!r}")
  beta = _check_finite("momentum", momentum)
  if beta != 0.0:
    raise ValueError(f"apg: momentum={momentum!r} needs state across sampler steps, which a "
                     f"denoiser transformer cannot hold; use momentum=0 here, or thread the "
                     f"running average through your own loop with apg_combine(..., momentum, "
                     f"running)")
  if base not in BASES:
    raise ValueError(f"apg: unknown base {base!r}; accepted: {BASES} ('cond': the paper)")
  null = check_null_label(null_label)
  interval = check_interval(interval)

  def guided(x, t, cond=None):
    x0_c, x0_u, tb = cond_and_uncond(denoise, x, t, cond, null, "apg guidance")
    x0, _ = apg_combine(x0_c, x0_u, w, eta=eta, norm_threshold=r, base=base)
    if interval is not None:
      x0 = jnp.where(in_interval(tb, interval, x0), x0, x0_c)
    return x0

  return with_info(guided, denoise, "adaptive_projected_guidance", batch_multiplier=2)
