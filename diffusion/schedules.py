"""Gaussian forward processes as (alpha, sigma) pairs, and time grids for sampling.

Every schedule describes the marginals ``x_t = alpha(t) x_0 + sigma(t) eps``, eps ~ N(0, I),
for t in [t_min, t_max]. From the pair follow (Kingma et al. 2021, VDM, eq. 2-4; Song et al.
2021, score SDE, eq. 5 and 29):

  logsnr(t) = log(alpha^2 / sigma^2)
  f(t)      = d log alpha / dt                                 (SDE drift:  dx = f x dt + g dw)
  g(t)^2    = d sigma^2 / dt - 2 f(t) sigma(t)^2               (SDE diffusion)

so nothing downstream needs to know which family a schedule belongs to.

Every method works on numpy inputs (computed in float64 on the host, for sampler coefficients)
and on jax arrays (traced inside ``jit``): the array namespace follows the input.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, Optional, Type

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


def _xp(t):
  """numpy for host values (float64), jax.numpy for traced / device arrays."""
  return np if isinstance(t, (np.ndarray, np.generic, float, int)) else jnp


def _softplus(xp, x):
  return xp.logaddexp(0.0, x)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Base class. Subclasses define alpha, sigma and their time derivatives.

  Frozen and hashable, so a schedule can be closed over or passed as a static jit argument.
  """
  t_min: float
  t_max: float

  name = "base"
  # A learned schedule carries trained parameters (``bind(params)``, the 'schedule' part of the
  # network's parameter tree; VDM's LearnedVP); every other schedule is fixed by its fields.
  learned = False

  # -- to be defined by subclasses -------------------------------------------------------------
  def alpha(self, t: Array) -> Array:
    raise NotImplementedError

  def sigma(self, t: Array) -> Array:
    raise NotImplementedError

  def dalpha_dt(self, t: Array) -> Array:
    raise NotImplementedError

  def dsigma_dt(self, t: Array) -> Array:
    raise NotImplementedError

  def t_from_logsnr(self, logsnr: Array) -> Array:
    """Inverse of ``logsnr``: the time at which log(alpha^2/sigma^2) equals ``logsnr``."""
    raise NotImplementedError

  # -- derived quantities ---------------------------------------------------------------------
  def logsnr(self, t: Array) -> Array:
    """lambda(t) = log(alpha(t)^2 / sigma(t)^2), decreasing in t."""
    xp = _xp(t)
    return 2.0 * (xp.log(self.alpha(t)) - xp.log(self.sigma(t)))

  def dlogsnr_dt(self, t: Array) -> Array:
    """d lambda / dt = 2 (alpha'/alpha - sigma'/sigma)."""
    return 2.0 * (self.dalpha_dt(t) / self.alpha(t) - self.dsigma_dt(t) / self.sigma(t))

  def drift(self, t: Array) -> Array:
    """f(t) = d log alpha / dt, the linear drift coefficient of the forward SDE."""
    return self.dalpha_dt(t) / self.alpha(t)

  def diffusion_sq(self, t: Array) -> Array:
    """g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2 = 2 sigma (sigma' - f sigma)."""
    s = self.sigma(t)
    return 2.0 * s * (self.dsigma_dt(t) - self.drift(t) * s)

  def diffusion(self, t: Array) -> Array:
    """g(t), the diffusion coefficient of the forward SDE."""
    return _xp(t).sqrt(self.diffusion_sq(t))

  def marginal(self, x0: Array, eps: Array, t: Array) -> Array:
    """x_t = alpha(t) x0 + sigma(t) eps, with t of shape (B,) broadcast over x0's trailing axes."""
    t = _bcast(t, x0)
    return self.alpha(t) * x0 + self.sigma(t) * eps

  def prior_std(self) -> float:
    """Standard deviation of the prior N(0, std^2 I) that approximates p_{t_max} (unit data)."""
    a, s = float(self.alpha(np.float64(self.t_max))), float(self.sigma(np.float64(self.t_max)))
    return math.sqrt(a * a + s * s)

  def prior_sample(self, key, shape) -> Array:
    """x_T ~ N(0, prior_std^2 I), shape ``shape``."""
    import jax
    return self.prior_std() * jax.random.normal(key, shape)

  def prior_logp(self, x: Array) -> Array:
    """log N(x; 0, prior_std^2 I) summed over all but the leading axis: (B, ...) -> (B,)."""
    std = self.prior_std()
    d = np.prod(x.shape[1:])
    sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
    return -0.5 * sq / std**2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))

  def edm_sigma(self, t: Array) -> Array:
    """sigma(t) / alpha(t) = exp(-lambda/2): the noise level of x_t / alpha (EDM's sigma)."""
    return self.sigma(t) / self.alpha(t)

  def t_from_edm_sigma(self, s: Array) -> Array:
    return self.t_from_logsnr(-2.0 * _xp(s).log(s))


def _bcast(t, x):
  """Reshapes a per-example t (B,) to broadcast against x (B, ...). Scalars pass through."""
  t = jnp.asarray(t) if not isinstance(t, np.ndarray) else t
  if t.ndim == 0:
    return t
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


