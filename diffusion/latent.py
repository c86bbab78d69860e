"""Latent diffusion's data transforms: the normalisation of an autoencoder's latents, posterior
samples, and an exact (linear) autoencoder for ground truth.

A latent diffusion model (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models") trains on z = E(x), the latents of an autoencoder, normalised so that their
scale suits the forward process, and decodes its samples with D. Two normalisations are in use,
both a per-channel affine map ``z_n = (z - shift) * scale`` (:class:`LatentNorm`):

  'scale'    z_n = z * s: LDM, DiT, SiT with Stable Diffusion's VAE, s = 0.18215 (the inverse
             standard deviation of its latents on their data; SDXL's VAE: 0.13025).
  'channel'  z_n = (z - m_c) / s_c * final_std: EDM2 (Karras et al. 2024, "Analyzing and
             Improving the Training Dynamics of Diffusion Models"), whose ImageNet-512 runs use
             m = (5.81, 3.25, 0.12, -2.15), s = (4.17, 4.62, 3.71, 3.28) and final_std = 0.5
             (statistics of latents its release encodes from pixels in [0, 1]; see below).

The encoder gives a diagonal Gaussian posterior N(mean, std^2) per image; training reads
``mean + std * eps`` with fresh eps each time an image is seen (:func:`posterior_sample`; DiT
and EDM2 both sample) or the mean.

Ground truth. :class:`LinearAutoencoder` is an invertible affine autoencoder ``x = D(z) =
depth_to_space(z M^T) + b`` of images (H, W, C) <-> latents (H / f, W / f, C f^2). It maps a
Gaussian mixture of images onto a Gaussian mixture of latents exactly (:meth:`push_mixture`), so
the latent model's exact denoiser, its decoded samples and its likelihood (through the change of
variables, :meth:`LatentNorm.log_abs_det` and :meth:`LinearAutoencoder.log_abs_det_encode`)
can be checked against the pixel-space answers (tests/test_latent.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from diffusion.analytic import GaussianMixture

Array = Any
NORMALIZATIONS = ("scale", "channel")
POSTERIORS = ("sample", "mean")
SD_SCALE_FACTOR = 0.18215  # Stable Diffusion's VAE (LDM, DiT, SiT)
# EDM2's statistics (NVlabs/edm2 training/encoders.py, StabilityVAEEncoder raw_mean / raw_std /
# final_std) of sd-vae-ft-mse latents of ImageNet-512 encoded from pixels in [0, 1] (x / 255; the
# VAE was trained on [-1, 1], as experiments.encode feeds it): they do not fit latents of [-1, 1].
EDM2_CHANNEL_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_CHANNEL_STD = (4.17, 4.62, 3.71, 3.28)
EDM2_FINAL_STD = 0.5


@dataclasses.dataclass(frozen=True)
class LatentNorm:
  """The per-channel affine map ``z_n = (z - shift) * scale`` on the last axis.

  shift, scale: (C,) float64 arrays; every scale nonzero.
  """
  shift: np.ndarray
  scale: np.ndarray

  def __post_init__(self):
    shift = np.asarray(self.shift, np.float64).reshape(-1)
    scale = np.asarray(self.scale, np.float64).reshape(-1)
    if shift.shape != scale.shape or not len(scale):
      raise ValueError(f"LatentNorm: shift {shift.shape} and scale {scale.shape} must be the "
                       f"same nonempty (C,)")
    if not np.all(np.isfinite(shift)) or not np.all(np.isfinite(scale)) or np.any(scale == 0):
      raise ValueError(f"LatentNorm: shift {shift.tolist()} and scale {scale.tolist()} must be "
                       f"finite, every scale nonzero")
    object.__setattr__(self, "shift", shift)
    object.__setattr__(self, "scale", scale)

  @property
  def channels(self) -> int:
    return len(self.scale)

  def _check(self, z) -> None:
    if np.shape(z)[-1] != self.channels:
      raise ValueError(f"latents of shape {np.shape(z)} have {np.shape(z)[-1]} channels (last "
                       f"axis); this normalisation has {self.channels}")

  def normalize(self, z: Array) -> Array:
    """(..., C) raw latents -> (z - shift) * scale, in z's dtype (numpy or jax)."""
    self._check(z)
    xp = jnp if isinstance(z, jnp.ndarray) else np
    dt = z.dtype
    return ((z - xp.asarray(self.shift, dt)) * xp.asarray(self.scale, dt)).astype(dt)

  def denormalize(self, z_n: Array) -> Array:
    """(..., C) normalised latents -> z_n / scale + shift (the inverse of ``normalize``)."""
    self._check(z_n)
    xp = jnp if isinstance(z_n, jnp.ndarray) else np
    dt = z_n.dtype
    return (z_n / xp.asarray(self.scale, dt) + xp.asarray(self.shift, dt)).astype(dt)

  def log_abs_det(self, latent_shape: Sequence[int]) -> float:
    """log |det d z_n / d z| of one latent of ``latent_shape`` (..., C): the number of positions
    times sum_c log |scale_c| (the change of variables of ``normalize``)."""
    if tuple(latent_shape)[-1] != self.channels:
      raise ValueError(f"latent shape {tuple(latent_shape)}: last axis must be {self.channels}")
    positions = int(np.prod(latent_shape[:-1]))
    return float(positions * np.sum(np.log(np.abs(self.scale))))


