"""Linear inverse problems (inpainting, colorization, super-resolution) as denoiser transformers.

An observation y = A x0 (+ noise_std n) of a sample x0 of the model's distribution is to be
completed: sample p(x0 | y). A linear operator A is a small frozen dataclass with the pure,
batch-first maps

  apply(x, cond) = A x,  adjoint(v, cond) = A^T v,  pinv(y, cond) = A^+ y  (Moore-Penrose),
  project(x, cond) = A^+ A x  (the orthogonal projector P onto the row space of A),
  solve_gram(v, r2, noise_var, cond) = (r2 A A^T + noise_var I)^{-1} v,

whose per-sample data come from ``cond`` (``diffusion.guidance``'s protocol): cond['y'] the
observation (B, ...), cond['mask'] for inpainting, an optional cond['label'] (B,) handed to the
inner denoiser. Two transformers turn an unconditional (or class-conditional) denoiser into one
of p(x0 | y), so every registered sampler samples the conditional problem unchanged:

  replacement(denoise, op): score SDE's replacement method (Song et al. 2021, App. I.2),
      x0 = (I - P) D(x_t) + A^+ y; noiseless observations only.
  pigdm(denoise, schedule, op, noise_std=...): pseudoinverse-guided diffusion (Song, Vahdat,
      Mardani & Kautz 2023, eq. 7-8), one vector-Jacobian product through the denoiser per call.

The exact posterior of a Gaussian mixture under a linear Gaussian observation
(``diffusion.analytic.linear_gaussian_posterior``) is the ground truth both are tested against;
see docs/inverse.md for the equations and measured errors.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import guidance
from diffusion.schedules import Schedule

Array = Any
Denoiser = guidance.Denoiser


def _per_sample(r, v):
  """A scalar, or a per-sample (B,) array reshaped to broadcast against v (B, ...)."""
  r = jnp.asarray(r, v.dtype)
  if r.ndim == 0:
    return r
  return jnp.reshape(r, r.shape + (1,) * (v.ndim - r.ndim))


def _cond_dict(cond) -> Mapping[str, Any]:
  if not isinstance(cond, dict) or "y" not in cond:
    got = sorted(cond) if isinstance(cond, dict) else type(cond).__name__
    raise ValueError("an inverse problem needs cond = a dict holding the observation 'y' (B, ...) "
                     f"(and 'mask' for inpainting, optionally 'label'), got {got}")
  return cond


def _shape_of(a) -> Tuple[int, ...]:
  return tuple(np.shape(a))


class LinearOperator:
  """Base class of the operators: subclasses define ``output_shape``, ``apply``, ``adjoint``,
  ``pinv``, ``solve_gram`` and, if they read more than cond['y'], extend ``check``."""

  name = "base"

  def output_shape(self, x_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    raise NotImplementedError

  def apply(self, x: Array, cond) -> Array:
    raise NotImplementedError

  def adjoint(self, v: Array, cond) -> Array:
    raise NotImplementedError

  def pinv(self, y: Array, cond) -> Array:
    raise NotImplementedError

  def solve_gram(self, v: Array, r2: Array, noise_var: float, cond) -> Array:
    raise NotImplementedError

  def project(self, x: Array, cond) -> Array:
    """P x = A^+ A x, the orthogonal projection onto the row space of A (the observed part)."""
    return self.pinv(self.apply(x, cond), cond)

  def check(self, x_shape: Tuple[int, ...], cond) -> None:
    """Raises ValueError unless ``cond`` holds an observation 'y' of shape
    ``output_shape(x_shape)`` for a batch x of shape ``x_shape`` (B, ...)."""
    cond = _cond_dict(cond)
    want = self.output_shape(tuple(x_shape))
    got = _shape_of(cond["y"])
    if got != want:
      raise ValueError(f"{self.name}: cond['y'] must have shape {want} for x of shape "
                       f"{tuple(x_shape)}, got {got}")


@dataclasses.dataclass(frozen=True)
class Inpainting(LinearOperator):
  """y = mask * x, mask (B, *x_shape) of 0/1 from cond['mask'] (1 = observed).

  The observation space is the masked entries: y has x's shape and its entries where mask = 0
  are not observations (``pinv`` ignores them). There A A^T = I, so A^+ = A^T = mask * . and
  solve_gram(v) = mask * v / (r2 + noise_var), which is (r2 A A^T + noise_var I)^{-1} v on the
  observed entries (and A^T solve_gram(v) is the same as with the D x D diag(mask) matrix).
  """

  name = "inpainting"

  def output_shape(self, x_shape):
    return tuple(x_shape)

  def _mask(self, cond, like):
    return jnp.asarray(cond["mask"]).astype(like.dtype)

  def apply(self, x, cond):
    return self._mask(cond, x) * x

  def adjoint(self, v, cond):
    return self._mask(cond, v) * v

  def pinv(self, y, cond):
    return self._mask(cond, y) * y

  def solve_gram(self, v, r2, noise_var, cond):
    return self._mask(cond, v) * v / (_per_sample(r2, v) + noise_var)

  def check(self, x_shape, cond):
    cond = _cond_dict(cond)
    if "mask" not in cond:
      raise ValueError(f"inpainting needs cond['mask'] (0/1, shape {tuple(x_shape)}), got keys "
                       f"{sorted(cond)}")
    if _shape_of(cond["mask"]) != tuple(x_shape):
      raise ValueError(f"inpainting: cond['mask'] must have x's shape {tuple(x_shape)}, got "
                       f"{_shape_of(cond['mask'])}")
    super().check(x_shape, cond)


@dataclasses.dataclass(frozen=True)
class Colorization(LinearOperator):
  """Images (B, H, W, 3) -> grey (B, H, W, 1), y = channel mean = (1/3) 1^T x per pixel.

  A A^T = I/3, A^T v = v/3 on every channel, A^+ y = y on every channel, P x = the channel mean
  on every channel. Score SDE's colorization (Song et al. 2021, App. I.2) observes, per pixel,
  the first coordinate of an orthogonal colour decoupling whose first basis vector is
  (1, 1, 1)/sqrt(3), i.e. y_sde = sqrt(3) * y here: the same row space, hence the same projector
  P and the same replacement method; only y's scale differs.
  """

  name = "colorization"

  def output_shape(self, x_shape):
    return tuple(x_shape[:-1]) + (1,)

  def apply(self, x, cond):
    return jnp.mean(x, axis=-1, keepdims=True)

  def adjoint(self, v, cond):
    return jnp.broadcast_to(v / 3.0, v.shape[:-1] + (3,))

  def pinv(self, y, cond):
    return jnp.broadcast_to(y, y.shape[:-1] + (3,))

  def solve_gram(self, v, r2, noise_var, cond):
    return v / (_per_sample(r2, v) / 3.0 + noise_var)

  def check(self, x_shape, cond):
    if len(x_shape) != 4 or x_shape[-1] != 3:
      raise ValueError(f"colorization needs RGB images (B, H, W, 3), got x of shape "
                       f"{tuple(x_shape)}")
    super().check(x_shape, cond)


@dataclasses.dataclass(frozen=True)
class SuperResolution(LinearOperator):
  """Images (B, H, W, C) -> (B, H/f, W/f, C), y = f x f average pooling (f = ``factor``).

  Each row of A averages f^2 pixels, so A A^T = I/f^2, A^T v = (nearest upsampling of v)/f^2,
  A^+ y = nearest upsampling of y, P x = the block means upsampled.
  """
  factor: int

  name = "super_resolution"

  def __post_init__(self):
    f = self.factor
    if isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, np.integer)) or f < 1:
      raise ValueError(f"SuperResolution factor must be an int >= 1, got {f!r}")

  def output_shape(self, x_shape):
    b, h, w, c = x_shape
    return (b, h // self.factor, w // self.factor, c)

  def apply(self, x, cond):
    b, h, w, c = x.shape
    f = self.factor
    return jnp.mean(jnp.reshape(x, (b, h // f, f, w // f, f, c)), axis=(2, 4))

  def _up(self, v):
    f = self.factor
    return jnp.repeat(jnp.repeat(v, f, axis=1), f, axis=2)

  def adjoint(self, v, cond):
    return self._up(v) / float(self.factor**2)

  def pinv(self, y, cond):
    return self._up(y)

  def solve_gram(self, v, r2, noise_var, cond):
    return v / (_per_sample(r2, v) / float(self.factor**2) + noise_var)

  def check(self, x_shape, cond):
    if len(x_shape) != 4:
      raise ValueError(f"super_resolution needs images (B, H, W, C), got x of shape "
                       f"{tuple(x_shape)}")
    h, w = x_shape[1], x_shape[2]
    if h % self.factor or w % self.factor:
      raise ValueError(f"super_resolution: factor {self.factor} must divide H = {h} and W = {w}")
    super().check(x_shape, cond)


@dataclasses.dataclass(frozen=True, eq=False)
class MatrixOperator(LinearOperator):
  """A dense matrix A (M, D) on vectors (B, D) -> (B, M), for toy problems and tests.

  A^+ and the eigendecomposition A A^T = U diag(l) U^T are computed on the host in float64.
  solve_gram uses the latter; when r2 l + noise_var = 0 (rank-deficient A, noiseless) it is the
  pseudo-inverse there (A^T maps that null space to 0 anyway).
  """
  A: np.ndarray
  A_pinv: np.ndarray = dataclasses.field(init=False, repr=False)
  gram_eigvals: np.ndarray = dataclasses.field(init=False, repr=False)
  gram_eigvecs: np.ndarray = dataclasses.field(init=False, repr=False)

  name = "matrix"

  def __post_init__(self):
    a = np.asarray(self.A, np.float64)
    if a.ndim != 2 or a.size == 0 or not np.all(np.isfinite(a)):
      raise ValueError(f"MatrixOperator needs a finite non-empty (M, D) matrix, got shape "
                       f"{a.shape}")
    lam, u = np.linalg.eigh(a @ a.T)
    lam = np.where(lam > 1e-12 * max(1.0, lam.max()), lam, 0.0)
    object.__setattr__(self, "A", a)
    object.__setattr__(self, "A_pinv", np.linalg.pinv(a))
    object.__setattr__(self, "gram_eigvals", lam)
    object.__setattr__(self, "gram_eigvecs", u)

  def output_shape(self, x_shape):
    return (x_shape[0], self.A.shape[0])

  def apply(self, x, cond):
    return x @ jnp.asarray(self.A, x.dtype).T

  def adjoint(self, v, cond):
    return v @ jnp.asarray(self.A, v.dtype)

  def pinv(self, y, cond):
    return y @ jnp.asarray(self.A_pinv, y.dtype).T

  def solve_gram(self, v, r2, noise_var, cond):
    lam, u = (jnp.asarray(a, v.dtype) for a in (self.gram_eigvals, self.gram_eigvecs))
    denom = _per_sample(r2, v) * lam + noise_var
    inv = jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)
    return ((v @ u) * inv) @ u.T

  def check(self, x_shape, cond):
    if len(x_shape) != 2 or x_shape[1] != self.A.shape[1]:
      raise ValueError(f"matrix operator of shape {self.A.shape} needs x of shape "
                       f"(B, {self.A.shape[1]}), got {tuple(x_shape)}")
    super().check(x_shape, cond)


def _check_transform_args(denoise, op):
  if not callable(denoise):
    raise TypeError(f"denoise must be a callable denoise(x, t, cond), got {denoise!r}")
  if not isinstance(op, LinearOperator):
    raise TypeError(f"op must be a diffusion.inverse operator (Inpainting, Colorization, "
                    f"SuperResolution, MatrixOperator), got {op!r}")


def replacement(denoise: Denoiser, op: LinearOperator) -> Denoiser:
  """Score SDE's replacement method (Song et al. 2021, App. I.2) as a denoiser:

    x0(x_t) = (I - P) D(x_t, t, label) + A^+ y,     P = A^+ A = ``op.project``,

  the network's prediction of the unobserved part, with the observed part set to the observation.
  Noiseless observations only (y = A x0 exactly): with noise, A^+ y would force the noise into
  the sample.

  Why every registered sampler works unchanged: each sampler step is x' = a x + d x0_hat (+ c z,
  + earlier x0_hat's for multistep methods) with scalar coefficients, which commute with P. So
  the observed coordinates P x_t evolve by themselves, driven by the constant P x0_hat = A^+ y:
  the sampler integrates the PF-ODE (or reverse SDE) of a point mass at A^+ y, whose exact
  solution is the forward marginal P x_t = alpha_t A^+ y + sigma_t P eps (one eps for an ODE,
  re-drawn by an SDE). Euler / DDIM and Heun in EDM variables and DPM-Solver++ steps are exact
  for a constant x0_hat (tested: P x_t = alpha_t A^+ y + sigma_t/sigma_T (P x_T - alpha_T A^+ y)),
  and ancestral (DDPM) steps keep its marginal N(alpha_t A^+ y, sigma_t^2 P) exactly; other
  solvers converge to it. The unobserved coordinates meanwhile follow the unconditional dynamics
  given the whole x_t, observed part included. Score SDE's code (``get_pc_inpainter``,
  ``get_pc_colorizer``) instead re-draws the observed coordinates as alpha_t A^+ y + sigma_t z
  with fresh z after every predictor / corrector step, which only fits inside an SDE / PC loop;
  the two agree in the marginal law of the observed coordinates at every t (not in their joint
  law with the unobserved ones across times). With the sampler's final denoise (or a last step to
  sigma = 0) A x0 = y exactly; a sampler stopping at t_min > 0 leaves A x = alpha y + sigma A eps.

  The result is an approximation of p(x0 | y): E[x0 | x_t] for a noised observation, not
  E[x0 | x_t, y] (docs/inverse.md gives its measured error on a Gaussian mixture).
  """
  _check_transform_args(denoise, op)

  def fn(x, t, cond=None):
    op.check(x.shape, cond)
    x0 = denoise(x, t, guidance.label_of(cond))
    y = jnp.asarray(cond["y"]).astype(x0.dtype)
    return x0 - op.project(x0, cond) + op.pinv(y, cond)

  return guidance.with_info(fn, denoise, "replacement")


def _check_nonneg(name: str, v, positive: bool = False) -> float:
  if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a real number, got {v!r} ({type(v).__name__})")
  v = float(v)
  if not math.isfinite(v) or (v <= 0 if positive else v < 0):
    raise ValueError(f"{name} must be a finite real {'> 0' if positive else '>= 0'}, got {v!r}")
  return v


def pigdm(denoise: Denoiser, schedule: Schedule, op: LinearOperator, *, noise_std: float = 0.0,
          sigma_data: float = 1.0, scale: float = 1.0,
          interval: Optional[Tuple[float, float]] = None) -> Denoiser:
  """Pseudoinverse-guided diffusion, Pi-GDM (Song, Vahdat, Mardani & Kautz, ICLR 2023, eq. 7-8).

  Approximating p(x0 | x_t) by N(x0_hat, r_t^2 I) makes p(y | x_t) = N(A x0_hat, r_t^2 A A^T +
  noise_std^2 I), whose score with x0_hat's Jacobian J = d x0_hat / d x_t is (eq. 7)

    g = J^T A^T (r_t^2 A A^T + noise_std^2 I)^{-1} (y - A x0_hat),

  computed with one ``jax.vjp`` through the inner denoiser (``info['network_vjp']``: a call costs
  about 3 network passes). r_t^2 = sigma_data^2 s^2 / (sigma_data^2 + s^2), s = sigma/alpha, the
  posterior variance of x0 | x_t for x0 ~ N(., sigma_data^2 I) (eq. 8 is sigma_data = 1 in VE
  variables: r_t^2 = sigma_t^2 / (1 + sigma_t^2)). Guided score = score + scale * g, i.e.

    x0_g = x0_hat + scale * sigma^2 / alpha * g.

  Exact when the data are N(mu, sigma_data^2 I) and scale = 1: then x0 | x_t is exactly
  N(x0_hat, r_t^2 I), x0_hat is affine in x_t and x0_g = E[x0 | x_t, y] (tested).

  The alternative, DPS (Chung, Kim, McCann, Klasky & Ye, ICLR 2023, Alg. 1), subtracts
  zeta_i grad ||y - A x0_hat||^2 after each step of its 1000-step ancestral sampler with
  zeta_i = zeta' / ||y - A x0_hat||, zeta' tuned per task: a step size tied to the sampler and
  its number of steps. Pi-GDM has no such hyper-parameter (scale = 1 is the derived value), is
  exact for Gaussian data, and as a guided score works with every sampler: it is the one
  implemented here (DPS is not).

  With a trained network the guidance is ill-conditioned at the noisiest times: J of an eps- or
  v-predicting network, (I - sigma d eps_hat/dx) / alpha, carries the network's error times
  1/alpha, and the correction multiplies it by sigma^2 / (alpha r_t^2), so near alpha = 0 (VP at
  t = 1: alpha = 0.0067) small errors grow by about 1/alpha^2 (measured: corrections of
  1e2-1e6 at t = 1 on the toy models, then NaN). ``interval`` = (t_lo, t_hi) applies it only
  there (x0_hat elsewhere), as ``guidance.classifier_free`` does; None: at every t (the paper).

  Args: ``noise_std`` >= 0 the observation noise (0: noiseless; r_t > 0 keeps the system
  invertible for t > 0), ``sigma_data`` > 0 the data standard deviation, ``scale`` >= 0 the
  guidance weight (0: the unguided denoiser), ``interval`` None or (t_lo, t_hi).
  """
  _check_transform_args(denoise, op)
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  noise_var = _check_nonneg("noise_std", noise_std)**2
  sd2 = _check_nonneg("sigma_data", sigma_data, positive=True)**2
  scale = _check_nonneg("scale", scale)
  interval = guidance.check_interval(interval)

  def fn(x, t, cond=None):
    op.check(x.shape, cond)
    label = guidance.label_of(cond)
    x0, vjp = jax.vjp(lambda z: denoise(z, t, label), x)
    tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    s2 = (s / a)**2
    r2 = sd2 * s2 / (sd2 + s2)
    y = jnp.asarray(cond["y"]).astype(x0.dtype)
    resid = y - op.apply(x0, cond)
    (g,) = vjp(op.adjoint(op.solve_gram(resid, r2, noise_var, cond), cond).astype(x0.dtype))
    x0_g = x0 + scale * _per_sample(s * s / a, x0) * g
    if interval is None:
      return x0_g
    return jnp.where(guidance.in_interval(tt, interval, x0_g), x0_g, x0)

  return guidance.with_info(fn, denoise, "pigdm", network_vjp=True)
