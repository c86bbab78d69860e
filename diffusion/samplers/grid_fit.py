"""Time grids fitted to a sampler's own error: the N - 1 intermediate times of an N-step
deterministic sampler chosen to bring its samples closest to reference solutions of the same
PF-ODE from the same starting points.

  minimise over the grid   L(grid) = mean_b || sampler(grid)(x_T^b) - x_ref^b ||^2

x_ref the exact solution (an analytic density's PF-ODE solved in float64) or a many-step solve
with the same denoiser (a trained model's own fine solve). This is the learned-grid family's
objective (the teacher-trajectory distance of LD3, Tong et al. 2024, "Learning to Discretize
Denoising Diffusion ODEs", there with a slack and a perceptual distance; of Optimal Stepsize
Distillation, Pei et al. 2025): a grid tuned to one sampler, its step count, the model and its
data. Deliberately simpler than LD3: no slack term, squared error, and a derivative-free search
(the samplers' coefficients are host-side float64 functions of the grid, so the grid is not a
traced argument):

  parameterisation  log sigma_n = log sigma_max - (sum_{j<=n} softmax(theta)_j) (log sigma_max
                    - log sigma_min), sigma = sigma(t) / alpha(t): every theta gives a strictly
                    decreasing grid with the requested ends;
  search            Nelder-Mead (scipy) on log L from the theta of an initial grid (default
                    'logsnr_power'), at most ``max_evals`` sampler runs. The engine compiles a
                    sampler once per structure, so each evaluation is one run of N NFE.

Measured (benchmarks/grid_fit.py, exact mixtures): at NFE 5 DPM-Solver++(2M) on its fitted grid
has 0.31x (2-D) / 0.37x (64-D) the error of the uniform-logSNR grid on held-out starting points.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from diffusion.samplers import grids as grids_lib
from diffusion.samplers.registry import build_sampler, sampler_info
from diffusion.schedules import Schedule, check_int, check_time_range

Array = Any


def grid_of_theta(schedule: Schedule, theta: np.ndarray, t_min: float,
                  t_max: float) -> np.ndarray:
  """The decreasing grid (N+1,) of ``theta`` (N,) (module doc), ends exactly t_max / t_min."""
  lo = math.log(float(schedule.edm_sigma(np.float64(t_min))))
  hi = math.log(float(schedule.edm_sigma(np.float64(t_max))))
  w = np.exp(theta - np.max(theta))
  w = w / w.sum()
  v = hi - np.concatenate([[0.0], np.cumsum(w)]) * (hi - lo)
  t = np.asarray(schedule.t_from_edm_sigma(np.exp(v)), np.float64)
  t[0], t[-1] = t_max, t_min
  return t


def theta_of_grid(schedule: Schedule, grid: np.ndarray) -> np.ndarray:
  """The theta (N,) of a decreasing grid (up to the softmax's additive constant)."""
  v = np.log(np.asarray(schedule.edm_sigma(np.asarray(grid, np.float64)), np.float64))
  return np.log(-np.diff(v))


def trajectory_loss(sampler: str, schedule: Schedule, denoise: Callable, x_T: Array,
                    reference: Array, *, cond=None, **hparams) -> Callable[[np.ndarray], float]:
  """grid -> mean over the batch of || sampler(grid)(x_T) - reference ||^2 (flattened per
  sample); the sampler deterministic (its key is fixed, unused)."""
  import jax
  info = sampler_info(sampler)
  if info.kind != "deterministic" or info.adaptive:
    raise ValueError(f"fitting a grid needs a fixed-step deterministic sampler; {sampler!r} is "
                     f"{'adaptive' if info.adaptive else info.kind}")
  info.validate(hparams)
  ref = np.asarray(reference, np.float64)
  if np.shape(x_T) != ref.shape:
    raise ValueError(f"reference {ref.shape} must have the shape of x_T {np.shape(x_T)}")
  key = jax.random.PRNGKey(0)

  def loss(grid: np.ndarray) -> float:
    run = build_sampler(sampler, schedule, time_grid=grid, jit=False, **hparams)
    x, _ = run(denoise, key, x_T, cond=cond)
    d = np.asarray(x, np.float64) - ref
    return float(np.mean(np.sum(d.reshape(len(d), -1)**2, axis=1)))

  return loss


def fit_grid(loss: Callable[[np.ndarray], float], schedule: Schedule, num_steps: int, *,
             t_min: Optional[float] = None, t_max: Optional[float] = None,
             init: str = "logsnr_power", max_evals: int = 300,
             tol: float = 1e-4) -> Tuple[np.ndarray, Dict[str, Any]]:
  """(grid (N+1,), trace) minimising ``loss(grid)`` (e.g. ``trajectory_loss``) over the grids
  of ``num_steps`` steps from t_max to t_min (None: the schedule's), from the ``init`` grid
  (a kind of ``grids.time_grid``) by Nelder-Mead on log loss (module doc). trace: {'init',
  'init_loss', 'loss', 'num_evaluations', 'max_evals'}. Never returns a grid worse than
  ``init``. N = 1 has nothing to fit: the one-step grid."""
  import scipy.optimize
  n = check_int("num_steps", num_steps)
  evals = check_int("max_evals", max_evals)
  if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
    raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
  a, b = check_time_range(schedule, t_min, t_max)
  g0 = grids_lib.time_grid(schedule, n, init, t_min=a, t_max=b)
  l0 = float(loss(g0))
  if not math.isfinite(l0):
    raise ValueError(f"the loss of the initial {init!r} grid is {l0}: nothing to fit from")
  trace = {"init": init, "init_loss": l0, "max_evals": evals}
  if n == 1:
    return g0, dict(trace, loss=l0, num_evaluations=1)
  count = [1]

  def objective(theta: np.ndarray) -> float:
    count[0] += 1
    value = float(loss(grid_of_theta(schedule, theta, a, b)))
    return math.log(value) if value > 0 and math.isfinite(value) else math.inf

  res = scipy.optimize.minimize(objective, theta_of_grid(schedule, g0), method="Nelder-Mead",
                                options={"maxfev": evals, "xatol": tol, "fatol": tol})
  best = grid_of_theta(schedule, res.x, a, b)
  fitted = math.exp(res.fun) if math.isfinite(res.fun) else math.inf
  if not fitted < l0:
    best, fitted = g0, l0
  return best, dict(trace, loss=fitted, num_evaluations=count[0])