# ------------------------------------------------------------------------------------------------
# Variance-preserving family
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _BetaVP(Schedule):
  """A VP process given by its beta(t) and B(t) = int_0^t beta = -2 log alpha (subclasses
  define ``beta`` and ``_int_beta``): alpha = e^{-B/2}, sigma = sqrt(1 - e^{-B}), g^2 = beta."""

  def _int_beta(self, t):
    raise NotImplementedError

  def beta(self, t):
    raise NotImplementedError

  def alpha(self, t):
    return _xp(t).exp(-0.5 * self._int_beta(t))

  def sigma(self, t):
    xp = _xp(t)
    return xp.sqrt(-xp.expm1(-self._int_beta(t)))

  def dalpha_dt(self, t):
    return -0.5 * self.beta(t) * self.alpha(t)

  def dsigma_dt(self, t):
    # d/dt sqrt(1 - e^{-B}) = beta e^{-B} / (2 sigma)
    xp = _xp(t)
    return 0.5 * self.beta(t) * xp.exp(-self._int_beta(t)) / self.sigma(t)

  def logsnr(self, t):
    # alpha^2 / sigma^2 = 1 / (e^{B} - 1)
    xp = _xp(t)
    return -xp.log(xp.expm1(self._int_beta(t)))

  def diffusion_sq(self, t):
    return self.beta(t)


@dataclasses.dataclass(frozen=True)
class VP(_BetaVP):
  """VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (DDPM / score SDE, eq. 11).

  log alpha(t) = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min,  sigma = sqrt(1 - alpha^2).
  """
  t_min: float = 1e-3
  t_max: float = 1.0
  beta_min: float = 0.1
  beta_max: float = 20.0

  name = "vp"

  def _int_beta(self, t):
    """B(t) = int_0^t beta = -2 log alpha."""
    return 0.5 * t * t * (self.beta_max - self.beta_min) + t * self.beta_min

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def t_from_logsnr(self, lam):
    # B(t) = log(1 + e^{-lambda}) = softplus(-lambda); solve the quadratic for t >= 0.
    xp = _xp(lam)
    b = _softplus(xp, -lam)
    d = self.beta_max - self.beta_min
    return 2.0 * b / (self.beta_min + xp.sqrt(self.beta_min**2 + 2.0 * d * b))


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
  """sub-VP SDE (score SDE, eq. 12): alpha as VP, sigma(t) = 1 - alpha(t)^2 = 1 - e^{-B(t)}.

  Its SDE is dx = -1/2 beta x dt + sqrt(beta (1 - e^{-2B})) dw, exactly the (f, g) pair implied
  by these marginals.
  """
  name = "subvp"

  def sigma(self, t):
    return -_xp(t).expm1(-self._int_beta(t))

  def dsigma_dt(self, t):
    return self.beta(t) * _xp(t).exp(-self._int_beta(t))

  def logsnr(self, t):
    xp = _xp(t)
    return -self._int_beta(t) - 2.0 * xp.log(-xp.expm1(-self._int_beta(t)))

  def t_from_logsnr(self, lam):
    # With a = e^{-B/2}: a^2/(1-a^2)^2 = e^lambda  =>  a = (sqrt(1 + 4 e^lambda) - 1) / (2 e^{lambda/2})
    # (positive root of e^{lambda/2} a^2 + a - e^{lambda/2} = 0), B = -2 log a.
    xp = _xp(lam)
    h = xp.exp(0.5 * lam)
    # a = 2 h / (1 + sqrt(1 + 4 h^2)): the same root, stable for large and small h.
    a = 2.0 * h / (1.0 + xp.sqrt(1.0 + 4.0 * h * h))
    b = -2.0 * xp.log(a)
    d = self.beta_max - self.beta_min
    return 2.0 * b / (self.beta_min + xp.sqrt(self.beta_min**2 + 2.0 * d * b))

  def diffusion_sq(self, t):
    return self.beta(t) * (-_xp(t).expm1(-2.0 * self._int_beta(t)))


@dataclasses.dataclass(frozen=True)
class VPCosine(Schedule):
  """Cosine VP schedule (Nichol & Dhariwal 2021, eq. 17) in continuous time.

  alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s)),  sigma = sqrt(1 - alpha^2).
  alpha(1) = 0, so t_max defaults to 0.9946 (DPM-Solver's choice, logSNR about -9.2 there).
  sigma is computed as sqrt(sin(p - p0) sin(p + p0)) / cos(p0) (p the phase, p0 = p(0);
  cos^2 p0 - cos^2 p = sin(p - p0) sin(p + p0)), which is exactly 0 at t = 0 where 1 - alpha^2
  cancels to a rounding error (sqrt of one ulp: 1.5e-8 in float64).
  """
  t_min: float = 1e-3
  t_max: float = 0.9946
  s: float = 0.008

  name = "vp_cosine"

  def _phase(self, t):
    return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

  def _a0(self):
    return math.cos(0.5 * math.pi * self.s / (1.0 + self.s))

  def alpha(self, t):
    return _xp(t).cos(self._phase(t)) / self._a0()

  def sigma(self, t):
    xp = _xp(t)
    p, p0 = self._phase(t), self._phase(0.0)
    return xp.sqrt(xp.sin(p - p0) * xp.sin(p + p0)) / self._a0()

  def dalpha_dt(self, t):
    return -_xp(t).sin(self._phase(t)) * 0.5 * math.pi / (1.0 + self.s) / self._a0()

  def dsigma_dt(self, t):
    return -self.alpha(t) * self.dalpha_dt(t) / self.sigma(t)

  def t_from_logsnr(self, lam):
    xp = _xp(lam)
    alpha = xp.sqrt(1.0 / (1.0 + xp.exp(-lam)))  # alpha^2 = sigmoid(lambda)
    return (1.0 + self.s) * (2.0 / math.pi) * xp.arccos(alpha * self._a0()) - self.s


