"""DiT: the Diffusion Transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with
Transformers", ICCV 2023), registered as ``dit``.

The image (B, H, W, C) is cut into non-overlapping p x p patches, each mapped linearly to a
token of width D ("patchify", Sec. 3.2; the p x p conv with stride p of the paper is this linear
map of flattened patches); a fixed 2-D sine-cosine positional embedding is added (Sec. 3.2,
"frequency-based positional embeddings (the sine-cosine version)", not learned). The T = HW / p^2
tokens go through N transformer blocks with adaLN-Zero conditioning (Sec. 3.2, Fig. 3):

  (shift1, scale1, gate1, shift2, scale2, gate2) = Linear_zero(SiLU(cond)),   cond = t_emb + y_emb
  x = x + gate1 * MHSA(LN(x) * (1 + scale1) + shift1)
  x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)

with LN a LayerNorm without affine parameters (eps 1e-6), MLP = Linear(4D), tanh-GELU,
Linear(D). The modulation linear is initialised to zero, so every block is the identity at
initialisation ("adaLN-Zero"). A final adaLN layer (shift, scale), a zero-initialised linear map
to p * p * out_channels per token and "unpatchify" give the output image. With ``learn_sigma``
the network has 2C output channels (the mean prediction and the interpolation coefficients of
the variance, Nichol & Dhariwal 2021, as in the paper), but ``__call__`` returns only the first
C (shaped like x) unless called with ``with_variance=True``: this codebase's losses
(diffusion.losses, the "simple" eps / x0 / v / EDM losses) never read the variance channels; the
option exists so that parameter counts equal the paper's.

Conditioning: ``t_emb`` is a 256-frequency sinusoidal embedding of ``embedding_scale * c``
followed by Linear(D), SiLU, Linear(D) (Sec. 3.2; layers.NoiseEmbedding); ``y_emb`` is a learned
class embedding with a NULL class (index ``num_classes``) used for ``labels=None`` and, when
``train`` and ``label_dropout > 0``, for dropped labels (classifier-free guidance; the paper
drops with probability 0.1) (layers.ClassEmbedding).

Initialisation: as in ViT, xavier-uniform linear layers with zero biases (Sec. 3.2), zeros for
every adaLN modulation and the final linear.

Differences with the released code (facebookresearch/DiT models.py, read, not copied; the
converter diffusion.convert.dit sets the flags that remove them, and tests/test_convert_dit.py
checks the converted network against the released code's own outputs):

* timestep features (``embedding_convention``): here by default DDPM's
  [sin(c w_i), cos(c w_i)] with w_i = 10000^(-i / (half - 1)) (layers.positional_embedding);
  the release uses GLIDE / ADM's [cos(c w_i), sin(c w_i)] with w_i = 10000^(-i / half):
  ``embedding_convention='adm'``.
* positional embedding (``pos_embed_axes``): here by default the first D/2 channels embed the
  row index and the last D/2 the column index ('hw'); the release (after MAE's
  get_2d_sincos_pos_embed, whose meshgrid puts w first) embeds the column index first:
  ``pos_embed_axes='wh'``. Otherwise the values are equal (same frequencies 10000^(-i / (D/4)),
  [sin, cos] per axis). On a square grid 'wh' is 'hw' with the image transposed.
* initialisation (``reference_init``): the release draws its timestep MLP kernels and its class
  table from N(0, 0.02); here by default the timestep MLP is xavier-uniform
  (layers.NoiseEmbedding) and the class table N(0, 1) (layers.ClassEmbedding);
  ``reference_init=True`` gives the release's. (Initialisation only: no effect on a converted
  network.)
* the patch embedding is the release's p x p stride-p conv written as a linear map of flattened
  (p, p, C) patches (its kernel is the conv's (D, C, p, p) transposed to (p, p, C, D)), and the
  positional embedding is a constant here, a frozen parameter there (below).
* with ``learn_sigma`` the release returns all 2C channels; here the first C unless
  ``with_variance=True`` (above).

None of these changes a parameter count; the defaults keep earlier runs bitwise unchanged.

Parameter counts (:func:`preset`, 32x32x4 inputs, 1000 classes + NULL, ``learn_sigma``), paper
Table 1 in parentheses: S/2 32,865,056 (33M), B/2 130,315,808 (130M), L/2 457,840,672
(458M), XL/2 674,834,720 (675M). The released code also counts its fixed positional embedding
(a frozen torch parameter, T * D = 294,912 for XL/2): 675,129,632 for DiT-XL/2. Here the
positional embedding is a constant, not a parameter (no optimizer state, EMA or checkpoint
entry); tests/test_dit.py checks count + T * D against a closed form of the released model for
all twelve presets.
"""
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models import layers, register_model

