"""Noise-conditional classifiers p(y | x_t, t): the classifiers of classifier guidance.

A noise-conditional classifier is trained on noisy inputs x_t = alpha x0 + sigma eps at the
times the score model sees, with the same time input, so that grad_x log p(y | x_t, t) can steer
a sampler (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 5 and App. I;
Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", Sec. 4: the U-Net's
downsampling trunk with a pooled head). Its loss is ``diffusion.losses.classifier_loss``.

Both networks here are called like the score networks,
``apply(variables, x_in, c, labels=None, train=False) -> logits (B, num_classes)``, with
``x_in, c = param.net_inputs(x_t, t, schedule)``; ``labels`` must be None (a classifier is not
class-conditional; the argument exists for the common interface).

  mlp_classifier   the residual MLP trunk of ``mlp`` (same sinusoidal time embedding) and a
                   dense logits head, for low-dimensional (toy) data.
  unet_classifier  the DDPM U-Net's downsampling path and middle block (Ho et al. 2020, App. B;
                   the blocks of diffusion.models.layers), then GroupNorm, swish, global average
                   pooling and a dense logits head (Dhariwal & Nichol 2021 pool the same trunk).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models import layers, register_model
from diffusion.models.mlp import mlp_trunk

Array = Any


def _check_classes(num_classes: Any) -> None:
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"a classifier needs num_classes >= 2 (the number of output classes), "
                     f"got {num_classes!r}")


def _no_labels(labels: Optional[Array]) -> None:
  if labels is not None:
    raise ValueError("a noise-conditional classifier takes no labels (labels must be None); "
                     "it predicts them")


@register_model("mlp_classifier", outputs="logits")
class MLPClassifier(nn.Module):
  """Residual-MLP classifier: x (B, D), c (B,) -> logits (B, num_classes).

  The trunk of the ``mlp`` score network (``mlp.mlp_trunk``, without a class embedding), then
  ``Dense(num_classes)``. Attributes as ``mlp.MLP``; ``num_classes`` is the number of outputs.
  """
  num_classes: int = 0
  width: int = 256
  num_blocks: int = 4
  embed_dim: int = 128
  embedding_scale: float = 1000.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_classes(self.num_classes)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None,
               train: bool = False) -> Array:
    _no_labels(labels)
    h = mlp_trunk(x, c, None, train=train, width=self.width, num_blocks=self.num_blocks,
                  embed_dim=self.embed_dim, embedding_scale=self.embedding_scale,
                  num_classes=0, label_dropout=0.0, dtype=self.dtype)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(h).astype(jnp.float32)


@register_model("unet_classifier", outputs="logits")
class UNetClassifier(nn.Module):
  """DDPM U-Net encoder classifier: x (B, H, W, C), c (B,) -> logits (B, num_classes).

  The encoder of ``unet.DDPMUNet`` with the same attributes (``ch``, ``ch_mult``,
  ``num_res_blocks``, ``attn_resolutions``, ``dropout``, ``resamp_with_conv``, ``num_heads``,
  ``embedding_type``, ``embedding_scale``, ``fourier_scale``, ``dtype``): conv_in, at each
  resolution ``num_res_blocks`` residual blocks (attention after each at ``attn_resolutions``)
  and a stride-2 downsampling between resolutions, the middle (res, attn, res); then
  swish(GroupNorm), the spatial mean and ``Dense(num_classes)``. No decoder, no skips.
  """
  num_classes: int = 0
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  resamp_with_conv: bool = True
  num_heads: int = 1
  embedding_type: str = "positional"
  embedding_scale: float = 1.0
  fourier_scale: float = 16.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_classes(self.num_classes)
    if self.embedding_type not in layers.EMBEDDING_TYPES:
      raise ValueError(f"embedding_type={self.embedding_type!r}; "
                       f"accepted: {layers.EMBEDDING_TYPES}")
    layers.check_unet_args("ch", self.ch, self.ch_mult, self.num_res_blocks, self.dropout, 0.0,
                           0)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None,
               train: bool = False) -> Array:
    """x: (B, H, W, C) scaled input; c: (B,) noise conditioning; labels: None."""
    _no_labels(labels)
    num_levels = len(self.ch_mult)
    layers.check_image_input(x, c, num_levels)
    dt = self.dtype
    temb = layers.conditioning(
        c, None, train=train, base_dim=self.ch, out_dim=4 * self.ch,
        embedding_type=self.embedding_type, embedding_scale=self.embedding_scale,
        fourier_scale=self.fourier_scale, fourier_size=None, num_classes=0, label_dropout=0.0,
        dtype=dt)

    def block(h, out_ch, name):
      return layers.ResnetBlockDDPM(out_ch, self.dropout, dtype=dt, name=name)(h, temb, train)

    def attn(h, name):
      return layers.AttentionBlock(self.num_heads, dtype=dt, name=name)(h)

    h = layers.conv(self.ch, 3, dtype=dt, name="conv_in")(x.astype(dt))
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(h, self.ch * mult, f"down{i}_block{j}")
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"down{i}_attn{j}")
      if i != num_levels - 1:
        h = layers.Downsample(with_conv=self.resamp_with_conv, dtype=dt,
                              name=f"down{i}_downsample")(h)
    h = block(h, None, "mid_block0")
    h = attn(h, "mid_attn")
    h = block(h, None, "mid_block1")
    h = nn.swish(layers.group_norm(h.shape[-1], dtype=dt, name="norm_out")(h))
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    return layers.dense(self.num_classes, dtype=dt, name="logits")(h).astype(jnp.float32)
