"""Multistep exponential integrators: UniPC (predictor-corrector), DEIS (tAB) and iPNDM.

All are ``Program``s of the linear engine. Start-up: a p-th order multistep method that begins
with lower orders has a first step with local error O(h^2), which caps the global order at 2. With
``warmup`` (default) the first step is instead a single-step DPM-Solver of order p - 1 whose stage
evaluations join the history, so the next step already has p points and every step has local
error O(h^{p+1}); it costs p - 2 extra NFE (for p >= 3).

``lower_order_final`` (here and in DPM-Solver++(2M)/(3M)): on a grid of N < 10 intervals the
step t_i -> t_{i+1} uses at most N - i history points, so the last interval is first order and,
for order 3, the one before it second order; N >= 10 keeps the full order to the end. The final
denoise (``final_denoise``, the step to sigma = 0) is always x <- D(x, t_N), exactly a first-order
data-prediction step to sigma = 0. The references differ:
  * DPM-Solver reference code (multistep): the same rule for N < 10 (some versions: N < 15);
  * diffusers' DPMSolverMultistepScheduler: the same rule for N < 15, and always a first-order
    last step when it goes to sigma = 0 (final_sigmas_type='zero', its default) or
    euler_at_final;
  * UniPC reference code and diffusers' UniPCMultistepScheduler: for every N.
Defaults: True for DPM-Solver++(2M)/(3M), DEIS and UniPC, False for iPNDM.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence

import numpy as np

from diffusion.samplers import engine
from diffusion.samplers.dpm_solver import _as, dpm_solver_step, dpmpp_3s_step, eps_out
from diffusion.samplers.engine import Program, f64
from diffusion.samplers.registry import register_sampler

_fd = lambda hp: int(bool(hp["final_denoise"]))


def lagrange_integrals(nodes: Sequence[float], a: float, b: float,
                       weight: Callable[[np.ndarray], np.ndarray], n_quad: int = 24) -> np.ndarray:
  """w_j = int_a^b weight(tau) L_j(tau) dtau for the Lagrange basis L_j on ``nodes`` (float64,
  Gauss-Legendre with ``n_quad`` points: exact for polynomial weights, ~1e-15 for smooth ones)."""
  g, wq = np.polynomial.legendre.leggauss(n_quad)
  tau = 0.5 * (b - a) * g + 0.5 * (a + b)
  w = 0.5 * (b - a) * wq * weight(tau)
  nodes = f64(nodes)
  out = np.zeros(len(nodes))
  for j in range(len(nodes)):
    lj = np.ones_like(tau)
    for k in range(len(nodes)):
      if k != j:
        lj = lj * (tau - nodes[k]) / (nodes[j] - nodes[k])
    out[j] = np.sum(w * lj)
  return out


def _check_order(order, lo, hi):
  if isinstance(order, bool) or int(order) != order or not lo <= order <= hi:
    raise ValueError(f"order must be an int in [{lo}, {hi}], got {order!r}")
  return int(order)


def _check_unipc(hp):
  _check_order(hp["order"], 1, 3)
  if hp["variant"] not in VARIANTS:
    raise ValueError(f"unknown UniPC variant {hp['variant']!r}; accepted: {VARIANTS}")


def _eps_history_run(update_fn, order, denoise, schedule, key, x_T, time_grid, cond,
                     sample_offset, warmup, lower_order_final, final_denoise):
  """Shared loop of eps-based multistep methods: ``update_fn(times, rows, t_next, k)`` returns the
  update form from the last evaluation (at times[-1]) to t_next with k history points."""
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  prog = Program()
  rows: List[int] = []
  times: List[float] = []
  start = 0
  if warmup and order >= 3:
    r0 = len(prog)
    dpm_solver_step(prog, schedule, t[0], t[1], order - 1)
    rows = list(range(r0, len(prog)))
    times = [float(row.t) for row in prog.rows]
    start = 1
  for i in range(start, n):
    r = prog.eval(t[i], out=eps_out(schedule, t[i]))
    rows.append(r)
    times.append(float(t[i]))
    k = min(order, len(rows))
    if lower_order_final and n < 10:
      k = min(k, n - i)
    prog.set_update(r, update_fn(times[-k:], rows[-k:], float(t[i + 1])))
  if final_denoise:
    prog.final_denoise(t[-1])
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)


def _warm_nfe(order, hp):
  return max(order - 2, 0) if hp.get("warmup", False) else 0


# ------------------------------------------------------------------------------------------------
# DEIS
# ------------------------------------------------------------------------------------------------


def deis_tab_update(schedule, times: Sequence[float], rows: Sequence[int], t_next: float):
  """DEIS tAB step (Zhang & Chen 2023, eq. 14-15 with the polynomial in t): with
  u = x / alpha and tau(t) = sigma/alpha, the PF-ODE is du/dt = eps dtau/dt, so

    x_t = alpha_t/alpha_s x_s + alpha_t sum_j eps_j int_s^t L_j(r) tau'(r) dr,
  L_j the Lagrange basis in t on the times of the history points."""
  s = times[-1]
  a_t = float(schedule.alpha(f64(t_next)))
  a_s = float(schedule.alpha(f64(s)))

  def dtau(r):
    a, sg = schedule.alpha(r), schedule.sigma(r)
    return (schedule.dsigma_dt(r) * a - sg * schedule.dalpha_dt(r)) / (a * a)

  w = lagrange_integrals(times, s, t_next, dtau)
  out = {"x": a_t / a_s}
  for r, wj in zip(rows, w):
    out[r] = a_t * wj
  return out


@register_sampler("deis", kind="deterministic",
                  order=lambda hp: float(hp["order"]) if hp["warmup"] else min(hp["order"], 2.0),
                  nfe=lambda n, hp: n + _warm_nfe(hp["order"], hp) + _fd(hp),
                  nfe_per_step="1 (+order-2 warm-up)",
                  paper="Zhang & Chen 2023, DEIS, eq. 14-15 (tAB: exponential integrator, "
                  "Lagrange extrapolation of eps in t)",
                  variants=({}, {"order": 1}, {"order": 2}),
                  check=lambda hp: _check_order(hp["order"], 1, 3))
def deis(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0, order: int = 3,
         warmup: bool = True, lower_order_final: bool = True, final_denoise: bool = False):
  """DEIS-tAB of ``order`` 1-3 (history points; order 1 is DDIM). ``lower_order_final``: lower
  order on the last intervals when N < 10 (module doc). NFE = N (+order-2 warm-up)
  (+1 final denoise)."""
  order = _check_order(order, 1, 3)
  return _eps_history_run(lambda ts, rs, tn: deis_tab_update(schedule, ts, rs, tn), order,
                          denoise, schedule, key, x_T, time_grid, cond, sample_offset, warmup,
                          lower_order_final, final_denoise)


# ------------------------------------------------------------------------------------------------
# iPNDM
# ------------------------------------------------------------------------------------------------


def ipndm_update(schedule, times: Sequence[float], rows: Sequence[int], t_next: float):
  """iPNDM step (Zhang & Chen 2023, sec. 4 / App.: PNDM's linear multistep with lower-order
  start): Adams-Bashforth in u = x/alpha against tau = sigma/alpha, du/dtau = eps,

    u_t = u_s + sum_j eps_j int_{tau_s}^{tau_t} L_j(tau) dtau   (L_j Lagrange in tau),
  which for equal steps in tau gives the paper's coefficients (1), (3, -1)/2, (23, -16, 5)/12,
  (55, -59, 37, -9)/24, and stays order-k on any grid."""
  s = times[-1]
  tau = lambda tt: float(schedule.edm_sigma(f64(tt)))
  a_t = float(schedule.alpha(f64(t_next)))
  a_s = float(schedule.alpha(f64(s)))
  w = lagrange_integrals([tau(x) for x in times], tau(s), tau(t_next), np.ones_like)
  out = {"x": a_t / a_s}
  for r, wj in zip(rows, w):
    out[r] = a_t * wj
  return out


@register_sampler("ipndm", kind="deterministic",
                  order=lambda hp: float(hp["order"]) if hp["warmup"] else min(hp["order"], 2.0),
                  nfe=lambda n, hp: n + _warm_nfe(hp["order"], hp) + _fd(hp),
                  nfe_per_step="1 (+order-2 warm-up)",
                  paper="Zhang & Chen 2023, DEIS, iPNDM (PNDM, Liu et al. 2022, with "
                  "lower-order Adams-Bashforth start)",
                  variants=({}, {"order": 1}, {"order": 2}, {"order": 3}),
                  check=lambda hp: _check_order(hp["order"], 1, 4))
def ipndm(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0, order: int = 4,
          warmup: bool = True, lower_order_final: bool = False, final_denoise: bool = False):
  """iPNDM of ``order`` 1-4 with variable-step Adams-Bashforth coefficients (see
  ``ipndm_update``). ``lower_order_final`` (off by default): lower order on the last intervals
  when N < 10 (module doc). NFE = N (+order-2 warm-up) (+1 final denoise)."""
  order = _check_order(order, 1, 4)
  return _eps_history_run(lambda ts, rs, tn: ipndm_update(schedule, ts, rs, tn), order,
                          denoise, schedule, key, x_T, time_grid, cond, sample_offset, warmup,
                          lower_order_final, final_denoise)


# ------------------------------------------------------------------------------------------------
# UniPC
# ------------------------------------------------------------------------------------------------

VARIANTS = ("bh1", "bh2")


def unipc_coefs(schedule, times: Sequence[float], rows: Sequence[int], t_next: float, variant: str,
                use_corrector: bool):
  """UniP / UniC coefficients for the step times[-1] -> t_next with data predictions at ``times``
  (Zhao et al. 2023, Alg. 2 with B(h) = h (bh1) or e^h - 1 (bh2), data prediction).

  Returns (x_pred, x_corr, m_new): forms over 'x' and rows; x_corr refers to the new output as the
  string key 'new' (filled in by the caller), None without the corrector.
  """
  p = len(times)
  s = times[-1]
  a_s, sg_s, l_s = _as(schedule, s)
  a_t, sg_t, l_t = _as(schedule, t_next)
  h = l_t - l_s
  hh = -h
  h_phi_1 = math.expm1(hh)
  b_h = hh if variant == "bh1" else math.expm1(hh)
  m0 = rows[-1]
  rks, d1s = [], []
  for k in range(1, p):
    _, _, lk = _as(schedule, times[-1 - k])
    rk = (lk - l_s) / h
    rks.append(rk)
    d1s.append({rows[-1 - k]: 1.0 / rk, m0: -1.0 / rk})
  rks.append(1.0)
  rks = np.asarray(rks)
  big_r, b = [], []
  h_phi_k = h_phi_1 / hh - 1.0
  fac = 1
  for i in range(1, p + 1):
    big_r.append(rks**(i - 1))
    b.append(h_phi_k * fac / b_h)
    fac *= i + 1
    h_phi_k = h_phi_k / hh - 1.0 / fac
  big_r, b = np.asarray(big_r), np.asarray(b)
  base = {"x": sg_t / sg_s, m0: -a_t * h_phi_1}
  pred = dict(base)
  if p >= 2:
    rhos_p = np.array([0.5]) if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1])
    pred = engine.add(base, *d1s, scale=[1.0] + list(-a_t * b_h * rhos_p))
  corr = None
  if use_corrector:
    rhos_c = np.array([0.5]) if p == 1 else np.linalg.solve(big_r, b)
    d1t = {"new": 1.0, m0: -1.0}
    corr = engine.add(base, *d1s, d1t, scale=[1.0] + list(-a_t * b_h * rhos_c))
  return pred, corr


def _fill(form, new_row):
  return {(new_row if k == "new" else k): v for k, v in form.items()}


def _unipc_order(hp) -> float:
  """UniC raises UniP-p to p + 1 (p = 3 without warm-up: 3, the start-up's limit); lowering the
  final orders at every N makes the uncorrected last step first order at every N, which caps the
  global order at 2 (measured 2.04; the N < 10 rule keeps the full order at large N)."""
  full = float(hp["order"]) + 1.0 if (hp["order"] < 3 or hp["warmup"]) else 3.0
  if hp["lower_order_final"] and hp["lower_order_final_every_n"]:
    return min(full, 2.0)
  return full


@register_sampler("unipc", kind="deterministic", order=_unipc_order,
                  nfe=lambda n, hp: n + (2 if hp["warmup"] and hp["order"] == 3 else 0) + _fd(hp),
                  nfe_per_step="1 (+2 warm-up)",
                  paper="Zhao et al. 2023, UniPC, Alg. 2-3 (UniP-p predictor + UniC corrector, "
                  "B(h) variants bh1 / bh2, data prediction)",
                  variants=({"order": 2}, {"order": 1}, {"order": 3, "warmup": True},
                            {"order": 2, "variant": "bh1"}, {"order": 1, "variant": "bh1"},
                            {"order": 3, "variant": "bh1", "warmup": True},
                            {"order": 3, "warmup": True, "lower_order_final_every_n": False},
                            {"order": 2, "lower_order_final_every_n": False}),
                  check=_check_unipc)
def unipc(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0, order: int = 3,
          variant: str = "bh2", warmup: bool = False, lower_order_final: bool = True,
          lower_order_final_every_n: bool = True, final_denoise: bool = False):
  """UniPC-p: step t_{i-1} -> t_i predicts with UniP-p from the last p data predictions, evaluates
  D at the prediction (the step's one NFE, reused by the next step) and corrects with UniC-p,
  raising the order to p + 1 at no extra NFE. No corrector after the last step. Orders start at 1
  (the paper's lower-order start-up) and, with ``lower_order_final``, drop at the end at every N
  (``lower_order_final_every_n=True``, the default since it was measured: what the UniPC
  reference code and diffusers do) or only when N < 10 (``False``: DPM-Solver's rule, this
  sampler's earlier default). On grids whose last logSNR step is large (uniform t, quadratic) the
  full-order final steps of N >= 10 are unstable: on the exact mixtures the error at N = 10 is
  4-15x that of N = 8 without lowering, and lowering at every N removes the jump; on the digits VP
  model (karras grid) it halves FID at NFE 10 (28.9 -> 14.5) and lowers it at NFE 20 (18.6 ->
  17.2); on uniform-logSNR grids of the mixtures it costs 1.3-3.5x at N = 10 (docs/samplers.md,
  "UniPC's final orders").

  The lower-order start-up limits UniPC-3 to global order 3 (measured 3.4-4.1 over NFE 20-200);
  with ``warmup`` (order 3 only) the first step is a third-order single-step DPM-Solver(++) whose
  two stage evaluations join the history, giving order 4 for 2 extra NFE.
  NFE = N (+2 warm-up) (+1 final denoise).
  """
  order = int(order)
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  prog = Program()
  if warmup and order == 3:
    rows, times = dpmpp_3s_step(prog, schedule, t[0], t[1])
    first = 2
    if n == 1:
      if final_denoise:
        prog.final_denoise(t[-1])
      return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)
    rows.append(prog.eval(t[1]))  # x(t1) from the single step; evaluated, not corrected
    times.append(float(t[1]))
  else:
    rows, times = [prog.eval(t[0])], [float(t[0])]
    first = 1
  for i in range(first, n + 1):
    # Step t_{i-1} -> t_i: as many points as available (lower-order start-up), lower at the end.
    k = min(order, len(rows))
    if lower_order_final and (n < 10 or lower_order_final_every_n):
      k = min(k, n - i + 1)
    ts, rs = times[-k:], rows[-k:]
    last = i == n
    pred, corr = unipc_coefs(schedule, ts, rs, float(t[i]), variant, use_corrector=not last)
    if last:
      # No evaluation at t_N: compose the final prediction into the previous row's update.
      prev = rows[-1]
      prog.set_update(prev, engine.subst(pred, prog.rows[prev].x))
      break
    r = prog.eval(t[i], y=pred)
    rows.append(r)
    times.append(float(t[i]))
    prog.set_update(r, _fill(corr, r))
  if final_denoise:
    prog.final_denoise(t[-1])
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)
