"""The loss of a KL-regularised autoencoder (the first stage of latent diffusion; Rombach et al.
2022, LDM, Sec. 3 and App. G) and its held-out reconstruction metrics, as pure functions.

The encoder gives a diagonal Gaussian posterior q(z | x) = N(mean, diag(exp(logvar))); the
decoder reconstructs x from z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (the
reparameterisation). Per image, with D pixel values and d latent dimensions:

  L_sum  = sum_pixels rec(x, x_rec) + perceptual_weight * D * P(x, x_rec) + kl_weight * KL
  KL     = KL(q(z | x) || N(0, I)) = 1/2 sum_latent (mean^2 + exp(logvar) - 1 - logvar)  [nats]

rec the absolute ('l1', LDM's) or squared ('l2') error per pixel value, P a perceptual distance
(below). L_sum averaged over the batch is LDM's loss (``LPIPSWithDiscriminator`` without its
discriminator, with its learned output log-variance at its initial value 0: nll = rec, summed over
pixels / B; KL summed over latent dimensions / B; the perceptual distance broadcast over every
pixel before the sum), so kl_weight = 1e-6 is LDM's f = 4, 8, 16 KL setting.

Normalisation (``reduction``). 'mean' (the default) is L_sum / D:

  L_mean = mean_pixels rec(x, x_rec) + perceptual_weight * P(x, x_rec) + kl_weight * KL / D

the same loss up to the constant factor D, so the same minimisers and the same meaning of
kl_weight and perceptual_weight as LDM's, on a per-pixel scale that does not grow with the image
(learning rates and gradient clipping transfer between 8x8 digits and 256x256 photos). 'sum' is
LDM's own scale, L_sum. Reported either way: the reconstruction error per pixel value and the KL
in nats per image (``aux``).

Perceptual term. LDM adds LPIPS (Zhang et al. 2018) on VGG features; those weights cannot be
downloaded here, and no network ships with the codebase. A perceptual term is a feature function
registered by name (``register_features``) in a module of one's own (named in config.imports):
``features(x (B, H, W, C) in [-1, 1]) -> sequence of feature maps (B, h, w, c)`` with fixed
weights of its own. P is LPIPS's distance without its learned per-channel weights (the paper's
baseline): features unit-normalised over channels, squared differences summed over channels,
averaged over positions, summed over layers.

Metrics (``ReconstructionStats``): the error of the decoded posterior mean on held-out images,
as MSE in [-1, 1] and as PSNR on the dataset's pixel levels (its docstring).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
RECONS = ("l1", "l2")
REDUCTIONS = ("mean", "sum")
NO_PERCEPTUAL = "none"
# LDM's KL weight of its KL-regularised first stages (configs autoencoder_kl_*: 1e-6).
LDM_KL_WEIGHT = 1e-6
_FEATURES: Dict[str, Callable[[Array], Sequence[Array]]] = {}


# -- the posterior -------------------------------------------------------------------------------


def gaussian_kl(mean: Array, logvar: Array) -> Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, in nats: (B,) from (B, ...).

  = 1/2 sum over the non-batch axes of (mean^2 + exp(logvar) - 1 - logvar) (Kingma & Welling
  2014, App. B; LDM's ``DiagonalGaussianDistribution.kl``). No clamping of logvar here: the
  network's encoder bounds it if it wants to (LDM clamps to [-30, 20]).
  """
  mean, logvar = jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)
  if mean.shape != logvar.shape or mean.ndim < 2:
    raise ValueError(f"mean and logvar must have one shape (B, ...), got {mean.shape} and "
                     f"{logvar.shape}")
  per = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(per.reshape(per.shape[0], -1), axis=-1)


def posterior_sample(mean: Array, logvar: Array, noise: Array) -> Array:
  """z = mean + exp(logvar / 2) * noise, noise ~ N(0, I) of the latents' shape."""
  if noise.shape != mean.shape:
    raise ValueError(f"noise must have the latents' shape {mean.shape}, got {noise.shape}")
  return mean + jnp.exp(0.5 * logvar) * noise


# -- the reconstruction and perceptual terms -----------------------------------------------------


def reconstruction_error(x: Array, x_rec: Array, recon: str = "l1") -> Array:
  """The mean over pixel values of |x_rec - x| ('l1') or (x_rec - x)^2 ('l2'), per example:
  (B,) from (B, ...)."""
  if recon not in RECONS:
    raise ValueError(f"unknown recon {recon!r}; accepted: {list(RECONS)}")
  if x.shape != x_rec.shape:
    raise ValueError(f"the reconstruction has shape {x_rec.shape}, the input {x.shape}")
  diff = jnp.asarray(x_rec, jnp.float32) - jnp.asarray(x, jnp.float32)
  err = jnp.abs(diff) if recon == "l1" else jnp.square(diff)
  return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


