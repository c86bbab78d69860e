"""Denoising score matching in any parameterization, with the literature's weightings.

Every loss here is written in x0 space through the denoiser (docs/architecture.md):

  L = E_{t, x0, eps} [ w(t) * || denoise(alpha x0 + sigma eps, t) - x0 ||^2 ]

and each weighting is the x0-space weight that reproduces the loss as the papers write it:

  'x0'          w = 1
  'eps'         w = SNR = alpha^2/sigma^2              ||eps_hat - eps||^2  (Ho et al. 2020, "simple")
  'v'           w = (alpha^2 + sigma^2)^2 / sigma^2     ||v_hat - v||^2      (Salimans & Ho 2022)
  'likelihood'  w = g^2 alpha^2 / sigma^4               g^2 ||score_hat - score||^2, i.e. g^2/sigma^2 in
                                                        eps units: the ELBO weighting (Song et al. 2021b)
  'edm'         w = (s^2 + sd^2) / (s sd)^2, s = sigma/alpha   (Karras et al. 2022, eq. 8, lambda(sigma))
  'min_snr'     w = min(SNR, gamma)                    (Hang et al. 2023, min-SNR-gamma in x0 units)
  'edm2'        w = EDM's lambda(sigma), and a learned uncertainty u(sigma) of the network:
                per example w / e^u * err + u          (Karras et al. 2024, EDM2, eq. 21)
  'flow'        w = (alpha' - sigma' alpha/sigma)^2     ||u_hat - u||^2, u = alpha' x0 + sigma' eps
                                                        (conditional flow matching (CFM), Lipman
                                                        et al. 2023; rectified flow, Liu et al.
                                                        2023, eq. 1); rectified flow: w = 1/t^2

'flow' follows from u_hat - u = alpha' (x0_hat - x0) + sigma' (eps_hat - eps) with eps_hat - eps
= -(alpha/sigma) (x0_hat - x0) at the same x_t, so u_hat - u = (alpha' - sigma' alpha/sigma)
(x0_hat - x0) exactly, per example and per coordinate.

The exact denoiser E[x0 | x_t] minimises every one of them (it is the conditional mean). With
'edm2' the denoiser returns (x0_hat, u) (``make_uncertainty_denoiser``); for a fixed sigma the
minimiser of E[w err] / e^u + u over u is u* = log E[w err] (d/du: -L e^{-u} + 1 = 0), so the
weight w / e^{u*} normalises the expected loss at every noise level to 1. The released code sums
w / e^u sq + u over the N elements: N times this loss with reduce='mean', the same minimisers
(reduce='sum' shifts u* by log N).
Time sampling: 'uniform' on [t_min, t_max], 'stratified' (low-discrepancy, Kingma et al. 2021
App. I.1), 'antithetic' (u and 1 - u), 'lognormal' (EDM: ln(sigma/alpha) ~ N(P_mean, P_std^2)),
'logsnr' (lambda uniform on [lambda(t_max), lambda(t_min)], stratified), 'logit_normal'
(t = sigmoid(logit_mean + logit_std n), n ~ N(0, 1): Esser et al. 2024, SD3, sec. 3.1;
for schedules on t in [0, 1] such as rectified flow). With the 'eps' weighting,
'logsnr' sampling is importance sampling of the likelihood weighting: g^2/sigma^2 = -dlambda/dt,
so the loss is the continuous-time ELBO of VDM (Kingma et al. 2021, eq. 17) up to a constant.

``classifier_loss`` trains a noise-conditional classifier p(y | x_t, t) (the classifier of
classifier guidance; Song et al. 2021, App. I; Dhariwal & Nichol 2021): the cross-entropy of its
logits on x_t = alpha x0 + sigma eps at times drawn by ``sample_times``. Its minimiser is the
true posterior p(y | x_t), and its minimum the conditional entropy E_t H(Y | X_t).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from diffusion.schedules import Schedule

Array = Any

WEIGHTINGS = ("x0", "eps", "v", "likelihood", "edm", "min_snr", "flow", "edm2")
# Weightings whose denoiser also returns the learned log-variance u (make_uncertainty_denoiser).
UNCERTAINTY_WEIGHTINGS = ("edm2",)
TIME_SAMPLINGS = ("uniform", "stratified", "antithetic", "lognormal", "logsnr", "logit_normal")


def loss_weight(t: Array, schedule: Schedule, weighting: str, *, sigma_data: float = 0.5,
                min_snr_gamma: float = 5.0) -> Array:
  """The x0-space weight w(t) of ``weighting`` (see the module docstring), t (B,) -> (B,)."""
  a, s = schedule.alpha(t), schedule.sigma(t)
  snr = (a * a) / (s * s)
  if weighting == "x0":
    return jnp.ones_like(t)
  if weighting == "eps":
    return snr
  if weighting == "v":
    return (a * a + s * s)**2 / (s * s)
  if weighting == "likelihood":
    return schedule.diffusion_sq(t) * a * a / s**4
  if weighting in ("edm", "edm2"):
    es = s / a
    return (es * es + sigma_data**2) / (es * sigma_data)**2
  if weighting == "min_snr":
    return jnp.minimum(snr, min_snr_gamma)
  if weighting == "flow":
    return jnp.square(schedule.dalpha_dt(t) - schedule.dsigma_dt(t) * a / s)
  raise ValueError(f"unknown weighting {weighting!r}; available: {WEIGHTINGS}")


def unit_uniforms(key, batch: int, method: str) -> Array:
  """u (batch,) in [0, 1): 'uniform' i.i.d.; 'stratified' one uniform shifted by i / batch
  (low-discrepancy, Kingma et al. 2021 App. I.1); 'antithetic' pairs u and 1 - u."""
  if method == "uniform":
    return jax.random.uniform(key, (batch,))
  if method == "stratified":
    return jnp.mod(jax.random.uniform(key, ()) + jnp.arange(batch) / batch, 1.0)
  if method == "antithetic":
    half = jax.random.uniform(key, ((batch + 1) // 2,))
    return jnp.concatenate([half, 1.0 - half])[:batch]
  raise ValueError(f"unknown unit sampling {method!r}; available: uniform, stratified, "
                   f"antithetic")


@dataclasses.dataclass(frozen=True)
class TimeSampling:
  """How a loss draws its training times (module docstring): ``method`` (TIME_SAMPLINGS) on
  [t_min, t_max] (None: the schedule's), with p_mean / p_std for 'lognormal' (EDM's P_mean,
  P_std) and logit_mean / logit_std for 'logit_normal' (SD3's m, s; its default m = 0, s = 1),
  which needs a time range inside [0, 1]. One value passed through ``dsm_loss``,
  ``classifier_loss`` and ``noisy_batch``; ``TimeSampling.of(method, **options)`` splits its
  fields out of a loss's options (config.training.loss_opts)."""
  method: str = "uniform"
  t_min: Optional[float] = None
  t_max: Optional[float] = None
  p_mean: float = -1.2
  p_std: float = 1.2
  logit_mean: float = 0.0
  logit_std: float = 1.0

  def __post_init__(self):
    if self.method not in TIME_SAMPLINGS:
      raise ValueError(f"unknown time sampling {self.method!r}; available: {TIME_SAMPLINGS}")

  @classmethod
  def of(cls, times: Union[str, "TimeSampling"], **options) -> "TimeSampling":
    """``times`` itself, or the TimeSampling of method ``times`` with ``options``' fields."""
    if isinstance(times, TimeSampling):
      if options:
        raise ValueError(f"options {sorted(options)} given next to a TimeSampling {times}")
      return times
    return cls(times, **options)

  def draw(self, key, batch: int, schedule: Schedule) -> Array:
    """Training times t (batch,) in [t_min, t_max]."""
    lo = schedule.t_min if self.t_min is None else self.t_min
    hi = schedule.t_max if self.t_max is None else self.t_max
    method = self.method
    if method in ("uniform", "stratified", "antithetic"):
      u = unit_uniforms(key, batch, method)
    elif method == "logsnr":
      lam_hi, lam_lo = schedule.logsnr(float(lo)), schedule.logsnr(float(hi))
      u = unit_uniforms(key, batch, "stratified")
      return jnp.clip(schedule.t_from_logsnr(lam_lo + (lam_hi - lam_lo) * u), lo, hi)
    elif method == "lognormal":
      log_sigma = self.p_mean + self.p_std * jax.random.normal(key, (batch,))
      t = schedule.t_from_logsnr(-2.0 * log_sigma)
      return jnp.clip(t, lo, hi)
    else:  # 'logit_normal'
      if not 0.0 <= float(lo) < float(hi) <= 1.0:
        raise ValueError(f"time sampling 'logit_normal' draws t = sigmoid(...) in (0, 1) and "
                         f"needs 0 <= t_min < t_max <= 1, got t_min={lo}, t_max={hi} (schedule "
                         f"{schedule.name!r}); use 'lognormal' or 'logsnr' for other time ranges")
      t = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, (batch,)))
      return jnp.clip(t, lo, hi)
    return lo + (hi - lo) * u


