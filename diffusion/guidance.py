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
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

Array = Any
Denoiser = Callable[..., Array]


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