# ------------------------------------------------------------------------------------------------
# Variance-exploding family
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VE(Schedule):
  """VE SDE (SMLD / score SDE, eq. 9): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t."""
  t_min: float = 1e-5
  t_max: float = 1.0
  sigma_min: float = 0.01
  sigma_max: float = 50.0

  name = "ve"

  def _log_ratio(self):
    return math.log(self.sigma_max / self.sigma_min)

  def alpha(self, t):
    return _xp(t).ones_like(t) * 1.0

  def sigma(self, t):
    return self.sigma_min * _xp(t).exp(t * self._log_ratio())

  def dalpha_dt(self, t):
    return _xp(t).zeros_like(t) * 1.0

  def dsigma_dt(self, t):
    return self.sigma(t) * self._log_ratio()

  def logsnr(self, t):
    return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio())

  def t_from_logsnr(self, lam):
    return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio()

  def diffusion_sq(self, t):
    s = self.sigma(t)
    return 2.0 * s * s * self._log_ratio()


@dataclasses.dataclass(frozen=True)
class EDM(Schedule):
  """EDM's process (Karras et al. 2022, Table 1): alpha = 1, sigma(t) = t, t in [0.002, 80]."""
  t_min: float = 0.002
  t_max: float = 80.0

  name = "edm"

  def alpha(self, t):
    return _xp(t).ones_like(t) * 1.0

  def sigma(self, t):
    return t * 1.0

  def dalpha_dt(self, t):
    return _xp(t).zeros_like(t) * 1.0

  def dsigma_dt(self, t):
    return _xp(t).ones_like(t) * 1.0

  def logsnr(self, t):
    return -2.0 * _xp(t).log(t)

  def t_from_logsnr(self, lam):
    return _xp(lam).exp(-0.5 * lam)

  def diffusion_sq(self, t):
    return 2.0 * t


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Schedule):
  """Linear interpolation / rectified flow (Liu et al. 2023; Lipman et al. 2023):
  alpha = 1 - t, sigma = t."""
  t_min: float = 1e-3
  t_max: float = 0.999

  name = "rectified_flow"

  def alpha(self, t):
    return 1.0 - t

  def sigma(self, t):
    return t * 1.0

  def dalpha_dt(self, t):
    return -_xp(t).ones_like(t)

  def dsigma_dt(self, t):
    return _xp(t).ones_like(t) * 1.0

  def t_from_logsnr(self, lam):
    # (1-t)/t = e^{lambda/2}  =>  t = sigmoid(-lambda/2)
    xp = _xp(lam)
    return 1.0 / (1.0 + xp.exp(0.5 * lam))


@dataclasses.dataclass(frozen=True)
class TrigFlow(Schedule):
  """TrigFlow (Lu & Song 2024, sCM, sec. 3): x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_d^2 I),
  i.e. alpha = cos t, sigma = sigma_d sin t, the time t an angle in (0, pi/2).

  sigma / alpha = sigma_d tan t (EDM's noise level), logSNR = -2 log(sigma_d tan t), so
  t_from_logsnr(lam) = arctan(e^{-lam/2} / sigma_d). The PF-ODE is dx_t/dt = sigma_d F with F the
  TrigFlow network output (parameterization 'trigflow'). t_min / t_max None (the defaults) map
  EDM's range sigma / alpha in [0.002, 80] (Karras et al. 2022): t_min = arctan(0.002 / sigma_d),
  t_max = arctan(80 / sigma_d) (0.0040 and 1.5645 at sigma_d = 0.5). Unlike the other schedules'
  "unit data" prior (std sqrt(alpha^2 + sigma^2)), the prior std is sigma_d: the paper's x_T =
  sigma_d z for data of std sigma_d (exact at every t: cos^2 sd^2 + sd^2 sin^2 = sd^2).
  """
  t_min: Optional[float] = None
  t_max: Optional[float] = None
  sigma_data: float = 0.5

  name = "trigflow"

  def __post_init__(self):
    sd = self.sigma_data
    if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not (math.isfinite(sd)
                                                                          and sd > 0):
      raise ValueError(f"trigflow: sigma_data must be a finite number > 0, got {sd!r}")
    if self.t_min is None:
      object.__setattr__(self, "t_min", math.atan(0.002 / sd))
    if self.t_max is None:
      object.__setattr__(self, "t_max", math.atan(80.0 / sd))
    if not self.t_max < 0.5 * math.pi:
      raise ValueError(f"trigflow: t_max={self.t_max} must be < pi/2 (alpha = cos t = 0 there)")

  def alpha(self, t):
    return _xp(t).cos(t)

  def sigma(self, t):
    return self.sigma_data * _xp(t).sin(t)

  def dalpha_dt(self, t):
    return -_xp(t).sin(t)

  def dsigma_dt(self, t):
    return self.sigma_data * _xp(t).cos(t)

  def logsnr(self, t):
    return -2.0 * _xp(t).log(self.sigma_data * _xp(t).tan(t))

  def dlogsnr_dt(self, t):
    xp = _xp(t)
    return -2.0 / (xp.sin(t) * xp.cos(t))  # d/dt -2 log tan t = -2 / (sin t cos t)

  def edm_sigma(self, t):
    return self.sigma_data * _xp(t).tan(t)

  def t_from_logsnr(self, lam):
    xp = _xp(lam)
    return xp.arctan(xp.exp(-0.5 * lam) / self.sigma_data)

  def t_from_edm_sigma(self, s):
    return _xp(s).arctan(s / self.sigma_data)

  def diffusion_sq(self, t):
    return 2.0 * self.sigma_data**2 * _xp(t).tan(t)  # 2 sigma (sigma' - f sigma), f = -tan t

  def prior_std(self) -> float:
    return float(self.sigma_data)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@functools.lru_cache(maxsize=16)
