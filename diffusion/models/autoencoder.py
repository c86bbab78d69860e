"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.1 and App. G), the VAE of Stable Diffusion
(1.x / 2.x, and SDXL with other weights), registered as ``autoencoder_kl``.

Architecture (diffusers' ``AutoencoderKL``, whose released checkpoints
:mod:`diffusion.convert.diffusers_vae` converts; equal to diffusers' forward to ~1e-14 in float64 and
~1e-6 in float32, tests/test_autoencoder.py and benchmarks/vae_convert_check.py). L = len(channels) levels, f = 2^(L - 1):

  encoder  conv_in 3x3 -> per level i: num_res_blocks ResnetBlocks to channels[i], then (not at
           the last level) a stride-2 3x3 conv on the input padded by one zero row / column at
           the bottom / right -> middle: ResnetBlock, Attention, ResnetBlock -> GroupNorm, SiLU,
           conv_out 3x3 to 2 * latent_channels -> quant_conv 1x1 (``use_quant_conv``).
           The first latent_channels channels are the mean, the rest the log-variance, clipped
           to [-30, 20] (diffusers' DiagonalGaussianDistribution).
  decoder  post_quant_conv 1x1 (``use_post_quant_conv``) -> conv_in 3x3 to channels[-1] ->
           middle -> per level i = L-1, ..., 0: num_res_blocks + 1 ResnetBlocks to channels[i],
           then (i > 0) nearest-neighbour 2x upsampling and a 3x3 conv -> GroupNorm, SiLU,
           conv_out 3x3 to out_channels.
  ResnetBlock  h = conv(SiLU(GN(x))); h = conv(SiLU(GN(h))); x' = x or a 1x1 conv of x when
           the channel count changes; out = x' + h (diffusers' ResnetBlock2D without a time
           embedding, dropout 0).
  Attention  one head over the H*W positions: h = GN(x); q, k, v = 1x1 projections;
           out = x + proj(softmax(q k^T / sqrt(C)) v); logits and softmax in float32 (or
           wider).

Every GroupNorm has ``norm_groups`` groups and epsilon ``norm_eps`` (diffusers: 32 and 1e-6,
fixed) and computes its variance as E[(x - mean)^2], the two-pass form torch uses
(``use_fast_variance=False``: E[x^2] - mean^2 loses float32 digits when |mean| >> std).
Parameter names follow this codebase's U-Nets (norm0 / conv0 / norm1 / conv1 / shortcut,
down{i}_block{j}, up{i}_block{j} with i the resolution level, mid_block0 / mid_attn /
mid_block1, norm_out / conv_out; 1x1 convs are Dense layers); the converter's table maps
diffusers' names onto them.

Initialisation (training from scratch): DDPM's variance scaling (layers.default_init), with the
last conv of every residual branch and the attention's output projection near zero, so every
block starts as the identity. A converted checkpoint replaces all of it.

Usage::

    from diffusion.models import autoencoder, get_model
    vae = get_model("autoencoder_kl", **autoencoder.preset("small", out_channels=1))
    params = vae.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    mean, logvar = vae.apply({"params": params}, x, method="encode")   # (B, 14, 14, 4) each
    x_rec = vae.apply({"params": params}, mean, method="decode")       # (B, 28, 28, 1)
    x_rec, mean, logvar = vae.apply({"params": params}, x, noise=eps)  # z = mean + std * eps

Images are NHWC in [-1, 1]. Latent diffusion trains on ``scaling_factor * (z - shift_factor)``
(SD 1.x / 2.x: 0.18215, no shift; SDXL: 0.13025; carried by a converted checkpoint) and decodes
``z / scaling_factor + shift_factor``; this module works on the unscaled z.

Parameter counts: 'sd' 83,653,863 (equal to diffusers' AutoencoderKL with SD's config:
encoder 34,163,592, decoder 49,490,179, quant convs 92); 'small' 658,375 and 'small_f4'
954,567 on 3-channel images (see :data:`PRESETS`).
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models import layers, register_model

