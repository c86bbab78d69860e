"""SA-Solver: stochastic Adams predictor-corrector on the data-prediction SDE (Xue et al. 2023,
"SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models").

The SDE family of Xue et al. with stochasticity tau (tau = 0: the PF-ODE, tau = 1: the reverse
SDE), data prediction, solved exactly in its linear part in lambda = log(alpha / sigma):

  x_t = sigma_t/sigma_s e^{-tau^2 h} x_s
        + (1 + tau^2) sigma_t e^{-tau^2 lambda_t} int_{lambda_s}^{lambda_t} e^{(1 + tau^2) l} D(l) dl
        + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi,

with D replaced by its Lagrange interpolant through earlier evaluations (predictor, order p: the
p latest) or through the new evaluation and earlier ones (corrector, order c). The integral of each
Lagrange basis polynomial L_j is (substituting l = lambda_t + v)
  (1 + tau^2) alpha_t int_{-h}^0 e^{(1 + tau^2) v} L_j(lambda_t + v) dv
(Gauss-Legendre, ``multistep.lagrange_integrals``; diffusers expands the polynomial in powers of
the absolute lambda instead: equal to 1e-15 in float64 on tests/data/sde_solvers).

Step i (t_i -> t_{i+1}): evaluate D_i at the predicted x_i^p; correct x_i^c = x_{i-1}^c -> t_i
again with the corrector through D_i, D_{i-1}, ... and the *same* xi_{i-1} (so x_i^c = x_i^p +
a combination of D's: the noise cancels); predict x_{i+1}^p from x_i^c with a fresh xi_i. The
corrector re-uses the evaluation the next predictor needs: one NFE per step, one engine row whose
update is the correction composed with the prediction. The last x_N is the predictor's (as the
reference: no evaluation at t_N unless ``final_denoise``).
"""
from __future__ import annotations

import math
from typing import List

import numpy as np

from diffusion.samplers import engine
from diffusion.samplers.dpm_solver import _as
from diffusion.samplers.engine import Program
from diffusion.samplers.multistep import _check_order, lagrange_integrals
from diffusion.samplers.registry import register_sampler

_fd = lambda hp: int(bool(hp["final_denoise"]))
PAPER = "Xue et al. 2023, SA-Solver"


def sa_coefficients(schedule, node_times: List[float], s: float, t: float, tau: float,
                    corrector: bool) -> np.ndarray:
  """Weights w_j (one per node, in the order of ``node_times``) of the D's in the SA step s -> t:
  (1 + tau^2) alpha_t int_{lambda_s}^{lambda_t} e^{(1 + tau^2)(l - lambda_t)} L_j(l) dl, plus, for
  two nodes, the reference's O(h^3) modification (diffusers' SASolverScheduler, "similar to
  UniPC"; it leaves the order unchanged): with k = 1 + tau^2,
    predictor: +-k alpha_t (h^2/2 - (k h - 1 + e^{-k h})/k^2) / (lambda_s - lambda_prev),
    corrector: +-k alpha_t (h/2 - (k h - 1 + e^{-k h})/(k^2 h)),
  added to the first node (the latest: at s for the predictor, at t for the corrector) and
  taken from the other. ``node_times`` newest first."""
  a_t, _, l_t = _as(schedule, t)
  _, _, l_s = _as(schedule, s)
  k = 1.0 + tau * tau
  h = l_t - l_s
  lams = [float(_as(schedule, u)[2]) for u in node_times]
  w = k * a_t * lagrange_integrals(lams, l_s, l_t, lambda l: np.exp(k * (l - l_t)), n_quad=40)
  if len(lams) == 2:
    tail = k * h + math.expm1(-k * h)  # k h - 1 + e^{-k h}
    if corrector:
      extra = k * a_t * (h / 2.0 - tail / (k * k * h))
    else:
      extra = k * a_t * (h * h / 2.0 - tail / (k * k)) / (lams[0] - lams[1])
    w[0] += extra
    w[1] -= extra
  return w


def _update(schedule, rows, times, s, t, tau, corrector) -> engine.Lin:
  """sigma_t/sigma_s e^{-tau^2 h} x + sum_j w_j D_j (no noise)."""
  _, sg_s, l_s = _as(schedule, s)
  _, sg_t, l_t = _as(schedule, t)
  out = {"x": sg_t / sg_s * math.exp(-tau * tau * (l_t - l_s))}
  for r, w in zip(rows, sa_coefficients(schedule, times, s, t, tau, corrector)):
    out[r] = out.get(r, 0.0) + float(w)
  return out


