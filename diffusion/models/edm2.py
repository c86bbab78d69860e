"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Sec. 2-3, App. B), registered as ``edm2_unet``, with the learned
uncertainty head u(sigma) of its loss (eq. 21).

Every layer keeps the expected magnitude (RMS over elements) of unit-magnitude inputs at 1:

  forced weight normalisation (eq. 66):  stored w_i <- w_i / (eps + ||w_i|| / sqrt(N))
    (each output channel i at unit *variance*, i.e. norm sqrt(N), N = fan-in; eps = 1e-4),
    re-applied to the stored weights after every optimiser update (:func:`project_params`);
  MP convolution / linear (eq. 47):      w_hat_i = g w_i / (sqrt(N) (eps + ||w_i|| / sqrt(N)))
    (unit-norm rows times a gain g, default 1); no biases anywhere;
  MP-SiLU (eq. 81):                      silu(x) / 0.596   (E[silu(z)^2] = 0.596^2, z ~ N(0, 1));
  MP-sum (eq. 88):                       ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2);
  MP-concat (eq. 103):                   [w_a a, w_b b], w_a = C (1 - t) / sqrt(N_a),
                                         w_b = C t / sqrt(N_b), C = sqrt((N_a + N_b) / ((1 - t)^2
                                         + t^2));
  MP Fourier features (eq. 75):          sqrt(2) cos(f c + phi), f = 2 pi N(0, 1), phi = 2 pi U[0,
                                         1) fixed (drawn from a fixed seed, not parameters);
  pixel normalisation:                   x / (eps + ||x||_channels / sqrt(C));
  learned output gain g_out (init 0: the network starts at F = 0) and per-block embedding gain.

The U-Net (Fig. 21): an input 3x3 conv on [x, 1], encoder blocks ('enc': resample, 1x1 skip conv
when the width changes, pixel norm; residual branch conv3x3(mp_silu(x)) modulated by
1 + g_emb * linear(emb), mp_silu, dropout, conv3x3; MP-sum with t = 0.3; cosine self-attention
(q, k, v pixel-normalised per head, 64 channels per head) with MP-sum t = 0.3 at
``attn_resolutions``; activations clipped to +-256), a bottleneck of two decoder blocks (the first
with attention), decoder blocks fed by MP-concat (t = 0.5) of the skips, and an output 3x3 conv
with the learned gain. Resampling: 2x2 average pooling / nearest neighbour. The embedding is
linear(Fourier(c_noise)), MP-summed (t = 0.5) with linear(sqrt(num_classes) onehot(label)), then
mp_silu. The NULL label (index ``num_classes``, and ``labels=None``) is the zero vector, as the
released code does for an unconditional call.

Parameter counts (``count_params`` of ``jax.eval_shape``; :data:`PARAM_COUNTS`) equal those of the
released models (NVlabs/edm2, counted from its module definition), and round to the paper's
Table 2 (ImageNet-512, latents 64x64x4): XS 125M, S 280M, M 498M, L 777M, XL 1.1B, XXL 1.5B.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models import layers, register_model

Array = Any
PyTree = Any

EPS = 1e-4  # the weight / pixel normalisation epsilon (EDM2, eq. 66)
SILU_RMS = 0.596  # sqrt(E[silu(z)^2]), z ~ N(0, 1) (EDM2, eq. 81)
WEIGHT_NAME = "weight"  # the parameter name of every MP weight (what project_params normalises)


# ----------------------------------------------------------------------------- MP primitives


def normalize(x: Array, axes: Sequence[int], eps: float = EPS) -> Array:
  """x / (eps + ||x||_axes / sqrt(n)), n the number of elements reduced: unit RMS over ``axes``."""
  axes = tuple(a % x.ndim for a in axes)
  n = int(np.prod([x.shape[a] for a in axes]))
  xf = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(xf * xf, axis=axes, keepdims=True))
  return (xf / (eps + norm / math.sqrt(n))).astype(x.dtype)


def normalize_weight(w: Array, eps: float = EPS) -> Array:
  """Forced weight normalisation (EDM2, eq. 66): every output channel (last axis, flax's HWIO /
  (in, out) layout) at unit variance, i.e. ``||w[..., i]|| = sqrt(fan_in)``."""
  return normalize(w, tuple(range(w.ndim - 1)), eps)


def mp_weight(w: Array, gain: Array = 1.0) -> Array:
  """The weight of the forward pass (EDM2, eq. 47): normalize_weight(w) * gain / sqrt(fan_in),
  unit-norm output channels (times ``gain``)."""
  fan_in = int(np.prod(w.shape[:-1]))
  return normalize_weight(w.astype(jnp.float32)) * (gain / math.sqrt(fan_in))


