"""Guidance and conditioning as denoiser transformers.

A transformer takes a denoiser ``denoise(x_t (B, ...), t (B,), cond) -> x0_hat`` and returns a
new one with the same interface, so every registered sampler samples it unchanged.

The conditioning ``cond`` a denoiser receives is one of:
  * None: unconditional;
  * an int array (B,) of class labels in [0, num_classes], where ``num_classes`` is the NULL label
    (the unconditional model of classifier-free guidance);
  * a dict with an optional 'label' entry as above and per-sample entries that transformers
    consume, e.g. the observation 'y' (B, ...) of an inverse problem (``diffusion.inverse``).
Every array in ``cond`` has the batch as its leading axis, so the sampling drivers shard it with
x_T and a sample never depends on the batch it is drawn in.

Honest cost accounting: the sampler's ``info['nfe']`` counts calls of the denoiser it is given.
A transformer that changes what one call costs says so in an ``info`` attribute of the returned
denoiser (``denoiser_info``); ``build_sampler`` merges it into the sampler's info:
  'batch_multiplier': network batch per sample and call (2 for classifier-free guidance, whose
                      conditional and unconditional outputs come from one batched call);
  'network_vjp':      True when every call also back-propagates through the network (the cost of
                      a call is then about 3 forward passes);
  'transforms':       the names of the transformers applied, innermost first.

Transformers (docs/guidance.md):
  ``classifier_free``      x0 = x0_u + w (x0_c - x0_u)  (Ho & Salimans 2021; both weight
                           conventions, optionally only for t in an interval, Kynkaanniemi et al.
                           2024), conditional and unconditional from one batched call;
  ``classifier_guidance``  score + scale * grad_x log p(y | x_t)  (Song et al. 2021, sec. 5,
                           eq. 14; Dhariwal & Nichol 2021, sec. 4), with ``network_log_prob`` for a
                           trained noise-conditional classifier.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
Denoiser = Callable[..., Array]
LogProbFn = Callable[[Array, Array, Array], Array]  # (x_t (B, ...), t (B,), labels (B,)) -> (B,)

CONVENTIONS = ("scale", "ho_salimans")


def denoiser_info(denoise: Denoiser) -> Dict[str, Any]:
  """The cost information of a (possibly transformed) denoiser: a plain denoiser costs one
  network pass on the sampler's batch per call."""
  info = getattr(denoise, "info", None)
  out = {"batch_multiplier": 1, "network_vjp": False, "transforms": ()}
  if info:
    out.update(info)
  return out


def with_info(fn: Denoiser, inner: Denoiser, name: str, *, batch_multiplier: int = 1,
              network_vjp: bool = False) -> Denoiser:
  """Attaches to ``fn`` (a transformer's output wrapping ``inner``) the composed cost info."""
  base = denoiser_info(inner)
  fn.info = {"batch_multiplier": base["batch_multiplier"] * int(batch_multiplier),
             "network_vjp": bool(base["network_vjp"] or network_vjp),
             "transforms": tuple(base["transforms"]) + (name,)}
  return fn


def label_of(cond) -> Optional[Array]:
  """The class labels (B,) in ``cond`` (None if it holds none)."""
  if isinstance(cond, dict):
    return cond.get("label")
  return cond


def with_label(cond, label: Optional[Array]):
  """``cond`` with its labels replaced by ``label`` (other entries kept)."""
  if isinstance(cond, dict):
    out = dict(cond)
    if label is None:
      out.pop("label", None)
    else:
      out["label"] = label
    return out
  return label


# -- argument checks (host side, before any tracing) ---------------------------------------------


def _is_real(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
      v, (bool, np.bool_))


def _check_finite(name: str, v) -> float:
  if not _is_real(v) or not math.isfinite(float(v)):
    raise ValueError(f"{name} must be a finite real number, got {v!r}")
  return float(v)


def check_interval(interval) -> Optional[Tuple[float, float]]:
  """None, or (t_lo, t_hi) as floats with t_lo < t_hi (either end may be -inf / inf)."""
  if interval is None:
    return None
  if isinstance(interval, (str, bytes)) or not hasattr(interval, "__len__") or len(interval) != 2:
    raise ValueError(f"interval must be None or a pair (t_lo, t_hi), got {interval!r}")
  lo, hi = interval
  if not (_is_real(lo) and _is_real(hi)) or math.isnan(lo) or math.isnan(hi) or not lo < hi:
    raise ValueError(f"interval must be (t_lo, t_hi) with real t_lo < t_hi (guidance applies for "
                     f"t_lo <= t <= t_hi), got {interval!r}")
  return float(lo), float(hi)


def check_labels(labels, num_classes: int) -> np.ndarray:
  """Host-side check for drivers: ``labels`` are ints in [0, num_classes] (``num_classes``, the
  NULL label, allowed). Returns them as a numpy int array; raises TypeError / ValueError naming
  the first bad value."""
  if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)) \
      or num_classes < 0:
    raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
  lab = np.asarray(labels)
  if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
    raise TypeError(f"labels must be integers in [0, {num_classes}], got dtype {lab.dtype} "
                    f"({labels!r:.200})")
  bad = np.flatnonzero((lab.reshape(-1) < 0) | (lab.reshape(-1) > num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"labels must be ints in [0, {num_classes}] ({num_classes} = NULL, the "
                     f"unconditional); got {int(lab.reshape(-1)[i])} at index {i}")
  return lab


def _labels_or_raise(cond, who: str):
  labels = label_of(cond)
  if labels is None:
    raise ValueError(f"{who} needs class labels in cond (an int array (B,) or a dict with "
                     f"'label'); got cond without labels: {cond!r:.200}")
  return labels


def in_interval(t, interval, x):
  """(B, 1, ...) bool: t_lo <= t <= t_hi per sample, broadcastable against x."""
  lo, hi = interval
  inside = (t >= lo) & (t <= hi)
  return inside.reshape(inside.shape + (1,) * (x.ndim - 1))


def _batch_t(t, x):
  return jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))


# -- classifier-free guidance ---------------------------------------------------------------------


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
  if isinstance(null_label, (bool, np.bool_)) or not isinstance(null_label, (int, np.integer)) \
      or null_label < 1:
    raise ValueError(f"null_label must be an int >= 1 (the number of classes), got {null_label!r}")
  interval = check_interval(interval)
  w_scale = w if convention == "scale" else 1.0 + w
  null = int(null_label)

  def guided(x, t, cond=None):
    labels = jnp.asarray(_labels_or_raise(cond, "classifier_free guidance"))
    b = x.shape[0]
    tb = _batch_t(t, x)
    labels = jnp.broadcast_to(labels, (b,))
    both = jnp.concatenate([labels, jnp.full_like(labels, null)])
    rest = {k: v for k, v in cond.items() if k != "label"} if isinstance(cond, dict) else {}
    rest = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), rest)
    cond2 = dict(rest, label=both) if isinstance(cond, dict) else both
    out = denoise(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]), cond2)
    x0_c, x0_u = out[:b], out[b:]
    # = x0_u + w (x0_c - x0_u), written to be exactly x0_c at w = 1.
    x0 = x0_c + jnp.asarray(w_scale - 1.0, out.dtype) * (x0_c - x0_u)
    if interval is not None:
      x0 = jnp.where(in_interval(tb, interval, x0), x0, x0_c)
    return x0

  return with_info(guided, denoise, "classifier_free", batch_multiplier=2)


# -- classifier guidance --------------------------------------------------------------------------


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
