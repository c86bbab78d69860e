"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, NeurIPS 2023): a multistep predictor-corrector exponential
integrator in the parameterisation given by the empirical model statistics l, s, b (``ems.py``).

With lambda = log(alpha/sigma), L(lam) = int l, S(lam) = int s, f = ((1 - l) x / alpha - x0_hat)
and, for a step s -> t (lambda_s -> lambda_t),

  g(lam) = e^{S_s - S_lam} f(lam) - int_{lambda_s}^{lam} e^{S_s - S_r} b_r dr         (eq. 9)
  x_t = alpha_t/alpha_s e^{-(L_t - L_s)} x_s
        - alpha_t int_{lambda_s}^{lambda_t} e^{-(L_t - L_lam)} [e^{S_lam - S_s} g(lam)
                                                   + int_{lambda_s}^{lam} e^{S_lam - S_r} b_r dr] dlam

exactly (the paper's eq. 10 / its App. B). The solver replaces g by the polynomial through the
values g_j at the last k evaluation points (Taylor coefficients c = M g at lambda_s; M inverts the
Vandermonde matrix, or, ``pseudo``, takes i! times the i-th divided difference: the paper's
pseudo-order, sec. 3.4), so

  x_t = A x_s + sum_j W_j e^{S_s - S_j} f_j + offset,   A = alpha_t/alpha_s e^{-(L_t - L_s)},
  W_j = -alpha_t sum_i phi_i M_ij,   phi_i = int e^{-(L_t - L_lam) + S_lam - S_s} (lam - lambda_s)^i / i!,

linear in x and in the stored outputs f_j (elementwise for per-coordinate statistics) = ((1 - l_j) y_j - alpha_j m_j) / alpha_j (a ``Program``
row's output form p y + q m with p = (1 - l_j)/alpha_j, q = -1) plus a constant offset from b
(``engine.Program``'s 'c'). The integrals are taken on the host in float64 on the EMS's
piecewise-linear lambda grid (``ems.EMSIntegrals``: exact L, S; Gauss-Legendre elsewhere).

Predictor-corrector (the paper's sec. 3.3, Alg. 1 of its App.): each step t_{i-1} -> t_i predicts
with order p (p points: t_{i-1} and older), evaluates the model at the prediction (the step's one
NFE) and corrects with the points (t_{i-1}, t_i, older ...): order p + 1 with pseudo-order
derivatives (``c_pseudo``, default, as the reference) or order p; the corrected state keeps the
evaluated f (the reference keeps N_theta = alpha f fixed). No corrector after the last step.

Reductions (App. A.2): l = 1, s = b = 0 is DPM-Solver++'s data prediction (f = -x0_hat),
l = 0, s = -1, b = 0 DPM-Solver's noise prediction (g proportional to eps).

Statistics: scalar l, s (our default, ``ems.py``; scalar coefficients) or per coordinate (the
paper's; the coefficients are then arrays of the data's shape, the engine's per-coordinate path).
Where we differ from the reference implementation: the sampling times are used as given (the reference rounds them to the EMS grid's nodes); lower-order final
steps only when N < 10 like the other multistep samplers here (``lower_order_final_every_n``: at
every N, as the reference). ``half_corrector`` is the reference's ``half``: its code corrects
only the points with t > 0.5 (its README says t <= 0.5; we follow the code), in the schedule's
time, so it means what it does there only for schedules on t in [0, 1].
"""
from __future__ import annotations

import functools
import math
import os
from typing import List, Sequence

import numpy as np

from diffusion.samplers import engine
from diffusion.samplers import ems as ems_lib
from diffusion.samplers.engine import Program, alpha_sigma, half_logsnr
from diffusion.samplers.registry import register_sampler

PAPER = "Zheng et al. 2023, DPM-Solver-v3"
# statistics='' and 'eps': constant EMS (no file).
BUILTIN = {"": (1.0, 0.0), "eps": (0.0, -1.0)}
_fd = lambda hp: int(bool(hp["final_denoise"]))


def _check(hp):
  order = hp["order"]
  if isinstance(order, bool) or int(order) != order or not 1 <= order <= 3:
    raise ValueError(f"dpm_solver_v3: order must be an int in [1, 3], got {order!r}")
  st = hp["statistics"]
  if st not in BUILTIN and not (st.endswith(".npz") and os.path.isfile(st)):
    raise ValueError(f"dpm_solver_v3: statistics must be '' (DPM-Solver++'s l = 1, s = b = 0), "
                     f"'eps' (DPM-Solver's l = 0, s = -1, b = 0) or the path of an existing .npz "
                     f"written by diffusion.samplers.ems (EMS.save), got {st!r}")


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> ems_lib.EMS:
  return ems_lib.load_ems(path)


def statistics_for(statistics: str, schedule, lambdas) -> ems_lib.EMS:
  """The EMS a ``statistics`` hyper-parameter names, checked against the schedule and the
  sampling grid's lambdas."""
  lam = np.asarray(lambdas, np.float64)
  if statistics in BUILTIN:
    l, s = BUILTIN[statistics]
    return ems_lib.constant_ems(l, s, lam.min() - 1.0, lam.max() + 1.0)
  e = _load(statistics, os.path.getmtime(statistics))
  e.check_schedule(schedule)
  e.check_covers(lam)
  return e


def taylor_matrix(lams: Sequence[float], pseudo: bool) -> np.ndarray:
  """M (k, k): Taylor coefficients c_i (i-th derivative at lams[0]) = sum_j M_ij g_j of the
  polynomial through (lams[j], g_j) (Vandermonde inverse), or with ``pseudo`` c_i = i! times the
  divided difference g[lams[0..i]] (the paper's pseudo-order)."""
  lam = np.asarray(lams, np.float64)
  k = len(lam)
  if not pseudo:
    v = np.stack([(lam - lam[0])**i / math.factorial(i) for i in range(k)], axis=1)  # (j, i)
    return np.linalg.inv(v)
  table = [np.eye(k)]  # divided differences as linear forms over g, level by level
  for i in range(1, k):
    prev = table[-1]
    table.append(np.stack([(prev[j] - prev[j + 1]) / (lam[j] - lam[j + i])
                           for j in range(k - i)]))
  return np.stack([math.factorial(i) * table[i][0] for i in range(k)])


def step_form(ints: ems_lib.EMSIntegrals, schedule, t_s: float, t_next: float,
              times: Sequence[float], rows: Sequence[int], pseudo: bool) -> engine.Lin:
  """The update x_t (module doc) from the state x_s at t_s to t_next, with the outputs f_j of
  ``rows`` at ``times`` (times[0] is the expansion point, t_s for the predictor; the order of the
  rest matters for ``pseudo`` only), as a linear form over 'x', the rows and a constant 'c'."""
  a_s = float(alpha_sigma(schedule, t_s)[0])
  a_t = float(alpha_sigma(schedule, t_next)[0])
  l_s, l_t = float(half_logsnr(schedule, t_s)), float(half_logsnr(schedule, t_next))
  lam_j = np.asarray([float(half_logsnr(schedule, tj)) for tj in times])
  # Scalar statistics: floats and (n,) arrays below; per coordinate: (D,) and (n, D).
  L_s, L_t = ints.L(l_s)[0], ints.L(l_t)[0]
  S_s = ints.S(l_s)[0]
  q, w = ints.quad(l_s, l_t)
  kern = np.exp(-(L_t - ints.L(q)) + ints.S(q) - S_s)  # e^{-(L_t - L_lam) + S_lam - S_s}
  k = len(times)
  phi = np.stack([np.tensordot(w * (q - l_s)**i, kern, axes=(0, 0)) / math.factorial(i)
                  for i in range(k)])
  m = taylor_matrix(lam_j, pseudo)
  wj = -a_t * np.tensordot(m, phi, axes=(0, 0))  # weights of g_j: -a_t sum_i phi_i M_ij
  coef = _coef_as(ints)
  out = {"x": coef(a_t / a_s * np.exp(-(L_t - L_s)))}
  S_j = ints.S(lam_j)
  for r, wgt, sj in zip(rows, wj, S_j):
    out[r] = out.get(r, 0.0) + coef(wgt * np.exp(S_s - sj))
  if ints.b is not None:
    col = lambda v: v if np.ndim(v) == 2 else np.reshape(v, (-1, 1))  # (n,) -> (n, 1)
    bc_s = ints.Bc(l_s)[0]
    gamma = np.exp(S_s) * (ints.Bc(lam_j) - bc_s)  # (k, D): g_j = e^{S_s - S_j} f_j - gamma_j
    beta = col(np.exp(ints.S(q))) * (ints.Bc(q) - bc_s)  # (Q, D)
    off = (-np.sum(col(wj) * gamma, axis=0)
           - a_t * np.sum(w[:, None] * col(np.exp(-(L_t - ints.L(q)))) * beta, axis=0))
    out["c"] = off.reshape(ints.data_shape)
  return out


def _coef_as(ints: ems_lib.EMSIntegrals):
  """A float for scalar statistics; an array of the data's shape per coordinate."""
  if ints.per_coordinate:
    return lambda v: np.asarray(v, np.float64).reshape(ints.data_shape)
  return float


def _out_form(ints, schedule, t):
  """(p, q) of f = ((1 - l) y - alpha m) / alpha at time t (p per coordinate when l is)."""
  a = float(alpha_sigma(schedule, t)[0])
  lj = ints.interp(ints.l, float(half_logsnr(schedule, t)))[0]
  return _coef_as(ints)((1.0 - lj) / a), -1.0


def v3_program(schedule, time_grid, ems: ems_lib.EMS, order: int, p_pseudo: bool,
               use_corrector: bool, c_pseudo: bool, lower_order_final: bool,
               lower_order_final_every_n: bool, final_denoise: bool,
               half_corrector: bool = False) -> Program:
  """The ``Program`` of ``dpm_solver_v3`` (module doc; the reference's ``sample`` loop)."""
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  ints = ems_lib.EMSIntegrals(ems)
  prog = Program()
  rows: List[int] = [prog.eval(t[0], out=_out_form(ints, schedule, t[0]))]
  times: List[float] = [float(t[0])]
  p_prev = 0  # predictor order of the step that led to the current point
  for i in range(1, n + 1):
    # Step t_{i-1} -> t_i.
    p = min(order, i)
    if lower_order_final and (n < 10 or lower_order_final_every_n):
      p = min(p, n - i + 1)
    pts = list(range(len(rows) - 1, len(rows) - 1 - p, -1))  # newest first
    pred = step_form(ints, schedule, times[-1], float(t[i]), [times[j] for j in pts],
                     [rows[j] for j in pts], p_pseudo)
    if i == n:  # no evaluation at t_N: compose the prediction into the previous row's update
      prev = rows[-1]
      prog.set_update(prev, engine.subst(pred, prog.rows[prev].x))
      break
    r = prog.eval(t[i], y=pred, out=_out_form(ints, schedule, t[i]))
    rows.append(r)
    times.append(float(t[i]))
    p_prev = p
    c = p_prev + int(bool(c_pseudo))
    if use_corrector and c > 1 and (t[i] > 0.5 or not half_corrector):
      # Points (t_{i-1}, t_i, t_{i-2}, ...): the reference's corrector order.
      idx = [len(rows) - 2, len(rows) - 1] + list(range(len(rows) - 3, len(rows) - 1 - c, -1))
      corr = step_form(ints, schedule, times[-2], float(t[i]), [times[j] for j in idx],
                       [rows[j] for j in idx], c_pseudo)
      prog.set_update(r, corr)
    else:
      prog.set_update(r, dict(pred))  # x <- the prediction itself (y)
  if final_denoise:
    prog.final_denoise(t[-1])
  return prog


def _order(hp):
  """Global order: the lower-order start (a first-order first step, as the paper) caps it at 2,
  as for DPM-Solver++(3M) without warm-up; order 1 without an effective corrector is 1."""
  corrects = (hp["use_corrector"] and not hp["half_corrector"]
              and hp["order"] + int(bool(hp["c_pseudo"])) > 1)
  return 1.0 if hp["order"] == 1 and not corrects else 2.0


@register_sampler("dpm_solver_v3", kind="deterministic", order=lambda hp: _order(hp),
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{PAPER}, eq. 9-10 and App. (multistep predictor-corrector with "
                  "empirical model statistics l, s, b)",
                  variants=({}, {"use_corrector": False}, {"order": 2},
                            {"statistics": "eps"}, {"p_pseudo": True},
                            {"c_pseudo": False}),
                  check=_check)
def dpm_solver_v3(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                  statistics: str = "", order: int = 3, p_pseudo: bool = False,
                  use_corrector: bool = True, c_pseudo: bool = True,
                  half_corrector: bool = False, lower_order_final: bool = True,
                  lower_order_final_every_n: bool = False, final_denoise: bool = False):
  """DPM-Solver-v3 (module doc). ``statistics``: '' (default: l = 1, s = b = 0, DPM-Solver++'s
  data prediction: no statistics needed), 'eps' (l = 0, s = -1: DPM-Solver's noise prediction),
  or the path of an .npz of ``ems.EMS`` computed for this schedule over a lambda range covering
  the grid. ``order`` 1-3 (the paper: 3 unconditional, 2 guided); ``p_pseudo`` /
  ``c_pseudo``: pseudo-order predictor / corrector (the reference's defaults False / True);
  ``use_corrector``; ``half_corrector``: correct only at t > 0.5 (module doc).
  NFE = N (+1 final denoise)."""
  t = engine.check_grid(time_grid, schedule)
  e = statistics_for(statistics, schedule, half_logsnr(schedule, t))
  if e.data_shape is not None and tuple(e.data_shape) != tuple(x_T.shape[1:]):
    raise ValueError(f"dpm_solver_v3: the statistics have the data shape {e.data_shape}, x_T "
                     f"has {tuple(x_T.shape[1:])}")
  prog = v3_program(schedule, t, e, int(order), bool(p_pseudo), bool(use_corrector),
                    bool(c_pseudo), bool(lower_order_final), bool(lower_order_final_every_n),
                    bool(final_denoise), bool(half_corrector))
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)
