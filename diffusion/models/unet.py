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

Options for diffusers' ``UNet2DModel`` (the same blocks and weights, other numbers), all off by
default so that DDPM's network is unchanged: GroupNorm ``norm_eps``, ``downsample_padding``,
``flip_sin_to_cos`` / ``freq_shift`` of the sinusoidal embedding, ``attn_head_dim`` (heads of
``attn_head_dim`` channels each), ``mid_block_scale``, ``temb_dim``, ``mid_attn_norm_groups``
and ``center_input`` (diffusion/convert/diffusers_unet.py maps its config onto them).
"""
from typing import Any, ClassVar, Optional, Sequence

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
    norm_eps: eps of every GroupNorm (DDPM: 1e-6; diffusers' UNet2DModel default 1e-5).
    downsample_padding: the stride-2 conv's padding, 'asymmetric' (0 before, 1 after: DDPM's TF
      'SAME', diffusers' ``downsample_padding=0``) or 'symmetric' (1 each side: diffusers'
      ``downsample_padding=1``, UNet2DModel's default).
    freq_shift, flip_sin_to_cos: the positional embedding's frequencies
      ``10000^(-i / (ch / 2 - freq_shift))`` and order ([cos, sin] if flipped); DDPM: 1, False;
      diffusers' UNet2DModel defaults: 0, True (``layers.positional_embedding``).
    attn_head_dim: channels per attention head, heads = C / attn_head_dim at each attention
      layer (diffusers' ``attention_head_dim``); None: ``num_heads`` heads everywhere.
    mid_block_scale: the middle's (res, attn, res) outputs are each divided by it (diffusers'
      ``mid_block_scale_factor``: its residual sums ``(x + h) / s``). DDPM: 1.
    temb_dim: width of the embedding MLP (None: 4 ch, DDPM's; diffusers' ``time_embedding_dim``).
    mid_attn_norm_groups: GroupNorm groups of the middle attention only (None: ``norm_groups``;
      diffusers' ``attn_norm_num_groups``).
    center_input: feed ``2 x - 1`` instead of x (diffusers' ``center_input_sample``).
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
  norm_eps: float = 1e-6
  downsample_padding: str = "asymmetric"
  freq_shift: float = 1.0
  flip_sin_to_cos: bool = False
  attn_head_dim: Optional[int] = None
  mid_block_scale: float = 1.0
  temb_dim: Optional[int] = None
  mid_attn_norm_groups: Optional[int] = None
  center_input: bool = False
  time_inputs: ClassVar[int] = 2  # c (B,) or (B, 2): capabilities(net).time_inputs

  def __post_init__(self):
    if self.embedding_type not in layers.EMBEDDING_TYPES:
      raise ValueError(f"embedding_type={self.embedding_type!r}; "
                       f"accepted: {layers.EMBEDDING_TYPES}")
    layers.check_unet_args("ch", self.ch, self.ch_mult, self.num_res_blocks, self.dropout,
                           self.label_dropout, self.num_classes)
    for name in ("norm_groups", "mid_attn_norm_groups", "attn_head_dim", "temb_dim"):
      value = getattr(self, name)
      if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                    and value >= 1):
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
    if self.downsample_padding not in layers.DOWNSAMPLE_PADDINGS:
      raise ValueError(f"downsample_padding={self.downsample_padding!r}; accepted: "
                       f"{layers.DOWNSAMPLE_PADDINGS}")
    if self.downsample_padding != "asymmetric" and not self.resamp_with_conv:
      raise ValueError("downsample_padding='symmetric' pads the stride-2 conv; it needs "
                       "resamp_with_conv=True")
    if self.attn_head_dim is not None and self.num_heads != 1:
      raise ValueError(f"set attn_head_dim={self.attn_head_dim} or num_heads="
                       f"{self.num_heads}, not both")
    for name in ("norm_eps", "mid_block_scale"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
    super().__post_init__()

  def _heads(self, channels: int) -> int:
    """Attention heads at a layer of ``channels`` channels."""
    if self.attn_head_dim is None:
      return self.num_heads
    if channels % self.attn_head_dim:
      raise ValueError(f"attn_head_dim={self.attn_head_dim} does not divide the {channels} "
                       f"channels of an attention layer")
    return channels // self.attn_head_dim

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None,
               train: bool = False) -> Array:
    """x: (B, H, W, C) scaled input; c: (B,) noise conditioning, or (B, 2) two times
    (``layers.time_conditioning``); labels: (B,) int or None."""
    num_levels = len(self.ch_mult)
    layers.check_image_input(x, c, num_levels, two_time=True)
    dt = self.dtype
    temb = layers.conditioning(
        c, labels, train=train, base_dim=self.ch, out_dim=self.temb_dim or 4 * self.ch,
        embedding_type=self.embedding_type, embedding_scale=self.embedding_scale,
        fourier_scale=self.fourier_scale, fourier_size=None, num_classes=self.num_classes,
        label_dropout=self.label_dropout, dtype=dt, freq_shift=self.freq_shift,
        flip_sin_to_cos=self.flip_sin_to_cos, two_time=True)
    eps = self.norm_eps

    def block(h, out_ch, name):
      return layers.ResnetBlockDDPM(out_ch, self.dropout, dtype=dt, norm_groups=self.norm_groups,
                                    norm_eps=eps, name=name)(h, temb, train)

    def attn(h, name, groups=self.norm_groups):
      return layers.AttentionBlock(self._heads(h.shape[-1]), dtype=dt, norm_groups=groups,
                                   norm_eps=eps, name=name)(h)

    def mid(h):  # diffusers' mid_block_scale_factor; the branch keeps DDPM's graph unchanged
      return h / self.mid_block_scale if self.mid_block_scale != 1 else h

    # Encoder.
    x_in = 2 * x - 1 if self.center_input else x
    hs = [layers.conv(self.ch, 3, dtype=dt, name="conv_in")(x_in.astype(dt))]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(hs[-1], self.ch * mult, f"down{i}_block{j}")
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"down{i}_attn{j}")
        hs.append(h)
      if i != num_levels - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dt,
                                    padding=self.downsample_padding,
                                    name=f"down{i}_downsample")(hs[-1]))
    # Middle.
    h = mid(block(hs[-1], None, "mid_block0"))
    h = mid(attn(h, "mid_attn", self.mid_attn_norm_groups or self.norm_groups))
    h = mid(block(h, None, "mid_block1"))
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
    h = nn.swish(layers.group_norm(h.shape[-1], groups=self.norm_groups, eps=eps, dtype=dt,
                                   name="norm_out")(h))
    h = layers.conv(self.out_ch or x.shape[-1], 3, init_scale=0.0, dtype=dt,
                    name="conv_out")(h)
    return h.astype(x.dtype)
