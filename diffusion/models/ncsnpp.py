"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", Section 4.4 and Appendix H), registered as ``ncsnpp`` and ``ddpmpp``.

Both are the DDPM U-Net with the improvements searched in the paper's Appendix H:
  1. FIR up/downsampling with the binomial (1, 3, 3, 1) kernel (StyleGAN2), ``fir``;
  2. skip connections rescaled by 1/sqrt(2), ``skip_rescale``;
  3. BigGAN residual blocks that resample internally, ``resblock_type='biggan'``;
  4. more residual blocks per resolution, ``num_res_blocks`` (4; 8 for the "deep" models);
  5. progressive growing (StyleGAN2) of the input (``progressive_input`` in
     'none' | 'input_skip' | 'residual') and of the output (``progressive`` in
     'none' | 'output_skip' | 'residual'), combined by 'sum' or 'cat'.
The noise conditioning is Gaussian Fourier features (for VE: c = log sigma) or the sinusoidal
embedding (for VP: c = t with ``embedding_scale=999``).

Defaults: ``NCSNpp`` is NCSN++ cont. (VE) for CIFAR-10 (FIR, input 'residual', Fourier
features); ``DDPMpp`` is DDPM++ cont. (VP) (no FIR, no progressive paths, positional
embedding). Parameter counts at 32x32x3 (:data:`CIFAR10_NCSNPP`, checked in tests, equal to
those of the released score_sde configurations): NCSN++ cont. 62,758,915 (deep, i.e.
num_res_blocks=8: 107,587,075); DDPM++ cont. 61,804,419 (deep: 106,632,579).

