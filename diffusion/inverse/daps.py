"""Decoupled annealing posterior sampling, DAPS (Zhang, Chu, Berner, Meng, Anandkumar & Song,
"Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing", CVPR 2025,
arXiv:2407.01521)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.inverse import common
from diffusion.inverse.operators import (Colorization, Inpainting, LinearOperator, MatrixOperator,
                                         SuperResolution, _check_nonneg, _per_sample)
from diffusion.samplers import engine
from diffusion.samplers.engine import alpha_sigma

ODE_SOLVERS = ("euler", "heun")
R_SCHEDULES = ("sigma", "posterior")
RHO = 7.0  # the ODE sub-grids' Karras exponent (the reference's 'poly-7')


def daps_sampler(op: LinearOperator, *, noise_std: float = 0.0, tau=None, ode_steps: int = 5,
                 ode_solver: str = "euler", langevin_steps: int = 100, lr: float = 1e-4,
                 lr_min_ratio: float = 0.01, r_schedule: str = "sigma",
                 sigma_data: float = 1.0, ode_to_zero: bool = True):
  """DAPS (Zhang et al., CVPR 2025, Alg. 1) as a sampler ``fn(denoise, schedule, key, x_T,
  time_grid, *, cond=None, sample_offset=0) -> (x0, info)`` (the registry's signature; cond['y']
  the observation y = A x0 + noise_std n, 'mask' for inpainting, optionally 'label').

  One annealing level per grid time t_0 > ... > t_N (N + 1 levels for N steps), sigma_i =
  sigma(t_i) / alpha(t_i) the level's noise in the variance-exploding variables of the paper:

  1. x0_hat = the PF-ODE solved from x_{t_i} to sigma = 0 with ``ode_steps`` K steps
     (``ode_solver`` 'euler' = DDIM, or EDM's 'heun', 2K - 1 denoiser calls) in z = x / alpha:
     K Karras sigmas (rho 7) from sigma_i down to sigma(t_min), then the step to 0, whose Euler
     step is x0_hat = D(x, t) at the last of them (K = 1: x0_hat = D(x_{t_i}, t_i), Tweedie);
  2. ``langevin_steps`` steps of Langevin dynamics on x0, from x0 = x0_hat, targeting
       p(x0 | x_t, y) propto N(x0; x0_hat, r_i^2 I) N(y; A x0, tau^2 I)
       x0 <- x0 + eta_i grad log p + sqrt(2 eta_i) eps,
       grad log p = -(x0 - x0_hat) / r_i^2 - A^T (A x0 - y) / tau^2          (``langevin_score``)
     with eta_i = lr (1 - (1 - lr_min_ratio) i / (N + 1)), the reference's linear decay;
  3. x_{t_{i+1}} = alpha_{i+1} (x0 + sigma_{i+1} eps); the last level returns x0.

  r_i (``r_schedule``): 'sigma', r_i = sigma_i (the reference code's 'gaussian' prior, whose
  two terms (x0_hat - x_t)/sigma^2 + (x_t - x0)/sigma^2 sum to this); 'posterior',
  r_i^2 = sigma_data^2 sigma_i^2 / (sigma_data^2 + sigma_i^2), the exact posterior variance of
  x0 | x_t for N(mu, sigma_data^2 I) data (Pi-GDM's eq. 8).
  ``tau``: the likelihood's std; None means ``noise_std``, which must then be > 0: a noiseless
  observation makes the Langevin target singular, so pass a small tau (the reference uses 0.01
  for observations of noise 0.05) and a step size it allows. ``lr`` must keep every level's chain
  stable: eta_i (1 / r_i^2 + s_max^2 / tau^2) < 2 (s_max the largest singular value of A) is
  checked when the grid is known (ValueError naming the level). NFE = (N + 1) K (Euler) or
  (N + 1)(2K - 1) (Heun), no back-propagation through the denoiser; the Langevin steps cost
  operator applications only. Noise: sample b's draws are normal(fold_in(key_b, counter)),
  key_b = fold_in(key, sample_offset + b): samples do not depend on their batch.

  Differences from the reference code (github.com/zhangbingliang2019/DAPS, ``DAPS.sample``,
  ``MCMCSampler``): its ODE stops at sigma_min = 0.01 (x0_hat is x at sigma = 0.01, with K Euler
  steps); here the last of the K steps goes to sigma = 0 (``ode_to_zero=False``: K steps ending
  at t_min, the reference's behaviour); its learning-rate ratio is i / (levels + 1) with 200
  levels (here i / (N + 1), the same form).
  """
  op = common.check_op(op)
  noise_std = _check_nonneg("noise_std", noise_std)
  if tau is None:
    if noise_std == 0:
      raise ValueError("DAPS with noise_std=0 needs tau > 0, the likelihood std of its Langevin "
                       "target N(y; A x0, tau^2 I) (the noiseless target is singular); the "
                       "reference code uses tau=0.01")
    tau = noise_std
  tau = _check_nonneg("tau", tau, positive=True)
  ode_steps = common.check_int("ode_steps", ode_steps)
  common.check_choice("ode_solver", ode_solver, ODE_SOLVERS)
  langevin_steps = common.check_int("langevin_steps", langevin_steps, 0)
  lr = _check_nonneg("lr", lr, positive=True)
  lr_min_ratio = _check_nonneg("lr_min_ratio", lr_min_ratio)
  common.check_choice("r_schedule", r_schedule, R_SCHEDULES)
  sigma_data = _check_nonneg("sigma_data", sigma_data, positive=True)
  if not isinstance(ode_to_zero, (bool, np.bool_)):
    raise TypeError(f"ode_to_zero must be a bool, got {ode_to_zero!r}")
  ode_to_zero = bool(ode_to_zero)
  s_max = largest_singular_value(op)

  def sampler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
    t = common.check_call(denoise, schedule, x_T, time_grid, cond, op)
    levels = len(t)
    a, s = alpha_sigma(schedule, t)
    ve = s / a
    r2 = ve**2 if r_schedule == "sigma" else sigma_data**2 * ve**2 / (sigma_data**2 + ve**2)
    eta = lr * (1.0 - (1.0 - lr_min_ratio) * np.arange(levels) / levels)
    curv = 1.0 / r2 + s_max**2 / tau**2
    bad = np.flatnonzero(eta * curv >= 2.0) if langevin_steps else []
    if len(bad):
      i = int(bad[0])
      raise ValueError(f"DAPS Langevin step unstable at level {i} (t={t[i]:.4g}, "
                       f"r={math.sqrt(r2[i]):.3g}, tau={tau:g}): eta (1/r^2 + s_max^2/tau^2) = "
                       f"{eta[i] * curv[i]:.3g} >= 2; "
                       f"lower lr (= {lr:g}) or lr_min_ratio, or raise tau")
    sub_sig, sub_t = ode_grids(schedule, t, ode_steps, ode_to_zero)
    a_next = np.append(a[1:], 1.0)
    ve_next = np.append(ve[1:], 0.0)
    dt = np.dtype(x_T.dtype)
    arr = lambda v: np.asarray(v, np.float64).astype(dt)
    sub_a = np.where(sub_sig > 0, alpha_sigma(schedule, sub_t)[0], 1.0)
    xs = dict(a=arr(a), sub_sig=arr(sub_sig), sub_t=arr(sub_t), sub_a=arr(sub_a), r2=arr(r2),
              eta=arr(eta), a_next=arr(a_next), ve_next=arr(ve_next), i=np.arange(levels))
    heun = tuple(ode_solver == "heun" and not (ode_to_zero and j == ode_steps - 1)
                 for j in range(ode_steps))
    x = _run(denoise, op, heun, int(langevin_steps), x_T, xs, arr(tau**2), key, sample_offset,
             cond)
    nfe = levels * daps_nfe_per_level(ode_steps, ode_solver, ode_to_zero)
    return x, common.info("daps", denoise, nfe, network_vjp=False)

  sampler.hparams = dict(method="daps", noise_std=noise_std, tau=tau, ode_steps=ode_steps,
                         ode_solver=ode_solver, langevin_steps=langevin_steps, lr=lr,
                         lr_min_ratio=lr_min_ratio, r_schedule=r_schedule, sigma_data=sigma_data,
                         ode_to_zero=ode_to_zero)
  return sampler


def daps_nfe_per_level(ode_steps: int, ode_solver: str = "euler", ode_to_zero: bool = True) -> int:
  """Denoiser calls of one annealing level's ODE solve (a level = the step's cost; the sampler
  runs N + 1 levels on an N-step grid)."""
  if ode_solver == "euler":
    return int(ode_steps)
  return 2 * int(ode_steps) - int(bool(ode_to_zero))


def daps_nfe(num_steps: int, ode_steps: int = 5, ode_solver: str = "euler",
             ode_to_zero: bool = True) -> int:
  """Denoiser calls of ``daps_sampler`` on an N-step grid (N + 1 levels)."""
  return (int(num_steps) + 1) * daps_nfe_per_level(ode_steps, ode_solver, ode_to_zero)


def largest_singular_value(op: LinearOperator) -> float:
  """||A||_2 of the operator (for the Langevin step's stability check)."""
  if isinstance(op, Inpainting):
    return 1.0
  if isinstance(op, Colorization):
    return 1.0 / math.sqrt(3.0)
  if isinstance(op, SuperResolution):
    return 1.0 / op.factor
  if isinstance(op, MatrixOperator):
    return float(np.max(op.svd_s))
  raise ValueError(f"DAPS: no largest singular value known for operator {op.name!r}")


def ode_grids(schedule, t, ode_steps: int, ode_to_zero: bool):
  """Per level i, the ODE's K + 1 sigmas (VE, sigma(t)/alpha(t)) and their times, (L, K + 1):
  Karras (rho 7) from sigma_i to sigma(t_min) (K points then 0 with ``ode_to_zero``, else K + 1
  points ending at sigma(t_min)); the time of sigma = 0 is reported as t_min (never evaluated)."""
  lo = float(schedule.edm_sigma(np.float64(schedule.t_min)))
  sig = []
  m = ode_steps if ode_to_zero else ode_steps + 1
  for ti in np.asarray(t, np.float64):
    hi = float(schedule.edm_sigma(np.float64(ti)))
    end = min(lo, hi)
    u = np.linspace(0.0, 1.0, m) if m > 1 else np.zeros(1)
    row = (hi**(1 / RHO) + u * (end**(1 / RHO) - hi**(1 / RHO)))**RHO
    row[0] = hi
    if ode_to_zero:
      row = np.append(row, 0.0)
    sig.append(row)
  sig = np.asarray(sig)
  times = np.where(sig > 0, np.asarray(schedule.t_from_edm_sigma(np.maximum(sig, 1e-300))),
                   float(schedule.t_min))
  times = np.clip(times, schedule.t_min, schedule.t_max)
  times[:, 0] = np.asarray(t, np.float64)  # the level's own time exactly
  return sig, times


def langevin_score(x0, x0_hat, y, r2, tau2, op: LinearOperator, cond):
  """grad_x0 log [N(x0; x0_hat, r2 I) N(y; A x0, tau2 I)] = -(x0 - x0_hat) / r2
  - A^T (A x0 - y) / tau2; r2 a scalar or per-sample (B,), y in the observation space
  (``op.observed``)."""
  prior = (x0 - x0_hat) / _per_sample(r2, x0)
  return -prior - op.adjoint(op.apply(x0, cond) - y, cond).astype(x0.dtype) / tau2


def langevin(x0_hat, y, r2, tau2, op: LinearOperator, cond, *, lr, num_steps: int, keys,
             counter0=0):
  """``num_steps`` unadjusted Langevin steps x <- x + lr score + sqrt(2 lr) eps from x0_hat
  (``langevin_score``), step j's eps sample b's normal(fold_in(keys[b], counter0 + j)). For a
  Gaussian target N(m, P^{-1}) the chain's law tends to N(m, P^{-1} (I - lr P / 2)^{-1}), the
  target up to O(lr) (tested)."""

  def step(j, x):
    eps = common.normal(keys, counter0 + j, x)
    g = langevin_score(x, x0_hat, y, r2, tau2, op, cond)
    return x + lr * g + jnp.sqrt(2.0 * lr) * eps

  return jax.lax.fori_loop(0, num_steps, step, x0_hat)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _run(denoise, op, heun_steps, langevin_steps, x_T, xs, tau2, key, sample_offset, cond):
  """heun_steps: per ODE step, whether it takes Heun's correction (static)."""
  dt = x_T.dtype
  den = common.inner(denoise, cond)
  y = common.observation(op, cond, dt)
  keys = engine.sample_keys(key, x_T.shape[0], sample_offset)

  def ode(x, s):
    """x_{t_i} -> x0_hat along the PF-ODE in z = x / alpha (EDM's variables)."""
    z = x / s["a"]
    sig, tt, asub = s["sub_sig"], s["sub_t"], s["sub_a"]
    for j, heun in enumerate(heun_steps):
      d1 = den(asub[j] * z, engine.bt(tt[j], z)).astype(dt)
      ratio = sig[j + 1] / sig[j]
      z_e = ratio * z + (1.0 - ratio) * d1  # Euler: z + (sig' - sig)(z - d1) / sig
      if heun:
        d2 = den(asub[j + 1] * z_e, engine.bt(tt[j + 1], z)).astype(dt)
        z_e = z + 0.5 * (sig[j + 1] - sig[j]) * ((z - d1) / sig[j] + (z_e - d2) / sig[j + 1])
      z = z_e
    return z

  def body(x, s):
    x0_hat = ode(x, s)
    c0 = s["i"] * (langevin_steps + 1)
    x0 = langevin(x0_hat, y, s["r2"], tau2, op, cond, lr=s["eta"], num_steps=langevin_steps,
                  keys=keys, counter0=c0)
    eps = common.normal(keys, c0 + langevin_steps, x0)
    return s["a_next"] * (x0 + s["ve_next"] * eps), None

  x, _ = jax.lax.scan(body, x_T, xs)
  return x
