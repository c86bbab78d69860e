"""The denoiser-transformer protocol shared by every guidance method: conditioning helpers, cost
information and host-side argument checks (see the package docstring, ``diffusion.guidance``)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax.numpy as jnp
import numpy as np

Array = Any
Denoiser = Callable[..., Array]
LogProbFn = Callable[[Array, Array, Array], Array]  # (x_t (B, ...), t (B,), labels (B,)) -> (B,)

# Prediction spaces a guidance rule may combine its branches in (``to_space`` / ``from_space``).
SPACES = ("x0", "eps", "v", "velocity")


def denoiser_info(denoise: Denoiser) -> Dict[str, Any]:
  """The cost information of a (possibly transformed) denoiser: a plain denoiser costs one
  network pass on the sampler's batch per call. 'guide_batch_multiplier' (the batch per sample
  and call of a SEPARATE guide network, e.g. autoguidance's bad model) is present only when it is
  not 0."""
  info = getattr(denoise, "info", None)
  out = {"batch_multiplier": 1, "network_vjp": False, "transforms": ()}
  if info:
    out.update(info)
  return out


def with_info(fn: Denoiser, inner: Denoiser, name: str, *, batch_multiplier: int = 1,
              network_vjp: bool = False, guide: Optional[Denoiser] = None) -> Denoiser:
  """Attaches to ``fn`` (a transformer's output wrapping ``inner``) the composed cost info.

  ``guide``: a second, separate network ``fn`` also calls once per call on the same batch
  (autoguidance): its own batch multiplier is added to 'guide_batch_multiplier' (which an outer
  transformer multiplies by its batch multiplier, like the main network's)."""
  base = denoiser_info(inner)
  mult = int(batch_multiplier)
  guide_mult = int(base.get("guide_batch_multiplier", 0)) * mult
  vjp = bool(base["network_vjp"] or network_vjp)
  if guide is not None:
    g = denoiser_info(guide)
    guide_mult += int(g["batch_multiplier"]) + int(g.get("guide_batch_multiplier", 0))
    vjp = vjp or bool(g["network_vjp"])
  fn.info = {"batch_multiplier": base["batch_multiplier"] * mult, "network_vjp": vjp,
             "transforms": tuple(base["transforms"]) + (name,)}
  if guide_mult:
    fn.info["guide_batch_multiplier"] = guide_mult
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


def check_null_label(null_label) -> int:
  if isinstance(null_label, (bool, np.bool_)) or not isinstance(null_label, (int, np.integer)) \
      or null_label < 1:
    raise ValueError(f"null_label must be an int >= 1 (the number of classes), got {null_label!r}")
  return int(null_label)


def check_denoiser(denoise, name: str = "denoise"):
  if not callable(denoise):
    raise TypeError(f"{name} must be callable, got {denoise!r}")


def cond_and_uncond(denoise: Denoiser, x, t, cond, null: int, who: str):
  """(x0_c, x0_u, t (B,)): the conditional and NULL-label outputs of ``denoise`` from ONE call on
  the batch [x; x], [t; t], [cond; cond with the labels replaced by ``null``] (other cond
  entries repeated): the one batched call of ``classifier_free`` and its variants."""
  import jax
  labels = jnp.asarray(_labels_or_raise(cond, who))
  b = x.shape[0]
  tb = _batch_t(t, x)
  labels = jnp.broadcast_to(labels, (b,))
  both = jnp.concatenate([labels, jnp.full_like(labels, null)])
  rest = {k: v for k, v in cond.items() if k != "label"} if isinstance(cond, dict) else {}
  rest = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), rest)
  cond2 = dict(rest, label=both) if isinstance(cond, dict) else both
  out = denoise(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]), cond2)
  return out[:b], out[b:], tb


def check_space(space: str, schedule, who: str) -> str:
  """``space`` one of ``SPACES``; every space but 'x0' needs a ``diffusion.schedules.Schedule``."""
  if space not in SPACES:
    raise ValueError(f"{who}: unknown space {space!r}; accepted: {SPACES}")
  if space != "x0":
    from diffusion.schedules import Schedule
    if not isinstance(schedule, Schedule):
      raise TypeError(f"{who}: space={space!r} needs schedule=, a diffusion.schedules.Schedule "
                      f"(alpha(t), sigma(t) map x0 to that space); got {schedule!r}")
  return space


def _per_sample(a, x):
  return a.reshape(a.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def space_coefficients(space: str, schedule, t, x):
  """(a, b) (B, 1, ...) with pred = a x + b x0 for the prediction ``space`` at x_t = x, time t:

    'x0'        x0                                 a = 0,      b = 1;
    'eps'       eps = (x - alpha x0) / sigma       a = 1/s,    b = -alpha/sigma;
    'v'         v = alpha eps - sigma x0           a = alpha/sigma, b = -(alpha^2 + sigma^2)/sigma
                (Salimans & Ho 2022, the v-prediction);
    'velocity'  dx/dt = alpha' x0 + sigma' eps      a = sigma'/sigma,
                                                   b = alpha' - sigma' alpha/sigma
                (the PF-ODE / flow-matching velocity: eps - x0 for alpha = 1 - t, sigma = t).

  Every space but 'x0' needs sigma > 0."""
  if space == "x0":
    return jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
  al, sg = _per_sample(schedule.alpha(t), x), _per_sample(schedule.sigma(t), x)
  if space == "eps":
    return 1.0 / sg, -al / sg
  if space == "v":
    return al / sg, -(al * al + sg * sg) / sg
  da, ds = _per_sample(schedule.dalpha_dt(t), x), _per_sample(schedule.dsigma_dt(t), x)
  return ds / sg, da - ds * al / sg


def to_space(x0, x, t, schedule, space: str):
  """x0 (B, ...) as the ``space`` prediction at x_t = x (``space_coefficients``)."""
  if space == "x0":
    return x0
  a, b = space_coefficients(space, schedule, t, x)
  return a * x + b * x0


def from_space(pred, x, t, schedule, space: str):
  """The inverse of ``to_space``: x0 = (pred - a x) / b."""
  if space == "x0":
    return pred
  a, b = space_coefficients(space, schedule, t, x)
  return (pred - a * x) / b


def per_sample_sum(a):
  """sum over all non-batch axes, kept as (B, 1, ...)."""
  return jnp.sum(a, axis=tuple(range(1, a.ndim)), keepdims=True)
