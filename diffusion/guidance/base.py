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
