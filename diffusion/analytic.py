"""Ground truth: a Gaussian mixture data distribution, diffused exactly by any schedule.

If x0 ~ sum_k w_k N(mu_k, S_k), then under x_t = alpha x0 + sigma eps

  p_t(x)       = sum_k w_k N(x; alpha mu_k, C_k),   C_k = alpha^2 S_k + sigma^2 I
  r_k(x)       = w_k N(x; alpha mu_k, C_k) / p_t(x)                        (responsibilities)
  score(x)     = -sum_k r_k C_k^{-1} (x - alpha mu_k)
  E[x0 | x_t]  = sum_k r_k (mu_k + alpha S_k C_k^{-1} (x - alpha mu_k))     (the exact denoiser)

With S_k = U_k diag(l_k) U_k^T precomputed on the host, C_k^{-1} = U_k diag(1/(alpha^2 l + sigma^2)) U_k^T,
so every quantity costs O(K D^2) per point in any dimension, including alpha -> 0 and sigma -> 0.

Class labels: each component may carry a class c_k in [0, C). Conditioning on a class y keeps the
components with c_k = y (their weights renormalised), so the class-conditional p_t(x | y) is the
same formulae with the responsibilities restricted to those components, and

  log p(y | x_t) = logsumexp_{k: c_k = y} log(w_k N(x; alpha mu_k, C_k))
                   - logsumexp_k log(w_k N(x; alpha mu_k, C_k))                (Bayes)

The label C (NULL, the ``diffusion.guidance`` convention) or no label means the whole mixture, so
``denoiser(schedule)`` is at once the exact conditional and unconditional denoiser.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.guidance import label_of
from diffusion.schedules import Schedule

Array = Any


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """A K-component mixture in D dimensions. Build with ``GaussianMixture.create``.

  Attributes (numpy, float64 on the host; cast to the input dtype when used):
    weights: (K,), means: (K, D), eigvals: (K, D) and eigvecs: (K, D, D) of the covariances;
    classes: (K,) int64 class of each component, or None (unlabelled).
  """
  weights: np.ndarray
  means: np.ndarray
  eigvals: np.ndarray
  eigvecs: np.ndarray
  classes: Optional[np.ndarray] = None

  @staticmethod
  def create(weights: Sequence[float], means: Array, covs: Array,
             classes: Optional[Sequence[int]] = None) -> "GaussianMixture":
    """covs: (K, D, D) full, (K, D) diagonal, or (K,) isotropic variances; classes: None or (K,)
    ints in [0, C) with every class 0..C-1 holding a component of positive weight (C, the
    number of classes, is max(classes) + 1)."""
    w = np.asarray(weights, np.float64)
    mu = np.asarray(means, np.float64)
    if mu.ndim != 2:
      raise ValueError(f"means must be (K, D), got shape {mu.shape}")
    k, d = mu.shape
    if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
      raise ValueError(f"weights must be {k} non-negative numbers summing to 1, got {w}")
    c = np.asarray(covs, np.float64)
    if c.shape == (k,):
      c = c[:, None, None] * np.eye(d)
    elif c.shape == (k, d):
      c = np.einsum("ki,ij->kij", c, np.eye(d))
    elif c.shape != (k, d, d):
      raise ValueError(f"covs must be (K,), (K, D) or (K, D, D) = ({k}, {d}, {d}), got {c.shape}")
    lam, u = np.linalg.eigh(0.5 * (c + np.swapaxes(c, 1, 2)))
    if np.any(lam < -1e-12):
      raise ValueError(f"covariances must be positive semi-definite; smallest eigenvalue {lam.min()}")
    return GaussianMixture(w, mu, np.maximum(lam, 0.0), u, _check_classes(classes, w))

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def num_components(self) -> int:
    return self.means.shape[0]

  @property
  def num_classes(self) -> int:
    """C, the number of classes (also the NULL label); 0 if the mixture is unlabelled."""
    return 0 if self.classes is None else int(self.classes.max()) + 1

  def class_weights(self) -> np.ndarray:
    """p(y) = sum of the weights of class y's components, (C,)."""
    if self.classes is None:
      raise ValueError("class_weights: the mixture has no class labels (create(..., classes=))")
    return np.bincount(self.classes, weights=self.weights, minlength=self.num_classes)

  def conditional(self, label: int) -> "GaussianMixture":
    """The class-``label`` mixture p_0(x | y = label): its components, weights renormalised
    (unlabelled, so its denoiser ignores ``cond``)."""
    c = self.num_classes
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not (
        0 <= label < c):
      raise ValueError(f"conditional: label must be an int in [0, {c}) (the mixture's classes), "
                       f"got {label!r}")
    keep = self.classes == label
    w = self.weights[keep]
    return GaussianMixture(w / w.sum(), self.means[keep], self.eigvals[keep], self.eigvecs[keep])

  def covariances(self) -> np.ndarray:
    return np.einsum("kij,kj,klj->kil", self.eigvecs, self.eigvals, self.eigvecs)

  def mean(self) -> np.ndarray:
    return self.weights @ self.means

  def covariance(self) -> np.ndarray:
    """Overall covariance sum_k w_k (S_k + mu_k mu_k^T) - m m^T, (D, D)."""
    m = self.mean()
    second = np.einsum("k,kij->ij", self.weights, self.covariances())
    second += np.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
    return second - np.outer(m, m)

  # -- per-time quantities ---------------------------------------------------------------------

  def _components(self, x, alpha, sigma):
    """Per-component terms at one noise level; x (B, D), alpha, sigma (B, 1).

    Returns (log w_k N(x; alpha mu_k, C_k) (B, K), z = U^T (x - alpha mu) (B, K, D), cinv_eig (B, K, D)).
    """
    dt = x.dtype
    mu, lam, u = (jnp.asarray(a, dt) for a in (self.means, self.eigvals, self.eigvecs))
    logw = jnp.log(jnp.asarray(self.weights, dt))
    diff = x[:, None, :] - alpha[:, :, None] * mu[None]  # (B, K, D)
    z = jnp.einsum("kdj,bkd->bkj", u, diff)  # coordinates in each eigenbasis
    var = alpha[:, :, None]**2 * lam[None] + sigma[:, :, None]**2  # (B, K, D)
    logn = -0.5 * jnp.sum(z * z / var + jnp.log(2 * math.pi * var), axis=-1)
    return logw[None] + logn, z, var

  def _alpha_sigma(self, t, schedule, x):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))[:, None]
    return schedule.alpha(t), schedule.sigma(t)

  def _class_mask(self, labels, batch: int) -> Optional[Array]:
    """(B, K) bool: component k is in sample b's class (every k for the NULL label C); None for
    no labels or an unlabelled mixture. Concrete labels are checked on the host."""
    if labels is None or self.classes is None:
      return None
    if not isinstance(labels, jax.core.Tracer):
      from diffusion.guidance import check_labels
      check_labels(np.asarray(labels), self.num_classes)
    labels = jnp.broadcast_to(jnp.asarray(labels), (batch,))
    classes = jnp.asarray(self.classes, labels.dtype)
    return (classes[None, :] == labels[:, None]) | (labels[:, None] == self.num_classes)

  def _masked(self, logc, cond):
    """log w_k N_k restricted to the class of ``cond`` (others -inf), (B, K)."""
    mask = self._class_mask(label_of(cond), logc.shape[0])
    return logc if mask is None else jnp.where(mask, logc, -jnp.inf)

  def log_prob(self, x: Array, t: Array, schedule: Schedule) -> Array:
    """log p_t(x): x (B, D), t scalar or (B,) -> (B,)."""
    a, s = self._alpha_sigma(t, schedule, x)
    logc, _, _ = self._components(x, a, s)
    return jax.nn.logsumexp(logc, axis=-1)

  def log_prob0(self, x: Array) -> Array:
    """log p_0(x) of the data distribution itself, x (B, D) -> (B,)."""
    one = jnp.ones((x.shape[0], 1), x.dtype)
    logc, _, _ = self._components(x, one, 0.0 * one)
    return jax.nn.logsumexp(logc, axis=-1)

  def class_log_probs(self, x: Array, t: Array, schedule: Schedule) -> Array:
    """log p(y | x_t = x) for every class y (exact, Bayes' rule): x (B, D) -> (B, C)."""
    if self.classes is None:
      raise ValueError("class_log_probs: the mixture has no class labels (create(..., classes=))")
    a, s = self._alpha_sigma(t, schedule, x)
    logc, _, _ = self._components(x, a, s)
    onehot = jnp.asarray(self.classes[:, None] == np.arange(self.num_classes)[None])  # (K, C)
    per_class = jax.nn.logsumexp(jnp.where(onehot[None], logc[:, :, None], -jnp.inf), axis=1)
    return per_class - jax.nn.logsumexp(logc, axis=-1, keepdims=True)

  def class_log_prob(self, x: Array, t: Array, labels: Array, schedule: Schedule) -> Array:
    """log p(y = labels | x_t = x) exactly: x (B, D), labels (B,) (or a ``cond`` dict) -> (B,);
    0 for the NULL label C."""
    if self.classes is None:
      raise ValueError("class_log_prob: the mixture has no class labels (create(..., classes=))")
    labels = label_of(labels)
    if labels is None:
      raise ValueError("class_log_prob needs labels (B,), got None")
    a, s = self._alpha_sigma(t, schedule, x)
    logc, _, _ = self._components(x, a, s)
    return jax.nn.logsumexp(self._masked(logc, labels), axis=-1) - jax.nn.logsumexp(logc, -1)

  def score(self, x: Array, t: Array, schedule: Schedule, cond=None) -> Array:
    """grad_x log p_t(x | cond): (B, D) -> (B, D); ``cond`` as in ``denoise``."""
    a, s = self._alpha_sigma(t, schedule, x)
    logc, z, var = self._components(x, a, s)
    r = jax.nn.softmax(self._masked(logc, cond), axis=-1)
    u = jnp.asarray(self.eigvecs, x.dtype)
    per_k = jnp.einsum("kdj,bkj->bkd", u, z / var)
    return -jnp.einsum("bk,bkd->bd", r, per_k)

  def denoise(self, x: Array, t: Array, cond: Optional[Array] = None, *,
              schedule: Schedule) -> Array:
    """E[x0 | x_t = x, y] exactly: (B, D) -> (B, D).

    ``cond``: None, labels (B,) in [0, C] or a dict with 'label' (``guidance.label_of``); the
    responsibilities are restricted to the class's components, and the NULL label C, no label, or
    an unlabelled mixture (which ignores ``cond``) give the unconditional E[x0 | x_t = x].
    """
    a, s = self._alpha_sigma(t, schedule, x)
    logc, z, var = self._components(x, a, s)
    r = jax.nn.softmax(self._masked(logc, cond), axis=-1)
    dt = x.dtype
    lam, u = jnp.asarray(self.eigvals, dt), jnp.asarray(self.eigvecs, dt)
    gain = a[:, :, None] * lam[None] / var  # alpha S C^{-1} in each eigenbasis, (B, K, D)
    post = jnp.asarray(self.means, dt)[None] + jnp.einsum("kdj,bkj->bkd", u, gain * z)
    return jnp.einsum("bk,bkd->bd", r, post)

  def denoiser(self, schedule: Schedule):
    """The exact denoiser as ``denoise(x, t, cond=None) -> x0_hat``, the interface samplers take:
    conditional on the labels in ``cond``, unconditional for None or the NULL label."""
    return lambda x, t, cond=None: self.denoise(x, t, cond, schedule=schedule)

  def _sample_components(self, key, n: int, dtype):
    """(x (n, D), component index (n,)) of n exact samples."""
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, self.num_components, (n,), p=jnp.asarray(self.weights, dtype))
    z = jax.random.normal(kz, (n, self.dim), dtype)
    lam = jnp.asarray(self.eigvals, dtype)[comp]
    u = jnp.asarray(self.eigvecs, dtype)[comp]
    x = jnp.asarray(self.means, dtype)[comp] + jnp.einsum("bdj,bj->bd", u, jnp.sqrt(lam) * z)
    return x, comp

  def sample0(self, key, n: int, dtype=jnp.float32) -> Array:
    """n exact samples of the data distribution, (n, D)."""
    return self._sample_components(key, n, dtype)[0]

  def sample0_labelled(self, key, n: int, dtype=jnp.float32):
    """n exact samples of the joint p(x_0, y): (x (n, D), labels (n,) int32); the x are those of
    ``sample0(key, n)``."""
    if self.classes is None:
      raise ValueError("sample0_labelled: the mixture has no class labels (create(..., classes=))")
    x, comp = self._sample_components(key, n, dtype)
    return x, jnp.asarray(self.classes, jnp.int32)[comp]

  def sample(self, key, n: int, t: Array, schedule: Schedule, dtype=jnp.float32) -> Array:
    """n exact samples of p_t, (n, D)."""
    k0, ke = jax.random.split(key)
    x0 = self.sample0(k0, n, dtype)
    tt = jnp.broadcast_to(jnp.asarray(t, dtype), (n,))
    return schedule.marginal(x0, jax.random.normal(ke, x0.shape, dtype), tt)

  def entropy_mc(self, key, n: int = 200_000) -> float:
    """Monte Carlo differential entropy -E log p_0 in nats (for mixtures without a closed form)."""
    x = self.sample0(key, n, jnp.float32)
    return float(-jnp.mean(self.log_prob0(x)))


