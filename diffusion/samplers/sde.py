"""Reverse-SDE samplers: Euler-Maruyama, reverse diffusion, DDPM ancestral, predictor-corrector.

All work for any (alpha, sigma) schedule through f(t) = dlog alpha/dt and g(t)^2 (see schedules.py),
with the score from the denoiser, score = (alpha x0_hat - x) / sigma^2 (Tweedie), and end with a
final denoise x <- denoise(x, t_min) unless ``final_denoise=False``.
"""
from __future__ import annotations

import functools

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.samplers import engine
from diffusion.samplers.engine import Program, alpha_sigma, f64
from diffusion.samplers.registry import register_sampler
from diffusion.schedules import Schedule

Array = Any

_fd = lambda hp: int(bool(hp["final_denoise"]))


def em_coefs(schedule: Schedule, t: float, s: float) -> Tuple[float, float, float]:
  """Euler-Maruyama step t -> s < t of the reverse SDE (Song et al. 2021, eq. 6):

    x_s = x - (f x - g^2 score) (t - s) + g sqrt(t - s) z,  score = (alpha m - x) / sigma^2,

  all evaluated at t. Returns (A, D, C) with x_s = A x + D m + C z.
  """
  t = f64(t)
  dt = float(t - s)
  a, sg = alpha_sigma(schedule, t)
  f, g2 = float(schedule.drift(t)), float(schedule.diffusion_sq(t))
  return (1.0 - f * dt - g2 * dt / sg**2, g2 * dt * a / sg**2, float(np.sqrt(g2 * dt)))


def reverse_diffusion_coefs(schedule: Schedule, t: float, s: float) -> Tuple[float, float, float]:
  """Reverse-diffusion predictor (Song et al. 2021, eq. 46-47, App. E) for the exact forward
  transition x_t = a_ts x_s + s_ts z, a_ts = alpha_t/alpha_s, s_ts^2 = sigma_t^2 - a_ts^2 sigma_s^2:

    x_s = x - (a_ts - 1) x + s_ts^2 score(x, t) + s_ts z.

  (For VP this is the DDPM discretization with 1 - beta_i = a_ts^2; for VE exactly SMLD's.)
  Returns (A, D, C).
  """
  (at, st), (as_, ss) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
  a_ts = at / as_
  v = max(float(st**2 - a_ts**2 * ss**2), 0.0)
  return (float(2.0 - a_ts - v / st**2), float(v * at / st**2), float(np.sqrt(v)))


DDPM_VARIANCES = ("posterior", "beta")


def ddpm_coefs(schedule: Schedule, t: float, s: float,
               variance: str = "posterior") -> Tuple[float, float, float]:
  """Ancestral step with the mean of the exact posterior q(x_s | x_t, x0 = m) (Ho et al. 2020,
  eq. 6-7; Kingma et al. 2021, eq. 32-33 for any alpha, sigma):

    mean = a_ts sigma_s^2/sigma_t^2 x_t + alpha_s s_ts^2/sigma_t^2 m,
    var  = s_ts^2 sigma_s^2 / sigma_t^2      ('posterior': DDPM's sigma_t^2 = beta~_t), or
    var  = s_ts^2 = sigma_t^2 - a_ts^2 sigma_s^2   ('beta': sigma_t^2 = beta_t, the "fixedlarge"
           of DDPM's CIFAR-10 samples; 1 - alpha_t^2/alpha_s^2 for VP).
  Returns (A, D, C).
  """
  if variance not in DDPM_VARIANCES:
    raise ValueError(f"variance={variance!r}; accepted: {DDPM_VARIANCES}")
  (at, st), (as_, ss) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
  a_ts = at / as_
  v = max(float(st**2 - a_ts**2 * ss**2), 0.0)
  var = v * ss**2 / st**2 if variance == "posterior" else v
  return (float(a_ts * ss**2 / st**2), float(as_ * v / st**2), float(np.sqrt(var)))


def _check_ddpm(hp):
  if hp["variance"] not in DDPM_VARIANCES:
    raise ValueError(f"sampler 'ddpm': variance={hp['variance']!r}; accepted: {DDPM_VARIANCES}")


