"""What the network outputs, and how every other prediction follows from the denoiser.

The whole codebase speaks through one interface, the denoiser ``denoise(x_t, t, cond) -> x0_hat``
with x_t = alpha(t) x0 + sigma(t) eps. From x0_hat every other prediction is exact algebra:

  eps_hat   = (x_t - alpha x0_hat) / sigma
  score     = -eps_hat / sigma = (alpha x0_hat - x_t) / sigma^2          (Tweedie)
  v_hat     = alpha eps_hat - sigma x0_hat                              (Salimans & Ho 2022)
  velocity  = dx_t/dt of the interpolant = alpha' x0_hat + sigma' eps_hat

A *parameterization* is the pair (network inputs, network output -> x0_hat):

  eps    x0 = (x - sigma F) / alpha                 (Ho et al. 2020)
  x0     x0 = F
  v      x0 = (alpha x - sigma F) / (alpha^2 + sigma^2)
  score  x0 = (x + sigma^2 F) / alpha              (Song et al. 2021)
  edm    with s = sigma/alpha and x' = x/alpha (so x' = x0 + s eps, EDM's variables):
         x0 = c_skip(s) x' + c_out(s) F(c_in(s) x', c_noise(s))   (Karras et al. 2022, eq. 7, Table 1)
         c_skip = sd^2/(s^2+sd^2), c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
         c_noise = log(s)/4.
  flow   F = u_hat, the velocity dx_t/dt = alpha' x0 + sigma' eps of the interpolant
         (flow matching, Lipman et al. 2023; rectified flow, Liu et al. 2023, eq. 1):
         x0 = (sigma' x - sigma F) / (sigma' alpha - sigma alpha')
         (from x = alpha x0 + sigma eps, F = alpha' x0 + sigma' eps: eliminate eps = (x - alpha x0)
         / sigma, so sigma F = sigma alpha' x0 + sigma' x - sigma' alpha x0). The denominator is
         -alpha sigma dlambda/dt / 2 > 0 for every schedule whose logSNR lambda decreases;
         for rectified flow (alpha = 1 - t, sigma = t) it is 1 and x0 = x - t F.
  consistency  EDM's network inputs, with the boundary skip / out of consistency models (Song et
         al. 2023, eq. 7 and App. C), s_min = sigma(t_min)/alpha(t_min):
         x0 = c_skip(s) x' + c_out(s) F,  c_skip = sd^2/((s - s_min)^2 + sd^2),
         c_out = (s - s_min) sd / sqrt(s^2 + sd^2), so x0 = x' exactly at t_min. The "denoiser"
         is then the consistency function f(x_t, t) (diffusion.consistency), sampled by the
         'consistency' sampler; a network trained with 'edm' has the same inputs, so its
         parameters initialise it (consistency distillation from an EDM teacher).
  trigflow  TrigFlow's (Lu & Song 2024, sCM, eq. 6 and sec. 4.1) on the 'trigflow' schedule only
         (alpha = cos t, sigma = sigma_d sin t): the network sees x / sigma_d and c_noise(t) = t
         (the paper's identity time transform; the network's own embedding scales it), and
         x0 = cos t x - sin t sigma_d F = alpha x - sigma F.
         F is both the TrigFlow diffusion model's scaled velocity (dx_t/dt = sigma_d F) and the
         sCM consistency function f(x_t, t) = cos t x_t - sin t sigma_d F (f(x, 0) = x exactly).
  mean_flow  a two-time network (``diffusion.models`` capability time_inputs = 2) on the
         rectified-flow schedule only (alpha = 1 - t, sigma = t): F = u(x_t, r, t), the average
         velocity over [r, t] (MeanFlow, Geng et al. 2025, eq. 3), fed x_t and
         c = (t, t - r) (the paper's best conditioning in its ablations; ``time_input`` 't'
         only).
         Its flow map is Phi(x_t, t -> r) = x_t - (t - r) u (``diffusion.flow_map.
         make_flow_map``); as a denoiser it is read at r = 0: x0 = Phi(x_t, t -> 0) = x - t F,
         the 'flow' formula (u(x, 0, t) = (x_t - x0) / t is the velocity-from-x0 of 'flow').
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax.numpy as jnp

from diffusion.schedules import Schedule, _bcast

Array = Any
Denoiser = Callable[..., Array]  # denoise(x_t (B, ...), t (B,), cond=None) -> x0_hat (B, ...)

PARAMETERIZATIONS = ("eps", "x0", "v", "score", "edm", "flow", "consistency", "trigflow",
                     "mean_flow")
# Parameterizations that apply to one schedule only, and that schedule.
ONLY_ON = {"trigflow": "trigflow", "mean_flow": "rectified_flow"}
# Parameterizations whose network takes two times, c (B, 2), and the schedule they live on.
TWO_TIME = {"mean_flow": "rectified_flow"}
TIME_INPUTS = ("t", "log_sigma", "logsnr", "c_noise", "index")


# -- exact conversions from the denoiser's x0_hat ------------------------------------------------


def eps_from_x0(x0, x, t, schedule: Schedule):
  t = _bcast(t, x)
  return (x - schedule.alpha(t) * x0) / schedule.sigma(t)


def x0_from_eps(eps, x, t, schedule: Schedule):
  t = _bcast(t, x)
  return (x - schedule.sigma(t) * eps) / schedule.alpha(t)


def score_from_x0(x0, x, t, schedule: Schedule):
  t = _bcast(t, x)
  s = schedule.sigma(t)
  return (schedule.alpha(t) * x0 - x) / (s * s)


def x0_from_score(score, x, t, schedule: Schedule):
  t = _bcast(t, x)
  s = schedule.sigma(t)
  return (x + s * s * score) / schedule.alpha(t)


def v_from_x0(x0, x, t, schedule: Schedule):
  t = _bcast(t, x)
  a, s = schedule.alpha(t), schedule.sigma(t)
  eps = (x - a * x0) / s
  return a * eps - s * x0


def x0_from_v(v, x, t, schedule: Schedule):
  t = _bcast(t, x)
  a, s = schedule.alpha(t), schedule.sigma(t)
  return (a * x - s * v) / (a * a + s * s)


def velocity_from_x0(x0, x, t, schedule: Schedule):
  """The probability-flow velocity of the interpolant, u = alpha' x0_hat + sigma' eps_hat."""
  eps = eps_from_x0(x0, x, t, schedule)
  t = _bcast(t, x)
  return schedule.dalpha_dt(t) * x0 + schedule.dsigma_dt(t) * eps


def x0_from_velocity(u, x, t, schedule: Schedule):
  """Inverse of ``velocity_from_x0``: x0 = (sigma' x - sigma u) / (sigma' alpha - sigma alpha')
  (module docstring); rectified flow: x0 = x - t u."""
  t = _bcast(t, x)
  a, s = schedule.alpha(t), schedule.sigma(t)
  da, ds = schedule.dalpha_dt(t), schedule.dsigma_dt(t)
  return (ds * x - s * u) / (ds * a - s * da)


# -- network parameterizations -------------------------------------------------------------------


# What can be evaluated where alpha = 0 (a zero-terminal-SNR schedule at t = 1): x0 = alpha x -
# sigma v, or x0 itself; eps / score predictions divide by alpha.
ZERO_SNR_OK = ("v", "x0")


@dataclasses.dataclass(frozen=True)
class Parameterization:
  """How a network's output F maps to x0_hat, and what the network is fed.

  Attributes:
    kind: one of PARAMETERIZATIONS.
    time_input: the scalar the network is conditioned on: 't', 'log_sigma' (log of sigma/alpha),
      'logsnr', 'c_noise' (= log(sigma/alpha)/4, EDM), or 'index' (a discrete-time schedule's
      step index N t - 1: DDPM networks on ``vp_discrete``). 'edm' and 'consistency' always
      use c_noise; 'trigflow' always uses t (sCM's c_noise(t) = t).
    sigma_data: the data standard deviation assumed by EDM's preconditioning ('trigflow': the
      schedule's sigma_data, which it must equal).
    scale_input: feed x / sqrt(alpha^2 sd^2 + sigma^2) (unit variance) instead of x; 'edm' and
      'consistency' always do (that is EDM's c_in).
  """
  kind: str = "eps"
  time_input: str = "t"
  sigma_data: float = 0.5
  scale_input: bool = False

  def __post_init__(self):
    if self.kind not in PARAMETERIZATIONS:
      raise ValueError(f"unknown parameterization {self.kind!r}; available: {PARAMETERIZATIONS}")
    if self.time_input not in TIME_INPUTS:
      raise ValueError(f"unknown time_input {self.time_input!r}; available: {TIME_INPUTS}")
    if self.kind in TWO_TIME and self.time_input != "t":
      raise ValueError(f"parameterization {self.kind!r} feeds the times themselves, (t, t - r): "
                       f"time_input must be 't', got {self.time_input!r}")

  @property
  def two_time(self) -> bool:
    """The network takes c (B, 2) = (t, t - r) (``TWO_TIME``): a flow-map network."""
    return self.kind in TWO_TIME

  def check_schedule(self, schedule: Schedule) -> None:
    """ValueError if this parameterization does not apply to ``schedule`` (``ONLY_ON``; at zero
    terminal SNR only ``ZERO_SNR_OK``, which need no division by alpha):
    'trigflow' lives on the 'trigflow' schedule of the same sigma_data (alpha = cos t, sigma =
    sigma_d sin t), 'mean_flow' on 'rectified_flow' (its flow map x_t - (t - r) u assumes
    alpha = 1 - t, sigma = t)."""
    if getattr(schedule, "zero_terminal_snr", False) and self.kind not in ZERO_SNR_OK:
      raise ValueError(f"parameterization {self.kind!r} cannot be evaluated at zero terminal SNR "
                       f"(alpha = 0 at t = 1): use {list(ZERO_SNR_OK)} (Lin et al. 2024 train "
                       f"with v-prediction)")
    need = ONLY_ON.get(self.kind)
    if need is not None and schedule.name != need:
      raise ValueError(f"parameterization {self.kind!r} needs the {need!r} schedule, got the "
                       f"{schedule.name!r} schedule")
    if self.kind == "trigflow" and float(schedule.sigma_data) != float(self.sigma_data):
      raise ValueError(f"parameterization 'trigflow': sigma_data={self.sigma_data} differs from "
                       f"the trigflow schedule's sigma_data={schedule.sigma_data}")

  def _noise_level(self, t, schedule):
    return schedule.edm_sigma(t)  # sigma / alpha

  def net_inputs(self, x, t, schedule: Schedule, r=None):
    """(x_in (B, ...), c (B,)): what the network sees for x_t at times t (B,). A two-time
    parameterization ('mean_flow') gives c (B, 2) = (t, t - r), r (B,) (None: r = 0, the
    denoiser's reading Phi(x_t, t -> 0))."""
    if self.two_time:
      self.check_schedule(schedule)
      t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
      r = jnp.zeros_like(t) if r is None else jnp.broadcast_to(jnp.asarray(r, t.dtype), t.shape)
      return x, jnp.stack([t, t - r], axis=1).astype(jnp.float32)
    if r is not None:
      raise ValueError(f"parameterization {self.kind!r} takes one time; r is for the two-time "
                       f"ones {tuple(TWO_TIME)}")
    if self.kind == "trigflow":
      self.check_schedule(schedule)
      c = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
      return x / self.sigma_data, c
    tb = _bcast(t, x)
    a, s = schedule.alpha(tb), schedule.sigma(tb)
    edm_inputs = self.kind in ("edm", "consistency")
    if edm_inputs or self.scale_input:
      x_in = x / jnp.sqrt(a * a * self.sigma_data**2 + s * s)
    else:
      x_in = x
    ti = "c_noise" if edm_inputs else self.time_input
    if ti == "t":
      c = t
    elif ti == "log_sigma":
      c = jnp.log(self._noise_level(t, schedule))
    elif ti == "logsnr":
      c = schedule.logsnr(t)
    elif ti == "index":
      if not hasattr(schedule, "discrete_index"):
        raise ValueError(f"time_input='index' needs a discrete-time schedule (vp_discrete); "
                         f"the {schedule.name!r} schedule has no step index")
      c = schedule.discrete_index(t)
    else:
      c = 0.25 * jnp.log(self._noise_level(t, schedule))
    return x_in, jnp.broadcast_to(jnp.asarray(c, jnp.float32), (x.shape[0],))

  def to_x0(self, out, x, t, schedule: Schedule):
    """x0_hat from the network output ``out`` for inputs x_t (B, ...) at times t (B,)."""
    if self.kind == "eps":
      return x0_from_eps(out, x, t, schedule)
    if self.kind == "x0":
      return out
    if self.kind == "v":
      return x0_from_v(out, x, t, schedule)
    if self.kind == "score":
      return x0_from_score(out, x, t, schedule)
    if self.kind == "flow":
      return x0_from_velocity(out, x, t, schedule)
    if self.kind == "trigflow":
      self.check_schedule(schedule)
      tb = _bcast(t, x)
      return schedule.alpha(tb) * x - schedule.sigma(tb) * out  # cos t x - sin t sigma_d F
    if self.two_time:  # u(x, 0, t): x0 = Phi(x_t, t -> 0) = x - t u
      self.check_schedule(schedule)
      return x - _bcast(t, x) * out
    a, c_skip, c_out = self._edm_skip_out(x, t, schedule)
    return c_skip * (x / a) + c_out * out

  def from_x0(self, x0, x, t, schedule: Schedule):
    """Inverse of ``to_x0``: the network output that would give x0 (the regression target)."""
    if self.kind == "eps":
      return eps_from_x0(x0, x, t, schedule)
    if self.kind == "x0":
      return x0
    if self.kind == "v":
      return v_from_x0(x0, x, t, schedule)
    if self.kind == "score":
      return score_from_x0(x0, x, t, schedule)
    if self.kind == "flow":
      return velocity_from_x0(x0, x, t, schedule)
    if self.kind == "trigflow":
      self.check_schedule(schedule)
      tb = _bcast(t, x)
      return (schedule.alpha(tb) * x - x0) / schedule.sigma(tb)
    if self.two_time:  # u(x, 0, t) = (x - x0) / t
      self.check_schedule(schedule)
      return (x - x0) / _bcast(t, x)
    a, c_skip, c_out = self._edm_skip_out(x, t, schedule)
    return (x0 - c_skip * (x / a)) / c_out

  def _edm_skip_out(self, x, t, schedule: Schedule):
    """(alpha, c_skip, c_out) at s = sigma/alpha, broadcast against x: EDM's preconditioning, or
    for 'consistency' the boundary one (module docstring), with d = s - s_min in place of s in
    c_skip and in c_out's numerator."""
    tb = _bcast(t, x)
    s, sd = schedule.edm_sigma(tb), self.sigma_data
    d = s - schedule.edm_sigma(schedule.t_min) if self.kind == "consistency" else s
    return schedule.alpha(tb), sd * sd / (d * d + sd * sd), d * sd / jnp.sqrt(s * s + sd * sd)


def make_denoiser(apply_fn: Callable[..., Array],
                  schedule: Schedule,
                  param: Parameterization) -> Denoiser:
  """Wraps a network ``apply_fn(x_in, c, cond) -> F`` into ``denoise(x_t, t, cond=None) -> x0_hat``.

  ``t`` may be a scalar or (B,); it is broadcast to (B,).
  """

  def denoise(x, t, cond: Optional[Array] = None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    x_in, c = param.net_inputs(x, t, schedule)
    out = apply_fn(x_in, c, cond)
    return param.to_x0(out.astype(x.dtype), x, t, schedule)

  return denoise
