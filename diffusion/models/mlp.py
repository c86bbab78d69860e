"""A residual MLP score network for low-dimensional (toy) data."""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models import register_model


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


@register_model("mlp")
class MLP(nn.Module):
  """Residual MLP: x (B, D), c (B,) -> (B, D).

  The noise-conditioning scalar c goes through sinusoidal features (times ``embedding_scale``)
  and a two-layer MLP; class labels (optional) add a learned embedding with a null class.
  """
  width: int = 256
  num_blocks: int = 4
  embed_dim: int = 128
  embedding_scale: float = 1000.0
  num_classes: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, labels: Optional[jnp.ndarray] = None, train: bool = False):
    del train
    if x.ndim != 2:
      raise ValueError(f"mlp expects x of shape (B, D), got {x.shape}")
    emb = sinusoidal_embedding(c, self.embed_dim, self.embedding_scale)
    emb = nn.Dense(self.width, dtype=self.dtype)(emb)
    emb = nn.Dense(self.width, dtype=self.dtype)(nn.silu(emb))
    if self.num_classes:
      if labels is None:
        labels = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
      emb = emb + nn.Embed(self.num_classes + 1, self.width)(labels)
    emb = nn.silu(emb)
    h = nn.Dense(self.width, dtype=self.dtype)(x)
    for _ in range(self.num_blocks):
      h = ResidualBlock(self.width, self.dtype)(h, emb)
    h = nn.silu(nn.LayerNorm(dtype=self.dtype)(h))
    return nn.Dense(x.shape[-1], dtype=self.dtype)(h).astype(x.dtype)
