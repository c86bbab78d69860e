"""Probability-flow ODE samplers (Euler, EDM Heun, DDIM, adaptive diffrax) and their stochastic
relatives (EDM's stochastic sampler, Euler ancestral).

The PF-ODE (Song et al. 2021, eq. 13) dx/dt = f x - g^2/2 score is integrated in one of two sets
of variables (hyper-parameter ``variables``):

  'edm': u = x / alpha against tau = sigma/alpha (EDM's sigma), where it reads du/dtau = (u - m)/tau
         (Karras et al. 2022, eq. 4 with s = 1, sigma(t) = t after the change of variables);
  't':   u = x against the schedule's own time t, du/dt = (f + g^2/(2 sigma^2)) u - g^2 alpha/(2
         sigma^2) m.

Both are du/dtau = P u + Q m with m = denoise(x, t): one generic Euler / Heun step for both.
"""
from __future__ import annotations

import math
from typing import Any, Tuple

import jax.numpy as jnp

from diffusion.samplers import engine
from diffusion.samplers.engine import Program, alpha_sigma, f64, half_logsnr
from diffusion.samplers.registry import register_sampler
from diffusion.schedules import Schedule

Array = Any
VARIABLES = ("edm", "t")
_fd = lambda hp: int(bool(hp["final_denoise"]))


def ode_vars(schedule: Schedule, t: float, variables: str) -> Tuple[float, float, float, float]:
  """(scale s, tau, P, Q) at t: u = s x, du/dtau = P u + Q m."""
  t = f64(t)
  a, sg = alpha_sigma(schedule, t)
  if variables == "edm":
    tau = float(sg / a)
    return float(1.0 / a), tau, 1.0 / tau, -1.0 / tau
  if variables == "t":
    f, g2 = float(schedule.drift(t)), float(schedule.diffusion_sq(t))
    return 1.0, float(t), f + g2 / (2 * sg**2), -g2 * float(a) / (2 * sg**2)
  raise ValueError(f"unknown ODE variables {variables!r}; accepted: {VARIABLES}")


def _check_variables(hp):
  if hp["variables"] not in VARIABLES:
    raise ValueError(f"unknown ODE variables {hp['variables']!r}; accepted: {VARIABLES}")


def _check_eta(hp):
  if not hp["eta"] >= 0:
    raise ValueError(f"eta must be >= 0, got {hp['eta']!r}")


def _check_churn(hp):
  for name in ("S_churn", "S_min", "S_noise"):
    if not hp[name] >= 0:
      raise ValueError(f"edm_stochastic: {name} must be >= 0, got {hp[name]!r}")
  if not hp["S_max"] >= hp["S_min"]:
    raise ValueError(f"edm_stochastic: S_max must be >= S_min, got S_max={hp['S_max']!r} < "
                     f"S_min={hp['S_min']!r}")


def _check_ode_adaptive(hp):
  if hp["solver"] not in ODE_SOLVERS:
    raise ValueError(f"unknown ODE solver {hp['solver']!r}; accepted: {ODE_SOLVERS}")
  if not (hp["rtol"] > 0 and hp["atol"] > 0):
    raise ValueError(f"rtol and atol must be > 0, got rtol={hp['rtol']!r}, atol={hp['atol']!r}")
  if not hp["max_steps"] >= 1:
    raise ValueError(f"max_steps must be an int >= 1, got {hp['max_steps']!r}")


def euler_step(prog: Program, schedule, t, s, variables, y=None) -> int:
  """Adds one Euler step t -> s: x_s = (1/s_s)(s_t x + h (P s_t y + Q m)), h = tau_s - tau_t.

  ``y`` (default {'x': 1}) is the evaluation point, which also replaces x as the step's base.
  """
  sc, tau, p, q = ode_vars(schedule, t, variables)
  sc2, tau2, _, _ = ode_vars(schedule, s, variables)
  h = tau2 - tau
  return prog.eval(t, y=y, x={"y": sc * (1 + h * p) / sc2, "m": h * q / sc2})


def heun_step(prog: Program, schedule, t, s, variables, y=None, noise_interval=None) -> int:
  """Adds one Heun step t -> s (Karras et al. 2022, Alg. 1 lines 5-8), two rows:

    d1 = P u + Q m(x)  at t;  u' = u + h d1;  d2 = P' u' + Q' m(x') at s;  u_s = u + h/2 (d1 + d2).
  ``y`` is the evaluation point of the first stage (EDM's churned x_hat), the step's base;
  ``noise_interval`` that stage's (``Program.eval``).
  """
  sc, tau, p, q = ode_vars(schedule, t, variables)
  sc2, tau2, p2, q2 = ode_vars(schedule, s, variables)
  h = tau2 - tau
  r1 = prog.eval(t, y=y, out=(p * sc, q), x={"y": 1.0}, noise_interval=noise_interval)
  r2 = r1 + 1
  return prog.eval(s, y={"x": sc / sc2, r1: h / sc2}, out=(p2 * sc2, q2),
                   x={"x": sc / sc2, r1: 0.5 * h / sc2, r2: 0.5 * h / sc2})


