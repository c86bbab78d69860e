"""A residual MLP score network for low-dimensional (toy) data, and its trunk.

``mlp_trunk`` (time embedding, optional class embedding, residual blocks) is shared with the
noise-conditional classifier ``mlp_classifier`` (diffusion.models.classifier), which puts a
logits head on it instead of the score head.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models import layers, register_model


def sinusoidal_embedding(c: jnp.ndarray, dim: int, scale: float = 1.0,
                         max_period: float = 10_000.0) -> jnp.ndarray:
  """Transformer positional features of a scalar (Vaswani et al. 2017; DDPM's time embedding).

  c (B,) -> (B, dim): [sin(scale c w_i), cos(scale c w_i)], w_i = max_period^{-i/(dim/2)}.
  """
  if dim % 2:
    raise ValueError(f"embedding dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = scale * c.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ResidualBlock(nn.Module):
  """x + Dense(act(Dense(act(LayerNorm(x))) + Dense(emb)))."""
  width: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb):
    h = nn.silu(nn.LayerNorm(dtype=self.dtype)(x))
    h = nn.Dense(self.width, dtype=self.dtype)(h)
    h = h + nn.Dense(self.width, dtype=self.dtype)(emb)
    h = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.zeros)(nn.silu(h))
    return x + h


def check_labels(labels, batch_size: int, num_classes: int) -> None:
  """Labels (B,) of a network with ``num_classes`` classes (NULL label = num_classes).

  Raises ValueError for labels given to a network without classes, a shape other than (B,), or
  (when the values are concrete, i.e. not traced) values outside [0, num_classes]; TypeError for
  non-integer labels. Traced values cannot be checked: an out-of-range label there reads the
  embedding table out of bounds (JAX fills it), so the drivers check their data first.
  """
  if labels is None:
    return
  if num_classes <= 0:
    raise ValueError("labels were given to a network built with num_classes=0; build it with "
                     "num_classes > 0 or pass labels=None")
  if tuple(labels.shape) != (batch_size,):
    raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if isinstance(labels, jax.core.Tracer) or batch_size == 0:
    return
  values = np.asarray(labels)
  lo, hi = int(values.min()), int(values.max())
  if lo < 0 or hi > num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}] (classes 0..{num_classes - 1}, "
                     f"{num_classes} = NULL), got values in [{lo}, {hi}]")


def check_label_args(num_classes: int, label_dropout: float) -> None:
  """num_classes >= 0 and label_dropout in [0, 1) (ValueError naming the value otherwise)."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
    raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
  if not 0.0 <= label_dropout < 1.0:
    raise ValueError(f"label_dropout={label_dropout}: accepted range [0, 1)")


def mlp_trunk(x, c, labels, *, train: bool, width: int, num_blocks: int, embed_dim: int,
              embedding_scale: float, num_classes: int, label_dropout: float, dtype,
              two_time: bool = False):
  """The residual MLP's features: x (B, D), c (B,) -> (B, width).

  c goes through sinusoidal features (times ``embedding_scale``) and a two-layer MLP; with
  ``num_classes > 0`` a learned class embedding with a NULL class (``layers.ClassEmbedding``:
  labels None = all NULL; with ``train`` each label is dropped to NULL with probability
  ``label_dropout``, drawing from the 'dropout' rng; Ho & Salimans 2022) is added before the
  activation. With ``two_time`` c may also be (B, 2) (``layers.time_conditioning``): column 1
  goes through a twin of the time embedding named 'time2_dense_0' / 'time2_dense_1', added; a
  (B,) c builds the same layers as ever. Must be called inside a compact module (the layers
  attach to it, auto-named in this order).
  """
  if x.ndim != 2:
    raise ValueError(f"mlp expects x of shape (B, D), got {x.shape}")
  layers.check_time_conditioning(c, x.shape[0], two_time)
  check_labels(labels, x.shape[0], num_classes)

  def embed(col, name):
    names = (None, None) if name is None else (f"{name}_0", f"{name}_1")
    e = nn.Dense(width, dtype=dtype, name=names[0])(
        sinusoidal_embedding(col, embed_dim, embedding_scale))
    return nn.Dense(width, dtype=dtype, name=names[1])(nn.silu(e))

  emb = layers.time_conditioning(c, embed, (None, "time2_dense"))
  if num_classes:
    emb = emb + layers.ClassEmbedding(num_classes, width, label_dropout, dtype)(
        labels, x.shape[0], train)
  emb = nn.silu(emb)
  h = nn.Dense(width, dtype=dtype)(x)
  for _ in range(num_blocks):
    h = ResidualBlock(width, dtype)(h, emb)
  return nn.silu(nn.LayerNorm(dtype=dtype)(h))


@register_model("mlp")
class MLP(nn.Module):
  """Residual MLP: x (B, D), c (B,) or (B, 2) (two times), labels (B,) int or None -> (B, D).

  The noise-conditioning scalar c goes through sinusoidal features (times ``embedding_scale``)
  and a two-layer MLP; with ``num_classes > 0`` a learned class embedding with a NULL class
  (index num_classes; labels None means NULL) is added, and with ``train=True`` each label is
  replaced by NULL with probability ``label_dropout`` (classifier-free guidance training, Ho &
  Salimans 2022; needs a 'dropout' rng).

  ``logvar_head=True`` adds a learned log-variance u(c) (B,) = Dense(1)(sinusoidal features of
  c), zero-initialised (u = 0), returned with ``return_logvar=True`` as (F, u): the adaptive
  weighting of EDM2's 'edm2' loss and of sCM. Off (the default), the parameters and outputs are
  exactly those of the network without the field, and ``capabilities`` reports no
  return_logvar.
  """
  width: int = 256
  num_blocks: int = 4
  embed_dim: int = 128
  embedding_scale: float = 1000.0
  num_classes: int = 0
  label_dropout: float = 0.0
  logvar_head: bool = False
  dtype: jnp.dtype = jnp.float32
  time_inputs: ClassVar[int] = 2  # c (B,) or (B, 2): capabilities(net).time_inputs

  def __post_init__(self):
    check_label_args(self.num_classes, self.label_dropout)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, c, labels: Optional[jnp.ndarray] = None, train: bool = False,
               return_logvar: bool = False):
    if return_logvar and not self.logvar_head:
      raise ValueError("return_logvar=True needs an mlp built with logvar_head=True")
    h = mlp_trunk(x, c, labels, train=train, width=self.width, num_blocks=self.num_blocks,
                  embed_dim=self.embed_dim, embedding_scale=self.embedding_scale,
                  num_classes=self.num_classes, label_dropout=self.label_dropout,
                  dtype=self.dtype, two_time=True)
    out = nn.Dense(x.shape[-1], dtype=self.dtype)(h).astype(x.dtype)
    if not self.logvar_head:
      return out
    c_t = c if c.ndim == 1 else c[:, 0]  # a two-time network's head reads t
    feats = sinusoidal_embedding(c_t, self.embed_dim, self.embedding_scale)
    logvar = nn.Dense(1, kernel_init=nn.initializers.zeros, name="logvar_head")(feats)[:, 0]
    return (out, logvar.astype(jnp.float32)) if return_logvar else out