def mp_silu(x: Array) -> Array:
  """silu(x) / 0.596 (EDM2, eq. 81): unit magnitude for x ~ N(0, 1)."""
  return jax.nn.silu(x) / SILU_RMS


def mp_sum(a: Array, b: Array, t: float = 0.5) -> Array:
  """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2) (EDM2, eq. 88): unit magnitude for independent
  unit-magnitude a, b."""
  return (a + t * (b - a)) / math.sqrt((1 - t)**2 + t**2)


def mp_cat(a: Array, b: Array, t: float = 0.5, axis: int = -1) -> Array:
  """Concatenation along ``axis`` weighted so that each part contributes (1 - t)^2 : t^2 of the
  output's energy at unit total magnitude (EDM2, eq. 103)."""
  na, nb = a.shape[axis], b.shape[axis]
  c = math.sqrt((na + nb) / ((1 - t)**2 + t**2))
  return jnp.concatenate([a * (c * (1 - t) / math.sqrt(na)), b * (c * t / math.sqrt(nb))],
                         axis=axis)


def fourier_constants(num_channels: int, seed: int,
                      bandwidth: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
  """The fixed frequencies f = 2 pi N(0, bandwidth^2) and phases phi = 2 pi U[0, 1) (float32
  (num_channels,) each) of :func:`mp_fourier`, drawn with numpy from ``seed``."""
  rng = np.random.default_rng(seed)
  freqs = 2 * np.pi * bandwidth * rng.standard_normal(num_channels)
  phases = 2 * np.pi * rng.random(num_channels)
  return freqs.astype(np.float32), phases.astype(np.float32)


def mp_fourier(c: Array, freqs: Array, phases: Array) -> Array:
  """sqrt(2) cos(f c + phi) (EDM2, eq. 75), c (B,) -> (B, F): unit magnitude for any c when
  phi ~ U[0, 2 pi)."""
  return math.sqrt(2.0) * jnp.cos(c.astype(jnp.float32)[:, None] * freqs[None] + phases[None])


def pixel_norm(x: Array, eps: float = EPS) -> Array:
  """Pixel normalisation: unit RMS over the channel (last) axis."""
  return normalize(x, (-1,), eps)


def resample(x: Array, mode: str) -> Array:
  """'keep', 'down' (2x2 average pooling) or 'up' (nearest neighbour): EDM2's [1, 1] filter."""
  if mode == "down":
    return layers.downsample_avg(x)
  if mode == "up":
    return layers.upsample_nearest(x)
  return x


def is_mp_weight(path: Tuple[str, ...]) -> bool:
  """Whether the parameter at ``path`` (a flattened key) is an MP weight (forced-normalised)."""
  return path[-1] == WEIGHT_NAME


def project_params(params: PyTree) -> PyTree:
  """Forced weight normalisation of the stored parameters (EDM2, eq. 66; the paper's in-place
  re-normalisation after every update): every MP weight (parameters named ``weight``) gets unit-
  variance output channels; the gains are left as they are. Pure: returns a new tree."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  out = {k: (normalize_weight(v) if is_mp_weight(k) else v) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(out)


# ----------------------------------------------------------------------------- MP layers


def _init_on_sphere(key, shape, dtype=jnp.float32) -> Array:
  """N(0, 1) draws, forced-normalised (:func:`normalize_weight`): the stored weights start where
  :func:`project_params` keeps them."""
  return normalize_weight(jax.random.normal(key, shape, dtype))


class MPConv(nn.Module):
  """MP convolution (``kernel_size`` k >= 1, NHWC) or linear layer (k = 0, (..., in)), no bias.

  The stored weight (k, k, in, out) / (in, out) starts N(0, 1), forced-normalised; the forward
  pass uses
  :func:`mp_weight` (unit-norm output channels times ``gain``). 'SAME' zero padding.
  """
  features: int
  kernel_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, gain: Array = 1.0) -> Array:
    cin = x.shape[-1]
    shape = (cin, self.features) if self.kernel_size == 0 else (
        self.kernel_size, self.kernel_size, cin, self.features)
    w = self.param(WEIGHT_NAME, _init_on_sphere, shape, jnp.float32)
    w = mp_weight(w, gain).astype(self.dtype)
    x = x.astype(self.dtype)
    if self.kernel_size == 0:
      return x @ w
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class MPFourier(nn.Module):
  """MP Fourier features of c (B,) -> (B, num_channels) (:func:`mp_fourier`), fixed constants
  from ``seed`` (no parameters)."""
  num_channels: int
  seed: int = 0

  def __call__(self, c: Array) -> Array:
    freqs, phases = fourier_constants(self.num_channels, self.seed)
    return mp_fourier(c, jnp.asarray(freqs), jnp.asarray(phases))


class Block(nn.Module):
  """EDM2 encoder / decoder block (Fig. 21): x (B, H, W, Cin), emb (B, E) -> (B, H', W', Cout).

  enc: resample, 1x1 skip conv if Cin != Cout, pixel norm, then the residual branch.
  dec: resample, residual branch on the input, 1x1 skip conv if Cin != Cout.
  Residual branch: conv3x3(mp_silu(x)) * (1 + linear(emb, gain=g_emb)), mp_silu, dropout,
  conv3x3; joined by mp_sum(x, y, res_balance). Attention (heads = Cout / channels_per_head,
  at least 1): q, k, v = pixel-normalised per head of a 1x1 conv, softmax(q k / sqrt(d)) v, 1x1
  proj, mp_sum(x, y, attn_balance). Output clipped to +-clip_act.
  """
  out_channels: int
  flavor: str = "enc"
  resample_mode: str = "keep"
  attention: bool = False
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: Optional[float] = 256.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool = False) -> Array:
    cout, dt = self.out_channels, self.dtype
    x = resample(x, self.resample_mode)
    need_skip = x.shape[-1] != cout
    if self.flavor == "enc":
      if need_skip:
        x = MPConv(cout, 1, dt, name="conv_skip")(x)
      x = pixel_norm(x)
    y = MPConv(cout, 3, dt, name="conv_res0")(mp_silu(x))
    emb_gain = self.param("emb_gain", nn.initializers.zeros, (), jnp.float32)
    c = MPConv(cout, 0, dt, name="emb_linear")(emb, gain=emb_gain) + 1
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    if train and self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=False)(y)
    y = MPConv(cout, 3, dt, name="conv_res1")(y)
    if self.flavor == "dec" and need_skip:
      x = MPConv(cout, 1, dt, name="conv_skip")(x)
    x = mp_sum(x.astype(y.dtype), y, self.res_balance)
    if self.attention:
      x = mp_sum(x, self._attention(x), self.attn_balance)
    if self.clip_act is not None:
      x = jnp.clip(x, -self.clip_act, self.clip_act)
    return x

  def _attention(self, x: Array) -> Array:
    b, h, w, ch = x.shape
    heads = max(1, ch // self.channels_per_head)
    if ch % heads:
      raise ValueError(f"attention over {ch} channels: not divisible into {heads} heads of "
                       f"channels_per_head={self.channels_per_head}")
    qkv = MPConv(3 * ch, 1, self.dtype, name="attn_qkv")(x)
    qkv = normalize(qkv.reshape(b, h * w, heads, ch // heads, 3), (3,))  # pixel norm per head
    q, k, v = (qkv[..., i].astype(jnp.float32) for i in range(3))
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(ch // heads)
    a = jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, axis=-1), v)
    return MPConv(ch, 1, self.dtype, name="attn_proj")(a.reshape(b, h, w, ch).astype(self.dtype))


class LogvarHead(nn.Module):
  """u(sigma) of EDM2's uncertainty-weighted loss (eq. 21): c_noise (B,) -> (B,),
  ``linear(Fourier(c_noise))`` with ``num_channels`` MP Fourier features (released code: 128)."""
  num_channels: int = 128
  seed: int = 1

  @nn.compact
  def __call__(self, c: Array) -> Array:
    f = MPFourier(self.num_channels, self.seed, name="fourier")(c)
    return MPConv(1, 0, name="linear")(f)[:, 0]


# ----------------------------------------------------------------------------- the U-Net

# EDM2 (Karras et al. 2024, Table 2 / App. D; the released presets, NVlabs/edm2 train_edm2.py):
# channel multipliers (1, 2, 3, 4), 3 blocks per resolution, attention at 16 and 8, model
# channels 128 (XS) .. 448 (XXL); dropout 0.1 from M up. ImageNet-512: 64x64x4 latents, 1000
# classes; ImageNet-64: 64x64x3 pixels, the same networks (XS..XL).
_IMAGENET = dict(channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(16, 8),
                 num_classes=1000)
_WIDTHS = {"xs": (128, 0.0), "s": (192, 0.0), "m": (256, 0.1), "l": (320, 0.1),
           "xl": (384, 0.1), "xxl": (448, 0.1)}
PRESETS: Dict[str, dict] = {
    **{f"img512_{k}": dict(_IMAGENET, model_channels=ch, dropout=p)
       for k, (ch, p) in _WIDTHS.items()},
    **{f"img64_{k}": dict(_IMAGENET, model_channels=ch, dropout=p)
       for k, (ch, p) in _WIDTHS.items() if k != "xxl"},
    # Not from the paper (it has no CIFAR-10 model): 32x32x3, levels 32/16/8, attention at 16 and
    # 8, 128-256 channels, EDM's CIFAR-10 dropout 0.13 (Karras et al. 2022).
    "cifar10": dict(model_channels=128, channel_mult=(1, 2, 2), num_blocks=3,
                    attn_resolutions=(16, 8), dropout=0.13),
    # 8x8x1 digits: levels 8/4, attention at 4 (CPU scale).
    "digits": dict(model_channels=32, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(4,),
                   channels_per_head=32, dropout=0.0),
}
# Parameters (with the 128-channel u(sigma) head) for the input shape of each preset, equal to
# the released models' counts (module docstring). The paper's Table 2: 125M, 280M, 498M, 777M,
# 1.1B, 1.5B (ImageNet-512); Table 3 (ImageNet-64): 280M, 498M, 777M, 1.1B (S..XL).
PARAM_COUNTS = {
    "img512_xs": 124_713_253, "img512_s": 280_212_837, "img512_m": 497_807_781,
    "img512_l": 777_498_085, "img512_xl": 1_119_283_749, "img512_xxl": 1_523_164_773,
    "img64_xs": 124_710_949, "img64_s": 280_209_381, "img64_m": 497_803_173,
    "img64_l": 777_492_325, "img64_xl": 1_119_276_837,
}
PRESET_SHAPES = {**{k: (64, 64, 4) for k in PRESETS if k.startswith("img512")},
                 **{k: (64, 64, 3) for k in PRESETS if k.startswith("img64")},
                 "cifar10": (32, 32, 3), "digits": (8, 8, 1)}
FLAVORS = ("enc", "dec")


def preset(name: str, **overrides) -> dict:
  """Constructor kwargs of a named configuration (:data:`PRESETS`) with ``overrides``."""
  if name not in PRESETS:
    raise ValueError(f"unknown EDM2 preset {name!r}; accepted: {sorted(PRESETS)}")
  return {**PRESETS[name], **overrides}


@register_model("edm2_unet")
class EDM2UNet(nn.Module):
  """EDM2 U-Net: ``apply(variables, x, c, labels=None, train=False, return_logvar=False)``.

  x (B, H, W, C) (EDM's c_in x), c (B,) (EDM's c_noise = ln(sigma)/4), labels (B,) int in [0,
  num_classes] (num_classes = NULL = the zero class vector) or None -> F (B, H, W, C); with
  ``return_logvar`` the pair (F, u (B,)), u the uncertainty head of c (:class:`LogvarHead`).

  Attributes:
    model_channels: base width; level i has ``model_channels * channel_mult[i]`` channels.
    channel_mult: multipliers per resolution (H divisible by 2^(levels - 1)).
    num_blocks: blocks per resolution in the encoder (+1 in the decoder).
    attn_resolutions: spatial sizes (H) whose blocks have self-attention.
    num_classes: > 0: class-conditional (one-hot through an MP linear layer).
    label_dropout: probability of the NULL label per example with ``train`` ('dropout' rng).
    dropout: dropout in the residual branches with ``train``.
    channels_per_head: attention head width (EDM2: 64).
    channel_mult_noise / channel_mult_emb: widths of the Fourier features / embedding in units of
      model_channels (None: channel_mult[0] / max(channel_mult), as released).
    label_balance, concat_balance, res_balance, attn_balance: the MP-sum / MP-concat t's.
    clip_act: block output clipping (None: none).
    logvar_channels: Fourier features of the u(sigma) head.
    dtype: compute dtype; parameters float32.
  """
  model_channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (16, 8)
  num_classes: int = 0
  label_dropout: float = 0.0
  dropout: float = 0.0
  channels_per_head: int = 64
  channel_mult_noise: Optional[int] = None
  channel_mult_emb: Optional[int] = None
  label_balance: float = 0.5
  concat_balance: float = 0.5
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: Optional[float] = 256.0
  logvar_channels: int = 128
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_unet_args("model_channels", self.model_channels, self.channel_mult,
                           self.num_blocks, self.dropout, self.label_dropout, self.num_classes)
    for name in ("label_balance", "concat_balance", "res_balance", "attn_balance"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}={v}: accepted range [0, 1]")
    for name in ("channels_per_head", "logvar_channels"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name in ("channel_mult_noise", "channel_mult_emb"):
      v = getattr(self, name)
      if v is not None and not (isinstance(v, int) and v >= 1):
        raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")
    if self.clip_act is not None and not self.clip_act > 0:
      raise ValueError(f"clip_act must be None or > 0, got {self.clip_act!r}")
    super().__post_init__()

  def _embedding(self, c: Array, labels: Optional[Array], train: bool) -> Array:
    mc, dt = self.model_channels, self.dtype
    cnoise = mc * (self.channel_mult_noise or self.channel_mult[0])
    cemb = mc * (self.channel_mult_emb or max(self.channel_mult))
    emb = MPConv(cemb, 0, dt, name="emb_noise")(MPFourier(cnoise, 0, name="emb_fourier")(c))
    if self.num_classes:
      b = c.shape[0]
      labels = jnp.full((b,), self.num_classes, jnp.int32) if labels is None else labels
      labels = labels.astype(jnp.int32)
      if train and self.label_dropout > 0:
        drop = jax.random.bernoulli(self.make_rng("dropout"), self.label_dropout, (b,))
        labels = jnp.where(drop, self.num_classes, labels)
      # one_hot of index num_classes (NULL) is all zeros: the zero class vector.
      onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
      lab = MPConv(cemb, 0, dt, name="emb_label")(onehot * math.sqrt(self.num_classes))
      emb = mp_sum(emb, lab.astype(emb.dtype), self.label_balance)
    return mp_silu(emb)

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None, train: bool = False,
               return_logvar: bool = False):
    levels = len(self.channel_mult)
    layers.check_image_input(x, c, levels)
    if labels is not None:
      from diffusion.models.mlp import check_labels
      check_labels(labels, x.shape[0], self.num_classes)
    dt, mc = self.dtype, self.model_channels
    # u(sigma): always built (cheap; unused outputs are pruned), so that init creates it.
    logvar = LogvarHead(self.logvar_channels, name="logvar")(c)
    emb = self._embedding(c, labels, train)

    def block(h, cout, name, flavor, mode="keep", attention=False):
      return Block(cout, flavor, mode, attention, self.channels_per_head, self.dropout,
                   self.res_balance, self.attn_balance, self.clip_act, dt, name=name)(
                       h, emb, train)

    # Encoder.
    h = x.astype(dt)
    h = jnp.concatenate([h, jnp.ones_like(h[..., :1])], axis=-1)
    skips = []
    res = x.shape[1]
    for lvl, mult in enumerate(self.channel_mult):
      r, ch = res >> lvl, mc * mult
      if lvl == 0:
        h = MPConv(ch, 3, dt, name=f"enc{r}_conv")(h)
      else:
        h = block(h, h.shape[-1], f"enc{r}_down", "enc", mode="down")
      skips.append(h)
      for j in range(self.num_blocks):
        h = block(h, ch, f"enc{r}_block{j}", "enc", attention=r in self.attn_resolutions)
        skips.append(h)
    # Decoder.
    for lvl in reversed(range(levels)):
      r, ch = res >> lvl, mc * self.channel_mult[lvl]
      if lvl == levels - 1:
        h = block(h, h.shape[-1], f"dec{r}_in0", "dec", attention=True)
        h = block(h, h.shape[-1], f"dec{r}_in1", "dec")
      else:
        h = block(h, h.shape[-1], f"dec{r}_up", "dec", mode="up")
      for j in range(self.num_blocks + 1):
        h = mp_cat(h, skips.pop(), self.concat_balance)
        h = block(h, ch, f"dec{r}_block{j}", "dec", attention=r in self.attn_resolutions)
    assert not skips
    out_gain = self.param("out_gain", nn.initializers.zeros, (), jnp.float32)
    out = MPConv(x.shape[-1], 3, dt, name="out_conv")(h, gain=out_gain).astype(x.dtype)
    if return_logvar:
      return out, logvar.astype(jnp.float32)
    return out

  @staticmethod
  def project_params(params: PyTree) -> PyTree:
    """Forced weight normalisation of stored params (:func:`project_params`); the train step
    applies it after every update (diffusion.training.make_train_step)."""
    return project_params(params)


def apply_logvar(model: EDM2UNet, params: PyTree, c: Array) -> Array:
  """u(sigma) (B,) of c_noise (B,) alone, from the network's ``params`` (its 'logvar' head)."""
  return LogvarHead(model.logvar_channels).apply({"params": params["logvar"]}, c)
