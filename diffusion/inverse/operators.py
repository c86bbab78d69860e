"""Linear operators A of inverse problems y = A x0 (+ noise): pure, batch-first maps whose
per-sample data come from ``cond`` (see the package docstring, ``diffusion.inverse``)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple, Tuple

import jax.numpy as jnp
import numpy as np

from diffusion import guidance

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


class SVDParts(NamedTuple):
  """A = U S V^T of one batch, in the spectral coordinates DDRM works in (``svd_parts``).

  vt: x (B, *x_shape) -> V^T x (B, D), D = prod(x_shape), V orthonormal (D, D);
  v: c (B, D) -> V c (B, *x_shape), the inverse of ``vt``;
  s: (B, D) the singular value of each spectral coordinate, 0 for the unobserved ones;
  ut_y: (B, D) U^T y of the observation cond['y'] at the coordinates with s > 0, 0 elsewhere
    (so y = A x0 + noise_std n gives ut_y = s * vt(x0) + noise_std z there, z ~ N(0, I)).
  """
  vt: Callable[[Array], Array]
  v: Callable[[Array], Array]
  s: Array
  ut_y: Array


def _flat(x):
  return jnp.reshape(x, (x.shape[0], -1))


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

  def observed(self, y: Array, cond) -> Array:
    """y restricted to the observation space (inpainting: its entries where mask = 0, which are
    no observations, set to 0), so ||observed(y) - apply(x)|| is the residual's norm."""
    return y

  def svd_parts(self, x_shape: Tuple[int, ...], cond) -> SVDParts:
    """The singular value decomposition A = U S V^T as ``SVDParts`` for a batch x of shape
    ``x_shape`` (B, ...) and the observation cond['y'] (DDRM's spectral space)."""
    raise NotImplementedError(f"{self.name}: no SVD interface")

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

  def observed(self, y, cond):
    return self._mask(cond, y) * y

  def svd_parts(self, x_shape, cond):
    """V = U = I (the pixel basis), s = mask, U^T y = mask * y."""
    y = jnp.asarray(cond["y"])
    mask = _flat(self._mask(cond, y))
    shape = tuple(x_shape[1:])
    return SVDParts(_flat, lambda c: jnp.reshape(c, (c.shape[0],) + shape), mask,
                    mask * _flat(y))

  def check(self, x_shape, cond):
    cond = _cond_dict(cond)
    if "mask" not in cond:
      raise ValueError(f"inpainting needs cond['mask'] (0/1, shape {tuple(x_shape)}), got keys "
                       f"{sorted(cond)}")
    if _shape_of(cond["mask"]) != tuple(x_shape):
      raise ValueError(f"inpainting: cond['mask'] must have x's shape {tuple(x_shape)}, got "
                       f"{_shape_of(cond['mask'])}")
    super().check(x_shape, cond)


COLOR_BASIS = np.stack([np.ones(3) / math.sqrt(3.0), np.array([1.0, -1.0, 0.0]) / math.sqrt(2.0),
                        np.array([1.0, 1.0, -2.0]) / math.sqrt(6.0)], axis=1)  # columns


