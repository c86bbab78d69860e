"""Two-time flow maps: the map Phi(x_t, t -> s) of the probability-flow ODE, and its exact value.

The PF-ODE of a schedule (alpha, sigma) with denoiser D carries x_t at time t to x_s at time s
(t >= s; larger t = noisier):

  Phi(x_t, t -> s) = x_s,   dx/dt = velocity(D(x, t), x, t)            (the PF-ODE)

In EDM variables u = x / alpha, tau = sigma / alpha it is du/d(log tau) = u - D(alpha u, t(tau)).
Every few-step family is an approximation of Phi:

  consistency function  f(x_t, t) = Phi(x_t, t -> t_min) / alpha(t_min)  (CM, sCM: s fixed)
  average velocity      u(x_t, r, t) = (x_t - Phi(x_t, t -> r)) / (t - r)  (mean flows, on the
                        rectified-flow schedule alpha = 1 - t, sigma = t; at r = t the velocity)
  shortcut              s(x_t, t, d) = u(x_t, t - d, t)                    (Frans et al. 2024)

``exact_flow_map`` computes Phi for the analytic Gaussian mixture by an adaptive float64 solve of
the exact denoiser (``diffusion.analytic``): the ground truth the few-step objectives and samplers
are tested against. A flow map as the samplers of kind 'flow_map' take it is

  FlowMap: flow_map(x (B, ...), t (B,) or scalar, s (B,) or scalar, cond=None) -> x_s (B, ...)
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.parameterization import velocity_from_x0
from diffusion.schedules import Schedule

Array = Any
FlowMap = Callable[..., Array]
# Below this tau = sigma / alpha the flow map is the identity to float64 precision for data of
# bounded score (u(tau) - u(0) = O(tau^2 |grad log p|)); s at sigma(s) = 0 integrates to here.
TAU_FLOOR = 1e-9


def _per_sample(v, x, name: str) -> Array:
  """v (scalar or (B,)) as (B,) in x's dtype; ValueError naming the bad shape."""
  v = jnp.asarray(v, x.dtype)
  if v.ndim == 0:
    return jnp.broadcast_to(v, (x.shape[0],))
  if v.shape != (x.shape[0],):
    raise ValueError(f"{name} must be a scalar or have shape ({x.shape[0]},) (one per sample), "
                     f"got {v.shape}")
  return v


def _expand(v, x):
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def exact_flow_map(denoise: Callable[..., Array], schedule: Schedule, x_t: Array, t, s, *,
                   cond=None, rtol: float = 1e-10, atol: float = 1e-10,
                   max_steps: int = 16384) -> Array:
  """Phi(x_t, t -> s) (B, ...) of the PF-ODE of ``denoise`` by an adaptive Dopri8 solve (diffrax).

  Per sample the time runs from t_b to s_b (both in the schedule's [0, t_max]; s_b > t_b runs the
  ODE toward the noise: the exact inversion of data, ``diffusion.samplers.build_inverter``); all
  samples share one solve in a normalised variable lam in [0, 1],
  log tau = (1 - lam) log tau(t_b) + lam log tau(s_b), so du/dlam = (log tau(s_b) - log tau(t_b))
  (u - D(alpha u, t(tau))). tau(s) below TAU_FLOOR (s = 0 on schedules with sigma(0) = 0) is
  TAU_FLOOR. For ground truth pass the exact denoiser (``GaussianMixture.denoiser``) and float64
  inputs under ``jax.enable_x64``; the default tolerances then give about 1e-9 relative error.
  """
  import diffrax
  x_t = jnp.asarray(x_t)
  t, s = _per_sample(t, x_t, "t"), _per_sample(s, x_t, "s")
  if isinstance(t, jax.core.Tracer) or isinstance(s, jax.core.Tracer):
    raise ValueError("exact_flow_map is a reference computation: call it with concrete t, s")
  if np.any(np.asarray(s) < 0) or np.any(np.asarray(t) < 0):
    raise ValueError(f"exact_flow_map needs t, s >= 0 per sample; got t={np.asarray(t)}, "
                     f"s={np.asarray(s)}")
  dt = x_t.dtype
  log_tau = lambda v: jnp.log(jnp.maximum(schedule.edm_sigma(v), TAU_FLOOR))
  l_t, l_s = log_tau(t), log_tau(s)
  span = _expand(l_s - l_t, x_t)

  def vf(lam, u, args):
    l = l_t + lam * (l_s - l_t)
    tt = schedule.t_from_edm_sigma(jnp.exp(l))
    a = _expand(schedule.alpha(tt), u)
    return span * (u - denoise(a * u, tt, cond).astype(dt))

  u0 = x_t / _expand(schedule.alpha(t), x_t)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vf), diffrax.Dopri8(), t0=jnp.asarray(0.0, dt), t1=jnp.asarray(1.0, dt),
      dt0=jnp.asarray(0.05, dt), y0=u0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=int(max_steps))
  s_end = schedule.t_from_edm_sigma(jnp.exp(l_s))
  return sol.ys[-1] * _expand(schedule.alpha(jnp.where(s == t, t, s_end)), x_t)