Array = Any

# Model sizes of the paper's Table 1: depth N, hidden size D, heads.
SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
PATCH_SIZES = (2, 4, 8)
# A small DiT for the 8x8x1 digits (patch 2: 16 tokens).
DIGITS = dict(depth=6, hidden_size=128, num_heads=4, patch_size=2)

PRESETS = {f"{s}/{p}": dict(SIZES[s], patch_size=p) for s in SIZES for p in PATCH_SIZES}
PRESETS["digits"] = DIGITS
# The released code's initial std of its timestep MLP kernels and class table (reference_init).
REFERENCE_INIT_STD = 0.02


def preset(name: str, **overrides) -> dict:
  """Constructor kwargs of a DiT configuration: 'S/2', 'B/4', 'XL/2', ... (size / patch size,
  paper Table 1 / 4) or 'digits'; ``overrides`` replace or add fields."""
  if name not in PRESETS:
    raise ValueError(f"unknown DiT preset {name!r}; accepted: {sorted(PRESETS)}")
  return {**PRESETS[name], **overrides}


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """Sinusoidal embedding of positions: ``[sin(pos w_i), cos(pos w_i)]``,
  ``w_i = 10000^(-i / (dim / 2))``, i < dim / 2 (Vaswani et al. 2017). (M,) -> (M, dim)."""
  if dim % 2:
    raise ValueError(f"sine-cosine embedding width must be even, got {dim}")
  omega = 1.0 / 10_000.0**(np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  out = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None]
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


POS_EMBED_AXES = ("hw", "wh")