@register_sampler("euler", kind="deterministic", order=1.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper="Song et al. 2021 (PF-ODE, eq. 13); Karras et al. 2022 (eq. 4), Euler",
                  variants=({}, {"variables": "t"}), check=_check_variables)
def euler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
          variables: str = "edm", final_denoise: bool = False):
  """Euler on the PF-ODE. In 'edm' variables this is exactly deterministic DDIM (Song et al.
  2021a, eq. 13), in 't' variables the score-SDE ODE Euler sampler. NFE = N (+1)."""
  prog = engine.stepwise_program(lambda p, s, u: euler_step(p, schedule, s, u, variables), schedule,
                                 time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)


@register_sampler("heun", kind="deterministic", order=2.0,
                  nfe=lambda n, hp: 2 * n + _fd(hp), nfe_per_step="2",
                  paper="Karras et al. 2022, EDM, Alg. 1 (2nd-order Heun, Euler last step)",
                  variants=({}, {"variables": "t"}), check=_check_variables)
def heun(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
         variables: str = "edm", final_denoise: bool = True):
  """EDM's deterministic sampler: Heun steps over the N intervals of the grid, then (default) the
  Euler step to sigma = 0, which is exactly x <- denoise(x, t_N). NFE = 2N + 1 = 2(N+1) - 1, EDM's
  count for N+1 noise levels plus sigma = 0."""
  prog = engine.stepwise_program(lambda p, s, u: heun_step(p, schedule, s, u, variables), schedule,
                                 time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)


def churn_gamma(tau: float, num_steps: int, S_churn: float, S_min: float, S_max: float) -> float:
  """EDM's churn gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= tau_i <= S_max else 0
  (Karras et al. 2022, Alg. 2 line 4), N = the number of sampling steps, the step to sigma = 0
  included."""
  return min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= tau <= S_max else 0.0


def edm_stochastic_program(schedule: Schedule, time_grid, S_churn: float, S_min: float,
                           S_max: float, S_noise: float, final_denoise: bool) -> Program:
  """The program of EDM's Alg. 2 on the grid t_0 > ... > t_n (n intervals; see
  ``edm_stochastic``): a churned Heun step per interval, then (``final_denoise``) a churned step to
  sigma = 0, x <- denoise(x_hat, t_hat). Alg. 2's N is the number of steps: n + final_denoise.
  Brownian intervals (``noise='brownian_tree'``): step i's churn owns [t_{i+1}, t_i], the step to
  sigma = 0 owns [0, t_n] (the rest of the clock)."""
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  num_steps = n + int(bool(final_denoise))
  tau_cap = float(schedule.edm_sigma(f64(schedule.t_max)))
  prog = Program()
  for i in range(num_steps):
    a_i, s_i = alpha_sigma(schedule, t[i])
    tau = float(s_i / a_i)
    gamma = churn_gamma(tau, num_steps, S_churn, S_min, S_max)
    tau_hat = min(tau * (1 + gamma), max(tau_cap, tau))
    if tau_hat > tau:
      t_hat = float(schedule.t_from_edm_sigma(f64(tau_hat)))
      a_hat = float(schedule.alpha(f64(t_hat)))
      y = {"x": a_hat / float(a_i), "z": a_hat * math.sqrt(tau_hat**2 - tau**2) * S_noise}
    else:
      t_hat, y = float(t[i]), None
    if i < n:
      heun_step(prog, schedule, t_hat, t[i + 1], "edm", y=y, noise_interval=(t[i], t[i + 1]))
    else:  # Alg. 2's last step, to t_N = 0: x_N = x_hat + (0 - t_hat) d = D(x_hat; t_hat).
      prog.eval(t_hat, y=y, x={"m": 1.0},
                noise_interval=(float(t[n]), 0.0) if t[n] > 0 else None)
  return prog


@register_sampler("edm_stochastic", kind="stochastic", order=1.0,
                  nfe=lambda n, hp: 2 * n + _fd(hp), nfe_per_step="2",
                  paper="Karras et al. 2022, EDM, Alg. 2 (stochastic sampler with churn)",
                  variants=({"S_churn": 10.0}, {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0,
                                                "S_noise": 1.003}),
                  check=_check_churn)
