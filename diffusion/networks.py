"""A network as the losses and samplers see it: its compute dtype, its call in the train step
(``TrainNetwork``), and its denoiser, logits or encoder / decoder for fixed parameters
(evaluation mode).

The network contract itself (what a network may offer) is ``diffusion.models.capabilities``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

from diffusion.models import capabilities
from diffusion.flow_map import FlowMap, make_flow_map
from diffusion.parameterization import Denoiser, Parameterization, make_denoiser
from diffusion.schedules import Schedule

PyTree = Any
COMPUTE_DTYPES = ("float32", "bfloat16")


def jnp_compute_dtype(name: str) -> jnp.dtype:
  """The jnp dtype of a compute-dtype name ('float32' | 'bfloat16', COMPUTE_DTYPES)."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"unknown compute_dtype {name!r}; accepted: {list(COMPUTE_DTYPES)}")
  return jnp.dtype(jnp.bfloat16 if name == "bfloat16" else jnp.float32)


def compute_model(model, dtype) -> Any:
  """The network computing in ``dtype``: a flax module with a ``dtype`` field is cloned with it.

  Casting params and inputs alone is not enough: a layer built with ``dtype=float32`` (every
  model's default) promotes them back and computes in float32. Parameters stay float32 (the
  models' ``param_dtype``).
  """
  if jnp.dtype(dtype) == jnp.dtype(jnp.float32):
    return model
  if not capabilities(model).dtype:
    raise ValueError(f"{type(model).__name__} has no dtype field: compute_dtype="
                     f"{jnp.dtype(dtype).name!r} cannot be applied to it")
  return model.clone(dtype=dtype)


@dataclasses.dataclass(frozen=True)
class TrainNetwork:
  """The network inside the train step's loss: training mode, dropout from ``dropout_key``,
  computing in ``dtype``. ``params`` are cast to ``dtype``; ``raw_params`` are the float32
  master parameters (a learned schedule's parameters are read from them)."""
  module: Any
  params: PyTree
  raw_params: PyTree
  dtype: Any
  dropout_key: jax.Array

  def __call__(self, x_in, c, cond=None):
    """F (float32) = the network on (x_in, c) with labels ``cond``."""
    return self.apply_tree(self.params, x_in, c, cond)

  def apply_tree(self, tree: PyTree, x_in, c, cond=None):
    """The network with another parameter tree (e.g. VDM's, whose schedule part is not cast)."""
    return self.module.apply({"params": tree}, x_in.astype(self.dtype), c, labels=cond,
                             train=True, rngs={"dropout": self.dropout_key}).astype(jnp.float32)

  def with_logvar(self, x_in, c, cond=None) -> Tuple[jax.Array, jax.Array]:
    """(F, u) of a network with a log-variance head (``capabilities(...).return_logvar``)."""
    out, logvar = self.module.apply({"params": self.params}, x_in.astype(self.dtype), c,
                                    labels=cond, train=True, rngs={"dropout": self.dropout_key},
                                    return_logvar=True)
    return out.astype(jnp.float32), logvar.astype(jnp.float32)

  def encode(self, x) -> Tuple[jax.Array, jax.Array]:
    """(mean, logvar) (float32) of an autoencoder's posterior q(z | x) (a network registered with
    outputs='autoencoder': its ``encode`` method)."""
    mean, logvar = self.module.apply({"params": self.params}, x.astype(self.dtype),
                                     method="encode", rngs={"dropout": self.dropout_key})
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)

  def decode(self, z) -> jax.Array:
    """x_rec (float32) of an autoencoder's decoder at the latents ``z`` (its ``decode``)."""
    out = self.module.apply({"params": self.params}, z.astype(self.dtype), method="decode",
                            rngs={"dropout": self.dropout_key})
    return out.astype(jnp.float32)


def make_logits_fn(apply_fn: Callable[..., jax.Array], schedule: Schedule,
                   param: Parameterization) -> Callable:
  """Wraps a classifier ``apply_fn(x_in, c) -> logits`` into ``logits(x_t, t) -> (B, C)``: the
  network sees ``param.net_inputs(x_t, t, schedule)``, as a denoiser's network does
  (``make_denoiser``). ``t`` may be a scalar or (B,)."""

  def logits(x, t):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    x_in, c = param.net_inputs(x, t, schedule)
    return apply_fn(x_in, c)

  return logits


