"""Log-likelihood through the probability-flow ODE (Song et al. 2021, score SDE, App. D.2).

The PF-ODE of any schedule, written with the denoiser (docs/architecture.md, "everything speaks
(alpha, sigma)"):

  dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 score(x, t),   score = (alpha x0_hat - x) / sigma^2

transports p_t exactly, and the instantaneous change of variables (Chen et al. 2018) gives

  log p_{t0}(x) = log p_T(x(T)) + int_{t0}^{T} div v(x(t), t) dt,   x(t0) = x.

The divergence is exact (D Jacobian-vector products, small D) or Hutchinson's unbiased estimate
eps^T (dv/dx) eps with Rademacher or Gaussian probes held fixed along the path (Grathwohl et
al. 2019). The integral is solved with diffrax (adaptive Tsit5 / Dopri5 / Dopri8).

The ODE starts at t0 = schedule.t_min (or ``t_min``): the value is log p_{t0}(x), which tends to
the data log-density log p_0(x) as t0 -> 0, as in the score SDE paper.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import diffrax
import jax
import jax.numpy as jnp

from diffusion.samplers.ode import diffrax_nfe, fsal_state
from diffusion.schedules import Schedule, check_int, check_real, check_time_range

Array = Any

_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8}
SOLVERS = tuple(sorted(_SOLVERS))
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def pf_ode_velocity(denoise: Callable[..., Array], schedule: Schedule, cond=None):
  """v(x, t) = f(t) x - 1/2 g(t)^2 (alpha x0_hat - x)/sigma^2 as a function (x (B, ...), t scalar)."""

  def v(x, t):
    tb = jnp.broadcast_to(t, (x.shape[0],)).astype(x.dtype)
    x0 = denoise(x, tb, cond)
    a, s = schedule.alpha(t), schedule.sigma(t)
    score = (a * x0 - x) / (s * s)
    return schedule.drift(t) * x - 0.5 * schedule.diffusion_sq(t) * score

  return v


def _exact_divergence(v, x, t):
  """sum_i d v_i / d x_i per example by D forward-mode products (the network acts per example)."""
  flat = x.reshape(x.shape[0], -1)
  d = flat.shape[1]

  def column(i):
    e = jnp.zeros_like(flat).at[:, i].set(1.0).reshape(x.shape)
    _, jv = jax.jvp(lambda y: v(y, t), (x,), (e,))
    return jv.reshape(flat.shape)[:, i]

  vx = v(x, t)
  return vx, jnp.sum(jax.vmap(column)(jnp.arange(d)), axis=0)


def _hutchinson_divergence(v, x, t, probe):
  vx, jv = jax.jvp(lambda y: v(y, t), (x,), (probe,))
  return vx, jnp.sum((jv * probe).reshape(x.shape[0], -1), axis=-1)


def log_likelihood(denoise: Callable[..., Array],
                   schedule: Schedule,
                   x: Array,
                   key=None,
                   *,
                   cond: Optional[Array] = None,
                   divergence: str = "exact",
                   probe: str = "rademacher",
                   solver: str = "tsit5",
                   rtol: float = 1e-5,
                   atol: float = 1e-5,
                   t_min: Optional[float] = None,
                   t_max: Optional[float] = None,
                   max_steps: int = 4096) -> Dict[str, Array]:
  """log p(x) of data x (B, ...) under the model's PF-ODE.

  t_min / t_max (None: the schedule's) must satisfy schedule.t_min <= t_min < t_max <=
  schedule.t_max; rtol, atol > 0; max_steps an int >= 1: anything else raises before tracing.
  Returns dict(logp (B,) nats, prior_logp (B,), delta_logp (B,), z (B, ...) the latent at t_max,
  nfe: ODE right-hand-side evaluations (each is one denoiser call plus, for the exact divergence,
  D Jacobian-vector products), exact as in ``samplers.ode_adaptive``, num_steps (accepted and
  rejected), num_rejected_steps).
  """
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  if divergence not in DIVERGENCES:
    raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
  if probe not in PROBES:
    raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
  if solver not in _SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; available: {sorted(_SOLVERS)}")
  t0, t1 = check_time_range(schedule, t_min, t_max)
  max_steps = check_int("max_steps", max_steps)
  for name, v in (("rtol", rtol), ("atol", atol)):
    if not check_real(name, v) > 0:
      raise ValueError(f"{name} must be > 0, got {v!r}")
  if jnp.ndim(x) < 2:
    raise ValueError(f"x must be a batch (B, ...) with at least 2 axes, got shape {jnp.shape(x)}")
  v = pf_ode_velocity(denoise, schedule, cond)
  if divergence == "hutchinson":
    if key is None:
      raise ValueError("the Hutchinson estimator needs a PRNG key")
    if probe == "rademacher":
      eps = jax.random.rademacher(key, x.shape, x.dtype)
    else:
      eps = jax.random.normal(key, x.shape, x.dtype)

  def rhs(t, state, args):
    y, _ = state
    if divergence == "exact":
      vy, div = _exact_divergence(v, y, t)
    else:
      vy, div = _hutchinson_divergence(v, y, t, eps)
    return vy, div

  state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
  term, slv = diffrax.ODETerm(rhs), _SOLVERS[solver]()
  # The first right-hand side evaluated once up front, so that the NFE is exact even when the
  # first step is rejected (see samplers.ode.fsal_state), counted as the samplers count it.
  solver_state = fsal_state(slv, term, t0, t1, state0)
  sol = diffrax.diffeqsolve(
      term, slv, t0=t0, t1=t1, dt0=(t1 - t0) / 64, y0=state0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
      saveat=diffrax.SaveAt(t1=True), solver_state=solver_state)
  z, delta = sol.ys[0][0], sol.ys[1][0]
  prior = schedule.prior_logp(z)
  num_steps = sol.stats["num_steps"]
  return {
      "logp": prior + delta,
      "prior_logp": prior,
      "delta_logp": delta,
      "z": z,
      "num_steps": num_steps,
      "num_rejected_steps": sol.stats["num_rejected_steps"],
      "nfe": diffrax_nfe(slv, num_steps),
  }


def bits_per_dim(logp: Array, dim: int, num_levels: int = 256) -> Array:
  """Bits per dimension of discrete data with ``num_levels`` levels scaled to [-1, 1].

  Data x in {0..L-1} dequantized to [0, L) then mapped to [-1, 1] by y = 2 x / L - 1, so
  log p(x) = log p(y) + D log(2/L) and bpd = -(log p(y)/D + log(2/L)) / ln 2. ``dim`` (D) an
  int >= 1, ``num_levels`` (L) an int >= 2.
  """
  dim = check_int("dim", dim, 1)
  num_levels = check_int("num_levels", num_levels, 2)
  return -(logp / dim + math.log(2.0 / num_levels)) / math.log(2.0)
