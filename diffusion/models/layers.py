"""Building blocks shared by the image networks (DDPM U-Net, NCSN++ / DDPM++).

Conventions: activations are NHWC; every module takes ``dtype`` (the compute dtype, e.g.
``jnp.bfloat16``) and keeps its parameters in float32 (``param_dtype``). Initialisation follows
DDPM (Ho et al. 2020, released code): variance scaling with ``fan_avg`` and a uniform
distribution, with scale 1 for most layers and (nearly) 0 for the last layer of every residual
branch, so that each block starts as the identity.

References:
  [DDPM] Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", Appendix B.
  [SDE] Song et al. 2021, "Score-Based Generative Modeling through SDEs", Appendix H.
  [SG2] Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (FIR
    resampling, skip / residual progressive architectures).
  [FF] Tancik et al. 2020, "Fourier Features Let Networks Learn High Frequency Functions".
"""
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

EMBEDDING_TYPES = ("positional", "fourier")
# Conventions of the sinusoidal embedding (positional_embedding): DDPM's release, and GLIDE /
# ADM's, which DiT and SiT (and most later releases) inherited; each a (freq_shift,
# flip_sin_to_cos) pair of diffusers' Timesteps.
POSITIONAL_CONVENTIONS = ("ddpm", "adm")
CONVENTION_ARGS = {"ddpm": dict(freq_shift=1.0, flip_sin_to_cos=False),
                   "adm": dict(freq_shift=0.0, flip_sin_to_cos=True)}
# Downsample's stride-2 conv padding: 'asymmetric' pads (0, 1) (TF 'SAME' on even sizes: DDPM's
# release, diffusers' downsample_padding=0), 'symmetric' pads (1, 1) (torch Conv2d(padding=1):
# diffusers' downsample_padding=1, UNet2DModel's default).
DOWNSAMPLE_PADDINGS = ("asymmetric", "symmetric")


# ----------------------------------------------------------------------------- initialisers


def default_init(scale: float = 1.0) -> Initializer:
  """DDPM's initialiser: ``variance_scaling(scale, 'fan_avg', 'uniform')``.

  ``scale == 0`` gives 1e-10 (a zero-initialised output layer that still has a well-defined
  variance-scaling law), as in the DDPM release.
  """
  if scale < 0:
    raise ValueError(f"init scale must be >= 0, got {scale}")
  return nn.initializers.variance_scaling(max(scale, 1e-10), "fan_avg", "uniform")