def _linear_sde_program(coefs_fn, schedule, time_grid, final_denoise: bool) -> Program:
  """One row per step t_s -> t_t, x <- A x + D m + C z, z's Brownian interval the step's."""

  def step(prog, t_s, t_t):
    a, d, c = coefs_fn(schedule, t_s, t_t)
    prog.eval(t_s, y={"x": 1.0}, x={"x": a, "m": d, "z": c}, noise_interval=(t_s, t_t))

  return engine.stepwise_program(step, schedule, time_grid, final_denoise)


_PAPER_SDE = "Song et al. 2021, Score-based generative modeling through SDEs"


@register_sampler("euler_maruyama", kind="stochastic", order=1.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{_PAPER_SDE}, eq. 6 (reverse SDE), Euler-Maruyama")
def euler_maruyama(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                   final_denoise: bool = True, noise: str = "independent"):
  """Euler-Maruyama on the reverse SDE dx = [f x - g^2 score] dt + g dw_bar (score SDE eq. 6).

  x_T (B, ...) at time_grid[0]; N = len(time_grid) - 1 steps; NFE = N (+1 final denoise).
  ``noise='brownian_tree'``: z is the increment of one Brownian path per sample over the step
  (``diffusion/samplers/brownian.py``), the same path at every step count.
  """
  prog = _linear_sde_program(em_coefs, schedule, time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


@register_sampler("reverse_diffusion", kind="stochastic", order=1.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{_PAPER_SDE}, eq. 46-47 (reverse diffusion predictor)")
def reverse_diffusion(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                      final_denoise: bool = True, noise: str = "independent"):
  """The reverse-diffusion predictor alone (see ``reverse_diffusion_coefs``). NFE = N (+1).
  ``noise``: as ``euler_maruyama``'s."""
  prog = _linear_sde_program(reverse_diffusion_coefs, schedule, time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


@register_sampler("ddpm", kind="stochastic", order=1.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper="Ho et al. 2020, DDPM, Alg. 2 / eq. 6-7 (ancestral sampling)",
                  variants=({}, {"variance": "beta"}), check=_check_ddpm)
def ddpm(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
         final_denoise: bool = True, variance: str = "posterior", noise: str = "independent"):
  """DDPM ancestral sampling x_s ~ q(x_s | x_t, x0_hat) on any grid (see ``ddpm_coefs``);
  ``variance='beta'`` draws with DDPM's larger sigma_t^2 = beta_t instead (its CIFAR-10 FID).

  With 'posterior': equal in law to DDIM with eta = 1 and to Euler ancestral with eta = 1.
  NFE = N (+1). On ``vp_discrete`` with a uniform grid of N - 1 steps the steps are DDPM's own.
  ``noise``: as ``euler_maruyama``'s.
  """
  prog = _linear_sde_program(functools.partial(ddpm_coefs, variance=variance), schedule,
                             time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


# ------------------------------------------------------------------------------------------------
# Predictor-corrector
# ------------------------------------------------------------------------------------------------

PREDICTORS = {"reverse_diffusion": reverse_diffusion_coefs, "euler_maruyama": em_coefs,
              "none": None}
STEP_SIZES = ("batch", "sample")


def _check_pc(hp):
  if hp["predictor"] not in PREDICTORS:
    raise ValueError(f"unknown predictor {hp['predictor']!r}; accepted: {sorted(PREDICTORS)}")
  if hp["step_size"] not in STEP_SIZES:
    raise ValueError(f"unknown step_size {hp['step_size']!r}; accepted: {STEP_SIZES}")
  if not hp["n_corrector"] >= 0:
    raise ValueError(f"n_corrector must be an int >= 0, got {hp['n_corrector']!r}")
  if hp["predictor"] == "none" and hp["n_corrector"] == 0:
    raise ValueError("pc needs a predictor or a corrector: got predictor='none' and "
                     "n_corrector=0; use n_corrector >= 1 or a predictor from "
                     f"{sorted(k for k in PREDICTORS if k != 'none')}")
  if not hp["snr"] >= 0:
    raise ValueError(f"snr must be >= 0, got {hp['snr']!r}")


@register_sampler("pc", kind="stochastic", order=1.0,
                  nfe=lambda n, hp: n * (int(hp["predictor"] != "none") + hp["n_corrector"])
                  + _fd(hp),
                  nfe_per_step="1 + n_corrector",
                  paper=f"{_PAPER_SDE}, Alg. 2-5 (predictor-corrector, Langevin corrector)",
                  variants=({}, {"predictor": "euler_maruyama", "step_size": "sample"},
                            {"n_corrector": 2, "snr": 0.1}),
                  check=_check_pc)
def pc(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
       predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector: int = 1,
       step_size: str = "batch", final_denoise: bool = True):
  """Predictor-corrector sampling with the Langevin corrector (score SDE, Alg. 4-5).

  At each grid time t_i (i < N): ``n_corrector`` Langevin steps at t_i,
    eps = 2 a_i (snr ||z|| / ||score||)^2,   x <- x + eps score(x, t_i) + sqrt(2 eps) z,
  with a_i = (alpha_{t_i} / alpha_{t_{i+1}})^2 (score SDE's alpha_i = 1 - beta_i for VP, 1 for VE),
  then one predictor step t_i -> t_{i+1} ('reverse_diffusion', 'euler_maruyama' or 'none').
  ``step_size='batch'`` averages the norms over the batch as the score-SDE code does (so samples
  then depend on the batch they are in); ``'sample'`` uses each sample's own norms, which keeps
  samples independent of the batch but is only stable in high dimension, where the norms
  concentrate: in 2-D a sample near a mode has ||score|| ~ 0 and takes a huge step (measured: the
  2-D test mixture's covariance comes out 30x too large; fine at 64-D).
  NFE = N (n_corrector + 1) (+1 final denoise).
  """
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  dt = x_T.dtype
  pred = np.array([PREDICTORS[predictor](schedule, t[i], t[i + 1]) if predictor != "none"
                   else (1.0, 0.0, 0.0) for i in range(n)])
  (at, st), (an, _) = alpha_sigma(schedule, t[:-1]), alpha_sigma(schedule, t[1:])
  xs = dict(t=jnp.asarray(t[:-1], dt), alpha=jnp.asarray(at, dt), sigma=jnp.asarray(st, dt),
            a_i=jnp.asarray((at / an)**2, dt), pa=jnp.asarray(pred[:, 0], dt),
            pd=jnp.asarray(pred[:, 1], dt), pc=jnp.asarray(pred[:, 2], dt), i=jnp.arange(n))
  keys = engine.sample_keys(key, x_T.shape[0], sample_offset)
  shape = x_T.shape[1:]
  nc = int(n_corrector)
  red = tuple(range(1, x_T.ndim))

  def norm(v):
    nrm = jnp.sqrt(jnp.sum(v * v, axis=red, keepdims=True))
    return jnp.mean(nrm) if step_size == "batch" else nrm

  def body(x, s):
    tb = engine.bt(s["t"], x)

    def corrector(j, x):
      m = denoise(x, tb, cond).astype(dt)
      score = (s["alpha"] * m - x) / s["sigma"]**2
      z = engine.per_sample_normal(keys, s["i"] * (nc + 1) + j, shape, dt)
      eps = 2.0 * s["a_i"] * (snr * norm(z) / norm(score))**2
      return x + eps * score + jnp.sqrt(2.0 * eps) * z

    x = jax.lax.fori_loop(0, nc, corrector, x)
    if predictor != "none":
      m = denoise(x, tb, cond).astype(dt)
      z = engine.per_sample_normal(keys, s["i"] * (nc + 1) + nc, shape, dt)
      x = s["pa"] * x + s["pd"] * m + s["pc"] * z
    return x, None

  x, _ = jax.lax.scan(body, x_T, xs)
  nfe = n * (nc + int(predictor != "none"))
  if final_denoise:
    x = denoise(x, engine.bt(t[-1], x), cond).astype(dt)
    nfe += 1
  return x, {"nfe": nfe}