def scale_norm(factor: float, channels: int) -> LatentNorm:
  """'scale': z_n = z * factor on every channel."""
  if not np.isfinite(factor) or factor <= 0:
    raise ValueError(f"latent.scale_factor={factor!r} must be a finite number > 0")
  return LatentNorm(np.zeros(channels), np.full(channels, float(factor)))


def channel_norm(mean: Sequence[float], std: Sequence[float], final_std: float) -> LatentNorm:
  """'channel': z_n = (z - mean_c) / std_c * final_std (EDM2)."""
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  if mean.shape != std.shape or mean.ndim != 1:
    raise ValueError(f"latent.channel_mean {mean.tolist()} and latent.channel_std "
                     f"{std.tolist()} must be two lists of one value per channel")
  if np.any(std <= 0) or not np.isfinite(final_std) or final_std <= 0:
    raise ValueError(f"latent.channel_std {std.tolist()} and latent.final_std={final_std!r} "
                     f"must be > 0")
  return LatentNorm(mean, final_std / std)


def is_latent(config) -> bool:
  """Whether a run's config puts it in an autoencoder's latent space (config.latent.dataset or
  config.latent.autoencoder set, docs/latent.md)."""
  lat = config.get("latent")
  return lat is not None and (lat.get("dataset") is not None
                              or lat.get("autoencoder") is not None)