def register_features(name: str):
  """Decorator: registers ``features(x (B, H, W, C) in [-1, 1]) -> sequence of (B, h, w, c)``
  (or one such array) as the perceptual feature function ``name`` (loss option
  ``perceptual=name``). Its weights are its own constants: they are not trained."""
  if not isinstance(name, str) or not name or name == NO_PERCEPTUAL:
    raise ValueError(f"a feature function's name must be a non-empty string other than "
                     f"{NO_PERCEPTUAL!r}, got {name!r}")

  def wrap(fn):
    if name in _FEATURES:
      raise ValueError(f"feature function {name!r} is registered twice")
    _FEATURES[name] = fn
    return fn

  return wrap


def feature_names() -> Tuple[str, ...]:
  """The registered perceptual feature functions (none are built in)."""
  return tuple(_FEATURES)


def get_features(name: str) -> Callable[[Array], Sequence[Array]]:
  if name not in _FEATURES:
    raise ValueError(
        f"unknown perceptual feature function {name!r}; registered: {list(_FEATURES)}. None "
        f"ships with the codebase (LPIPS's VGG weights cannot be downloaded here): register one "
        f"with diffusion.autoencoding.register_features in a module named by config.imports")
  return _FEATURES[name]


def perceptual_distance(features: Callable[[Array], Sequence[Array]], x: Array,
                        x_rec: Array, eps: float = 1e-10) -> Array:
  """LPIPS's distance without learned channel weights (Zhang et al. 2018, eq. 1 with w = 1), per
  example (B,): sum over feature maps l of mean over positions of
  || f_l(x) / |f_l(x)| - f_l(x_rec) / |f_l(x_rec)| ||^2, norms over the channel axis (last)."""
  fa, fb = features(x), features(x_rec)
  if not isinstance(fa, (list, tuple)):
    fa, fb = [fa], [fb]
  total = jnp.zeros((x.shape[0],), jnp.float32)
  for a, b in zip(fa, fb):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    a = a / (jnp.sqrt(jnp.sum(jnp.square(a), axis=-1, keepdims=True)) + eps)
    b = b / (jnp.sqrt(jnp.sum(jnp.square(b), axis=-1, keepdims=True)) + eps)
    d = jnp.sum(jnp.square(a - b), axis=-1)
    total = total + jnp.mean(d.reshape(d.shape[0], -1), axis=-1)
  return total


# -- the loss ------------------------------------------------------------------------------------