# The option names a TimeSampling takes besides its method (loss options, loss_opts).
TIME_SAMPLING_OPTIONS = tuple(f.name for f in dataclasses.fields(TimeSampling))[1:]


def sample_times(key, batch: int, schedule: Schedule,
                 times: Union[str, TimeSampling] = "uniform", **options) -> Array:
  """Training times t (batch,) drawn by ``times``: a TimeSampling, or a method name with
  ``options`` (TimeSampling's fields: t_min, t_max, p_mean, ...)."""
  return TimeSampling.of(times, **options).draw(key, batch, schedule)


def noisy_batch(key, x0: Array, schedule: Schedule, times: Union[str, TimeSampling], *,
                noise: Optional[Array] = None) -> Tuple[Array, Array]:
  """(t (B,), x_t = alpha_t x0 + sigma_t eps (B, ...)): times drawn by ``times`` and one
  Gaussian draw per example, from the two halves of ``key``; ``noise`` (B, ...), if given, is
  eps instead (a coupling of noise and data, as reflow's pairs)."""
  kt, ke = jax.random.split(key)
  t = TimeSampling.of(times).draw(kt, x0.shape[0], schedule).astype(x0.dtype)
  if noise is None:
    eps = jax.random.normal(ke, x0.shape, x0.dtype)
  elif noise.shape != x0.shape:
    raise ValueError(f"noise must have the shape of x0 {x0.shape}, got {noise.shape}")
  else:
    eps = noise.astype(x0.dtype)
  return t, schedule.marginal(x0, eps, t)