def latent_norm(normalization: str, channels: int, *, scale_factor: float = SD_SCALE_FACTOR,
                channel_mean: Sequence[float] = (), channel_std: Sequence[float] = (),
                final_std: float = EDM2_FINAL_STD,
                dataset_stats: Optional[Tuple[Sequence[float], Sequence[float]]] = None
                ) -> LatentNorm:
  """The :class:`LatentNorm` of a config's latent section.

  normalization: 'scale' or 'channel'. channels: C of the latents. For 'channel', empty
  ``channel_mean`` / ``channel_std`` take ``dataset_stats`` = (mean (C,), std (C,)) of the
  encoded dataset (:func:`channel_stats`).
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"latent.normalization={normalization!r}; accepted: {NORMALIZATIONS}")
  if normalization == "scale":
    return scale_norm(scale_factor, channels)
  mean, std = tuple(channel_mean), tuple(channel_std)
  if not mean and not std:
    if dataset_stats is None:
      raise ValueError("latent.normalization='channel' with empty channel_mean / channel_std "
                       "needs the encoded dataset's statistics")
    mean, std = dataset_stats
  if len(mean) != channels or len(std) != channels:
    raise ValueError(f"latent.channel_mean / channel_std have {len(mean)} / {len(std)} values; "
                     f"the latents have {channels} channels")
  return channel_norm(mean, std, final_std)


def posterior_sample(mean: Array, std: Array, noise: Optional[Array]) -> Array:
  """z = mean + std * noise (a sample of the encoder's posterior N(mean, std^2)); the mean when
  ``noise`` is None. All (..., h, w, c)."""
  return mean if noise is None else mean + std * noise


def channel_stats(sum_mean: np.ndarray, sum_second: np.ndarray, count: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """(mean (C,), std (C,)) of posterior samples z over a dataset from per-channel sums:
  sum_mean = sum over images and positions of mean, sum_second = the sum of mean^2 + std^2
  (E z^2 under the posterior), count = images * positions. std = sqrt(E z^2 - (E z)^2)."""
  if count <= 0:
    raise ValueError(f"channel_stats: count={count} must be > 0")
  m = np.asarray(sum_mean, np.float64) / count
  var = np.asarray(sum_second, np.float64) / count - m ** 2
  return m, np.sqrt(np.maximum(var, 0.0))


# -- an exact autoencoder -----------------------------------------------------------------------


def space_to_depth(x: Array, f: int) -> Array:
  """(..., H, W, C) -> (..., H / f, W / f, C f^2): each f x f block's pixels become channels
  (row-major within the block, then C)."""
  *lead, h, w, c = x.shape
  if h % f or w % f:
    raise ValueError(f"space_to_depth: image {h}x{w} is not divisible by f={f}")
  x = x.reshape(*lead, h // f, f, w // f, f, c)
  n = len(lead)
  x = x.transpose(*range(n), n, n + 2, n + 1, n + 3, n + 4)
  return x.reshape(*lead, h // f, w // f, f * f * c)


def depth_to_space(z: Array, f: int) -> Array:
  """The inverse of :func:`space_to_depth`."""
  *lead, h, w, cf = z.shape
  if cf % (f * f):
    raise ValueError(f"depth_to_space: {cf} channels are not divisible by f^2={f * f}")
  c = cf // (f * f)
  z = z.reshape(*lead, h, w, f, f, c)
  n = len(lead)
  z = z.transpose(*range(n), n, n + 2, n + 1, n + 3, n + 4)
  return z.reshape(*lead, h * f, w * f, c)


@dataclasses.dataclass(frozen=True)
class LinearAutoencoder:
  """An invertible affine autoencoder: decode(z) = depth_to_space(z M^T, f) + b,
  encode(x) = space_to_depth(x - b, f) M^{-T}.

  factor: f; mixing: M (c, c), c = C f^2, invertible; shift: b (H, W, C).
  """
  factor: int
  mixing: np.ndarray
  shift: np.ndarray

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(np.shape(self.shift))

  @property
  def latent_shape(self) -> Tuple[int, int, int]:
    h, w, c = self.image_shape
    f = self.factor
    return (h // f, w // f, c * f * f)

  def encode(self, x: Array) -> Array:
    """(B, H, W, C) -> (B, h, w, c)."""
    xp = jnp if isinstance(x, jnp.ndarray) else np
    inv_t = xp.asarray(np.linalg.inv(self.mixing).T, x.dtype)
    return space_to_depth(x - xp.asarray(self.shift, x.dtype), self.factor) @ inv_t

  def decode(self, z: Array) -> Array:
    """(B, h, w, c) -> (B, H, W, C)."""
    xp = jnp if isinstance(z, jnp.ndarray) else np
    return (depth_to_space(z @ xp.asarray(self.mixing.T, z.dtype), self.factor)
            + xp.asarray(self.shift, z.dtype))

  def log_abs_det_encode(self) -> float:
    """log |det d encode / d x| = -(h w) log |det M| (space_to_depth is a permutation)."""
    h, w, _ = self.latent_shape
    return float(-h * w * np.linalg.slogdet(self.mixing)[1])

  def push_mixture(self, gm: GaussianMixture, norm: Optional[LatentNorm] = None
                   ) -> GaussianMixture:
    """The mixture of ``norm.normalize(encode(x))`` for x ~ ``gm`` (vectors of the flattened
    (H, W, C) images), as vectors of flattened (h, w, c) latents: means J mu_k + a, covariances
    J S_k J^T with J the (linear) Jacobian of the map. Exact: the map is affine."""
    d = int(np.prod(self.image_shape))
    if gm.dim != d:
      raise ValueError(f"push_mixture: the mixture has dimension {gm.dim}, images "
                       f"{self.image_shape} have {d}")

    def affine(x):  # (n, d) -> (n, d): the whole map on flattened vectors, in float64
      z = self.encode(np.asarray(x, np.float64).reshape((-1,) + self.image_shape))
      if norm is not None:
        z = norm.normalize(z)
      return z.reshape(len(x), -1)

    a = affine(np.zeros((1, d)))[0]
    jac = (affine(np.eye(d)) - a).T  # column j = the image of basis vector j
    means = np.asarray(gm.means, np.float64) @ jac.T + a
    covs = jac @ gm.covariances() @ jac.T
    classes = None if gm.classes is None else tuple(np.asarray(gm.classes).tolist())
    return GaussianMixture.create(np.asarray(gm.weights, np.float64), means, covs,
                                  classes=classes)


def random_linear_autoencoder(seed: int, image_shape: Tuple[int, int, int], factor: int,
                              orthogonal: bool = True, scale: float = 1.0) -> LinearAutoencoder:
  """A :class:`LinearAutoencoder` with M = scale * (a random orthogonal matrix) (or a random
  well-conditioned one) and a random shift b (seeded)."""
  h, w, c = image_shape
  cf = c * factor * factor
  rng = np.random.default_rng(seed)
  q, r = np.linalg.qr(rng.standard_normal((cf, cf)))
  q = q * np.sign(np.diag(r))
  m = q if orthogonal else q @ np.diag(rng.uniform(0.5, 2.0, cf)) @ np.linalg.qr(
      rng.standard_normal((cf, cf)))[0]
  return LinearAutoencoder(int(factor), scale * m, 0.3 * rng.standard_normal(image_shape))