def block_basis(f: int) -> np.ndarray:
  """An orthonormal (f^2, f^2) basis (columns) whose first column is the block mean direction
  1/f (all entries): a Householder reflection mapping e_1 to it, float64."""
  n = f * f
  if n == 1:
    return np.ones((1, 1))
  u = np.full(n, 1.0 / f)
  w = u - np.eye(n)[0]
  return np.eye(n) - 2.0 * np.outer(w, w) / (w @ w)


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

  def svd_parts(self, x_shape, cond):
    """Per pixel, V = COLOR_BASIS (columns (1,1,1)/sqrt3, (1,-1,0)/sqrt2, (1,1,-2)/sqrt6: score
    SDE's orthogonal colour decoupling), A = (1/sqrt3) e_1^T V^T: s = (1/sqrt3, 0, 0), U = 1,
    U^T y = y on the first colour coordinate."""
    y = jnp.asarray(cond["y"])
    q = COLOR_BASIS
    shape = tuple(x_shape[1:])

    def vt(x):
      return _flat(x @ jnp.asarray(q, x.dtype))

    def v(c):
      return jnp.reshape(c, (c.shape[0],) + shape) @ jnp.asarray(q.T, c.dtype)

    sv = jnp.zeros(shape, y.dtype).at[..., 0].set(1.0 / math.sqrt(3.0))
    sv = jnp.broadcast_to(_flat(sv[None]), (x_shape[0], int(np.prod(shape))))
    uty = jnp.concatenate([y, jnp.zeros(y.shape[:-1] + (2,), y.dtype)], axis=-1)
    return SVDParts(vt, v, sv, _flat(uty))

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

  def svd_parts(self, x_shape, cond):
    """Per f x f block and channel, V = ``block_basis(f)`` (first column the mean direction
    1/f), A = (1/f) e_1^T V^T: s = (1/f, 0, ...), U = I, U^T y = y on the first block coordinate.
    Spectral coordinates are ordered (B, H/f, W/f, C, f^2)."""
    y = jnp.asarray(cond["y"])
    b, h, w, c = x_shape
    f = self.factor
    hb = jnp.asarray(block_basis(f))

    def vt(x):
      blocks = jnp.reshape(x, (x.shape[0], h // f, f, w // f, f, c)).transpose(0, 1, 3, 5, 2, 4)
      return _flat(jnp.reshape(blocks, blocks.shape[:4] + (f * f,)) @ hb.astype(x.dtype))

    def v(cc):
      blocks = jnp.reshape(cc, (cc.shape[0], h // f, w // f, c, f * f)) @ hb.T.astype(cc.dtype)
      blocks = jnp.reshape(blocks, blocks.shape[:4] + (f, f)).transpose(0, 1, 4, 2, 5, 3)
      return jnp.reshape(blocks, (cc.shape[0], h, w, c))

    shape = (h // f, w // f, c, f * f)
    sv = jnp.zeros(shape, y.dtype).at[..., 0].set(1.0 / f)
    sv = jnp.broadcast_to(_flat(sv[None]), (b, int(np.prod(shape))))
    uty = jnp.zeros((b,) + shape, y.dtype).at[..., 0].set(y)
    return SVDParts(vt, v, sv, _flat(uty))

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
  svd_u: np.ndarray = dataclasses.field(init=False, repr=False)
  svd_s: np.ndarray = dataclasses.field(init=False, repr=False)
  svd_vt: np.ndarray = dataclasses.field(init=False, repr=False)

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
    su, ss, svt = np.linalg.svd(a)  # full: su (M, M), ss (min(M, D),), svt (D, D)
    sv = np.zeros(a.shape[1])
    sv[:ss.size] = np.where(ss > 1e-12 * max(1.0, ss.max()), ss, 0.0)
    object.__setattr__(self, "svd_u", su)
    object.__setattr__(self, "svd_s", sv)
    object.__setattr__(self, "svd_vt", svt)

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

  def svd_parts(self, x_shape, cond):
    """``np.linalg.svd`` of A on the host (float64); singular values below 1e-12 max(1, s_max)
    count as 0 (unobserved)."""
    y = jnp.asarray(cond["y"])
    m, d = self.A.shape
    k = min(m, d)
    sv = jnp.asarray(self.svd_s, y.dtype)
    uty = (y @ jnp.asarray(self.svd_u, y.dtype))[:, :k]
    uty = jnp.concatenate([uty, jnp.zeros((y.shape[0], d - k), y.dtype)], axis=1)
    uty = jnp.where(sv > 0, uty, 0.0)
    vt_mat = self.svd_vt
    return SVDParts(lambda x: x @ jnp.asarray(vt_mat.T, x.dtype),
                    lambda c: c @ jnp.asarray(vt_mat, c.dtype),
                    jnp.broadcast_to(sv, (x_shape[0], d)), uty)

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


def _check_nonneg(name: str, v, positive: bool = False) -> float:
  if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a real number, got {v!r} ({type(v).__name__})")
  v = float(v)
  if not math.isfinite(v) or (v <= 0 if positive else v < 0):
    raise ValueError(f"{name} must be a finite real {'> 0' if positive else '>= 0'}, got {v!r}")
  return v