def edm_stochastic(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                   S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"),
                   S_noise: float = 1.0, final_denoise: bool = True, noise: str = "independent"):
  """EDM Alg. 2 in EDM variables (u = x/alpha, tau = sigma/alpha), for any schedule.

  Step i: gamma = min(S_churn/N, sqrt(2)-1) if S_min <= tau_i <= S_max else 0;
  tau_hat = tau_i (1 + gamma) (capped at tau(schedule.t_max), where the schedule ends);
  u_hat = u + sqrt(tau_hat^2 - tau_i^2) S_noise z; then a Heun step tau_hat -> tau_{i+1}.
  With ``final_denoise`` (default) the last step is Alg. 2's step to sigma = 0, churned like the
  others: x <- denoise(x_hat, t_hat). N is Alg. 2's number of sampling steps, that step included:
  N = n + 1 for a grid of n intervals t_0 > ... > t_n = t_min (EDM's t_0..t_{N-1} plus t_N = 0),
  as in EDM's and k-diffusion's code; N = n without the final step. NFE = 2n + 1.
  ``noise='brownian_tree'``: the churn's z is the increment of one Brownian path per sample over
  [t_{i+1}, t_i] (the step to sigma = 0: [0, t_n]); ``diffusion/samplers/brownian.py``.
  """
  prog = edm_stochastic_program(schedule, time_grid, S_churn, S_min, S_max, S_noise,
                                final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


@register_sampler("euler_ancestral", kind="stochastic", order=1.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper="Song et al. 2021 (ancestral sampling); Euler ancestral in EDM variables "
                  "(Karras et al. 2022 sec. 4; k-diffusion)",
                  variants=({}, {"eta": 0.5}), check=_check_eta)
def euler_ancestral(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                    eta: float = 1.0, final_denoise: bool = True, noise: str = "independent"):
  """Euler step in EDM variables to tau_down, then fresh noise tau_up (tau = sigma/alpha):

    tau_up = min(tau', eta sqrt(tau'^2 (tau^2 - tau'^2) / tau^2)),  tau_down = sqrt(tau'^2 - tau_up^2),
    u' = u + (tau_down - tau)(u - m)/tau + tau_up z,   x' = alpha' u'.
  eta = 1 is DDPM's posterior (equal in law to ``ddpm``), eta = 0 is Euler / DDIM. NFE = N (+1).
  ``noise='brownian_tree'``: z is the increment of one Brownian path per sample over the step
  (``diffusion/samplers/brownian.py``).
  """

  def step(prog, t_s, t_t):
    (a, s), (a2, s2) = alpha_sigma(schedule, t_s), alpha_sigma(schedule, t_t)
    tau, tau2 = float(s / a), float(s2 / a2)
    up = min(tau2, eta * math.sqrt(max(tau2**2 * (tau**2 - tau2**2) / tau**2, 0.0)))
    down = math.sqrt(max(tau2**2 - up**2, 0.0))
    k = (down - tau) / tau
    prog.eval(t_s, x={"x": float(a2 / a * (1 + k)), "m": float(-a2 * k), "z": float(a2 * up)},
              noise_interval=(t_s, t_t))

  prog = engine.stepwise_program(step, schedule, time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


def ddim_coefs(schedule: Schedule, t: float, s: float, eta: float) -> Tuple[float, float, float]:
  """DDIM step t -> s (Song et al. 2021a, eq. 12 and 16), for any (alpha, sigma):

    x_s = alpha_s m + sqrt(sigma_s^2 - c^2) eps + c z,  eps = (x - alpha_t m)/sigma_t,
    c = eta sigma_s sqrt(1 - e^{-2h}),  h = lambda_s - lambda_t,  lambda = log(alpha/sigma).
  Returns (A, D, C).
  """
  (at, st), (as_, ss) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
  h = float(half_logsnr(schedule, s) - half_logsnr(schedule, t))
  c = eta * float(ss) * math.sqrt(max(-math.expm1(-2 * h), 0.0))
  k = math.sqrt(max(float(ss)**2 - c * c, 0.0)) / float(st)
  return k, float(as_ - k * at), c


@register_sampler("ddim", kind="deterministic", order=1.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper="Song et al. 2021, DDIM, eq. 12 (eta > 0: eq. 16, stochastic)",
                  variants=({}, {"eta": 1.0}), check=_check_eta, pure_noise_start=True)
def ddim(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
         eta: float = 0.0, final_denoise: bool = False, noise: str = "independent"):
  """DDIM (see ``ddim_coefs``). eta = 0: deterministic, first-order exponential integrator of the
  PF-ODE (= DPM-Solver-1); eta = 1: DDPM ancestral sampling (then it is stochastic). NFE = N (+1).
  ``noise='brownian_tree'`` (eta > 0): z is the increment of one Brownian path per sample over
  the step (``diffusion/samplers/brownian.py``)."""

  def step(prog, t_s, t_t):
    a, d, c = ddim_coefs(schedule, t_s, t_t, eta)
    prog.eval(t_s, x={"x": a, "m": d, "z": c}, noise_interval=(t_s, t_t))

  prog = engine.stepwise_program(step, schedule, time_grid, final_denoise, pure_noise_start=True)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


# ------------------------------------------------------------------------------------------------
# Adaptive PF-ODE with diffrax
# ------------------------------------------------------------------------------------------------

ODE_SOLVERS = ("tsit5", "dopri5", "dopri8", "heun", "bosh3")


def _diffrax_solver(name: str):
  import diffrax
  table = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
           "heun": diffrax.Heun, "bosh3": diffrax.Bosh3}
  if name not in table:
    raise ValueError(f"unknown ODE solver {name!r}; accepted: {ODE_SOLVERS}")
  return table[name]()


def fsal_state(solver, term, t0, t1, y0):
  """For first-same-as-last solvers, the solver state with f(t0, y0) already evaluated.

  diffrax 0.7 re-evaluates the first stage on every retry of a rejected *first* step (its state
  says "first step" until one is accepted), which its stats do not record; evaluating f(t0, y0)
  once here makes the count exact: 1 + (s - 1) per attempted step. None for other solvers.
  """
  if not solver.tableau.fsal:
    return None
  state = solver.init(term, t0, t1, y0, None)
  if not (isinstance(state, tuple) and len(state) == 2):
    raise RuntimeError(f"unexpected diffrax solver state {type(state)}; NFE would be inexact")
  return (jnp.array(False), term.vf(t0, y0, None))


def diffrax_nfe(solver, num_steps: Array) -> Array:
  """Exact vector-field evaluations of an explicit RK solver in diffrax 0.7 after ``num_steps``
  (accepted + rejected) steps, given a dt0 and, for first-same-as-last solvers, the initial state
  of ``fsal_state``: s stages per step, FSAL solvers reuse the last stage (one initial evaluation,
  then s - 1 per attempted step)."""
  stages = len(solver.tableau.c) + 1
  if solver.tableau.fsal:
    return 1 + num_steps * (stages - 1)
  return num_steps * stages


SOLVER_ORDERS = {"tsit5": 5.0, "dopri5": 5.0, "dopri8": 8.0, "heun": 2.0, "bosh3": 3.0}


@register_sampler("ode_adaptive", kind="deterministic",
                  order=lambda hp: SOLVER_ORDERS.get(hp["solver"], 1.0), nfe=None,
                  nfe_per_step="adaptive (diffrax stats)",
                  paper="Song et al. 2021, PF-ODE (eq. 13) with Tsitouras 2011 / Dormand-Prince "
                  "adaptive Runge-Kutta (diffrax)",
                  variants=({}, {"solver": "dopri5"}, {"solver": "dopri8"}),
                  check=_check_ode_adaptive)
def ode_adaptive(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                 solver: str = "tsit5", rtol: float = 1e-4, atol: float = 1e-4,
                 max_steps: int = 4096, final_denoise: bool = False):
  """The PF-ODE du/d(log tau) = u - denoise(alpha u, t(tau)) with u = x/alpha, tau = sigma/alpha,
  from time_grid[0] to time_grid[-1] by an adaptive diffrax solver with a PID controller; the first
  step is (log tau_N - log tau_0) / N for the grid's N. ``info``: nfe (from diffrax's step
  counts, exact, see ``diffrax_nfe``), num_steps, num_accepted_steps, num_rejected_steps.
  """
  import diffrax
  slv = _diffrax_solver(solver)
  t = engine.check_grid(time_grid, schedule)
  dt = x_T.dtype
  (a0, s0), (a1, s1) = alpha_sigma(schedule, t[0]), alpha_sigma(schedule, t[-1])
  l0, l1 = math.log(s0 / a0), math.log(s1 / a1)

  def vf(tau_log, u, args):
    tt = schedule.t_from_edm_sigma(jnp.exp(tau_log))
    a = schedule.alpha(tt)
    m = denoise(a * u, engine.bt(tt, u), cond).astype(u.dtype)
    return u - m

  term, t0, t1 = diffrax.ODETerm(vf), jnp.asarray(l0, dt), jnp.asarray(l1, dt)
  y0 = x_T / jnp.asarray(a0, dt)
  solver_state = fsal_state(slv, term, t0, t1, y0)
  sol = diffrax.diffeqsolve(
      term, slv, t0=t0, t1=t1, dt0=jnp.asarray((l1 - l0) / (len(t) - 1), dt), y0=y0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=int(max_steps), solver_state=solver_state)
  x = sol.ys[-1] * jnp.asarray(a1, dt)
  st = sol.stats
  nfe = diffrax_nfe(slv, st["num_steps"])
  if final_denoise:
    x = denoise(x, engine.bt(t[-1], x), cond).astype(dt)
    nfe = nfe + 1
  return x, {"nfe": nfe, "num_steps": st["num_steps"],
             "num_accepted_steps": st["num_accepted_steps"],
             "num_rejected_steps": st["num_rejected_steps"]}
