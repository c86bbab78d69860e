"""Flow-matching views of a denoiser: its velocity field, and the straightness of its ODE paths.

Conventions. The interpolant is x_t = alpha(t) x0 + sigma(t) eps with t = t_max the noise end and
t = t_min the data end (rectified flow: alpha = 1 - t, sigma = t, so x_1 = eps, x_0 = x0). Its
velocity is u = dx_t/dt = alpha' x0 + sigma' eps; the probability-flow ODE dx/dt = u_hat(x, t),
u_hat = E[u | x_t] = alpha' x0_hat + sigma' eps_hat (``parameterization.velocity_from_x0``), carries
noise at t_max to data at t_min (Liu et al. 2023, "Flow Straight and Fast", sec. 2; Lipman et
al. 2023). The 'flow' parameterization has the network output u_hat directly, and the 'flow'
weighting of ``losses.dsm_loss`` is the flow-matching loss E ||u_hat - u||^2.

Straightness (Liu et al. 2023, sec. 2.2, "straightness"): with Z the ODE solution in Liu's time
tau in [0, 1] (tau = 0 noise, tau = 1 data; here tau = (t_max - t) / L, L = t_max - t_min, so
dZ/dtau = -L u_hat),

  S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ/dtau ||^2 dtau
       = (1/L) int_{t_min}^{t_max} E || (x_{t_min} - x_{t_max}) + L u_hat(x_t, t) ||^2 dt.

S = 0 exactly when every path is a straight line traversed at constant speed, and then one Euler
step is exact. Discretised here on the uniform grid t_i = t_max - i L / N with Euler steps
x_{i+1} = x_i + (t_{i+1} - t_i) u_i: the displacement is then exactly the mean of the step
velocities v_i = -L u_i, and S_N = (1/N) sum_i || (x_N - x_0) - v_i ||^2 is their variance over the
path, which tends to S(Z) as N grows (N = 1 gives 0 for every flow: one velocity has no spread).

One-step and few-step sampling need no helper: ``build_sampler('euler', schedule, num_steps=N,
grid='uniform')`` is x <- x + (s - t) u_hat(x, t) on rectified flow in either of its variables
('edm' = DDIM, or 't'): both integrate exactly a velocity that is constant over the step, since
alpha and sigma are linear in t (tests/test_flow_matching.py checks that num_steps=1 is the
single step x_T + (t_min - t_max) u_hat(x_T, t_max), one network evaluation).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.parameterization import velocity_from_x0
from diffusion.schedules import Schedule, check_int, check_time_range

Array = Any
PREDICTIONS = ("x0", "velocity")


def velocity_field(denoise: Callable[..., Array], schedule: Schedule) -> Callable[..., Array]:
  """The PF-ODE velocity u_hat(x, t, cond) = alpha' x0_hat + sigma' eps_hat of a denoiser
  ``denoise(x (B, ...), t (B,), cond) -> x0_hat``; t may be a scalar or (B,)."""

  def velocity(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return velocity_from_x0(denoise(x, t, cond), x, t, schedule)

  return velocity


def straightness(fn: Callable[..., Array],
                 schedule: Schedule,
                 x_T: Array,
                 num_steps: int,
                 *,
                 prediction: str = "x0",
                 cond: Optional[Array] = None,
                 t_min: Optional[float] = None,
                 t_max: Optional[float] = None) -> Tuple[Array, Array]:
  """Liu et al. 2023's straightness S(Z) of the ODE paths started at x_T (module docstring).

  Args:
    fn: ``denoise(x, t, cond) -> x0_hat`` (prediction='x0') or ``velocity(x, t, cond) -> u_hat``
      (prediction='velocity', u_hat = dx_t/dt), x (B, ...), t (B,).
    schedule: the interpolant's (alpha, sigma).
    x_T: (B, ...) starting points at t_max (the noise end).
    num_steps: Euler steps N on the uniform grid from t_max to t_min (N velocity evaluations).
    t_min, t_max: the path's ends; None: the schedule's.
  Returns:
    (S, per_sample): the mean over the batch () and each path's S_N (B,), the squared norm summed
    over all non-batch axes.
  """
  num_steps = check_int("num_steps", num_steps, 1)
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; available: {PREDICTIONS}")
  if not callable(fn):
    raise TypeError(f"fn must be a callable (x, t, cond) -> array, got {fn!r}")
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 2 or not jnp.issubdtype(x_T.dtype, jnp.floating):
    raise ValueError(f"x_T must be a float array (B, ...) with a batch axis, got shape "
                     f"{x_T.shape} and dtype {x_T.dtype}")
  lo, hi = check_time_range(schedule, t_min, t_max)
  vel = velocity_field(fn, schedule) if prediction == "x0" else fn
  grid = jnp.asarray(np.linspace(hi, lo, num_steps + 1), x_T.dtype)
  length = hi - lo

  def step(x, ts):
    t, s = ts
    u = vel(x, jnp.broadcast_to(t, (x.shape[0],)), cond)
    return x + (s - t) * u, -length * u  # the Euler step, and dZ/dtau = -L u

  x_end, v = jax.lax.scan(step, x_T, (grid[:-1], grid[1:]))
  axes = tuple(range(2, v.ndim))
  dev = jnp.sum(jnp.square((x_end - x_T)[None] - v), axis=axes)  # (N, B)
  per_sample = jnp.mean(dev, axis=0)
  return jnp.mean(per_sample), per_sample