def discrete_betas(num_timesteps: int, beta_start: float, beta_end: float,
                   beta_schedule: str) -> np.ndarray:
  """The N betas of a discrete-time diffusion (float64), by diffusers' schedule names:

  * 'linear': linspace(beta_start, beta_end, N) (DDPM, Ho et al. 2020: 1e-4..0.02, N = 1000);
  * 'scaled_linear': linspace(sqrt(beta_start), sqrt(beta_end), N)^2 (latent diffusion);
  * 'squaredcos_cap_v2': 1 - abar(i+1)/abar(i) capped at 0.999, abar(t) = cos^2(pi/2 (t/N +
    0.008)/1.008) (Nichol & Dhariwal 2021, eq. 17); beta_start / beta_end unused.
  """
  n = check_int("num_timesteps", num_timesteps, 2)
  if beta_schedule == "linear":
    betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
  elif beta_schedule == "scaled_linear":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64)**2
  elif beta_schedule == "squaredcos_cap_v2":
    abar = np.cos(0.5 * np.pi * (np.arange(n + 1) / n + 0.008) / 1.008)**2
    betas = np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
  else:
    raise ValueError(f"beta_schedule={beta_schedule!r}; accepted: {BETA_SCHEDULES}")
  if not (np.all(betas > 0) and np.all(betas < 1)):
    raise ValueError(f"betas must lie in (0, 1); beta_start={beta_start}, beta_end={beta_end} "
                     f"give [{betas.min()}, {betas.max()}]")
  return betas