The output is the raw network F; scaling by 1/sigma (``scale_by_sigma`` in the paper's VE
models) or EDM preconditioning belongs to the parameterization, not here.
"""
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffusion.models import layers, register_model

Array = Any

RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")


def _check_choice(name: str, value: str, accepted: Tuple[str, ...]):
  if value not in accepted:
    raise ValueError(f"{name}={value!r}; accepted: {accepted}")


@register_model("ncsnpp")
class NCSNpp(nn.Module):
  """NCSN++: ``apply(variables, x, c, labels=None, train=False) -> (B, H, W, out_ch)``.

  Attributes:
    nf: base channel count; level i has ``nf * ch_mult[i]`` channels.
    ch_mult: channel multipliers per resolution (H divisible by 2^(len - 1)).
    num_res_blocks: residual blocks per resolution (decoder: +1).
    attn_resolutions: spatial sizes H with self-attention (after every encoder block, once
      per decoder level, and in the middle).
    dropout: dropout rate in the residual blocks.
    resblock_type: 'biggan' (resampling inside residual blocks) or 'ddpm' (separate
      Upsample / Downsample layers).
    resamp_with_conv: learned convs in the separate resampling layers ('ddpm' blocks).
    fir, fir_kernel: FIR resampling with these 1-D taps instead of nearest / average.
    skip_rescale: divide every residual sum by sqrt(2).
    progressive: output path: 'none', 'output_skip' (upsampled sum of per-level 3x3 output
      convs) or 'residual' (upsampled residual path added to each decoder level).
    progressive_input: input path: 'none', 'input_skip' (downsampled input combined into each
      encoder level) or 'residual' (conv-downsampled residual path).
    progressive_combine: 'sum' or 'cat' for 'input_skip'.
    embedding_type: 'fourier' or 'positional'; embedding_scale multiplies c first;
      fourier_scale is the std of the Fourier frequencies (nf of them, 2 nf features).
    init_scale: init scale of the last conv of every residual branch (0: identity start).
    out_ch: output channels (None: those of x).
    num_heads: attention heads (paper: 1).
    num_classes, label_dropout: class conditioning with a NULL class (see layers).
    dtype: compute dtype; parameters stay float32.
  """
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resblock_type: str = "biggan"
  resamp_with_conv: bool = True
  fir: bool = True
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  embedding_type: str = "fourier"
  embedding_scale: float = 1.0
  fourier_scale: float = 16.0
  init_scale: float = 0.0
  out_ch: Optional[int] = None
  num_heads: int = 1
  num_classes: int = 0
  label_dropout: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
    _check_choice("progressive", self.progressive, PROGRESSIVE)
    _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
    _check_choice("progressive_combine", self.progressive_combine, COMBINE)
    _check_choice("embedding_type", self.embedding_type, layers.EMBEDDING_TYPES)
    layers.check_unet_args("nf", self.nf, self.ch_mult, self.num_res_blocks, self.dropout,
                           self.label_dropout, self.num_classes)
    layers.fir_kernel_2d(self.fir_kernel)  # validates the taps
    super().__post_init__()

  def _rescale(self, a: Array, b: Array) -> Array:
    return (a + b) / np.sqrt(2.0) if self.skip_rescale else a + b

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None,
               train: bool = False) -> Array:
    """x: (B, H, W, C) scaled input; c: (B,) noise conditioning; labels: (B,) int or None."""
    num_levels = len(self.ch_mult)
    layers.check_image_input(x, c, num_levels)
    dt = self.dtype
    fir = dict(fir=self.fir, fir_kernel=tuple(self.fir_kernel), dtype=dt)
    temb = layers.conditioning(
        c, labels, train=train, base_dim=self.nf, out_dim=4 * self.nf,
        embedding_type=self.embedding_type, embedding_scale=self.embedding_scale,
        fourier_scale=self.fourier_scale, fourier_size=self.nf,
        num_classes=self.num_classes, label_dropout=self.label_dropout, dtype=dt)

    def block(h, name, out_ch=None, up=False, down=False):
      if self.resblock_type == "ddpm":
        mod = layers.ResnetBlockDDPM(out_ch, self.dropout, skip_rescale=self.skip_rescale,
                                     init_scale=self.init_scale, dtype=dt, name=name)
      else:
        mod = layers.ResnetBlockBigGAN(out_ch, up, down, self.dropout,
                                       skip_rescale=self.skip_rescale,
                                       init_scale=self.init_scale, name=name, **fir)
      return mod(h, temb, train)

    def attn(h, name):
      return layers.AttentionBlock(self.num_heads, self.skip_rescale, self.init_scale, dt,
                                   name=name)(h)

    def out_conv(h, out_ch, name, init_scale):
      # GN -> swish -> 3x3 conv: the "to image" projection ([SG2] tRGB).
      h = nn.swish(layers.group_norm(h.shape[-1], dtype=dt, name=f"{name}_norm")(h))
      return layers.conv(out_ch, 3, init_scale=init_scale, dtype=dt, name=f"{name}_conv")(h)

    channels = x.shape[-1]
    if self.progressive == "output_skip" and self.out_ch not in (None, channels):
      raise ValueError(f"progressive='output_skip' predicts the {channels} input channels; "
                       f"out_ch={self.out_ch} is not supported with it")
    x_in = x.astype(dt)
    # Encoder.
    pyramid_in = x_in if self.progressive_input != "none" else None
    hs = [layers.conv(self.nf, 3, dtype=dt, name="conv_in")(x_in)]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(hs[-1], f"down{i}_block{j}", self.nf * mult)
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"down{i}_attn{j}")
        hs.append(h)
      if i == num_levels - 1:
        continue
      if self.resblock_type == "ddpm":
        h = layers.Downsample(with_conv=self.resamp_with_conv, name=f"down{i}_downsample",
                              **fir)(hs[-1])
      else:
        h = block(hs[-1], f"down{i}_downsample", down=True)
      if self.progressive_input == "input_skip":
        # Downsample the image itself; project it with a 1x1 conv and combine.
        pyramid_in = layers.Downsample(with_conv=False, name=f"down{i}_pyramid",
                                       **fir)(pyramid_in)
        proj = layers.dense(h.shape[-1], dtype=dt, name=f"down{i}_combine")(pyramid_in)
        h = proj + h if self.progressive_combine == "sum" else jnp.concatenate([proj, h], -1)
      elif self.progressive_input == "residual":
        # A residual path: conv-downsample the previous level's sum, add it to this level.
        pyramid_in = layers.Downsample(h.shape[-1], with_conv=True, name=f"down{i}_pyramid",
                                       **fir)(pyramid_in)
        h = pyramid_in = self._rescale(pyramid_in, h)
      hs.append(h)
    # Middle.
    h = block(hs[-1], "mid_block0")
    h = attn(h, "mid_attn")
    h = block(h, "mid_block1")
    # Decoder.
    pyramid = None
    for i in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = block(jnp.concatenate([h, hs.pop()], axis=-1), f"up{i}_block{j}",
                  self.nf * self.ch_mult[i])
      if h.shape[1] in self.attn_resolutions:
        h = attn(h, f"up{i}_attn")
      if self.progressive == "output_skip":
        # Sum of per-level image-space outputs, each upsampled to the next level (no conv).
        out = out_conv(h, channels, f"up{i}_pyramid", self.init_scale)
        if pyramid is None:
          pyramid = out
        else:
          pyramid = layers.Upsample(with_conv=False, name=f"up{i}_pyramid_up",
                                    **fir)(pyramid) + out
      elif self.progressive == "residual":
        # A residual path in feature space: conv-upsampled and added to every finer level.
        if pyramid is None:
          pyramid = out_conv(h, h.shape[-1], f"up{i}_pyramid", 1.0)
        else:
          pyramid = layers.Upsample(h.shape[-1], with_conv=True, name=f"up{i}_pyramid_up",
                                    **fir)(pyramid)
          h = pyramid = self._rescale(pyramid, h)
      if i != 0:
        if self.resblock_type == "ddpm":
          h = layers.Upsample(with_conv=self.resamp_with_conv, name=f"up{i}_upsample",
                              **fir)(h)
        else:
          h = block(h, f"up{i}_upsample", up=True)
    assert not hs
    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = out_conv(h, self.out_ch or channels, "out", self.init_scale)
    return h.astype(x.dtype)


@register_model("ddpmpp")
class DDPMpp(NCSNpp):
  """DDPM++ (Song et al. 2021, DDPM++ cont. for VP / sub-VP): :class:`NCSNpp` without FIR or
  progressive paths, with the sinusoidal embedding (use ``embedding_scale=999`` for c = t).
  Same attributes as :class:`NCSNpp`, other defaults."""
  fir: bool = False
  progressive_input: str = "none"
  embedding_type: str = "positional"


CIFAR10_NCSNPP = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,))
CIFAR10_NCSNPP_DEEP = dict(CIFAR10_NCSNPP, num_res_blocks=8)
# Digits (8x8x1): a small NCSN++ / DDPM++ (8 -> 4 -> 2, attention at 4x4); 1,775,937 /
# 1,752,993 parameters.
DIGITS = dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(4,))
PRESETS = {"cifar10": CIFAR10_NCSNPP, "cifar10_deep": CIFAR10_NCSNPP_DEEP, "digits": DIGITS}


def preset(name: str, **overrides) -> dict:
  """Constructor kwargs (for ``ncsnpp`` or ``ddpmpp``) of ``cifar10``, ``cifar10_deep``,
  ``digits``."""
  if name not in PRESETS:
    raise ValueError(f"unknown NCSN++ preset {name!r}; accepted: {sorted(PRESETS)}")
  return {**PRESETS[name], **overrides}