def check_loss_options(recon: str, kl_weight: float, reduction: str, perceptual: str,
                       perceptual_weight: float) -> None:
  """ValueError naming a bad loss option (see ``autoencoder_loss``)."""
  if recon not in RECONS:
    raise ValueError(f"recon={recon!r} is not accepted; accepted: {list(RECONS)}")
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction={reduction!r} is not accepted; accepted: {list(REDUCTIONS)}")
  for name, v in (("kl_weight", kl_weight), ("perceptual_weight", perceptual_weight)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
      raise ValueError(f"{name}={v!r} must be a finite number >= 0")
  if perceptual_weight > 0 and perceptual == NO_PERCEPTUAL:
    raise ValueError(
        f"perceptual_weight={perceptual_weight} needs a perceptual feature function "
        f"(perceptual=<name>); none ships with the codebase (LPIPS's VGG weights cannot be "
        f"downloaded here): register one with diffusion.autoencoding.register_features in a "
        f"module named by config.imports; registered: {list(_FEATURES)}")
  if perceptual != NO_PERCEPTUAL:
    get_features(perceptual)  # ValueError naming the registered ones
    if perceptual_weight == 0:
      raise ValueError(f"perceptual={perceptual!r} with perceptual_weight=0 has no effect; set "
                       f"perceptual_weight > 0 or perceptual={NO_PERCEPTUAL!r}")


def autoencoder_loss(encode: Callable[[Array], Tuple[Array, Array]],
                     decode: Callable[[Array], Array],
                     x: Array,
                     key,
                     *,
                     recon: str = "l1",
                     kl_weight: float = LDM_KL_WEIGHT,
                     reduction: str = "mean",
                     perceptual: str = NO_PERCEPTUAL,
                     perceptual_weight: float = 0.0) -> Tuple[Array, Dict[str, Array]]:
  """The KL-regularised autoencoder's loss on the batch ``x`` (module docstring).

  Args:
    encode: x (B, H, W, C) -> (mean, logvar), each (B, h, w, c): the posterior q(z | x).
    decode: z (B, h, w, c) -> x_rec (B, H, W, C).
    x: images in [-1, 1]; key: draws the posterior's eps.
    recon: 'l1' (LDM) or 'l2'. kl_weight: the KL's weight (LDM: 1e-6).
    reduction: 'mean' (L_sum / D, per pixel value) or 'sum' (LDM's L_sum).
    perceptual, perceptual_weight: a registered feature function and its weight (0: none).
  Returns:
    (loss, aux): aux 'recon' the reconstruction error per pixel value (the kind of ``recon``),
    'mse' the squared error per pixel value, 'kl' nats per image, 'perceptual' P (0 without),
    all batch means; 'per_example' (B,) the loss per image.
  """
  check_loss_options(recon, kl_weight, reduction, perceptual, perceptual_weight)
  mean, logvar = encode(x)
  z = posterior_sample(mean, logvar, jax.random.normal(key, mean.shape, mean.dtype))
  x_rec = decode(z)
  rec = reconstruction_error(x, x_rec, recon)
  kl = gaussian_kl(mean, logvar)
  num_pixels = math.prod(x.shape[1:])
  per_example = rec + kl_weight * kl / num_pixels
  p = jnp.zeros_like(rec)
  if perceptual_weight > 0:
    p = perceptual_distance(get_features(perceptual), x, x_rec)
    per_example = per_example + perceptual_weight * p
  if reduction == "sum":
    per_example = per_example * num_pixels
  aux = {"recon": jnp.mean(rec), "kl": jnp.mean(kl), "perceptual": jnp.mean(p),
         "mse": jnp.mean(reconstruction_error(x, x_rec, "l2")), "per_example": per_example}
  return jnp.mean(per_example), aux


# -- held-out metrics ----------------------------------------------------------------------------


def psnr(mse: float, peak: float) -> float:
  """10 log10(peak^2 / mse) in dB; inf for mse = 0."""
  return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


class ReconstructionStats:
  """Held-out reconstruction metrics accumulated batch by batch (float64 running sums, so a
  test set of large images never has to be in memory at once), pooled over every image and
  pixel value; ``update`` with each batch, then ``result``:

    mse              mean (x_rec - x)^2, both in [-1, 1] (x the images the encoder saw)
    psnr             10 log10((L - 1)^2 / mse_levels) dB on the integer pixel levels k in
                     0..L-1 (8-bit PSNR for L = 256), the reconstruction's levels k_rec chosen by
                     the caller (the bin that holds x_rec)
    mse_levels       mean (k_rec - k)^2
    mse_mean_image   the trivial reconstruction's mse: every image replaced by the held-out
                     set's mean image (a floor any autoencoder must beat)
    psnr_mean_image  the same on levels (the mean image's levels rounded to the nearest)
    heldout_images   the number of images
  """

  def __init__(self):
    self.count = 0
    self.sq_err = self.sq_err_levels = 0.0
    self.sum_x = self.sum_x2 = self.sum_k = self.sum_k2 = None

  def update(self, levels: np.ndarray, x: np.ndarray, x_rec: np.ndarray,
             rec_levels: np.ndarray) -> None:
    """levels, rec_levels: int (B, H, W, C); x, x_rec: float (B, H, W, C)."""
    if not (levels.shape == x.shape == x_rec.shape == rec_levels.shape):
      raise ValueError(f"shapes differ: levels {levels.shape}, x {x.shape}, x_rec "
                       f"{x_rec.shape}, rec_levels {rec_levels.shape}")
    if self.sum_x is not None and self.sum_x.shape != x.shape[1:]:
      raise ValueError(f"images of shape {x.shape[1:]} after {self.sum_x.shape}")
    k, x = levels.astype(np.float64), x.astype(np.float64)
    self.sq_err += float(np.sum(np.square(x_rec.astype(np.float64) - x)))
    self.sq_err_levels += float(np.sum(np.square(rec_levels.astype(np.float64) - k)))
    sums = (np.sum(x, 0), np.sum(x * x, 0), np.sum(k, 0), np.sum(k * k, 0))
    if self.sum_x is None:
      self.sum_x, self.sum_x2, self.sum_k, self.sum_k2 = sums
    else:
      self.sum_x, self.sum_x2, self.sum_k, self.sum_k2 = (
          a + b for a, b in zip((self.sum_x, self.sum_x2, self.sum_k, self.sum_k2), sums))
    self.count += len(x)

  def result(self, num_levels: int) -> Dict[str, float]:
    if not self.count:
      raise ValueError("no images: ReconstructionStats.update was never called")
    values = self.count * self.sum_x.size
    mse_levels = self.sq_err_levels / values
    mean_x, mean_k = self.sum_x / self.count, self.sum_k / self.count
    # mean over images of (m - x_i)^2 per pixel = E[x^2] - 2 m E[x] + m^2
    mse_mean = float(np.mean(self.sum_x2 / self.count - mean_x * mean_x))
    r = np.rint(mean_k)
    mse_mean_levels = float(np.mean(self.sum_k2 / self.count - 2.0 * r * mean_k + r * r))
    peak = float(num_levels - 1)
    return {"mse": self.sq_err / values, "psnr": psnr(mse_levels, peak),
            "mse_levels": mse_levels, "mse_mean_image": max(mse_mean, 0.0),
            "psnr_mean_image": psnr(max(mse_mean_levels, 0.0), peak),
            "heldout_images": int(self.count)}