@dataclasses.dataclass(frozen=True)
class DiscreteVP(_BetaVP):
  """A discrete-time DDPM schedule (N betas) as a VP SDE with piecewise-constant beta(t).

  Step n = 0..N-1 of the discrete process sits at t_n = (n + 1) / N, where the marginal is
  exactly DDPM's: alpha(t_n)^2 = prod_{i <= n} (1 - beta_i). Between the knots
  B(t) = -2 log alpha(t) is linear (B(0) = 0), i.e. beta(t) = -N log(1 - beta_n) on
  ((n) / N, (n + 1) / N]. So a network trained at DDPM's integer steps is fed its step index
  ``discrete_index(t) = N t - 1`` (time_input 'index'), exact at every t_n and interpolated in
  between, and every continuous-time sampler and the PF-ODE likelihood run on it unchanged.
  Defaults: DDPM's 1000 linear betas 1e-4..0.02 (Ho et al. 2020), t in [t_0, t_{N-1}] = [1e-3, 1].
  Compare :class:`VP` (beta in [0.1, 20]), its continuous limit: their logSNRs differ by up to
  0.095 at the same t (at t_0), and at equal logSNR the VP's network input c = 999 t is off
  DDPM's step index by up to 3.4 steps (at t = 1) (docs/convert.md).

  ``zero_terminal_snr``: the betas rescaled by Lin et al. 2024, Alg. 1
  (``rescale_zero_terminal_snr``), so the last step is pure noise: alpha(1) = 0, sigma(1) = 1,
  logSNR(1) = -inf, and N(0, I) is p_1 exactly. On the last segment (t_{N-2}, 1] alpha^2 is linear
  in t (B = -log alpha^2 cannot be: it is infinite at t = 1). Only a network predicting v or x0
  can be evaluated there (eps / score predictions divide by alpha), and only samplers that can
  start from alpha = 0 start at t = 1 (``SamplerInfo.pure_noise_start``; others: t_max < 1).
  """
  t_min: float = 1e-3
  t_max: float = 1.0
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  beta_schedule: str = "linear"
  zero_terminal_snr: bool = False

  name = "vp_discrete"

  def __post_init__(self):
    self._knots()  # validates the betas
    if self.t_max > 1.0:
      raise ValueError(f"vp_discrete: t_max={self.t_max} is past the last step t = 1")

  def _knots(self):
    """(t knots (N+1,), B at the knots (N+1,), beta(t) per segment (N,)), float64 (with
    zero_terminal_snr the last B and segment beta are inf)."""
    return _discrete_vp_knots(self.num_timesteps, self.beta_start, self.beta_end,
                              self.beta_schedule, bool(self.zero_terminal_snr))

  def _int_beta(self, t):
    tk, bk, _ = self._knots()
    xp = _xp(t)
    if not self.zero_terminal_snr:
      return xp.interp(t, xp.asarray(tk), xp.asarray(bk))
    # Last segment: alpha^2 linear from its value at t_{N-2} to 0 at t = 1.
    last = float(tk[-2])
    inner = xp.interp(xp.minimum(t, last), xp.asarray(tk[:-1]), xp.asarray(bk[:-1]))
    frac = xp.maximum((1.0 - t) * self.num_timesteps, 0.0)
    with np.errstate(divide="ignore"):
      tail = float(bk[-2]) - xp.log(xp.where(t > last, frac, 1.0))
    return xp.where(t > last, tail, inner)

  def beta(self, t):
    _, _, seg = self._knots()
    xp = _xp(t)
    n = self.num_timesteps
    k = xp.clip(xp.ceil(t * n) - 1, 0, n - 1).astype(np.int32)
    out = xp.asarray(seg)[k]
    if self.zero_terminal_snr:  # d(-log alpha^2)/dt = 1 / (1 - t) on the last segment
      with np.errstate(divide="ignore"):
        tail = 1.0 / xp.where(k == n - 1, 1.0 - t, 1.0)
      out = xp.where(k == n - 1, tail, out)
    return out

  def discrete_index(self, t):
    """The DDPM step index n = N t - 1 (fractional between steps) that a network trained at
    discrete steps is conditioned on."""
    return self.num_timesteps * t - 1.0

  def t_from_logsnr(self, lam):
    tk, bk, _ = self._knots()
    xp = _xp(lam)
    b = _softplus(xp, -lam)
    if not self.zero_terminal_snr:
      return xp.interp(b, xp.asarray(bk), xp.asarray(tk))
    inner = xp.interp(b, xp.asarray(bk[:-1]), xp.asarray(tk[:-1]))
    tail = 1.0 - xp.exp(float(bk[-2]) - b) / self.num_timesteps
    return xp.where(b > float(bk[-2]), tail, inner)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
  sqrt(abar) shifted so its last value is 0 and scaled so its first is unchanged,
  sqrt(abar)' = (sqrt(abar) - sqrt(abar_{N-1})) sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_{N-1})),
  then betas' = 1 - abar'_n / abar'_{n-1} (beta'_0 = beta_0); the last beta' is 1. float64."""
  betas = np.asarray(betas, np.float64)
  root = np.sqrt(np.cumprod(1.0 - betas))
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  abar = root**2
  return 1.0 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])


@functools.lru_cache(maxsize=16)
def _discrete_vp_knots(num_timesteps, beta_start, beta_end, beta_schedule,
                       zero_terminal_snr=False):
  betas = discrete_betas(num_timesteps, beta_start, beta_end, beta_schedule)
  if zero_terminal_snr:
    betas = rescale_zero_terminal_snr(betas)
  n = len(betas)
  with np.errstate(divide="ignore"):
    seg = -np.log1p(-betas)  # B(t_n) - B(t_{n-1}); inf for a last beta of 1 (zero terminal SNR)
  bk = np.concatenate([[0.0], np.cumsum(seg)])
  return np.arange(n + 1, dtype=np.float64) / n, bk, seg * n


# ------------------------------------------------------------------------------------------------
# Learned (VDM)
# ------------------------------------------------------------------------------------------------

Params = Dict[str, Any]


def _is_host(tree) -> bool:
  return all(isinstance(a, (np.ndarray, np.generic, float, int))
             for a in jax.tree_util.tree_leaves(tree))


# The gamma network's parameters (its shape), and the learned endpoints' (learn_endpoints).
GAMMA_SHAPE_KEYS = ("v1", "b1", "v2", "b2", "v3", "b3")
GAMMA_END_KEYS = ("gamma_min", "gamma_max")


def init_gamma_params(key, hidden: int, learn_endpoints: bool, gamma_min: float,
                      gamma_max: float) -> Params:
  """Initial NoiseNet parameters: gamma~ close to linear in t (so gamma starts near VDM's linear
  logSNR schedule), small random hidden features."""
  k2, k3 = jax.random.split(key)
  p = {"v1": jnp.asarray([1.0], jnp.float32), "b1": jnp.zeros((1,), jnp.float32),
       "v2": 0.1 * jax.random.normal(k2, (hidden,), jnp.float32),
       "b2": jnp.zeros((hidden,), jnp.float32),
       "v3": 0.1 * jax.random.normal(k3, (hidden,), jnp.float32),
       "b3": jnp.zeros((1,), jnp.float32)}
  if learn_endpoints:
    p["gamma_min"] = jnp.asarray(gamma_min, jnp.float32)
    p["gamma_max"] = jnp.asarray(gamma_max, jnp.float32)
  return p


