"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative Modeling",
arXiv 2505.13447): train an average-velocity network u(z_t, r, t) from scratch.

On the rectified-flow path z_t = (1 - t) x0 + t eps (t = 1 noise, t = 0 data), the average
velocity over [r, t] (r <= t) is

  u(z_t, r, t) = (1 / (t - r)) int_r^t v(z_tau, tau) dtau  =  (z_t - Phi(z_t, t -> r)) / (t - r)
                                                                                     (eq. 3)
and differentiating (t - r) u = int_r^t v in t gives the MeanFlow identity (eq. 6)

  u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
  d/dt u = v . grad_z u + du/dt          (total derivative along the path, eq. 8)
         = jvp of (z, r, t) -> u_theta with tangent (v, 0, 1).

The loss (eq. 9) regresses u_theta(z_t, r, t) on the stop-gradient target
u_tgt = v - (t - r) (v . grad_z u_theta + d_t u_theta), with v = eps - x0 (the conditional
velocity, eq. 1-2) standing in for the marginal one, as flow matching does. With the exact
average velocity plugged in, the target equals it (tests/test_mean_flow.py): the loss's fixed
point is the exact flow map.

Times (Sec. 4): t and r drawn independently from a logit-normal lognorm(mu, sigma), sorted so
that t >= r; then for a fraction 1 - ratio_r_neq_t of the batch r is set to t (those samples are
plain flow matching: u(z, t, t) = v). Loss weighting (Sec. 4, "adaptive loss weighting"):
w = sg(1 / (||Delta||^2 + c)^p) on the per-sample squared error ||Delta||^2 (sum over the
dimensions), p = 1 (ImageNet) with c = 1e-3; p = 0 is the plain squared L2 loss.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

Array = Any
# u(z (B, ...), r (B,), t (B,), cond) -> (B, ...)
AverageVelocity = Callable[..., Array]

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")
# The paper's ImageNet defaults (its ablations and ImageNet configuration): lognorm(-0.4, 1.0),
# 25% of the batch with r != t, adaptive weighting p = 1, c = 1e-3.
DEFAULTS = dict(time_distribution="logit_normal", time_mean=-0.4, time_std=1.0,
                ratio_r_neq_t=0.25, adaptive_p=1.0, adaptive_c=1e-3)


def check_options(*, time_distribution: str, time_mean: float, time_std: float,
                  ratio_r_neq_t: float, adaptive_p: float, adaptive_c: float) -> None:
  """ValueError naming the first bad option (the loss's keywords)."""
  if time_distribution not in TIME_DISTRIBUTIONS:
    raise ValueError(f"time_distribution={time_distribution!r}; accepted: {TIME_DISTRIBUTIONS}")
  if not time_std > 0:
    raise ValueError(f"time_std must be > 0, got {time_std!r}")
  if not math.isfinite(time_mean):
    raise ValueError(f"time_mean must be finite, got {time_mean!r}")
  if not 0.0 <= ratio_r_neq_t <= 1.0:
    raise ValueError(f"ratio_r_neq_t must be in [0, 1], got {ratio_r_neq_t!r}")
  if not adaptive_p >= 0:
    raise ValueError(f"adaptive_p must be >= 0 (0: plain squared error), got {adaptive_p!r}")
  if not adaptive_c > 0:
    raise ValueError(f"adaptive_c must be > 0, got {adaptive_c!r}")


def sample_two_times(key: jax.Array, batch: int, *, time_distribution: str = "logit_normal",
                     time_mean: float = -0.4, time_std: float = 1.0,
                     ratio_r_neq_t: float = 0.25) -> Tuple[Array, Array]:
  """(r (B,), t (B,)), 0 < r <= t < 1: two draws sorted (t the larger), then r = t for each
  sample with probability 1 - ratio_r_neq_t (MeanFlow Sec. 4). 'logit_normal': sigmoid of
  N(time_mean, time_std^2); 'uniform': U(0, 1)."""
  k_times, k_same = jax.random.split(key)
  if time_distribution == "logit_normal":
    a = jax.nn.sigmoid(time_mean + time_std * jax.random.normal(k_times, (2, batch)))
  elif time_distribution == "uniform":
    a = jax.random.uniform(k_times, (2, batch))
  else:
    raise ValueError(f"time_distribution={time_distribution!r}; accepted: {TIME_DISTRIBUTIONS}")
  t, r = jnp.maximum(a[0], a[1]), jnp.minimum(a[0], a[1])
  distinct = jax.random.uniform(k_same, (batch,)) < ratio_r_neq_t
  return jnp.where(distinct, r, t), t