def dsm_loss(denoise: Callable[..., Array],
             x0: Array,
             key,
             schedule: Schedule,
             *,
             weighting: str = "eps",
             time_sampling: Union[str, TimeSampling] = "uniform",
             cond: Optional[Array] = None,
             sigma_data: float = 0.5,
             min_snr_gamma: float = 5.0,
             reduce: str = "mean",
             noise: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """Monte Carlo estimate of the weighted denoising loss on a batch x0 (B, ...).

  ``time_sampling``: how t is drawn (a ``TimeSampling``, or a method name with its default
  options). Returns (scalar loss, aux) with aux['per_example'] (B,) and aux['t'] (B,). ``reduce`` picks the
  mean or the sum of the squared error over the non-batch axes. ``noise`` (B, ...): the eps paired
  with each x0 instead of a fresh draw (reflow: (noise, sample) pairs of a trained flow, Liu et
  al. 2023, eq. 6, train the next flow on x_t = alpha x0 + sigma noise).
  """
  if reduce not in ("mean", "sum"):
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; available: {WEIGHTINGS}")
  t, xt = noisy_batch(key, x0, schedule, time_sampling, noise=noise)
  x0_hat = denoise(xt, t, cond)
  logvar = None
  if weighting in UNCERTAINTY_WEIGHTINGS:
    if not (isinstance(x0_hat, tuple) and len(x0_hat) == 2):
      raise ValueError(f"weighting {weighting!r} needs a denoiser returning (x0_hat, logvar) "
                       f"(losses.make_uncertainty_denoiser), got {type(x0_hat).__name__}")
    x0_hat, logvar = x0_hat
  sq = jnp.square(x0_hat.astype(jnp.float32) - x0.astype(jnp.float32))
  axes = tuple(range(1, x0.ndim))
  err = jnp.mean(sq, axis=axes) if reduce == "mean" else jnp.sum(sq, axis=axes)
  w = loss_weight(t.astype(jnp.float32), schedule, weighting, sigma_data=sigma_data,
                  min_snr_gamma=min_snr_gamma)
  if logvar is None:
    per_example = w * err
    return jnp.mean(per_example), {"per_example": per_example, "t": t}
  per_example = uncertainty_weighted(w * err, logvar)
  return jnp.mean(per_example), {"per_example": per_example, "t": t, "logvar": logvar}


def uncertainty_weighted(weighted_err: Array, logvar: Array) -> Array:
  """EDM2's uncertainty-weighted loss (Karras et al. 2024, eq. 21): L / e^u + u, (B,) each.
  Minimised over u at u = log L."""
  logvar = logvar.astype(jnp.float32)
  return weighted_err * jnp.exp(-logvar) + logvar


def make_uncertainty_denoiser(apply_fn: Callable[..., Tuple[Array, Array]], schedule: Schedule,
                              param: Any) -> Callable[..., Tuple[Array, Array]]:
  """``make_denoiser`` for a network returning (F, u): ``apply_fn(x_in, c, cond) -> (F (B, ...),
  u (B,))`` becomes ``denoise(x_t, t, cond=None) -> (x0_hat, u)`` (the 'edm2' weighting)."""

  def denoise(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    x_in, c = param.net_inputs(x, t, schedule)
    out, logvar = apply_fn(x_in, c, cond)
    return param.to_x0(out.astype(x.dtype), x, t, schedule), logvar

  return denoise



def classifier_loss(logits_fn: Callable[[Array, Array], Array],
                    x0: Array,
                    labels: Array,
                    key,
                    schedule: Schedule,
                    *,
                    time_sampling: Union[str, TimeSampling] = "uniform"
                    ) -> Tuple[Array, Dict[str, Array]]:
  """Cross-entropy of a noise-conditional classifier on noisy data (module docstring).

  L = E_{t, (x0, y), eps} [ -log softmax(logits_fn(alpha_t x0 + sigma_t eps, t))_y ],
  t drawn by ``time_sampling`` (a ``TimeSampling``, or a method name).

  Args:
    logits_fn: (x_t (B, ...), t (B,)) -> logits (B, C); the caller maps x_t, t to the network's
      inputs (``param.net_inputs``, as ``make_denoiser`` does).
    x0: clean data (B, ...); labels: int (B,) in [0, C).
  Returns:
    (mean loss, aux) with aux['per_example'] (B,) the cross-entropy in nats, aux['t'] (B,),
    aux['correct'] (B,) 1.0 where argmax logits == label, aux['accuracy'] () their mean.
  """
  if labels.shape != (x0.shape[0],):
    raise ValueError(f"labels must have shape ({x0.shape[0]},) to match x0 {x0.shape}, got "
                     f"{labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  time_sampling = TimeSampling.of(time_sampling)
  b = x0.shape[0]
  t, xt = noisy_batch(key, x0, schedule, time_sampling)
  logits = logits_fn(xt, t)
  if logits.ndim != 2 or logits.shape[0] != b:
    raise ValueError(f"logits_fn must return logits of shape ({b}, num_classes), got "
                     f"{logits.shape}")
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  labels = labels.astype(jnp.int32)
  per_example = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(log_p, axis=-1) == labels).astype(jnp.float32)
  return jnp.mean(per_example), {"per_example": per_example, "t": t, "correct": correct,
                                 "accuracy": jnp.mean(correct)}