def _gamma_tilde(p: Params, t, xp):
  """(gamma~(t), d gamma~/dt) of the unnormalised monotone network, for t of any shape."""
  w1 = _softplus(xp, p["v1"][0])
  w2, w3 = xp.abs(p["v2"]), xp.abs(p["v3"])
  hidden = w2.shape[0]
  u = 2.0 * t - 1.0
  s = 1.0 / (1.0 + xp.exp(-(u[..., None] * w2 + p["b2"])))  # (..., H)
  g = w1 * t + p["b1"][0] + xp.sum(w3 * (2.0 * s - 1.0), axis=-1) / hidden + p["b3"][0]
  dg = w1 + xp.sum(w3 * 4.0 * s * (1.0 - s) * w2, axis=-1) / hidden
  return g, dg


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedVP(Schedule):
  """VP schedule with VDM's learned gamma(t) (Kingma et al. 2021; the network and its training:
  diffusion/vdm.py's docstring), t in [0, 1]: gamma = gamma_0 + (gamma_1 - gamma_0)
  (g(t) - g(0)) / (g(1) - g(0)), g VDM's monotone three-layer network, alpha^2 = sigmoid(-gamma),
  sigma^2 = sigmoid(gamma).

  Fields are the config's (``sde.name='vdm_learned'``); ``params`` is set by :meth:`bind` (a
  dict of arrays: 'v1', 'b1', 'v2', 'b2', 'v3', 'b3', and with ``learn_endpoints``
  'gamma_min', 'gamma_max'). Compared and hashed by identity (its parameters are arrays).
  """
  t_min: float = 0.0
  t_max: float = 1.0
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  learn_endpoints: bool = False
  hidden: int = 1024
  params: Optional[Params] = None

  name = "vdm_learned"
  learned = True

  __eq__ = object.__eq__
  __hash__ = object.__hash__

  def __post_init__(self):
    if not self.gamma_min < self.gamma_max:
      raise ValueError(f"vdm_learned: need gamma_min < gamma_max, got gamma_min="
                       f"{self.gamma_min}, gamma_max={self.gamma_max}")
    if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
      raise ValueError(f"vdm_learned: hidden must be an int >= 1, got {self.hidden!r}")
    if not isinstance(self.learn_endpoints, bool):
      raise ValueError(f"vdm_learned: learn_endpoints must be a bool, got "
                       f"{self.learn_endpoints!r}")
    if self.t_max > 1.0:
      raise ValueError(f"vdm_learned: t_max={self.t_max} is past t = 1, where gamma = gamma_max")

  def prior_std(self) -> float:
    return 1.0  # alpha^2 + sigma^2 = 1 at every t

  def init_params(self, key) -> Params:
    return init_gamma_params(key, self.hidden, self.learn_endpoints, self.gamma_min,
                             self.gamma_max)

  def bind(self, params: Params) -> "LearnedVP":
    """This schedule with ``params`` (host numpy arrays: a frozen schedule for sampling and the
    likelihood, computed in float64; traced arrays: differentiable, inside the train step)."""
    want = set(GAMMA_SHAPE_KEYS + (GAMMA_END_KEYS if self.learn_endpoints else ()))
    if not isinstance(params, dict) or set(params) != want:
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f"vdm_learned parameters must have the keys {sorted(want)}, got {got}")
    if _is_host(params):
      params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    return dataclasses.replace(self, params=params)

  def _p(self) -> Params:
    if self.params is None:
      raise ValueError("the vdm_learned schedule is not bound to its parameters: "
                       "schedule.bind(params['schedule']) first")
    return self.params

  def _xp(self, t):
    traced = not (_is_host(self._p()) and isinstance(t, (np.ndarray, np.generic, float, int)))
    return jnp if traced else np

  def endpoints(self, xp=np):
    """(gamma_0, gamma_1): the fixed ones or the learned parameters."""
    p = self._p()
    if self.learn_endpoints:
      return p["gamma_min"], p["gamma_max"]
    return xp.asarray(self.gamma_min), xp.asarray(self.gamma_max)

  def gamma_and_derivative(self, t):
    """(gamma(t), gamma'(t)), both of t's shape."""
    xp = self._xp(t)
    p = self._p()
    t = xp.asarray(t)
    g, dg = _gamma_tilde(p, t, xp)
    g0, _ = _gamma_tilde(p, xp.zeros(()), xp)
    g1, _ = _gamma_tilde(p, xp.ones(()), xp)
    lo, hi = self.endpoints(xp)
    scale = (hi - lo) / (g1 - g0)
    return lo + scale * (g - g0), scale * dg

  def gamma(self, t):
    return self.gamma_and_derivative(t)[0]

  def logsnr(self, t):
    return -self.gamma(t)

  def dlogsnr_dt(self, t):
    return -self.gamma_and_derivative(t)[1]

  def _alpha_sigma_dgamma(self, t):
    """(alpha, sigma, gamma') at t from one evaluation of the gamma network:
    alpha = sqrt(sigmoid(-gamma)), sigma = sqrt(sigmoid(gamma))."""
    xp = self._xp(t)
    g, dg = self.gamma_and_derivative(t)
    return xp.sqrt(1.0 / (1.0 + xp.exp(g))), xp.sqrt(1.0 / (1.0 + xp.exp(-g))), dg

  def alpha(self, t):
    return self._alpha_sigma_dgamma(t)[0]

  def sigma(self, t):
    return self._alpha_sigma_dgamma(t)[1]

  def dalpha_dt(self, t):
    a, s, dg = self._alpha_sigma_dgamma(t)
    return -0.5 * a * s**2 * dg  # d sqrt(sigmoid(-g)) / dt

  def dsigma_dt(self, t):
    a, s, dg = self._alpha_sigma_dgamma(t)
    return 0.5 * s * a**2 * dg

  def drift(self, t):
    _, s, dg = self._alpha_sigma_dgamma(t)
    return -0.5 * s**2 * dg  # d log alpha / dt

  def diffusion_sq(self, t):
    _, s, dg = self._alpha_sigma_dgamma(t)
    return s**2 * dg  # d sigma^2/dt - 2 f sigma^2 = beta(t) for VP

  def t_from_logsnr(self, lam):
    """Bisection of the increasing gamma on [0, 1]: gamma(t) = -lam (clipped to the ends)."""
    xp = self._xp(lam)
    target = -xp.asarray(lam)
    lo, hi = xp.zeros_like(target), xp.ones_like(target)
    iters = 60 if xp is np else 32
    for _ in range(iters):
      mid = 0.5 * (lo + hi)
      below = self.gamma(mid) < target
      lo, hi = xp.where(below, mid, lo), xp.where(below, hi, mid)
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# logSNR shift (simple diffusion; the shift of flow-matching models)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shifted(Schedule):
  """``base`` with its logSNR shifted by -2 log(shift) at every t (Hoogeboom et al. 2023, simple
  diffusion, sec. 3.1: logSNR_shift(t) = logSNR(t) + 2 log(64 / d), i.e. shift = d / 64 for
  d x d images; Esser et al. 2024, SD3, eq. 23, the `shift` of flow-matching models):

    lambda'(t) = lambda(t) - 2 log(shift),   alpha'(t) = alpha(tau(t)),  sigma'(t) = sigma(tau(t)),
    tau(t) = base.t_from_logsnr(lambda'(t)),

  so the family is kept (a VP stays variance preserving; on ``rectified_flow`` tau(t) =
  shift t / (1 + (shift - 1) t), SD3's formula) and shift > 1 means more noise at every t. It is
  the same as scaling the data: diffusing b x0 on ``base`` is diffusing x0 on ``Shifted(base,
  1 / b)`` with the state scaled by sigma / sigma' (exact; tests/test_schedules.py). The network
  is fed this schedule's time input at the shifted noise level (its t, logSNR or c_noise): for
  training with a shift. ``get_schedule(name, shift=..., **fields)`` (``config.sde.fields.shift``)
  builds it; discrete and learned schedules are refused (their times are their own)."""
  base: Schedule = None
  shift: float = 1.0

  def __post_init__(self):
    if not isinstance(self.base, Schedule) or self.base.learned or hasattr(self.base,
                                                                             "discrete_index"):
      raise ValueError(f"shift applies to a continuous, fixed schedule; got {self.base!r}")
    if (isinstance(self.shift, bool) or not isinstance(self.shift, (int, float))
        or not math.isfinite(self.shift) or self.shift <= 0):
      raise ValueError(f"shift={self.shift!r} must be a finite number > 0 (1: no shift)")

  @property
  def name(self) -> str:
    return f"{self.base.name} (shift {self.shift:g})"

  def _tau(self, t):
    return self.base.t_from_logsnr(self.logsnr(t))

  def alpha(self, t):
    return self.base.alpha(self._tau(t))

  def sigma(self, t):
    return self.base.sigma(self._tau(t))

  def _dtau_dt(self, t):
    return self.base.dlogsnr_dt(t) / self.base.dlogsnr_dt(self._tau(t))

  def dalpha_dt(self, t):
    return self.base.dalpha_dt(self._tau(t)) * self._dtau_dt(t)

  def dsigma_dt(self, t):
    return self.base.dsigma_dt(self._tau(t)) * self._dtau_dt(t)

  def logsnr(self, t):
    return self.base.logsnr(t) - 2.0 * math.log(self.shift)

  def dlogsnr_dt(self, t):
    return self.base.dlogsnr_dt(t)

  def t_from_logsnr(self, lam):
    return self.base.t_from_logsnr(lam + 2.0 * math.log(self.shift))