def eval_denoiser(net, params: PyTree, sched: Schedule, param: Parameterization,
                  compute_dtype: str = "float32") -> Denoiser:
  """denoise(x, t, cond) -> x0_hat for fixed ``params`` (evaluation mode, no dropout); a
  learned schedule not yet bound is bound to ``params['schedule']`` (float32).

  ``compute_dtype`` 'bfloat16': the network runs in bfloat16 (``compute_model``; the params cast
  once here, the network input x_in cast), its output F is cast back to float32 and the
  parameterization's x0_hat = to_x0(F, x_t, t) and everything after it stay in x_t's dtype.
  'float32' leaves the network untouched.
  """
  if sched.learned and sched.params is None:
    sched = sched.bind(params["schedule"])
  return make_denoiser(_eval_apply_fn(net, params, compute_dtype), sched, param)


def eval_flow_map(net, params: PyTree, sched: Schedule, param: Parameterization,
                  compute_dtype: str = "float32") -> FlowMap:
  """flow_map(x, t, s, cond) -> Phi(x_t, t -> s) of a two-time network (parameterization
  'mean_flow', ``diffusion.flow_map.make_flow_map``) for fixed ``params`` (evaluation mode), the
  network computing in ``compute_dtype`` as in ``eval_denoiser`` (the map's arithmetic stays in
  x's dtype)."""
  return make_flow_map(_eval_apply_fn(net, params, compute_dtype), sched, param)


def _eval_apply_fn(net, params: PyTree, compute_dtype: str) -> Callable:
  """apply_fn(x_in, c, cond) -> F of ``net`` for fixed ``params`` in evaluation mode: as is for
  'float32'; for 'bfloat16' the network computing in it (``compute_model``, the params cast
  once here, x_in cast) with F cast back to float32 (``eval_denoiser``, ``eval_flow_map``)."""
  dtype = jnp_compute_dtype(compute_dtype)
  if dtype == jnp.float32:
    def apply_fn(x_in, c, cond):
      return net.apply({"params": params}, x_in, c, labels=cond, train=False)
    return apply_fn

  model = compute_model(net, dtype)
  p = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)

  def apply_low(x_in, c, cond):
    out = model.apply({"params": p}, x_in.astype(dtype), c, labels=cond, train=False)
    return out.astype(jnp.float32)
  return apply_low


def frozen_denoiser_of(net, param: Parameterization, schedule: Schedule,
                       dtype) -> Callable[[PyTree], Denoiser]:
  """params -> ``eval_denoiser`` of ``net`` computing in ``dtype``, with no gradient into the
  params (a teacher's denoiser inside a student's loss)."""
  model = compute_model(net, dtype)

  def of(params: PyTree) -> Denoiser:
    p = jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a).astype(dtype), params)
    return eval_denoiser(model, p, schedule, param)

  return of


def eval_autoencoder(net, params: PyTree) -> Tuple[Callable, Callable]:
  """(encode, decode) of an autoencoder (a network registered with outputs='autoencoder') for
  fixed ``params``: encode(x (B, H, W, C) in [-1, 1]) -> (mean, logvar) of q(z | x), each
  (B, h, w, c); decode(z) -> x_rec (B, H, W, C); float32 outputs."""
  def encode(x):
    mean, logvar = net.apply({"params": params}, x, method="encode")
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)

  def decode(z):
    return net.apply({"params": params}, z, method="decode").astype(jnp.float32)

  return encode, decode


def eval_logits(net, params: PyTree, sched: Schedule, param: Parameterization) -> Callable:
  """logits(x_t (B, ...), t scalar or (B,)) -> (B, C) of a classifier for fixed ``params``
  (evaluation mode): the network on ``param.net_inputs(x_t, t, sched)``."""
  def apply_fn(x_in, c):
    return net.apply({"params": params}, x_in, c, labels=None, train=False)
  return make_logits_fn(apply_fn, sched, param)
