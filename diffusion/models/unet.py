"""The DDPM U-Net of Ho, Jain & Abbeel 2020 ("Denoising Diffusion Probabilistic Models",
Appendix B), registered as ``ddpm_unet``.

A PixelCNN++-style U-Net (Salimans et al. 2017) of Wide-ResNet blocks: at each resolution
``num_res_blocks`` residual blocks (self-attention after each at ``attn_resolutions``), a
stride-2 downsampling between resolutions, a middle (res, attn, res), and a mirrored decoder
with ``num_res_blocks + 1`` blocks per level, each consuming one skip activation. The noise
conditioning enters every block through a sinusoidal (or Fourier) embedding and a 2-layer MLP;
GroupNorm everywhere; swish activations.

The CIFAR-10 configuration (:data:`CIFAR10`: ch=128, ch_mult=(1, 2, 2, 2), two blocks per
resolution, attention at 16x16, dropout 0.1) has exactly 35,746,307 parameters, the count of
the released model.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models import layers, register_model

Array = Any

# Ho et al. 2020, CIFAR-10 32x32x3: 35,746,307 parameters.
CIFAR10 = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
               dropout=0.1)
# Ho et al. 2020, 256x256 (LSUN, CelebA-HQ): 113,673,219 parameters ("114 million" in the
# paper).
LSUN256 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
               dropout=0.0)
# Small net for the 8x8x1 digits (8 -> 4 -> 2 resolutions, attention at 4x4): 1,623,169 params.
DIGITS = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.1)

PRESETS = {"cifar10": CIFAR10, "lsun256": LSUN256, "digits": DIGITS}


def preset(name: str, **overrides) -> dict:
  """Constructor kwargs of a named configuration (``cifar10``, ``lsun256``, ``digits``)."""
  if name not in PRESETS:
    raise ValueError(f"unknown U-Net preset {name!r}; accepted: {sorted(PRESETS)}")
  return {**PRESETS[name], **overrides}


@register_model("ddpm_unet")
class DDPMUNet(nn.Module):
  """DDPM U-Net: ``apply(variables, x, c, labels=None, train=False) -> (B, H, W, out_ch)``.

  Attributes:
    ch: base channel count; level i has ``ch * ch_mult[i]`` channels.
    ch_mult: channel multipliers, one per resolution (len L: H must be divisible by 2^(L-1)).
    num_res_blocks: residual blocks per resolution in the encoder (+1 in the decoder).
    attn_resolutions: spatial sizes (H) at which self-attention follows each block.
    dropout: dropout rate inside the residual blocks (active with ``train=True``).
    resamp_with_conv: learned 3x3 convs in the resampling layers (DDPM: True).
    out_ch: output channels; None = input channels.
    num_heads: attention heads (DDPM: 1).
    num_classes: > 0 adds a class embedding with a NULL class (index num_classes).
    label_dropout: probability of replacing a label by NULL when ``train`` (classifier-free
      guidance); 0 leaves that to the caller.
    embedding_type: 'positional' (DDPM) or 'fourier' (Gaussian Fourier features).
    embedding_scale: c is multiplied by this before embedding (1000 for DDPM's t index).
    fourier_scale: std of the Fourier frequencies (fourier embedding only).
    norm_groups: GroupNorm groups of every norm layer (None: ``min(32, C // 4)``, DDPM's 32 at
      its widths; diffusers' ``norm_num_groups`` for converted checkpoints).
    dtype: compute dtype; parameters stay float32.
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  out_ch: Optional[int] = None
  num_heads: int = 1
  num_classes: int = 0
  label_dropout: float = 0.0
  embedding_type: str = "positional"
  embedding_scale: float = 1.0
  fourier_scale: float = 16.0
  norm_groups: Optional[int] = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.embedding_type not in layers.EMBEDDING_TYPES:
      raise ValueError(f"embedding_type={self.embedding_type!r}; "
                       f"accepted: {layers.EMBEDDING_TYPES}")
    layers.check_unet_args("ch", self.ch, self.ch_mult, self.num_res_blocks, self.dropout,
                           self.label_dropout, self.num_classes)
    if self.norm_groups is not None and not (isinstance(self.norm_groups, int)
                                             and self.norm_groups >= 1):
      raise ValueError(f"norm_groups must be None or an int >= 1, got {self.norm_groups!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None,
               train: bool = False) -> Array:
    """x: (B, H, W, C) scaled input; c: (B,) noise conditioning; labels: (B,) int or None."""
    num_levels = len(self.ch_mult)
    layers.check_image_input(x, c, num_levels)
    dt = self.dtype
    temb = layers.conditioning(
        c, labels, train=train, base_dim=self.ch, out_dim=4 * self.ch,
        embedding_type=self.embedding_type, embedding_scale=self.embedding_scale,
        fourier_scale=self.fourier_scale, fourier_size=None, num_classes=self.num_classes,
        label_dropout=self.label_dropout, dtype=dt)

    def block(h, out_ch, name):
      return layers.ResnetBlockDDPM(out_ch, self.dropout, dtype=dt, norm_groups=self.norm_groups,
                                    name=name)(h, temb, train)

    def attn(h, name):
      return layers.AttentionBlock(self.num_heads, dtype=dt, norm_groups=self.norm_groups,
                                   name=name)(h)

    # Encoder.
    hs = [layers.conv(self.ch, 3, dtype=dt, name="conv_in")(x.astype(dt))]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(hs[-1], self.ch * mult, f"down{i}_block{j}")
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"down{i}_attn{j}")
        hs.append(h)
      if i != num_levels - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dt,
                                    name=f"down{i}_downsample")(hs[-1]))
    # Middle.
    h = block(hs[-1], None, "mid_block0")
    h = attn(h, "mid_attn")
    h = block(h, None, "mid_block1")
    # Decoder.
    for i in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = block(jnp.concatenate([h, hs.pop()], axis=-1), self.ch * self.ch_mult[i],
                  f"up{i}_block{j}")
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"up{i}_attn{j}")
      if i != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=dt,
                            name=f"up{i}_upsample")(h)
    assert not hs
    h = nn.swish(layers.group_norm(h.shape[-1], groups=self.norm_groups, dtype=dt,
                                   name="norm_out")(h))
    h = layers.conv(self.out_ch or x.shape[-1], 3, init_scale=0.0, dtype=dt,
                    name="conv_out")(h)
    return h.astype(x.dtype)