Array = Any
Dtype = Any

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps logvar to this

# Stable Diffusion's VAE (SD 1.x / 2.x: stabilityai/sd-vae-ft-mse, -ft-ema; SDXL's VAE has the
# same architecture): f = 8, 4 latent channels, 83,653,863 parameters.
SD = dict(channels=(128, 256, 512, 512), num_res_blocks=2, norm_groups=32, latent_channels=4,
          out_channels=3)
# For the 8x8 digits and 28x28 MNIST: f = 2 (8x8 -> 4x4x4, 28x28 -> 14x14x4), 658,375
# parameters on 3-channel images (657,221 on 1-channel ones with out_channels=1). Any
# latent_channels >= 1 works (override it), and any out_channels (set it to the images').
SMALL = dict(channels=(32, 64), num_res_blocks=1, norm_groups=8, latent_channels=4,
             out_channels=3)
# f = 4 (28x28 -> 7x7x4; 8x8 -> 2x2x4): one more level of 64 channels, 954,567 parameters on
# 3-channel images.
SMALL_F4 = dict(channels=(32, 64, 64), num_res_blocks=1, norm_groups=8, latent_channels=4,
                out_channels=3)

PRESETS: Dict[str, Dict[str, Any]] = {"sd": SD, "small": SMALL, "small_f4": SMALL_F4}


def preset(name: str, **overrides) -> dict:
  """Constructor kwargs of a named configuration ('sd', 'small', 'small_f4'); ``overrides``
  replace or add fields (e.g. ``out_channels=1, latent_channels=2`` for MNIST)."""
  if name not in PRESETS:
    raise ValueError(f"unknown autoencoder preset {name!r}; accepted: {sorted(PRESETS)}")
  return {**PRESETS[name], **overrides}


def downsample_factor(channels: Sequence[int]) -> int:
  """f = 2^(len(channels) - 1): the encoder halves H and W between consecutive levels."""
  if len(channels) < 1:
    raise ValueError("channels must hold at least one level, got an empty sequence")
  return 2 ** (len(channels) - 1)


def latent_shape(image_shape: Sequence[int], channels: Sequence[int],
                 latent_channels: int) -> Tuple[int, int, int]:
  """(H / f, W / f, latent_channels) of an (H, W, C) image; ValueError when f does not divide
  H or W (the encoder's stride-2 convs would drop rows)."""
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
  h, w, _ = image_shape
  f = downsample_factor(channels)
  if h % f or w % f:
    raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling "
                     f"factor f = {f} (2^(len(channels) - 1), channels={tuple(channels)}); "
                     f"accepted: H and W multiples of {f}")
  if latent_channels < 1:
    raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
  return h // f, w // f, int(latent_channels)