def sa_solver_program(schedule, time_grid, predictor_order: int = 2, corrector_order: int = 2,
                      tau: float = 1.0, lower_order_final: bool = True,
                      final_denoise: bool = False) -> Program:
  """The program of ``sa_solver``: one row per step i, evaluating D_i at x_i^p, its update
  x_{i+1}^p = P_i(C_i(x_i^p)) (C_i: x_i^p + corrector - predictor of step i - 1, no noise; P_i:
  the predictor with the noise of [t_i, t_{i+1}]). Orders as diffusers' SASolverScheduler:
  predictor min(p, i + 1) (and min(., N - i) with ``lower_order_final``), corrector of x_i
  min(c, i + 1) (and min(., N - i + 2))."""
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  prog = Program()
  rows: List[int] = []
  times: List[float] = []
  last_pred = None  # (predictor form of the previous step without its noise)
  for i in range(n):
    r = prog.eval(t[i], noise_interval=(t[i], t[i + 1]))
    rows.append(r)
    times.append(float(t[i]))
    corr: engine.Lin = {"x": 1.0}
    if last_pred is not None:
      c = min(corrector_order, i + 1)
      if lower_order_final:
        c = min(c, n - i + 2)
      full = _update(schedule, rows[-c:][::-1], times[-c:][::-1], t[i - 1], t[i], tau, True)
      # x_i^c = x_i^p + (corrector - predictor): both from x_{i-1}^c with the same noise.
      corr = engine.add(corr, full, last_pred, scale=[1.0, 1.0, -1.0])
      corr["x"] = 1.0  # 1 + A - A
    p = min(predictor_order, i + 1)
    if lower_order_final:
      p = min(p, n - i)
    pred = _update(schedule, rows[-p:][::-1], times[-p:][::-1], t[i], t[i + 1], tau, False)
    last_pred = dict(pred)
    _, sg_t, l_t = _as(schedule, t[i + 1])
    h = l_t - float(_as(schedule, t[i])[2])
    noisy = dict(pred, z=sg_t * math.sqrt(-math.expm1(-2.0 * tau * tau * h)))
    prog.set_update(r, engine.subst(noisy, corr))
  if final_denoise:
    prog.final_denoise(t[-1])
  return prog


def _check_sa(hp):
  _check_order(hp["predictor_order"], 1, 4)
  _check_order(hp["corrector_order"], 1, 4)
  if not (math.isfinite(hp["tau"]) and hp["tau"] >= 0):
    raise ValueError(f"sa_solver: tau must be a finite number >= 0, got {hp['tau']!r}")


def sa_solver_order(hp) -> float:
  """min(p + 1, c) (the corrector's order, the predictor's + 1 at most); 2 at most with
  ``lower_order_final`` (its last step is a first-order predictor) or tau > 0 (weak order: the
  path enters only through its increments, see ``sa_solver``)."""
  order = min(hp["predictor_order"] + 1, hp["corrector_order"])
  if hp["lower_order_final"] or hp["tau"] > 0:
    order = min(order, 2)
  return float(order)


@register_sampler("sa_solver", kind="stochastic", order=sa_solver_order,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{PAPER}, Alg. 1-2 (SA-Predictor / SA-Corrector, data prediction)",
                  variants=({}, {"tau": 0.0}, {"predictor_order": 3, "corrector_order": 3}),
                  check=_check_sa)
def sa_solver(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
              predictor_order: int = 2, corrector_order: int = 2, tau: float = 1.0,
              lower_order_final: bool = True, final_denoise: bool = False,
              noise: str = "independent"):
  """SA-Solver, data prediction, constant stochasticity ``tau`` (tau = 0: a deterministic
  predictor-corrector ODE solver; diffusers' default tau_func is 1 on timesteps [200, 800] and 0
  elsewhere, here a constant). Defaults as diffusers' SASolverScheduler (predictor_order=2,
  corrector_order=2, lower_order_final=True, no final denoise: its last sigma is the first
  training sigma). Equal to diffusers 0.42.1 to 1e-15 on tests/data/sde_solvers. NFE = N (+1).

  Order (the registry's: weak for tau > 0): ``sa_solver_order``, min(p + 1, c), the Adams
  predictor-corrector's order. With tau > 0 the scheme sees the Brownian path only through its grid
  increments, which caps the weak order at 2 (the drift's response to the path inside a step is
  an O(h^3)-variance Gaussian independent of the increments, missing from every step) and the
  strong order at 1 (Clark & Cameron 1980). Measured exactly on Gaussian data
  (tests/test_sde_solvers.py): 2.12 (defaults), 2.12 (tau = 0), 1.94 (p = c = 3, tau = 1; 1.98 at
  64-256). The paper's own convergence statements were not checked against here. ``noise='brownian_tree'``: xi_i is the increment
  of one Brownian path per sample over [t_i, t_{i+1}]."""
  prog = sa_solver_program(schedule, time_grid, int(predictor_order), int(corrector_order),
                           float(tau), bool(lower_order_final), bool(final_denoise))
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)