def sincos_2d(dim: int, grid_h: int, grid_w: int, axes: str = "hw") -> np.ndarray:
  """Fixed 2-D sine-cosine positional embedding (DiT Sec. 3.2, after MAE / ViT): with
  ``axes='hw'`` the first ``dim / 2`` channels embed the row index and the last ``dim / 2`` the
  column index; with 'wh' the column index first (the released DiT / MAE code).

  Returns (grid_h * grid_w, dim) float32, tokens in row-major (raster) order.
  """
  if dim % 4:
    raise ValueError(f"2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
  if axes not in POS_EMBED_AXES:
    raise ValueError(f"pos_embed_axes={axes!r}; accepted: {POS_EMBED_AXES}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  first, second = (rows, cols) if axes == "hw" else (cols, rows)
  emb = np.concatenate([sincos_1d(dim // 2, first), sincos_1d(dim // 2, second)], axis=1)
  return emb.astype(np.float32)


def patchify(x: Array, p: int) -> Array:
  """(B, H, W, C) -> (B, H/p * W/p, p * p * C): raster-ordered tokens, each a flattened
  (p, p, C) patch."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Array, p: int, h: int, w: int) -> Array:
  """Inverse of :func:`patchify`: (B, h/p * w/p, p * p * C) -> (B, h, w, C)."""
  b, t, d = tokens.shape
  c = d // (p * p)
  if t != (h // p) * (w // p) or d != p * p * c:
    raise ValueError(f"tokens {tokens.shape} do not tile a {h}x{w} image with patch {p}")
  x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def _linear(features: int, dtype, name: str, zero: bool = False) -> nn.Dense:
  """Linear layer: xavier-uniform weights and zero bias (ViT), or all zeros."""
  init = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
  return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN: x (B, T, D) * (1 + scale) + shift, with shift / scale (B, D)."""
  return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
  """Multi-head self-attention: a qkv linear map, ``jax.nn.dot_product_attention`` (the fused
  cuDNN kernel on GPU when available, XLA's otherwise; XLA's computes the logits in float32 for
  bfloat16 inputs) and an output projection. (B, T, D) -> (B, T, D)."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, t, d = x.shape
    qkv = _linear(3 * d, self.dtype, "qkv")(x).reshape(b, t, 3, self.num_heads,
                                                       d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    a = jax.nn.dot_product_attention(q, k, v, implementation=None)
    return _linear(d, self.dtype, "proj")(a.reshape(b, t, d))


class DiTBlock(nn.Module):
  """A DiT block with adaLN-Zero (DiT Fig. 3, right). x: (B, T, D), cond: (B, D) -> (B, T, D).
  The identity at initialisation (the gates start at 0)."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, cond: Array) -> Array:
    d = x.shape[-1]
    mod = _linear(6 * d, self.dtype, "adaLN_modulation", zero=True)(nn.silu(cond))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = _modulate(_layer_norm(self.dtype, "norm1")(x), shift1, scale1)
    x = x + gate1[:, None] * Attention(self.num_heads, self.dtype, name="attn")(h)
    h = _modulate(_layer_norm(self.dtype, "norm2")(x), shift2, scale2)
    h = _linear(int(d * self.mlp_ratio), self.dtype, "mlp_fc1")(h)
    h = _linear(d, self.dtype, "mlp_fc2")(nn.gelu(h, approximate=True))
    return x + gate2[:, None] * h


class FinalLayer(nn.Module):
  """adaLN (shift, scale) + zero-initialised linear map to ``features`` per token.
  x: (B, T, D), cond: (B, D) -> (B, T, features)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, cond: Array) -> Array:
    d = x.shape[-1]
    mod = _linear(2 * d, self.dtype, "adaLN_modulation", zero=True)(nn.silu(cond))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = _modulate(_layer_norm(self.dtype, "norm")(x), shift, scale)
    return _linear(self.features, self.dtype, "linear", zero=True)(h)


@register_model("dit")
class DiT(nn.Module):
  """DiT: ``apply(variables, x, c, labels=None, train=False) -> (B, H, W, C)``.

  Attributes:
    patch_size: p; H and W must be divisible by p (T = HW / p^2 tokens).
    hidden_size: token width D (divisible by num_heads and by 4, for the 2-D sine-cosine
      embedding).
    depth: number of DiT blocks N.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D (paper: 4).
    learn_sigma: 2C output channels as in the paper (mean + variance interpolation); only the
      first C are returned unless ``with_variance=True`` (unused by this codebase's losses).
    out_ch: output channels of the mean prediction (None: C of the input).
    num_classes: > 0 adds a class embedding with a NULL class (index num_classes).
    label_dropout: probability of replacing a label by NULL when ``train`` (paper: 0.1).
    frequency_dim: sinusoidal features of the noise conditioning (paper: 256).
    embedding_type, embedding_scale, fourier_scale: the noise embedding of layers.NoiseEmbedding
      ('positional' of ``embedding_scale * c``; 999 for c = t in [0, 1], the paper's step
      index; 'fourier' for EDM's c_noise).
    embedding_convention: the 'positional' features' convention, 'ddpm' (default) or 'adm'
      (the released DiT's; layers.positional_embedding).
    pos_embed_axes: 'hw' (default: row index in the first half of the channels) or 'wh' (the
      released DiT's: column index first); :func:`sincos_2d`.
    reference_init: the released code's initialisation of the timestep MLP and the class table
      (N(0, 0.02)) instead of xavier-uniform and N(0, 1).
    dtype: compute dtype; parameters stay float32.
  """
  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  learn_sigma: bool = False
  out_ch: Optional[int] = None
  num_classes: int = 0
  label_dropout: float = 0.0
  frequency_dim: int = 256
  embedding_type: str = "positional"
  embedding_scale: float = 1.0
  fourier_scale: float = 16.0
  embedding_convention: str = "ddpm"
  pos_embed_axes: str = "hw"
  reference_init: bool = False
  dtype: Any = jnp.float32
  time_inputs: ClassVar[int] = 2  # c (B,) or (B, 2): capabilities(net).time_inputs

  def __post_init__(self):
    check_dit_args(self.patch_size, self.hidden_size, self.depth, self.num_heads,
                   self.mlp_ratio, self.num_classes, self.label_dropout, self.frequency_dim,
                   self.embedding_type, self.out_ch, self.embedding_convention,
                   self.pos_embed_axes)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, c: Array, labels: Optional[Array] = None, train: bool = False,
               with_variance: bool = False) -> Array:
    """x: (B, H, W, C); c: (B,), or (B, 2) two times (``layers.time_conditioning``); labels:
    (B,) int or None. Returns (B, H, W, out_ch or C), or
    with ``with_variance`` (needs learn_sigma) all (B, H, W, 2 (out_ch or C)) output channels."""
    check_dit_input(x, c, self.patch_size, two_time=True)
    if with_variance and not self.learn_sigma:
      raise ValueError("with_variance=True needs a DiT built with learn_sigma=True")
    b, hgt, wid, ch = x.shape
    p, d, dt = self.patch_size, self.hidden_size, self.dtype
    out_ch = self.out_ch or ch
    cond = layers.conditioning(
        c, labels, train=train, base_dim=self.frequency_dim, out_dim=d,
        embedding_type=self.embedding_type, embedding_scale=self.embedding_scale,
        fourier_scale=self.fourier_scale, fourier_size=None, num_classes=self.num_classes,
        label_dropout=self.label_dropout, dtype=dt, convention=self.embedding_convention,
        noise_kernel_std=REFERENCE_INIT_STD if self.reference_init else None,
        class_init_std=REFERENCE_INIT_STD if self.reference_init else 1.0, two_time=True)
    pos = jnp.asarray(sincos_2d(d, hgt // p, wid // p, self.pos_embed_axes), dt)
    h = _linear(d, dt, "patch_embed")(patchify(x.astype(dt), p)) + pos[None]
    for i in range(self.depth):
      h = DiTBlock(self.num_heads, self.mlp_ratio, dt, name=f"block{i}")(h, cond)
    n_out = 2 * out_ch if self.learn_sigma else out_ch
    h = FinalLayer(p * p * n_out, dt, name="final_layer")(h, cond)
    out = unpatchify(h, p, hgt, wid).astype(x.dtype)
    return out if with_variance or not self.learn_sigma else out[..., :out_ch]


def check_dit_args(patch_size: int, hidden_size: int, depth: int, num_heads: int,
                   mlp_ratio: float, num_classes: int, label_dropout: float,
                   frequency_dim: int, embedding_type: str, out_ch: Optional[int],
                   embedding_convention: str = "ddpm", pos_embed_axes: str = "hw") -> None:
  """Validates DiT's hyper-parameters; errors name the value and what is accepted."""
  for name, v in (("patch_size", patch_size), ("hidden_size", hidden_size), ("depth", depth),
                  ("num_heads", num_heads)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  if hidden_size % num_heads:
    raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
  if hidden_size % 4:
    raise ValueError(f"hidden_size={hidden_size} must be divisible by 4 (the 2-D sine-cosine "
                     "positional embedding)")
  if not mlp_ratio > 0 or int(hidden_size * mlp_ratio) < 1:
    raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {num_classes}")
  if not 0.0 <= label_dropout < 1.0:
    raise ValueError(f"label_dropout={label_dropout}: accepted range [0, 1)")
  if frequency_dim < 2:
    raise ValueError(f"frequency_dim must be >= 2, got {frequency_dim}")
  if embedding_type not in layers.EMBEDDING_TYPES:
    raise ValueError(f"embedding_type={embedding_type!r}; accepted: {layers.EMBEDDING_TYPES}")
  if out_ch is not None and out_ch < 1:
    raise ValueError(f"out_ch must be None or >= 1, got {out_ch}")
  if embedding_convention not in layers.POSITIONAL_CONVENTIONS:
    raise ValueError(f"embedding_convention={embedding_convention!r}; accepted: "
                     f"{layers.POSITIONAL_CONVENTIONS}")
  if embedding_convention != "ddpm" and embedding_type != "positional":
    raise ValueError(f"embedding_convention={embedding_convention!r} applies to "
                     f"embedding_type='positional' only, got {embedding_type!r}")
  if pos_embed_axes not in POS_EMBED_AXES:
    raise ValueError(f"pos_embed_axes={pos_embed_axes!r}; accepted: {POS_EMBED_AXES}")


def check_dit_input(x: Array, c: Array, patch_size: int, two_time: bool = False) -> None:
  """x must be (B, H, W, C) with H and W divisible by ``patch_size``; c (B,) (or (B, 2) with
  ``two_time``)."""
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC (4-D), got shape {x.shape}")
  layers.check_time_conditioning(c, x.shape[0], two_time)
  if x.shape[1] % patch_size or x.shape[2] % patch_size:
    raise ValueError(f"spatial size {tuple(x.shape[1:3])} is not divisible by "
                     f"patch_size={patch_size}")