def _check_classes(classes, weights: np.ndarray) -> Optional[np.ndarray]:
  """classes as an int64 (K,) array after checking it (see ``GaussianMixture.create``)."""
  if classes is None:
    return None
  c = np.asarray(classes)
  k = weights.shape[0]
  if c.shape != (k,) or not (np.issubdtype(c.dtype, np.integer) and c.dtype != np.bool_):
    raise ValueError(f"classes must be {k} ints (one per component), got {classes!r}")
  if np.any(c < 0):
    raise ValueError(f"classes must be ints >= 0, got {c.tolist()}")
  per_class = np.bincount(c, weights=weights)
  empty = np.flatnonzero(per_class <= 0)
  if empty.size:
    raise ValueError(f"every class 0..{c.max()} needs a component of positive weight; class "
                     f"{int(empty[0])} has none (classes={c.tolist()}, weights={weights.tolist()})")
  return c.astype(np.int64)


def random_mixture(seed: int, dim: int, num_components: int = 4, scale: float = 1.5,
                   full_cov: bool = True) -> GaussianMixture:
  """A reproducible test mixture: random means with spread ``scale``, random SPD covariances
  with eigenvalues in [0.05, 0.5] (full) or diagonal."""
  rng = np.random.default_rng(seed)
  w = rng.dirichlet(np.full(num_components, 4.0))
  mu = scale * rng.standard_normal((num_components, dim)) / math.sqrt(max(1, dim // 2))
  lam = rng.uniform(0.05, 0.5, (num_components, dim))
  if full_cov:
    q = np.linalg.qr(rng.standard_normal((num_components, dim, dim)))[0]
    covs = np.einsum("kij,kj,klj->kil", q, lam, q)
  else:
    covs = lam
  return GaussianMixture.create(w, mu, covs)


def _check_observation(gm: GaussianMixture, A: Array, y: Array, noise_std) -> Tuple[
    np.ndarray, np.ndarray, float]:
  """(A (M, D), y (M,) as float64, noise_std as a float), checked against the mixture."""
  a = np.asarray(A, np.float64)
  yy = np.asarray(y, np.float64)
  if a.ndim != 2 or a.shape[1] != gm.dim:
    raise ValueError(f"A must be (M, D) with D = the mixture's dimension {gm.dim}, got {a.shape}")
  m = a.shape[0]
  if yy.shape != (m,):
    raise ValueError(f"y must be (M,) = ({m},) for A of shape {a.shape}, got {yy.shape}")
  if isinstance(noise_std, (bool, np.bool_)) or not isinstance(
      noise_std, (int, float, np.integer, np.floating)) or not (
          np.isfinite(noise_std) and noise_std >= 0):
    raise ValueError(f"noise_std must be a finite real >= 0, got {noise_std!r}")
  return a, yy, float(noise_std)


def _component_evidence(a: np.ndarray, cov: np.ndarray, mean: np.ndarray, y: np.ndarray,
                        s: float, k: int):
  """(S A^T (D, M), G = A S A^T + s^2 I (M, M), r = y - A mu (M,), log N(y; A mu, G)) of one
  component; ValueError if G is singular."""
  m = a.shape[0]
  sa = cov @ a.T
  g = a @ sa + s * s * np.eye(m)
  g = 0.5 * (g + g.T)
  lam = np.linalg.eigvalsh(g)
  if not lam.min() > 1e-12 * max(1.0, lam.max()):
    raise ValueError(f"A S_k A^T + noise_std^2 I is singular for component {k} (eigenvalues "
                     f"{lam}); use noise_std > 0 or an A whose rows the covariance spans")
  chol = np.linalg.cholesky(g)
  r = y - a @ mean
  z = np.linalg.solve(chol, r)
  logn = -0.5 * z @ z - np.sum(np.log(np.diag(chol))) - 0.5 * m * math.log(2 * math.pi)
  return sa, g, r, float(logn)


def linear_gaussian_posterior(gm: GaussianMixture, A: Array, y: Array,
                              noise_std: float = 0.0) -> GaussianMixture:
  """The exact posterior p(x0 | y) of x0 ~ gm observed as y = A x0 + noise_std n, n ~ N(0, I).

  A: (M, D), y: (M,). Each component k is conditioned in Kalman form (e.g. Bishop 2006, PRML
  eq. 2.113-2.117; Saerkkae 2013, Bayesian Filtering and Smoothing, Thm. 4.2):

    G_k   = A S_k A^T + s^2 I,      K_k = S_k A^T G_k^{-1},
    mu_k' = mu_k + K_k (y - A mu_k),  S_k' = S_k - K_k A S_k   (symmetrised),
    w_k'  propto w_k N(y; A mu_k, G_k)                           (normalised in log space).

  noise_std = 0 (noiseless observation) needs every G_k = A S_k A^T invertible (ValueError
  otherwise). Computed on the host in float64; returns a ``GaussianMixture``.
  """
  a, yy, s = _check_observation(gm, A, y, noise_std)
  covs = gm.covariances()
  means, new_covs, logw = [], [], []
  for k in range(gm.num_components):
    sa, g, r, logn = _component_evidence(a, covs[k], gm.means[k], yy, s, k)
    gain = np.linalg.solve(g, sa.T).T  # K = S A^T G^{-1}, (D, M)
    cov = covs[k] - gain @ sa.T
    means.append(gm.means[k] + gain @ r)
    new_covs.append(0.5 * (cov + cov.T))
    logw.append(math.log(gm.weights[k]) + logn if gm.weights[k] > 0 else -np.inf)
  logw = np.asarray(logw)
  w = np.exp(logw - logw.max())
  w /= w.sum()
  # Conditioning keeps covariances PSD, and noiseless observations make them singular: set the
  # eigenvalues at round-off level (or below 0) to exactly 0, so samples satisfy A x = y exactly.
  # The mixture is built from this (lam, u) itself, not by ``create`` from U diag(lam) U^T: that
  # product carries round-off again, and create's second eigh returns it as eigenvalues of
  # ~1e-17 in the null directions, of either sign (the OpenBLAS kernel, i.e. the CPU, decides);
  # create keeps the positive ones, and sample0's sqrt(lam) made sqrt(9e-17) ~ 1e-8 of noise along
  # A's rows: |A x - y| up to 5e-8 in float64 instead of ~1e-15.
  lam, u = np.linalg.eigh(np.stack(new_covs))
  lam = np.where(lam > 1e-12 * max(float(np.max(np.abs(lam))), 1e-300), lam, 0.0)
  # Each eigenvector's sign is LAPACK's choice and differs between OpenBLAS kernels (CPUs); fix it
  # (largest-magnitude entry > 0) so that sample0(key) draws the same samples on every CPU.
  big = np.take_along_axis(u, np.argmax(np.abs(u), axis=1)[:, None, :], axis=1)
  u = u * np.where(big < 0, -1.0, 1.0)
  return GaussianMixture(w, np.stack(means), lam, u)


def linear_gaussian_evidence(gm: GaussianMixture, A: Array, y: Array,
                             noise_std: float = 0.0) -> float:
  """log p(y) of y = A x0 + noise_std n, x0 ~ gm, n ~ N(0, I) (the normaliser of
  ``linear_gaussian_posterior``):

    log p(y) = logsumexp_k [log w_k + log N(y; A mu_k, A S_k A^T + noise_std^2 I)].

  A: (M, D), y: (M,); float64 on the host. noise_std = 0 gives the density of A x0 at y (every
  A S_k A^T must be invertible, ValueError otherwise)."""
  a, yy, s = _check_observation(gm, A, y, noise_std)
  covs = gm.covariances()
  terms = []
  for k in range(gm.num_components):
    logn = _component_evidence(a, covs[k], gm.means[k], yy, s, k)[3]
    terms.append(math.log(gm.weights[k]) + logn if gm.weights[k] > 0 else -np.inf)
  terms = np.asarray(terms)
  top = terms.max()
  return float(top + math.log(np.sum(np.exp(terms - top))))