def dense(features: int, *, init_scale: float = 1.0, dtype: Dtype = jnp.float32,
          name: Optional[str] = None) -> nn.Dense:
  """A Dense layer (also the 1x1 "network-in-network" conv on NHWC inputs) with DDPM init."""
  return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def conv(features: int, kernel_size: int = 3, *, stride: int = 1, padding: Any = "SAME",
         init_scale: float = 1.0, dtype: Dtype = jnp.float32,
         name: Optional[str] = None) -> nn.Conv:
  """A 2-D convolution with DDPM init. ``'SAME'`` with stride 2 pads (0, 1), as TF does."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=padding, kernel_init=default_init(init_scale), dtype=dtype,
                 param_dtype=jnp.float32, name=name)


# ----------------------------------------------------------------------------- normalisation


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
  """Number of GroupNorm groups: ``min(max_groups, channels // min_group_size)``, lowered to a
  divisor of ``channels``. Gives DDPM's 32 for >= 128 channels and NCSN++'s ``min(C//4, 32)``.
  """
  if channels < 1:
    raise ValueError(f"channels must be >= 1, got {channels}")
  g = max(1, min(max_groups, channels // min_group_size))
  while channels % g:
    g -= 1
  return g


def group_norm(channels: int, *, groups: Optional[int] = None, eps: float = 1e-6,
               dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.GroupNorm:
  """GroupNorm (Wu & He 2018) over the channel axis with ``groups`` groups (None:
  :func:`num_groups`; an explicit count must divide ``channels``) and ``eps`` added to the
  variance (DDPM's 1e-6; torch's and diffusers' UNet2DModel default is 1e-5)."""
  if groups is None:
    groups = num_groups(channels)
  elif groups < 1 or channels % groups:
    raise ValueError(f"norm_groups={groups} must be >= 1 and divide the {channels} channels")
  if not eps > 0:
    raise ValueError(f"GroupNorm eps must be > 0, got {eps!r}")
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


# ----------------------------------------------------------------------------- embeddings


def positional_embedding(c: Array, dim: int, max_period: float = 10_000.0,
                         convention: Optional[str] = None, *, freq_shift: float = 1.0,
                         flip_sin_to_cos: bool = False) -> Array:
  """Sinusoidal embedding of a scalar per example (Vaswani et al. 2017; [DDPM] Appendix B).

  ``emb[:, i] = sin(c * w_i)``, ``emb[:, half + i] = cos(c * w_i)`` (the cosines first if
  ``flip_sin_to_cos``), ``w_i = max_period ** (-i / (half - freq_shift))``, ``half = dim // 2``;
  odd ``dim`` is zero-padded. DDPM's is ``freq_shift=1`` without the flip (the defaults);
  diffusers' ``Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)`` is the same function,
  UNet2DModel's defaults being ``flip_sin_to_cos=True, freq_shift=0``. ``convention`` names a
  pair (CONVENTION_ARGS) and then sets both: 'ddpm' (DDPM's release) or 'adm' (GLIDE / ADM's
  ``timestep_embedding``, inherited by DiT and SiT: cos first, ``w_i = max_period ** (-i /
  half)``). ``c * w_i`` is computed in float32, as the releases do.
  Args:
    c: (B,) float conditioning (for DDPM the step index ``999 t``).
    dim: embedding width.
    freq_shift: the shift of the exponent's denominator; ``half - freq_shift`` must be > 0
      (except for ``half == 1``, whose single frequency is 1 whatever the denominator).
    flip_sin_to_cos: put the cosines before the sines.
  Returns:
    (B, dim) float32.
  """
  if c.ndim != 1:
    raise ValueError(f"conditioning must have shape (B,), got {c.shape}")
  if dim < 2:
    raise ValueError(f"embedding dim must be >= 2, got {dim}")
  if convention is not None and convention not in POSITIONAL_CONVENTIONS:
    raise ValueError(f"positional embedding convention={convention!r}; accepted: "
                     f"{POSITIONAL_CONVENTIONS}")
  half = dim // 2
  if convention is not None:
    freq_shift, flip_sin_to_cos = (CONVENTION_ARGS[convention]["freq_shift"],
                                   CONVENTION_ARGS[convention]["flip_sin_to_cos"])
  denominator = half - freq_shift
  if denominator <= 0:
    if half > 1:
      raise ValueError(f"freq_shift={freq_shift!r} must be < dim // 2 = {half}")
    denominator = 1
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / denominator)
  args = c.astype(jnp.float32)[:, None] * freqs[None, :]
  parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
  emb = jnp.concatenate(parts, axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar ([FF]; used for log sigma in [SDE] NCSN++).

  ``emb = [sin(2 pi c W), cos(2 pi c W)]`` with ``W ~ N(0, scale^2)`` of size
  ``embedding_size``. W is stored as a parameter (so it is saved and counted) but receives no
  gradient (``stop_gradient``): exclude it from weight decay if the optimiser has any.

  Returns (B, 2 * embedding_size) float32.
  """
  embedding_size: int = 128
  scale: float = 16.0

  @nn.compact
  def __call__(self, c: Array) -> Array:
    w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,),
                   jnp.float32)
    w = jax.lax.stop_gradient(w)
    proj = c.astype(jnp.float32)[:, None] * w[None, :] * (2 * jnp.pi)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class NoiseEmbedding(nn.Module):
  """Noise-level conditioning: features of ``embedding_scale * c``, then a 2-layer MLP.

  ``temb = Dense(out_dim)(swish(Dense(out_dim)(features(embedding_scale * c))))``
  ([DDPM] Appendix B; [SDE] Appendix H). ``features`` is :func:`positional_embedding` of width
  ``base_dim`` (in its ``convention``, else with ``freq_shift`` and ``flip_sin_to_cos``) or
  :class:`GaussianFourierProjection` with ``fourier_size`` frequencies. Residual blocks apply
  swish to ``temb`` before their own projection. The two Dense kernels start as DDPM's
  :func:`default_init`, or with ``kernel_std`` as N(0, kernel_std^2) (DiT's release: 0.02);
  biases at zero.

  Returns (B, out_dim) in ``dtype``.
  """
  base_dim: int
  out_dim: int
  embedding_type: str = "positional"
  embedding_scale: float = 1.0
  fourier_scale: float = 16.0
  fourier_size: Optional[int] = None  # default base_dim // 2 (so that 2 * size == base_dim)
  dtype: Dtype = jnp.float32
  convention: Optional[str] = None  # of the 'positional' features: POSITIONAL_CONVENTIONS
  kernel_std: Optional[float] = None  # None: default_init(); else N(0, kernel_std^2) kernels
  freq_shift: float = 1.0  # positional only, without a convention: see positional_embedding
  flip_sin_to_cos: bool = False  # positional only, without a convention

  @nn.compact
  def __call__(self, c: Array) -> Array:
    if c.ndim != 1:
      raise ValueError(f"noise conditioning c must have shape (B,), got {c.shape}")
    if self.convention is not None and self.convention not in POSITIONAL_CONVENTIONS:
      raise ValueError(f"convention={self.convention!r}; accepted: {POSITIONAL_CONVENTIONS}")
    if self.convention not in (None, "ddpm") and self.embedding_type != "positional":
      raise ValueError(f"convention={self.convention!r} applies to the 'positional' embedding "
                       f"only, not embedding_type={self.embedding_type!r}")
    c = c.astype(jnp.float32) * self.embedding_scale
    if self.embedding_type == "positional":
      emb = positional_embedding(c, self.base_dim, convention=self.convention,
                                 freq_shift=self.freq_shift,
                                 flip_sin_to_cos=self.flip_sin_to_cos)
    elif self.embedding_type == "fourier":
      size = self.fourier_size or self.base_dim // 2
      emb = GaussianFourierProjection(size, self.fourier_scale, name="fourier")(c)
    else:
      raise ValueError(
          f"embedding_type={self.embedding_type!r}; accepted: {EMBEDDING_TYPES}")
    if self.kernel_std is None:
      emb = dense(self.out_dim, dtype=self.dtype, name="dense0")(emb)
      return dense(self.out_dim, dtype=self.dtype, name="dense1")(nn.swish(emb))
    if not self.kernel_std > 0:
      raise ValueError(f"kernel_std must be None or > 0, got {self.kernel_std}")
    init = nn.initializers.normal(stddev=self.kernel_std)
    emb = nn.Dense(self.out_dim, kernel_init=init, dtype=self.dtype, param_dtype=jnp.float32,
                   name="dense0")(emb)
    return nn.Dense(self.out_dim, kernel_init=init, dtype=self.dtype, param_dtype=jnp.float32,
                    name="dense1")(nn.swish(emb))


class ClassEmbedding(nn.Module):
  """Learned class embedding with a NULL class (index ``num_classes``).

  ``labels=None`` means "unconditional" and uses the NULL class for every example. With
  ``train=True`` and ``drop_prob > 0`` each label is replaced by NULL with that probability
  (classifier-free guidance training, Ho & Salimans 2022), drawing from the 'dropout' rng.
  The table starts N(0, init_std^2) (DiT's release: 0.02).

  Args:
    labels: (B,) int in [0, num_classes] or None.
  Returns:
    (B, features) in ``dtype``.
  """
  num_classes: int
  features: int
  drop_prob: float = 0.0
  dtype: Dtype = jnp.float32
  init_std: float = 1.0

  @nn.compact
  def __call__(self, labels: Optional[Array], batch_size: int, train: bool = False) -> Array:
    if not self.init_std > 0:
      raise ValueError(f"init_std must be > 0, got {self.init_std}")
    null = jnp.full((batch_size,), self.num_classes, jnp.int32)
    if labels is None:
      labels = null
    else:
      if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), got {labels.shape}")
      labels = labels.astype(jnp.int32)
      if train and self.drop_prob > 0:
        drop = jax.random.bernoulli(self.make_rng("dropout"), self.drop_prob, (batch_size,))
        labels = jnp.where(drop, null, labels)
    table = nn.Embed(self.num_classes + 1, self.features,
                     embedding_init=nn.initializers.normal(stddev=self.init_std),
                     dtype=self.dtype,
                     param_dtype=jnp.float32, name="embed")
    return table(labels)


def check_time_conditioning(c: Array, batch: int, two_time: bool) -> Array:
  """``c`` of shape (B,), or (B, 2) when ``two_time`` (a network with ``time_inputs=2``);
  ValueError naming the shape and what is accepted otherwise."""
  if c.shape == (batch,) or (two_time and c.shape == (batch, 2)):
    return c
  accepted = f"({batch},)" if not two_time else f"({batch},) or ({batch}, 2) (two times)"
  extra = ("" if two_time else "; two-time conditioning (B, 2) is offered by the networks "
           "with capabilities(net).time_inputs == 2 ('mlp', 'ddpm_unet', 'dit')")
  raise ValueError(f"c must have shape {accepted}, got {tuple(c.shape)}{extra}")


def time_conditioning(c: Array, embed, names) -> Array:
  """The embedding of the noise conditioning c: ``embed(c, names[0])`` for c (B,); for c (B, 2)
  (a two-time network: c(t) and c(t - r), MeanFlow's conditioning, Geng et al. 2025)
  ``embed(c[:, 0], names[0]) + embed(c[:, 1], names[1])``: the first column by the one-time
  network's own embedding (same parameter names), the second by a twin with its own
  parameters. ``embed(col (B,), name) -> (B, D)``."""
  if c.ndim == 1:
    return embed(c, names[0])
  return embed(c[:, 0], names[0]) + embed(c[:, 1], names[1])


def conditioning(c: Array, labels: Optional[Array], *, train: bool, base_dim: int,
                 out_dim: int, embedding_type: str, embedding_scale: float,
                 fourier_scale: float, fourier_size: Optional[int], num_classes: int,
                 label_dropout: float, dtype: Dtype, convention: Optional[str] = None,
                 noise_kernel_std: Optional[float] = None, class_init_std: float = 1.0,
                 freq_shift: float = 1.0, flip_sin_to_cos: bool = False,
                 two_time: bool = False) -> Array:
  """Noise embedding plus (if ``num_classes > 0``) a class embedding: (B, out_dim).
  ``convention`` and ``noise_kernel_std`` are :class:`NoiseEmbedding`'s, ``class_init_std``
  :class:`ClassEmbedding`'s ``init_std``.

  ``c`` is (B,), or with ``two_time`` (a network offering ``time_inputs=2``) also (B, 2): a
  two-time network (``time_conditioning``): column 0 through 'noise_embedding', column 1 through
  'noise_embedding_2' (same kind, own parameters), summed. A (B,) ``c`` builds and computes
  exactly what it did before two-time inputs existed.

  Must be called from inside a compact module (the submodules attach to it).
  """
  c = check_time_conditioning(c, c.shape[0] if c.ndim else 0, two_time)

  def embed(col, name):
    return NoiseEmbedding(base_dim, out_dim, embedding_type, embedding_scale, fourier_scale,
                          fourier_size, dtype, convention=convention,
                          kernel_std=noise_kernel_std, freq_shift=freq_shift,
                          flip_sin_to_cos=flip_sin_to_cos, name=name)(col)

  temb = time_conditioning(c, embed, ("noise_embedding", "noise_embedding_2"))
  if num_classes > 0:
    temb = temb + ClassEmbedding(num_classes, out_dim, label_dropout, dtype, class_init_std,
                                 name="class_embedding")(labels, c.shape[0], train)
  elif labels is not None:
    raise ValueError("labels were given to a network built with num_classes=0; "
                     "build it with num_classes > 0 or pass labels=None")
  return temb


# ----------------------------------------------------------------------------- attention


class AttentionBlock(nn.Module):
  """Self-attention over the H*W positions ([DDPM] after Wang et al. 2018; [SDE] AttnBlock++).

  ``h = GN(x); q, k, v = 1x1 convs; a = softmax(q k^T / sqrt(C / heads)) v;
  out = x + proj(a)`` (divided by sqrt 2 when ``skip_rescale``). ``proj`` starts near zero.
  Head n attends with channels [n C / heads, (n + 1) C / heads) of q, k, v (diffusers'
  ``Attention(heads, dim_head)`` split). Logits and softmax are computed in float32 whatever
  ``dtype`` is.

  x: (B, H, W, C) -> (B, H, W, C).
  """
  num_heads: int = 1
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Dtype = jnp.float32
  norm_groups: Optional[int] = None  # GroupNorm groups (None: num_groups(C))
  norm_eps: float = 1e-6  # GroupNorm eps

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, ch = x.shape
    if ch % self.num_heads:
      raise ValueError(f"channels {ch} are not divisible by num_heads={self.num_heads}")
    h = group_norm(ch, groups=self.norm_groups, eps=self.norm_eps, dtype=self.dtype,
                   name="norm")(x)
    q = dense(ch, dtype=self.dtype, name="q")(h)
    k = dense(ch, dtype=self.dtype, name="k")(h)
    v = dense(ch, dtype=self.dtype, name="v")(h)
    dh = ch // self.num_heads
    q, k, v = (t.reshape(b, hgt * wid, self.num_heads, dh) for t in (q, k, v))
    logits = jnp.einsum("bqnd,bknd->bnqk", q.astype(jnp.float32), k.astype(jnp.float32))
    weights = jax.nn.softmax(logits / math.sqrt(dh), axis=-1)
    a = jnp.einsum("bnqk,bknd->bqnd", weights.astype(v.dtype), v).reshape(b, hgt, wid, ch)
    h = dense(ch, init_scale=self.init_scale, dtype=self.dtype, name="proj_out")(a)
    out = x + h
    return out / np.sqrt(2.0) if self.skip_rescale else out


# ----------------------------------------------------------------------------- resampling


def fir_kernel_2d(taps: Sequence[float]) -> np.ndarray:
  """Separable FIR filter ``outer(k, k) / sum`` from 1-D taps, e.g. binomial (1, 3, 3, 1)."""
  k = np.asarray(taps, dtype=np.float64)
  if k.ndim != 1 or k.size < 1 or np.any(~np.isfinite(k)) or k.sum() == 0:
    raise ValueError(f"FIR taps must be a non-empty 1-D sequence with non-zero sum, got {taps}")
  k2 = np.outer(k, k)
  return (k2 / k2.sum()).astype(np.float32)


def upfirdn2d(x: Array, kernel: np.ndarray, *, up: int = 1, down: int = 1,
              pad: Tuple[int, int] = (0, 0)) -> Array:
  """Upsample by zero insertion, pad, filter with ``kernel``, downsample ([SG2] upfirdn2d).

  The same 2-D ``kernel`` is applied to every channel (a depthwise convolution, true
  convolution orientation). Output size per spatial axis:
  ``(H * up + pad0 + pad1 - k) // down + 1``.

  x: (B, H, W, C) -> (B, H', W', C).
  """
  ch = x.shape[-1]
  k = jnp.asarray(np.ascontiguousarray(kernel[::-1, ::-1]), dtype=x.dtype)
  w = jnp.tile(k[:, :, None, None], (1, 1, 1, ch))  # HWIO with I=1: depthwise
  p0, p1 = pad
  # lhs_dilation gives (H - 1) * up + 1 samples; upfirdn's zero insertion gives H * up.
  padding = ((p0, p1 + up - 1), (p0, p1 + up - 1))
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=ch)


def upsample_fir(x: Array, taps: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
  """FIR upsampling ([SG2] ``upsample_2d``): zero insertion, filter with gain ``factor^2``.

  x: (B, H, W, C) -> (B, factor H, factor W, C).
  """
  k = fir_kernel_2d(taps) * factor**2
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_fir(x: Array, taps: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
  """FIR downsampling ([SG2] ``downsample_2d``): low-pass filter, keep every factor-th sample.

  x: (B, H, W, C) -> (B, H / factor, W / factor, C).
  """
  k = fir_kernel_2d(taps)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_nearest(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling. x: (B, H, W, C) -> (B, factor H, factor W, C)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def downsample_avg(x: Array, factor: int = 2) -> Array:
  """Average pooling over factor x factor blocks. (B, H, W, C) -> (B, H/f, W/f, C)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def _check_even(x: Array, what: str):
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"{what} needs even spatial sizes, got {x.shape[1:3]}")


class Upsample(nn.Module):
  """2x upsampling, optionally followed by / fused with a learned 3x3 conv.

  * plain: nearest neighbour, then a 3x3 conv if ``with_conv`` ([DDPM]);
  * ``fir``: FIR upsampling; with ``with_conv`` a stride-2 transposed 3x3 conv followed by the
    FIR filter and the bias, [SG2]'s fused ``upsample_conv_2d`` ([SDE] NCSN++; :class:`FIRUpConv`).

  x: (B, H, W, C) -> (B, 2H, 2W, out_ch or C).
  """
  out_ch: Optional[int] = None
  with_conv: bool = True
  fir: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError(f"Upsample without conv cannot change channels {x.shape[-1]} -> {out_ch}")
    if not self.fir:
      h = upsample_nearest(x)
      return conv(out_ch, 3, dtype=self.dtype, name="conv")(h) if self.with_conv else h
    if not self.with_conv:
      return upsample_fir(x, self.fir_kernel)
    return FIRUpConv(out_ch, tuple(self.fir_kernel), self.dtype, name="conv")(x)


class FIRUpConv(nn.Module):
  """[SG2]'s fused ``upsample_conv_2d`` with its bias: a stride-2 transposed 3x3 conv (no
  bias), the gain-4 FIR filter, then the bias, added after the filter as in [SG2] and [SDE]'s
  ``Conv2d(up=True)`` (adding it before would scale it by the filter's gain 4 inside the image
  and less at the borders).

  Parameters 'kernel' (3, 3, C, features) and 'bias' (features,), the layout of nn.ConvTranspose.
  x: (B, H, W, C) -> (B, 2H, 2W, features).
  """
  features: int
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", default_init(), (3, 3, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    # Transposed conv: (H - 1) * 2 + 3 = 2H + 1 samples; then the gain-4 FIR filter with
    # padding (p + 1) // 2 + 1 and p // 2 + 1 where p = (k - 2) - (3 - 1), back to 2H.
    h = jax.lax.conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), (2, 2),
                               "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    k = fir_kernel_2d(self.fir_kernel) * 4
    p = (k.shape[0] - 2) - 2
    return upfirdn2d(h, k, pad=((p + 1) // 2 + 1, p // 2 + 1)) + bias.astype(self.dtype)


class Downsample(nn.Module):
  """2x downsampling.

  * plain: 3x3 conv with stride 2 if ``with_conv``, else 2x2 average. The conv pads (0, 1)
    with ``padding='asymmetric'`` ([DDPM]'s TF 'SAME'; diffusers' ``downsample_padding=0``),
    (1, 1) with ``'symmetric'`` (torch ``Conv2d(padding=1)``; diffusers'
    ``downsample_padding=1``): the same weights see the input shifted by one pixel;
  * ``fir``: FIR downsampling; with ``with_conv`` the FIR filter followed by a stride-2 3x3
    conv ([SG2] ``conv_downsample_2d``).

  x: (B, H, W, C) -> (B, H/2, W/2, out_ch or C).
  """
  out_ch: Optional[int] = None
  with_conv: bool = True
  fir: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32
  padding: str = "asymmetric"  # the plain stride-2 conv's: DOWNSAMPLE_PADDINGS

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_even(x, "Downsample")
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError(f"Downsample without conv cannot change channels {x.shape[-1]} -> "
                       f"{out_ch}")
    if self.padding not in DOWNSAMPLE_PADDINGS:
      raise ValueError(f"Downsample padding={self.padding!r}; accepted: {DOWNSAMPLE_PADDINGS}")
    if self.padding != "asymmetric" and (self.fir or not self.with_conv):
      raise ValueError(f"Downsample padding={self.padding!r} applies to the plain stride-2 "
                       f"conv only (with_conv=True, fir=False)")
    if not self.fir:
      if self.with_conv:
        pad = "SAME" if self.padding == "asymmetric" else ((1, 1), (1, 1))
        return conv(out_ch, 3, stride=2, padding=pad, dtype=self.dtype, name="conv")(x)
      return downsample_avg(x)
    if not self.with_conv:
      return downsample_fir(x, self.fir_kernel)
    k = fir_kernel_2d(self.fir_kernel)
    p = (k.shape[0] - 2) + (3 - 1)
    h = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
    return conv(out_ch, 3, stride=2, padding="VALID", dtype=self.dtype, name="conv")(h)


# ----------------------------------------------------------------------------- residual blocks


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block ([DDPM] Appendix B, after Wide ResNet).

  ``h = conv3(swish(GN(x))) + Dense(swish(temb)); h = conv3(dropout(swish(GN(h))))``;
  ``out = shortcut(x) + h`` (divided by sqrt 2 if ``skip_rescale``, [SDE]). The shortcut is
  the identity, or a 1x1 conv (3x3 if ``conv_shortcut``) when the channel count changes. The
  last conv is initialised with ``init_scale`` (0: the block starts as the identity).

  x: (B, H, W, C), temb: (B, D) or None -> (B, H, W, out_ch or C).
  """
  out_ch: Optional[int] = None
  dropout: float = 0.0
  conv_shortcut: bool = False
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Dtype = jnp.float32
  norm_groups: Optional[int] = None  # GroupNorm groups (None: num_groups(C))
  norm_eps: float = 1e-6  # GroupNorm eps

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    g, eps = self.norm_groups, self.norm_eps
    h = nn.swish(group_norm(in_ch, groups=g, eps=eps, dtype=self.dtype, name="norm0")(x))
    h = conv(out_ch, 3, dtype=self.dtype, name="conv0")(h)
    if temb is not None:
      h = h + dense(out_ch, dtype=self.dtype, name="temb_proj")(nn.swish(temb))[:, None, None]
    h = nn.swish(group_norm(out_ch, groups=g, eps=eps, dtype=self.dtype, name="norm1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(out_ch, 3, init_scale=self.init_scale, dtype=self.dtype, name="conv1")(h)
    if in_ch != out_ch:
      if self.conv_shortcut:
        x = conv(out_ch, 3, dtype=self.dtype, name="shortcut")(x)
      else:
        x = dense(out_ch, dtype=self.dtype, name="shortcut")(x)
    out = x + h
    return out / np.sqrt(2.0) if self.skip_rescale else out


class ResnetBlockBigGAN(nn.Module):
  """BigGAN-style residual block with built-in resampling ([SDE] Appendix H; Brock et al.
  2019).

  ``h = swish(GN(x))``, resample both ``h`` and ``x`` (FIR or nearest / average, no conv),
  ``h = conv3(h) + Dense(swish(temb)); h = conv3(dropout(swish(GN(h))))``;
  ``out = (conv1x1(x) + h) / sqrt 2`` (1x1 only if channels change or resampling happens; no
  sqrt 2 unless ``skip_rescale``).

  x: (B, H, W, C), temb: (B, D) or None -> (B, H', W', out_ch or C), H' = 2H, H/2 or H.
  """
  out_ch: Optional[int] = None
  up: bool = False
  down: bool = False
  dropout: float = 0.0
  fir: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    if self.up and self.down:
      raise ValueError("ResnetBlockBigGAN: up and down are exclusive")
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    h = nn.swish(group_norm(in_ch, dtype=self.dtype, name="norm0")(x))
    if self.up:
      resample = ((lambda t: upsample_fir(t, self.fir_kernel)) if self.fir else upsample_nearest)
    elif self.down:
      _check_even(x, "ResnetBlockBigGAN(down=True)")
      resample = ((lambda t: downsample_fir(t, self.fir_kernel)) if self.fir else downsample_avg)
    else:
      resample = lambda t: t
    h, x = resample(h), resample(x)
    h = conv(out_ch, 3, dtype=self.dtype, name="conv0")(h)
    if temb is not None:
      h = h + dense(out_ch, dtype=self.dtype, name="temb_proj")(nn.swish(temb))[:, None, None]
    h = nn.swish(group_norm(out_ch, dtype=self.dtype, name="norm1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(out_ch, 3, init_scale=self.init_scale, dtype=self.dtype, name="conv1")(h)
    if in_ch != out_ch or self.up or self.down:
      x = dense(out_ch, dtype=self.dtype, name="shortcut")(x)
    out = x + h
    return out / np.sqrt(2.0) if self.skip_rescale else out


# ----------------------------------------------------------------------------- utilities


def count_params(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct``s."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def check_unet_args(width_name: str, width: int, ch_mult, num_res_blocks: int, dropout: float,
                    label_dropout: float, num_classes: int) -> None:
  """Validates the hyper-parameters shared by the U-Nets; errors name the value and the range."""
  if width < 1 or not ch_mult or min(ch_mult) < 1:
    raise ValueError(f"need {width_name} >= 1 and positive ch_mult, got {width_name}={width}, "
                     f"ch_mult={ch_mult}")
  if num_res_blocks < 1:
    raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
  if not 0.0 <= dropout < 1.0 or not 0.0 <= label_dropout < 1.0:
    raise ValueError(f"dropout={dropout}, label_dropout={label_dropout}: accepted range [0, 1)")
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {num_classes}")


def check_image_input(x: Array, c: Array, num_levels: int, two_time: bool = False):
  """Validates ``x`` (B, H, W, C) and ``c`` (B,) (or (B, 2) with ``two_time``) for a net with
  ``num_levels`` resolutions."""
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC (4-D), got shape {x.shape}")
  check_time_conditioning(c, x.shape[0], two_time)
  div = 2**(num_levels - 1)
  if x.shape[1] % div or x.shape[2] % div:
    raise ValueError(f"spatial size {x.shape[1:3]} must be divisible by {div} "
                     f"for {num_levels} resolution levels")
