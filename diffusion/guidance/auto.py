"""Autoguidance (Karras, Aittala, Kynkaanniemi, Lehtinen, Aila, Laine, "Guiding a Diffusion
Model with a Bad Version of Itself", NeurIPS 2024)."""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp

from diffusion.guidance.base import (Denoiser, _batch_t, _check_finite, check_denoiser,
                                     check_interval, in_interval, with_info)


def autoguidance(denoise: Denoiser, guide: Denoiser, weight: float, *,
                 interval: Optional[Tuple[float, float]] = None) -> Denoiser:
  """Autoguidance (Karras et al. 2024, eq. 1 with a bad model D_0 as the guide), as a denoiser:

    D_w(x; t, c) = D_bad(x; t, c) + w (D_good(x; t, c) - D_bad(x; t, c))

  with D_good = ``denoise`` and D_bad = ``guide`` (a smaller / less trained version of the same
  model, given the SAME conditioning: unlike CFG no NULL label is involved). As the score is
  affine in the denoiser (score = (alpha x0 - x) / sigma^2), the guided score is
  w score_good + (1 - w) score_bad = grad log(p_good,t^w p_bad,t^(1 - w)) (sec. 3). w = 1: D_good
  exactly; ``interval`` = (t_lo, t_hi): guidance only there, elsewhere D_good.

  Cost: the two are different networks and cannot share one batched call; each call runs
  ``denoise`` once (its own ``batch_multiplier``) and ``guide`` once on the same batch, reported
  as the info entry 'guide_batch_multiplier' (``denoiser_info``; = the guide's batch multiplier).

  Args:
    denoise: the good denoiser ``(x (B, ...), t (B,), cond) -> x0_hat``.
    guide: the bad denoiser, same interface and conditioning.
    weight: finite guidance weight w ('scale' convention, the paper's w; w = 1 no guidance).
    interval: None or (t_lo, t_hi) with t_lo < t_hi.
  """
  check_denoiser(denoise)
  check_denoiser(guide, "guide")
  w = _check_finite("weight", weight)
  interval = check_interval(interval)

  def guided(x, t, cond=None):
    tb = _batch_t(t, x)
    good = denoise(x, tb, cond)
    bad = guide(x, tb, cond).astype(good.dtype)
    x0 = good + jnp.asarray(w - 1.0, good.dtype) * (good - bad)  # exactly good at w = 1
    if interval is not None:
      x0 = jnp.where(in_interval(tb, interval, x0), x0, good)
    return x0

  return with_info(guided, denoise, "autoguidance", guide=guide)
