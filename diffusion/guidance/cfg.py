"""Classifier-free guidance (Ho & Salimans 2021), with the guidance interval (Kynkaanniemi et al.
2024)."""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp

from diffusion.guidance.base import (Denoiser, _check_finite, check_interval, check_null_label,
                                     cond_and_uncond, in_interval, with_info)

CONVENTIONS = ("scale", "ho_salimans")


def classifier_free(denoise: Denoiser, weight: float, *, null_label: int,
                    convention: str = "scale",
                    interval: Optional[Tuple[float, float]] = None) -> Denoiser:
  """Classifier-free guidance (Ho & Salimans 2021) of a conditional denoiser, as a denoiser.

  With x0_c = denoise(x, t, y) and x0_u = denoise(x, t, NULL):

    convention 'scale'        x0 = x0_u + w (x0_c - x0_u)      w = 1: the plain conditional,
                              w = 0: the unconditional ('guidance scale' of EDM2, Karras et al.
                              2024, and Kynkaanniemi et al. 2024);
    convention 'ho_salimans'  x0 = (1 + w) x0_c - w x0_u        (Ho & Salimans 2021, eq. 6, in
                              x0 instead of eps: the same, as both are affine in each other at
                              fixed x_t, t); w = 0: the plain conditional.

  so w_scale = 1 + w_ho_salimans. ``interval`` = (t_lo, t_hi): guidance only for t_lo <= t <= t_hi,
  elsewhere the plain conditional x0_c ("Applying guidance in a limited interval", Kynkaanniemi
  et al. 2024). Samples whose label is the NULL label get x0_u (both branches are
  unconditional).

  Both outputs come from ONE call of ``denoise`` on the batch [x; x], [t; t], [cond; cond with
  the labels replaced by ``null_label``] (other cond entries repeated), split afterwards: the
  returned denoiser reports ``batch_multiplier`` 2 (``denoiser_info``), and a sampler's ``nfe``
  counts calls, each now on twice the batch.

  Args:
    denoise: conditional denoiser ``(x (B, ...), t (B,), cond) -> x0_hat``; cond holds labels.
    weight: finite guidance weight w in ``convention``.
    null_label: the NULL (unconditional) label, = num_classes, an int >= 1.
    convention: 'scale' or 'ho_salimans'.
    interval: None (guide at every t) or (t_lo, t_hi) with t_lo < t_hi.
  Returns:
    ``guided(x, t, cond) -> x0`` (B, ...); a cond without labels raises ValueError when it is
    called (or traced).
  """
  if not callable(denoise):
    raise TypeError(f"denoise must be callable, got {denoise!r}")
  w = _check_finite("weight", weight)
  if convention not in CONVENTIONS:
    raise ValueError(f"unknown guidance convention {convention!r}; accepted: {CONVENTIONS}")
  interval = check_interval(interval)
  w_scale = w if convention == "scale" else 1.0 + w
  null = check_null_label(null_label)

  def guided(x, t, cond=None):
    x0_c, x0_u, tb = cond_and_uncond(denoise, x, t, cond, null, "classifier_free guidance")
    # = x0_u + w (x0_c - x0_u), written to be exactly x0_c at w = 1.
    x0 = x0_c + jnp.asarray(w_scale - 1.0, x0_c.dtype) * (x0_c - x0_u)
    if interval is not None:
      x0 = jnp.where(in_interval(tb, interval, x0), x0, x0_c)
    return x0

  return with_info(guided, denoise, "classifier_free", batch_multiplier=2)
