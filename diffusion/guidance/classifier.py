"""Classifier guidance (Song et al. 2021; Dhariwal & Nichol 2021) and the log-probability of a
trained noise-conditional classifier."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.guidance.base import (Array, Denoiser, LogProbFn, _batch_t, _check_finite,
                                     _labels_or_raise, check_interval, in_interval, with_info,
                                     with_label)


def classifier_guidance(denoise: Denoiser, log_prob_fn: LogProbFn, schedule, *,
                        scale: float = 1.0, interval: Optional[Tuple[float, float]] = None,
                        null_label: Optional[int] = None) -> Denoiser:
  """Classifier guidance: the score of p(x_t) p(y | x_t)^scale, as a denoiser.

  score_g = score + scale * grad_x log p(y | x_t) (Song et al. 2021, score SDE, sec. 5,
  eq. 14, at scale 1; Dhariwal & Nichol 2021, sec. 4, whose 'gradient scale' is ``scale``). As the
  score is (alpha x0_hat - x) / sigma^2 (Tweedie), exactly

    x0_g = x0_hat + scale * sigma^2 / alpha * grad_x log p(y | x_t).

  The gradient is ``jax.grad`` of sum_b log_prob_fn(x, t, labels)_b, so log_prob_fn must treat
  the samples independently (no batch statistics). Cost: every call runs the classifier forward
  and backward once (about 3 classifier passes) besides the denoiser; that is not a VJP of the
  denoiser network, so the info records ``network_vjp`` False (a classifier much smaller than
  the denoiser is the usual case).

  ``interval`` = (t_lo, t_hi): guided only for t_lo <= t <= t_hi, elsewhere x0_hat. The denoiser
  is called without the labels (``with_label(cond, None)``: an unconditional model), or, with
  ``null_label``, with the labels replaced by it (the unconditional branch of a model trained
  for classifier-free guidance). ``network_log_prob`` gives 0 (no guidance) for the NULL label.

  Args:
    denoise: ``(x (B, ...), t (B,), cond) -> x0_hat``.
    log_prob_fn: ``(x_t (B, ...), t (B,), labels (B,)) -> (B,)`` log p(y | x_t).
    schedule: the ``diffusion.schedules.Schedule`` of x_t = alpha x0 + sigma eps.
    scale: finite guidance scale (0: none; 1: the exact conditional for an exact classifier).
    interval: None or (t_lo, t_hi) with t_lo < t_hi.
    null_label: None, or the int >= 1 the denoiser takes as 'unconditional'.
  """
  from diffusion.schedules import Schedule, _bcast
  if not callable(denoise) or not callable(log_prob_fn):
    raise TypeError(f"denoise and log_prob_fn must be callable, got {denoise!r}, {log_prob_fn!r}")
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  c = _check_finite("scale", scale)
  interval = check_interval(interval)
  if null_label is not None and (isinstance(null_label, (bool, np.bool_)) or not isinstance(
      null_label, (int, np.integer)) or null_label < 1):
    raise ValueError(f"null_label must be None or an int >= 1, got {null_label!r}")

  def guided(x, t, cond=None):
    labels = jnp.asarray(_labels_or_raise(cond, "classifier guidance"))
    tb = _batch_t(t, x)
    labels = jnp.broadcast_to(labels, (x.shape[0],))
    inner_cond = with_label(cond, None if null_label is None else
                            jnp.full_like(labels, int(null_label)))
    x0 = denoise(x, tb, inner_cond)
    grad = jax.grad(lambda y: jnp.sum(log_prob_fn(y, tb, labels)))(x)
    tt = _bcast(tb, x)
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    x0_g = x0 + (jnp.asarray(c, x.dtype) * s * s / a) * grad.astype(x0.dtype)
    if interval is not None:
      x0_g = jnp.where(in_interval(tb, interval, x0_g), x0_g, x0)
    return x0_g.astype(x0.dtype)

  return with_info(guided, denoise, "classifier_guidance", network_vjp=False)


def network_log_prob(apply_fn: Callable[[Array, Array], Array], schedule, param) -> LogProbFn:
  """log p(y | x_t) of a trained noise-conditional classifier (Dhariwal & Nichol 2021, sec. 4).

  ``apply_fn(x_in, c) -> logits (B, C)`` is fed what the score network is fed,
  ``param.net_inputs(x, t, schedule)`` (a ``diffusion.parameterization.Parameterization``).
  Returns ``log_prob_fn(x, t, labels) -> log_softmax(logits)[labels]`` (B,), and 0 for labels
  outside [0, C) (the NULL label C: no guidance for that sample).
  """
  if not callable(apply_fn):
    raise TypeError(f"apply_fn must be callable, got {apply_fn!r}")
  if not hasattr(param, "net_inputs"):
    raise TypeError(f"param must be a diffusion.parameterization.Parameterization, got {param!r}")

  def log_prob_fn(x, t, labels):
    x_in, cnoise = param.net_inputs(x, t, schedule)
    logits = apply_fn(x_in, cnoise)
    lp = jax.nn.log_softmax(logits, axis=-1)
    n = lp.shape[-1]
    labels = jnp.broadcast_to(jnp.asarray(labels), (x.shape[0],))
    valid = (labels >= 0) & (labels < n)
    picked = jnp.take_along_axis(lp, jnp.clip(labels, 0, n - 1)[:, None], axis=-1)[:, 0]
    return jnp.where(valid, picked, 0.0)

  return log_prob_fn