def _expand(v, x):
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def mean_flow_target(u_fn: AverageVelocity, z: Array, r: Array, t: Array, v: Array,
                     cond=None) -> Tuple[Array, Array, Array]:
  """(u_theta(z, r, t), u_tgt = sg(v - (t - r) du/dt), du/dt) (each (B, ...)), du/dt the jvp of
  (z, r, t) -> u_fn with tangents (v, 0, 1) (MeanFlow eq. 8-10): one forward pass gives both u
  and its total time derivative."""
  fn = lambda zz, rr, tt: u_fn(zz, rr, tt, cond)
  u, dudt = jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
  target = v - _expand(t - r, z) * dudt
  return u, jax.lax.stop_gradient(target), dudt


def adaptive_weight(sq_err: Array, p: float, c: float) -> Array:
  """w = sg(1 / (sq_err + c)^p) per sample (MeanFlow Sec. 4; p = 0: w = 1)."""
  return jax.lax.stop_gradient(1.0 / (sq_err + c) ** p)


def mean_flow_loss(u_fn: AverageVelocity, x0: Array, key: jax.Array, *, cond=None,
                   velocity_fn: Optional[Callable[..., Array]] = None,
                   time_distribution: str = "logit_normal", time_mean: float = -0.4,
                   time_std: float = 1.0, ratio_r_neq_t: float = 0.25,
                   adaptive_p: float = 1.0, adaptive_c: float = 1e-3,
                   noise: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """The MeanFlow loss (eq. 9 with adaptive weighting): mean over the batch of
  w ||u_theta(z_t, r, t) - u_tgt||^2 (sum over dimensions), z_t = (1 - t) x0 + t eps.

  u_fn(z, r, t, cond) -> (B, ...): the network's average velocity (``flow_map.
  make_average_velocity``). v = eps - x0, or with ``velocity_fn(z, t, cond)`` (a teacher's
  PF-ODE velocity: distillation, not in the paper's main results) that velocity, stop-gradient.
  ``noise``: eps (B, ...) instead of drawing it. Returns (loss, aux) with aux 'mse' (the
  unweighted mean squared error per element) and 'fraction_r_neq_t'."""
  check_options(time_distribution=time_distribution, time_mean=time_mean, time_std=time_std,
                ratio_r_neq_t=ratio_r_neq_t, adaptive_p=adaptive_p, adaptive_c=adaptive_c)
  k_t, k_eps = jax.random.split(key)
  b = x0.shape[0]
  r, t = sample_two_times(k_t, b, time_distribution=time_distribution, time_mean=time_mean,
                          time_std=time_std, ratio_r_neq_t=ratio_r_neq_t)
  r, t = r.astype(x0.dtype), t.astype(x0.dtype)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype) if noise is None else noise
  z = (1.0 - _expand(t, x0)) * x0 + _expand(t, x0) * eps
  v = eps - x0 if velocity_fn is None else jax.lax.stop_gradient(velocity_fn(z, t, cond))
  u, target, _ = mean_flow_target(u_fn, z, r, t, v, cond)
  sq = jnp.sum(jnp.reshape(u - target, (b, -1)) ** 2, axis=1)
  w = adaptive_weight(sq, adaptive_p, adaptive_c)
  loss = jnp.mean(w * sq)
  return loss, {"mse": jnp.mean(sq) / (x0.size // b),
                "fraction_r_neq_t": jnp.mean((r < t).astype(jnp.float32))}