def _group_norm(groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


class ResnetBlock(nn.Module):
  """diffusers' ResnetBlock2D without time embedding (module docstring).
  x: (B, H, W, C) -> (B, H, W, out_ch)."""
  out_ch: int
  groups: int
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dt = self.dtype
    h = nn.silu(_group_norm(self.groups, self.eps, dt, "norm0")(x))
    h = layers.conv(self.out_ch, 3, dtype=dt, name="conv0")(h)
    h = nn.silu(_group_norm(self.groups, self.eps, dt, "norm1")(h))
    h = layers.conv(self.out_ch, 3, init_scale=0.0, dtype=dt, name="conv1")(h)
    if x.shape[-1] != self.out_ch:
      x = layers.dense(self.out_ch, dtype=dt, name="shortcut")(x)
    return x + h


class Attention(nn.Module):
  """Single-head self-attention with GroupNorm and a residual (module docstring).
  x: (B, H, W, C) -> (B, H, W, C)."""
  groups: int
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, ch = x.shape
    dt = self.dtype
    h = _group_norm(self.groups, self.eps, dt, "norm")(x).reshape(b, hgt * wid, ch)
    q, k, v = (layers.dense(ch, dtype=dt, name=n)(h) for n in ("q", "k", "v"))
    acc = jnp.promote_types(q.dtype, jnp.float32)  # logits and softmax in >= float32
    logits = jnp.einsum("bqc,bkc->bqk", q.astype(acc), k.astype(acc))
    weights = jax.nn.softmax(logits / np.sqrt(ch), axis=-1)
    a = jnp.einsum("bqk,bkc->bqc", weights.astype(v.dtype), v)
    a = layers.dense(ch, init_scale=0.0, dtype=dt, name="proj_out")(a)
    return x + a.reshape(b, hgt, wid, ch)


def _middle(h: Array, groups: int, eps: float, attention: bool, dtype: Dtype) -> Array:
  """The mid block; call from inside a compact module (the layers attach to it)."""
  ch = h.shape[-1]
  h = ResnetBlock(ch, groups, eps, dtype, name="mid_block0")(h)
  if attention:
    h = Attention(groups, eps, dtype, name="mid_attn")(h)
  return ResnetBlock(ch, groups, eps, dtype, name="mid_block1")(h)


class Encoder(nn.Module):
  """x (B, H, W, C) -> (B, H/f, W/f, out_ch): the encoder of the module docstring, without
  quant_conv."""
  channels: Sequence[int]
  num_res_blocks: int
  groups: int
  eps: float
  mid_attention: bool
  out_ch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dt, g, eps = self.dtype, self.groups, self.eps
    h = layers.conv(self.channels[0], 3, dtype=dt, name="conv_in")(x.astype(dt))
    for i, ch in enumerate(self.channels):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(ch, g, eps, dt, name=f"down{i}_block{j}")(h)
      if i != len(self.channels) - 1:
        # diffusers' Downsample2D(padding=0): pad (0, 1) at the bottom / right, 3x3 stride 2.
        h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
        h = layers.conv(ch, 3, stride=2, padding="VALID", dtype=dt,
                        name=f"down{i}_downsample")(h)
    h = _middle(h, g, eps, self.mid_attention, dt)
    h = nn.silu(_group_norm(g, eps, dt, "norm_out")(h))
    return layers.conv(self.out_ch, 3, dtype=dt, name="conv_out")(h)


class Decoder(nn.Module):
  """z (B, h, w, C) -> (B, f h, f w, out_ch): the decoder of the module docstring, without
  post_quant_conv."""
  channels: Sequence[int]
  num_res_blocks: int
  groups: int
  eps: float
  mid_attention: bool
  out_ch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    dt, g, eps = self.dtype, self.groups, self.eps
    h = layers.conv(self.channels[-1], 3, dtype=dt, name="conv_in")(z.astype(dt))
    h = _middle(h, g, eps, self.mid_attention, dt)
    for i in reversed(range(len(self.channels))):
      for j in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.channels[i], g, eps, dt, name=f"up{i}_block{j}")(h)
      if i != 0:
        h = layers.conv(self.channels[i], 3, dtype=dt,
                        name=f"up{i}_upsample")(layers.upsample_nearest(h))
    h = nn.silu(_group_norm(g, eps, dt, "norm_out")(h))
    return layers.conv(self.out_ch, 3, dtype=dt, name="conv_out")(h)