SCHEDULES: Dict[str, Type[Schedule]] = {
    cls.name: cls for cls in (VP, SubVP, VPCosine, VE, EDM, RectifiedFlow, TrigFlow, DiscreteVP,
                              LearnedVP)
}


def register_schedule(cls: Type[Schedule]) -> Type[Schedule]:
  """Class decorator: makes ``get_schedule(cls.name, **fields)`` (and config.sde.name) build
  ``cls``, a frozen dataclass subclass of Schedule with its own ``name`` (a user's schedule in a
  file of its own, imported through config.imports)."""
  if not (isinstance(cls, type) and issubclass(cls, Schedule)):
    raise ValueError(f"register_schedule takes a Schedule subclass, got {cls!r}")
  if cls.name in SCHEDULES:
    raise ValueError(f"schedule {cls.name!r} is registered twice")
  SCHEDULES[cls.name] = cls
  return cls


def get_schedule(name: str, **kwargs) -> Schedule:
  """Builds a schedule by name; unknown names or fields are errors listing what is accepted.
  ``shift`` (any continuous schedule): its logSNR shifted by -2 log(shift) (``Shifted``).
  'vdm_learned' (LearnedVP, this module; its loss is diffusion.vdm) comes unbound: its parameters
  are the run's."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; available: {sorted(SCHEDULES)}")
  if "shift" in kwargs:  # the logSNR shift of any continuous schedule (``Shifted``)
    kwargs = dict(kwargs)
    shift = kwargs.pop("shift")
    base = get_schedule(name, **kwargs)
    return Shifted(t_min=base.t_min, t_max=base.t_max, base=base, shift=shift)
  cls = SCHEDULES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  bad = sorted(set(kwargs) - fields)
  if bad:
    raise ValueError(f"schedule {name!r} has no field(s) {bad}; accepted: {sorted(fields)}")
  sched = cls(**kwargs)
  if not 0.0 <= sched.t_min < sched.t_max:
    raise ValueError(f"need 0 <= t_min < t_max, got t_min={sched.t_min}, t_max={sched.t_max}")
  return sched


# ------------------------------------------------------------------------------------------------
# Time grids
# ------------------------------------------------------------------------------------------------

GRIDS = ("uniform", "karras", "logsnr", "quadratic")


def check_int(name: str, value, minimum: int = 1) -> int:
  """``value`` as an int >= ``minimum``; bools, floats and other types raise (TypeError /
  ValueError naming ``name``)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} "
                    f"({type(value).__name__})")
  if value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def check_real(name: str, value) -> float:
  """``value`` as a float; bools and non-numbers raise TypeError naming ``name``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                   np.floating)):
    raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
  return float(value)


def check_time_range(schedule: Schedule, t_min, t_max) -> tuple:
  """(t_min, t_max) as floats (None: the schedule's), checked: finite, and
  schedule.t_min <= t_min < t_max <= schedule.t_max. Raises ValueError naming the bad value."""
  t_min = schedule.t_min if t_min is None else check_real("t_min", t_min)
  t_max = schedule.t_max if t_max is None else check_real("t_max", t_max)
  lo, hi = float(schedule.t_min), float(schedule.t_max)
  for name, v in (("t_min", t_min), ("t_max", t_max)):
    if not (math.isfinite(v) and lo <= v <= hi):
      raise ValueError(f"{name} must be a finite time in the {schedule.name} schedule's range "
                       f"[t_min, t_max] = [{lo}, {hi}], got {name}={v!r}")
  if not t_max > t_min:
    raise ValueError(f"need t_min < t_max (integration from t_max down to t_min), got "
                     f"t_min={t_min!r}, t_max={t_max!r}")
  return float(t_min), float(t_max)


def time_grid(schedule: Schedule,
              num_steps: int,
              kind: str = "uniform",
              *,
              t_min: float | None = None,
              t_max: float | None = None,
              rho: float = 7.0) -> np.ndarray:
  """Decreasing times t_0 = t_max > t_1 > ... > t_N = t_min, as float64 numpy (N+1,).

  kinds:
    uniform:   t_i uniform in t.
    karras:    EDM sigma (sigma/alpha) spaced as sigma_i = (s_max^{1/rho} + i/N (s_min^{1/rho} -
               s_max^{1/rho}))^rho (Karras et al. 2022, eq. 5), mapped back to t.
    logsnr:    uniform in lambda = logSNR (DPM-Solver's "logSNR" steps, Lu et al. 2022).
    quadratic: t_i = (sqrt(t_max) + i/N (sqrt(t_min) - sqrt(t_max)))^2 (DDIM's quadratic).
  ``num_steps`` an int >= 1, ``rho`` > 0, schedule.t_min <= t_min < t_max <= schedule.t_max (None:
  the schedule's ends); anything else raises (``check_time_range``).
  """
  num_steps = check_int("num_steps", num_steps)
  if kind not in GRIDS:
    raise ValueError(f"unknown time grid {kind!r}; available: {GRIDS}")
  rho = check_real("rho", rho)
  if kind == "karras" and not (math.isfinite(rho) and rho > 0):
    raise ValueError(f"rho (Karras grid exponent) must be a finite number > 0, got {rho!r}")
  t_min, t_max = check_time_range(schedule, t_min, t_max)
  u = np.linspace(0.0, 1.0, num_steps + 1, dtype=np.float64)
  if kind == "uniform":
    t = t_max + u * (t_min - t_max)
  elif kind == "quadratic":
    t = (math.sqrt(t_max) + u * (math.sqrt(t_min) - math.sqrt(t_max)))**2
  elif kind == "logsnr":
    lo, hi = schedule.logsnr(np.float64(t_max)), schedule.logsnr(np.float64(t_min))
    t = schedule.t_from_logsnr(lo + u * (hi - lo))
  elif kind == "karras":
    s_max = float(schedule.edm_sigma(np.float64(t_max)))
    s_min = float(schedule.edm_sigma(np.float64(t_min)))
    s = (s_max**(1 / rho) + u * (s_min**(1 / rho) - s_max**(1 / rho)))**rho
    t = schedule.t_from_edm_sigma(s)
  else:
    raise ValueError(f"unknown time grid {kind!r}; available: {GRIDS}")
  t = np.asarray(t, dtype=np.float64)
  t[0], t[-1] = t_max, t_min  # exact end points despite round-off of the inverse maps
  return t
