"""EDM2's power-function EMA and its post-hoc reconstruction.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2),
Sec. 3 and App. C (arXiv 2312.02696; equation numbers below are the arXiv appendix's).

Power-function EMA (Sec. 3, App. C.1-C.2). After t training updates the EMA is an average of the
parameters theta(tau), tau in [0, t], with the averaging profile

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),   0 <= tau <= t,   0 elsewhere,

a probability density on [0, t] whose standard deviation relative to t is (Eq. 3 / 123)

    sigma_rel(gamma) = (gamma + 1)^(1/2) (gamma + 2)^(-1) (gamma + 3)^(-1/2).

It is tracked step by step by theta_hat(t) = beta(t) theta_hat(t - 1) + (1 - beta(t)) theta(t),
beta(t) = (1 - 1/t)^(gamma + 1) (Eq. 2 / 127), t = 1, 2, ... the number of updates taken. The
weight of theta(s) in theta_hat(t) is then, exactly,

    prod_{u=s+1..t} beta(u) (1 - beta(s)) = (s^(gamma+1) - (s-1)^(gamma+1)) / t^(gamma+1)
                                          = int_{s-1}^{s} p_t(tau) dtau,

so the discrete EMA *is* the integral of p_t against the piecewise-constant trajectory
theta(tau) = theta(s) on (s-1, s]: nothing is lost by working with continuous profiles.

sigma_rel(gamma) rises from 0 at gamma = -1 to its maximum SIGMA_REL_MAX ~ 0.3003 at
gamma* = (sqrt(5) - 3)/2 and falls back to 0 as gamma -> inf. The inverse (Eq. 126, Alg. 2) is
the largest root of the cubic gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0, s =
sigma_rel^-2, which lies on the falling branch gamma >= gamma*; it is computed here in closed
form (three real roots, trigonometric solution).

Post-hoc reconstruction (App. C.3). Given snapshots of EMAs with profiles (t_i, gamma_i), the
combination sum_i x_i theta_hat_i has the profile sum_i x_i p_i. The coefficients minimise the L2
distance || sum_i x_i p_i - p_target ||^2 over [0, inf), whose normal equations need only the
inner products (Eq. 151, Alg. 3)

    <p_a, p_b> = (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_max)
                 * (t_min / t_max)^(gamma of the longer one),

t_min, t_max = min, max(t_a, t_b). Here the minimisation is constrained to sum_i x_i = 1 (the
profiles are densities, so the reconstruction is one too and a constant trajectory is returned
unchanged); the official code instead solves the unconstrained system and rescales x to sum 1.
The reconstruction error on a trajectory theta is bounded by Cauchy-Schwarz,

    |sum_i x_i theta_hat_i - theta_hat_target| <= ||sum_i x_i p_i - p_target||_2
                                                 * ||theta - c||_2   (any constant c),

``Reconstruction.residual`` being the first factor (``trajectory_error_bound``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

GAMMA_AT_SIGMA_REL_MAX = (math.sqrt(5.0) - 3.0) / 2.0  # where d sigma_rel / d gamma = 0


def sigma_rel_of_gamma(gamma) -> np.ndarray:
  """sigma_rel of the power profile with exponent ``gamma`` > -1 (EDM2 Eq. 3 / App. C Eq. 123):
  sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))). Any shape, float64."""
  g = np.asarray(gamma, np.float64)
  if not np.all(np.isfinite(g) & (g > -1.0)):
    raise ValueError(f"gamma must be finite and > -1 (the profile tau^gamma must be integrable "
                     f"at 0), got {gamma!r}")
  return np.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


SIGMA_REL_MAX = float(sigma_rel_of_gamma(GAMMA_AT_SIGMA_REL_MAX))  # ~ 0.30028


def check_sigma_rel(sigma_rel, name: str = "sigma_rel") -> np.ndarray:
  """``sigma_rel`` as float64, or ValueError naming it unless every value is in
  (0, SIGMA_REL_MAX]."""
  s = np.asarray(sigma_rel, np.float64)
  if s.size == 0 or not np.all(np.isfinite(s) & (s > 0.0) & (s <= SIGMA_REL_MAX)):
    raise ValueError(f"{name}={sigma_rel!r} is out of range: a power-function EMA has "
                     f"0 < sigma_rel <= {SIGMA_REL_MAX:.6f} (EDM2 uses 0.05 to 0.2)")
  return s


def gamma_of_sigma_rel(sigma_rel) -> np.ndarray:
  """The exponent gamma >= (sqrt(5) - 3)/2 with sigma_rel(gamma) = ``sigma_rel`` (EDM2 App. C
  Eq. 126, Alg. 2): the largest root of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s), s =
  sigma_rel^-2, in closed form. Any shape, float64; ValueError outside (0, SIGMA_REL_MAX]."""
  s = check_sigma_rel(sigma_rel) ** -2.0
  # gamma = y - 7/3 turns the cubic into y^3 + p y + q with p = -(s + 1/3), q = 4 s/3 + 2/27;
  # p < 0 and 4 p^3 + 27 q^2 <= 0 for s >= SIGMA_REL_MAX^-2: three real roots, the largest
  # y = 2 sqrt(-p/3) cos(acos(3 q / (2 p) sqrt(-3/p)) / 3).
  p = -(s + 1.0 / 3.0)
  q = 4.0 * s / 3.0 + 2.0 / 27.0
  arg = np.clip(1.5 * q / p * np.sqrt(-3.0 / p), -1.0, 1.0)
  y = 2.0 * np.sqrt(-p / 3.0) * np.cos(np.arccos(arg) / 3.0)
  return y - 7.0 / 3.0


# -- the running EMA (inside the train step) ------------------------------------------------------


def power_ema_beta(t, gamma) -> jax.Array:
  """beta(t) = (1 - 1/t)^(gamma + 1) (EDM2 Eq. 2 / 127), t >= 1 the number of updates taken."""
  t = jnp.asarray(t, jnp.result_type(float))
  return jnp.power(1.0 - 1.0 / t, gamma + 1.0)


def power_ema_weight(t, gamma) -> jax.Array:
  """1 - beta(t), computed as -expm1((gamma + 1) log1p(-1/t)): accurate to the dtype's relative
  precision at any t (1 - 1/t itself rounds in float32 once t ~ 1e4). 1 at t = 1."""
  t = jnp.asarray(t, jnp.result_type(float))
  return -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / t))


def power_ema_update(ema: PyTree, params: PyTree, t, gamma: float) -> PyTree:
  """theta_hat(t) = beta(t) theta_hat(t - 1) + (1 - beta(t)) theta(t), leaf by leaf; ``t`` >= 1
  (scalar, may be traced) counts the updates including this one; ``params`` = theta(t)."""
  def one(e, p):
    w = power_ema_weight(t, gamma).astype(e.dtype)
    return e + w * (p.astype(e.dtype) - e)
  return jax.tree_util.tree_map(one, ema, params)


def discrete_weights(t: int, gamma: float) -> np.ndarray:
  """(t,) float64: the weights of theta(1), ..., theta(t) in the power EMA after t updates,
  (s^(gamma+1) - (s-1)^(gamma+1)) / t^(gamma+1) = int_{s-1}^{s} p_t (see the module doc)."""
  s = np.arange(1, int(t) + 1, dtype=np.float64) / float(t)
  return s ** (gamma + 1.0) - (s - 1.0 / t) ** (gamma + 1.0)


def power_profile(tau, t: float, gamma: float) -> np.ndarray:
  """p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t], 0 elsewhere (float64)."""
  tau = np.asarray(tau, np.float64)
  inside = (tau >= 0.0) & (tau <= t)
  r = np.where(inside, tau, t) / t  # 1 outside: no 0^gamma there
  return np.where(inside, (gamma + 1.0) * r ** gamma / t, 0.0)


# -- post-hoc reconstruction (on the host, float64) -----------------------------------------------


def profile_inner(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
  """<p_a, p_b> = int_0^inf p_{t_a}^{gamma_a} p_{t_b}^{gamma_b} (EDM2 App. C Eq. 151), in closed
  form: (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) t_max) * (t_min / t_max)^(g of the longer profile).
  Arguments broadcast; float64."""
  t_a, g_a, t_b, g_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
  t_max, t_min = np.maximum(t_a, t_b), np.minimum(t_a, t_b)
  g_long = np.where(t_a >= t_b, g_a, g_b)
  return ((g_a + 1.0) * (g_b + 1.0) / ((g_a + g_b + 1.0) * t_max)
          * (t_min / t_max) ** g_long)


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """The post-hoc EMA of profile (t, gamma) as sum_i coefficients[i] * snapshot_i.

  coefficients: (N,) float64, summing to 1, in the order of the snapshots given.
  t, gamma, sigma_rel: the requested profile (t in update counts, as the snapshots').
  residual: || sum_i x_i p_i - p_target ||_2 over [0, inf) (units of 1/sqrt(update)).
  relative_residual: residual / || p_target ||_2.
  """
  coefficients: np.ndarray
  t: float
  gamma: float
  sigma_rel: float
  residual: float
  relative_residual: float


def _check_snapshots(snapshot_t, snapshot_sigma_rel) -> Tuple[np.ndarray, np.ndarray]:
  t = np.asarray(snapshot_t, np.float64).reshape(-1)
  s = np.asarray(snapshot_sigma_rel, np.float64).reshape(-1)
  if t.size == 0:
    raise ValueError("no snapshots: post-hoc EMA needs stored EMA snapshots (got snapshot_t=[])")
  if t.shape != s.shape:
    raise ValueError(f"snapshot_t ({t.size} values) and snapshot_sigma_rel ({s.size} values) "
                     f"must have one entry per snapshot")
  if not np.all(np.isfinite(t) & (t >= 1.0)):
    raise ValueError(f"snapshot_t={t.tolist()!r}: every snapshot time must be a number of "
                     f"updates >= 1")
  check_sigma_rel(s, "snapshot_sigma_rel")
  pairs = list(zip(t.tolist(), s.tolist()))
  dupes = sorted({p for p in pairs if pairs.count(p) > 1})
  if dupes:
    raise ValueError(f"duplicate snapshots (t, sigma_rel)={dupes!r}: each profile may be stored "
                     f"once per step (their profiles are identical, the system singular)")
  if len(pairs) < 2:
    raise ValueError(f"one snapshot only, (t, sigma_rel)={pairs[0]!r}: a reconstruction needs "
                     f"snapshots of several steps or profiles to combine")
  return t, s


def solve_coefficients(snapshot_t: Sequence[float], snapshot_sigma_rel: Sequence[float],
                       sigma_rel: float, t: Optional[float] = None) -> Reconstruction:
  """Coefficients x (N,) of the snapshots whose profile sum_i x_i p_i is closest in L2 to the
  power profile of ``sigma_rel`` ending at ``t`` (default: the latest snapshot's t), subject to
  sum_i x_i = 1 (EDM2 App. C.3, Alg. 3; see the module doc).

  snapshot_t: (N,) the number of updates each snapshot's EMA has seen (>= 1).
  snapshot_sigma_rel: (N,) the profile each snapshot tracks. Every (t, sigma_rel) pair must be
  distinct and there must be at least two. ``t`` must be in [1, max(snapshot_t)]: the snapshots
  hold nothing about training after their last step.
  Solved in float64 with times scaled by max(snapshot_t) (the coefficients do not depend on the
  time unit), by least squares on the KKT system [[A, 1], [1^T, 0]] [x, lambda] = [b, 1].
  """
  ts, ss = _check_snapshots(snapshot_t, snapshot_sigma_rel)
  target_s = float(check_sigma_rel(sigma_rel, "sigma_rel"))
  if np.ndim(sigma_rel) != 0:
    raise ValueError(f"sigma_rel must be one number, got {sigma_rel!r}")
  t_end = float(ts.max())
  target_t = t_end if t is None else float(t)
  if not (math.isfinite(target_t) and 1.0 <= target_t <= t_end):
    raise ValueError(f"t={t!r} is out of range: the reconstructed EMA must end within the "
                     f"snapshots, 1 <= t <= {t_end:g} (the latest snapshot's update count)")
  gs, target_g = gamma_of_sigma_rel(ss), float(gamma_of_sigma_rel(target_s))
  u, target_u = ts / t_end, target_t / t_end  # scaled times
  a = profile_inner(u[:, None], gs[:, None], u[None, :], gs[None, :])
  b = profile_inner(u, gs, target_u, target_g)
  n = len(u)
  kkt = np.zeros((n + 1, n + 1))
  kkt[:n, :n], kkt[:n, n], kkt[n, :n] = a, 1.0, 1.0
  sol = np.linalg.lstsq(kkt, np.concatenate([b, [1.0]]), rcond=None)[0]
  x = sol[:n]
  norm2 = float(profile_inner(target_u, target_g, target_u, target_g))
  res2 = max(norm2 - 2.0 * float(x @ b) + float(x @ a @ x), 0.0)
  return Reconstruction(coefficients=x, t=target_t, gamma=target_g, sigma_rel=target_s,
                        residual=math.sqrt(res2 / t_end),
                        relative_residual=math.sqrt(res2 / norm2))


def combine(coefficients: Sequence[float], trees: Sequence[PyTree]) -> PyTree:
  """sum_i coefficients[i] * trees[i], leaf by leaf, accumulated in float64 on the host and cast
  back to each leaf's dtype (numpy arrays). ``trees``: N pytrees of one structure."""
  x = np.asarray(coefficients, np.float64).reshape(-1)
  if len(trees) != len(x):
    raise ValueError(f"{len(x)} coefficients for {len(trees)} snapshots")
  if not trees:
    raise ValueError("no snapshots to combine")

  def leaf(*ls):
    acc = sum(c * np.asarray(l, np.float64) for c, l in zip(x, ls))
    return acc.astype(np.asarray(ls[0]).dtype)

  return jax.tree_util.tree_map(leaf, *jax.device_get(list(trees)))


def reconstruct(trees: Sequence[PyTree], snapshot_t: Sequence[float],
                snapshot_sigma_rel: Sequence[float], sigma_rel: float,
                t: Optional[float] = None) -> Tuple[PyTree, Reconstruction]:
  """(the post-hoc EMA of ``sigma_rel`` ending at ``t``, its Reconstruction) from snapshot
  parameter pytrees ``trees`` with their (t, sigma_rel) (``solve_coefficients``, ``combine``)."""
  rec = solve_coefficients(snapshot_t, snapshot_sigma_rel, sigma_rel, t)
  return combine(rec.coefficients, trees), rec


def trajectory_error_bound(rec: Reconstruction, trajectory: np.ndarray) -> np.ndarray:
  """The Cauchy-Schwarz bound on |reconstruction - exact power EMA| per coordinate for the
  parameters ``trajectory`` (T, ...) = theta(1..T), T >= every snapshot's t: residual *
  ||theta - mean(theta)||_2 over [0, T] (theta piecewise constant on unit intervals; the
  constant drops out as the residual profile integrates to 0)."""
  th = np.asarray(trajectory, np.float64)
  centred = th - th.mean(axis=0)
  return rec.residual * np.sqrt(np.sum(centred ** 2, axis=0))