def velocity(denoise: Callable[..., Array], schedule: Schedule, x_t: Array, t,
             cond: Optional[Array] = None) -> Array:
  """The PF-ODE velocity dx/dt at (x_t, t) (B, ...) of ``denoise`` (``velocity_from_x0``)."""
  t = _per_sample(t, x_t, "t")
  return velocity_from_x0(denoise(x_t, t, cond), x_t, t, schedule)


def exact_average_velocity(denoise: Callable[..., Array], schedule: Schedule, x_t: Array, r, t,
                           *, cond=None, **solve) -> Array:
  """u(x_t, r, t) = (x_t - Phi(x_t, t -> r)) / (t - r) (B, ...), and the velocity where r = t
  (MeanFlow's average velocity; Geng et al. 2025, eq. 3). ``solve``: ``exact_flow_map``'s
  tolerances."""
  t, r = _per_sample(t, x_t, "t"), _per_sample(r, x_t, "r")
  phi = exact_flow_map(denoise, schedule, x_t, t, r, cond=cond, **solve)
  gap = _expand(t - r, x_t)
  same = _expand(t == r, x_t)
  avg = (x_t - phi) / jnp.where(same, 1.0, gap)
  return jnp.where(same, velocity(denoise, schedule, x_t, t, cond), avg)


# -- a two-time network's flow map ---------------------------------------------------------------


def make_average_velocity(apply_fn: Callable[..., Array], schedule: Schedule,
                          param) -> Callable[..., Array]:
  """u(x_t, r, t, cond=None) -> (B, ...): a two-time network ``apply_fn(x_in, c (B, 2), cond) ->
  F`` read through a two-time parameterization ('mean_flow': F = u, fed c = (t, t - r)). r, t
  scalars or (B,). ValueError for a one-time parameterization or another schedule."""
  if not getattr(param, "two_time", False):
    raise ValueError(f"a flow map needs a two-time parameterization (model.parameterization "
                     f"'mean_flow'), got {getattr(param, 'kind', param)!r}")
  param.check_schedule(schedule)

  def average_velocity(x, r, t, cond=None):
    t, r = _per_sample(t, x, "t"), _per_sample(r, x, "r")
    x_in, c = param.net_inputs(x, t, schedule, r=r)
    return apply_fn(x_in, c, cond).astype(x.dtype)

  return average_velocity


def make_flow_map(apply_fn: Callable[..., Array], schedule: Schedule, param) -> FlowMap:
  """The FlowMap of a two-time network: Phi(x_t, t -> s) = x_t - (t - s) u(x_t, s, t)
  (MeanFlow, Geng et al. 2025, eq. 3 read as a map; ``make_average_velocity``). t, s scalars or
  (B,), t >= s; on the rectified-flow schedule only."""
  u = make_average_velocity(apply_fn, schedule, param)

  def flow_map(x, t, s, cond=None):
    t, s = _per_sample(t, x, "t"), _per_sample(s, x, "s")
    return x - _expand(t - s, x) * u(x, s, t, cond)

  return flow_map


def denoiser_of_flow_map(flow_map: FlowMap) -> Callable[..., Array]:
  """denoise(x_t, t, cond=None) = Phi(x_t, t -> 0): a flow map read as an x0 prediction (what
  code that wants a denoiser gets from a flow-map network; for 'mean_flow' it equals
  ``make_denoiser``'s x - t u(x, 0, t))."""

  def denoise(x, t, cond=None):
    return flow_map(x, t, jnp.zeros_like(_per_sample(t, x, "t")), cond)

  return denoise


def exact_flow_map_fn(denoise: Callable[..., Array], schedule: Schedule, **solve) -> FlowMap:
  """The exact FlowMap of ``denoise``'s PF-ODE as a function (``exact_flow_map``): what the
  flow-map sampler is checked with. Not traceable (a reference that needs concrete t, s): run
  the sampler with ``build_sampler(..., jit=False)``."""

  def flow_map(x, t, s, cond=None):
    return exact_flow_map(denoise, schedule, x, t, s, cond=cond, **solve)

  return flow_map