@register_model("autoencoder_kl", outputs="autoencoder")
class AutoencoderKL(nn.Module):
  """Stable Diffusion's KL autoencoder (module docstring). Methods ``encode``, ``decode`` and
  ``__call__``; images NHWC in [-1, 1], the input channel count is that of the first input.

  Attributes:
    out_channels: channels of the decoded image.
    latent_channels: channels of the latent z.
    channels: width of each resolution level (diffusers' block_out_channels); f = 2^(L - 1).
    num_res_blocks: ResnetBlocks per encoder level (+1 per decoder level; layers_per_block).
    norm_groups: GroupNorm groups; must divide every entry of ``channels``.
    norm_eps: GroupNorm epsilon (diffusers: 1e-6).
    mid_attention: self-attention in the middle blocks (mid_block_add_attention).
    use_quant_conv / use_post_quant_conv: the 1x1 convs after the encoder / before the
      decoder (off in the SD3 / FLUX VAEs).
    dtype: compute dtype; parameters stay float32; mean, logvar and the decoded image are
      returned in float32 (float64 under x64 with float64 inputs).
  """
  out_channels: int = 3
  latent_channels: int = 4
  channels: Sequence[int] = (128, 256, 512, 512)
  num_res_blocks: int = 2
  norm_groups: int = 32
  norm_eps: float = 1e-6
  mid_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self):
    chans = tuple(self.channels)
    if not chans or any(not isinstance(c, (int, np.integer)) or c < 1 for c in chans):
      raise ValueError(f"channels must be a non-empty sequence of ints >= 1, got {chans}")
    for name in ("out_channels", "latent_channels", "num_res_blocks", "norm_groups"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    bad = [c for c in chans if c % self.norm_groups]
    if bad:
      raise ValueError(f"norm_groups={self.norm_groups} must divide every entry of channels="
                       f"{chans}; it does not divide {bad}")
    if not self.norm_eps > 0:
      raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
    super().__post_init__()

  def setup(self):
    common = dict(channels=tuple(self.channels), num_res_blocks=self.num_res_blocks,
                  groups=self.norm_groups, eps=self.norm_eps, mid_attention=self.mid_attention,
                  dtype=self.dtype)
    self.encoder = Encoder(out_ch=2 * self.latent_channels, **common)
    self.decoder = Decoder(out_ch=self.out_channels, **common)
    if self.use_quant_conv:
      self.quant_conv = layers.dense(2 * self.latent_channels, dtype=self.dtype)
    if self.use_post_quant_conv:
      self.post_quant_conv = layers.dense(self.latent_channels, dtype=self.dtype)

  def encode(self, x: Array) -> Tuple[Array, Array]:
    """x (B, H, W, C) in [-1, 1] -> (mean, logvar), each (B, H/f, W/f, latent_channels), the
    diagonal Gaussian posterior q(z | x); logvar clipped to [-30, 20]."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (4-D), got shape {x.shape}")
    latent_shape(x.shape[1:], self.channels, self.latent_channels)  # divisibility check
    h = self.encoder(x)
    if self.use_quant_conv:
      h = self.quant_conv(h)
    h = h.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: Array) -> Array:
    """z (B, h, w, latent_channels) -> the image (B, f h, f w, out_channels)."""
    if z.ndim != 4 or z.shape[-1] != self.latent_channels:
      raise ValueError(f"z must have shape (B, h, w, {self.latent_channels}) (latent_channels="
                       f"{self.latent_channels}), got {z.shape}")
    h = self.post_quant_conv(z) if self.use_post_quant_conv else z
    return self.decoder(h).astype(jnp.promote_types(z.dtype, jnp.float32))

  def __call__(self, x: Array, c: Optional[Array] = None, labels: Optional[Array] = None,
               train: bool = False, noise: Optional[Array] = None
               ) -> Tuple[Array, Array, Array]:
    """(x_rec, mean, logvar): decode(z) with z = mean (the posterior mode, noise=None) or the
    reparameterised sample z = mean + exp(logvar / 2) * noise, noise ~ N(0, I) drawn by the
    caller with the latent's shape (no flax rngs). ``c`` and ``train`` are accepted for the
    network call contract and ignored (the autoencoder is not noise-conditional and has no
    dropout); ``labels`` must be None (it is not class-conditional)."""
    del c, train
    if labels is not None:
      raise ValueError("labels were given to autoencoder_kl, which is not class-conditional; "
                       "pass labels=None")
    mean, logvar = self.encode(x)
    z = mean
    if noise is not None:
      if noise.shape != mean.shape:
        raise ValueError(f"noise must have the latent's shape {mean.shape}, got {noise.shape}")
      z = mean + jnp.exp(0.5 * logvar) * noise
    return self.decode(z), mean, logvar
