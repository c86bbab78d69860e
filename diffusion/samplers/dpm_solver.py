"""DPM-Solver (noise prediction) and DPM-Solver++ (data prediction) exponential integrators.

Notation (Lu et al. 2022a, sec. 3): lambda(t) = log(alpha_t / sigma_t) (half the logSNR), for a step
s -> t (t later, less noise) h = lambda_t - lambda_s > 0. The exact PF-ODE solution is

  x_t = alpha_t/alpha_s x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda  (2022a, eq. 3.4)
  x_t = sigma_t/sigma_s x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) dlambda     (2022b, eq. 8)

and the solvers Taylor-expand eps or x0 in lambda. Every fixed-step solver here is a ``Program`` of
the linear engine: coefficients in float64 on the host, one ``lax.scan`` at run time. The adaptive
DPM-Solver-12 / 23 run in a ``lax.while_loop``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import equinox as eqx
import jax
import jax.numpy as jnp

from diffusion.samplers import engine
from diffusion.samplers.engine import Program, alpha_sigma, half_logsnr, t_from_half_logsnr
from diffusion.samplers.registry import register_sampler

Array = Any
_fd = lambda hp: int(bool(hp["final_denoise"]))
P22A = "Lu et al. 2022, DPM-Solver"
P22B = "Lu et al. 2022, DPM-Solver++"


def _as(schedule, t):
  a, s = alpha_sigma(schedule, t)
  return float(a), float(s), float(half_logsnr(schedule, t))


def eps_out(schedule, t):
  """(p, q) so that p y + q m = eps_hat = (y - alpha m) / sigma at time t."""
  a, s = alpha_sigma(schedule, t)
  return float(1.0 / s), float(-a / s)


# ------------------------------------------------------------------------------------------------
# DPM-Solver-1/2/3 (single-step, noise prediction)
# ------------------------------------------------------------------------------------------------


def dpm_solver_step(prog: Program, schedule, s: float, t: float, order: int,
                    r1: float | None = None, r2: float = 2.0 / 3.0) -> Dict[str, Any]:
  """Adds one DPM-Solver-k step s -> t (Lu et al. 2022a, eq. 3.7 (k=1), Alg. 1 (k=2), Alg. 2
  (k=3)) as ``order`` rows. Returns the forms {'low': ..., 'high': ...} for adaptive use."""
  a_s, sg_s, l_s = _as(schedule, s)
  a_t, sg_t, l_t = _as(schedule, t)
  h = l_t - l_s
  e = math.expm1(h)
  r0 = prog.eval(s, out=eps_out(schedule, s))
  x1 = {"x": a_t / a_s, r0: -sg_t * e}
  if order == 1:
    prog.set_update(r0, x1)
    return {"high": x1}
  r1 = (0.5 if order == 2 else 1.0 / 3.0) if r1 is None else r1
  s1 = float(t_from_half_logsnr(schedule, l_s + r1 * h))
  a1, sg1, _ = _as(schedule, s1)
  u1 = {"x": a1 / a_s, r0: -sg1 * math.expm1(r1 * h)}
  i1 = prog.eval(s1, y=u1, out=eps_out(schedule, s1))
  # DPM-Solver-2: x_t = x1 - sigma_t/(2 r1) (e^h - 1) (eps(u1) - eps_s)
  c2 = -sg_t / (2 * r1) * e
  x2 = engine.add(x1, {i1: c2, r0: -c2})
  if order == 2:
    prog.set_update(i1, x2)
    return {"low": x1, "high": x2}
  s2 = float(t_from_half_logsnr(schedule, l_s + r2 * h))
  a2, sg2, _ = _as(schedule, s2)
  c = -sg2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)
  u2 = {"x": a2 / a_s, r0: -sg2 * math.expm1(r2 * h) - c, i1: c}
  i2 = prog.eval(s2, y=u2, out=eps_out(schedule, s2))
  c3 = -sg_t / r2 * (e / h - 1.0)
  x3 = engine.add(x1, {i2: c3, r0: -c3})
  prog.set_update(i2, x3)
  return {"low": x2, "high": x3}


def _register_dpm_solver(k: int):

  @register_sampler(f"dpm_solver_{k}", kind="deterministic", order=float(k),
                    nfe=lambda n, hp: k * n + _fd(hp), nfe_per_step=str(k),
                    paper=f"{P22A}, " + {1: "eq. 3.7 (= DDIM)", 2: "Alg. 1 (r1 = 1/2)",
                                         3: "Alg. 2 (r1 = 1/3, r2 = 2/3)"}[k])
  def sampler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
              final_denoise: bool = False):
    prog = engine.stepwise_program(lambda p, s, u: dpm_solver_step(p, schedule, s, u, k),
                                   schedule, time_grid, final_denoise)
    return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)

  sampler.__name__ = f"dpm_solver_{k}"
  sampler.__doc__ = (f"DPM-Solver-{k}, single-step, on the N intervals of the grid (uniform "
                     f"logSNR in the paper). NFE = {k} N (+1 final denoise).")
  return sampler


dpm_solver_1 = _register_dpm_solver(1)
dpm_solver_2 = _register_dpm_solver(2)
dpm_solver_3 = _register_dpm_solver(3)


# ------------------------------------------------------------------------------------------------
# Adaptive DPM-Solver-12 / 23 (Lu et al. 2022a, sec. 3.3 and Alg. 4-5)
# ------------------------------------------------------------------------------------------------


def _adaptive(order: int, denoise, schedule, key, x_T, time_grid, cond, rtol, atol, h_init,
              theta, max_steps, final_denoise):
  """Adaptive step size in lambda: a step from lambda_s with size h computes a DPM-Solver-(k-1)
  and a DPM-Solver-k solution sharing evaluations, E = max over samples of
  RMS((x_high - x_low) / delta), delta = max(atol, rtol max(|x_low|, |x_s|)); accept if E <= 1
  (x <- x_high), then h <- min(theta h E^{-1/k}, lambda_end - lambda). eps(x_s) is reused when a
  step is rejected. Step sizes depend on the whole batch (like the paper's code). Reaching
  ``max_steps`` (accepted + rejected) before lambda_end raises at run time (equinox.error_if),
  as ``ode_adaptive`` does through diffrax."""
  t = engine.check_grid(time_grid, schedule)
  dt = x_T.dtype
  l0, l1 = float(half_logsnr(schedule, t[0])), float(half_logsnr(schedule, t[-1]))
  r1 = 0.5 if order == 2 else 1.0 / 3.0
  r2 = 2.0 / 3.0
  red = tuple(range(1, x_T.ndim))

  def tl(lam):
    return schedule.t_from_logsnr(2.0 * lam)

  def eps_at(x, lam):
    tt = tl(lam)
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    m = denoise(x, engine.bt(tt, x), cond).astype(dt)
    return (x - a * m) / s

  def ab(lam):
    tt = tl(lam)
    return schedule.alpha(tt), schedule.sigma(tt)

  def attempt(x, lam_s, h, eps_s):
    lam_t = lam_s + h
    a_s, _ = ab(lam_s)
    a_t, sg_t = ab(lam_t)
    e = jnp.expm1(h)
    x1 = a_t / a_s * x - sg_t * e * eps_s
    a1, sg1 = ab(lam_s + r1 * h)
    u1 = a1 / a_s * x - sg1 * jnp.expm1(r1 * h) * eps_s
    d1 = eps_at(u1, lam_s + r1 * h) - eps_s
    x2 = x1 - sg_t / (2 * r1) * e * d1
    if order == 2:
      return x1, x2
    a2, sg2 = ab(lam_s + r2 * h)
    u2 = (a2 / a_s * x - sg2 * jnp.expm1(r2 * h) * eps_s
          - sg2 * r2 / r1 * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * d1)
    d2 = eps_at(u2, lam_s + r2 * h) - eps_s
    x3 = x1 - sg_t / r2 * (e / h - 1.0) * d2
    return x2, x3

  def cond_fn(c):
    return (c["lam"] < l1 - 1e-7 * max(1.0, abs(l1))) & (c["steps"] < max_steps)

  def body(c):
    h = jnp.minimum(c["h"], l1 - c["lam"])
    lo, hi = attempt(c["x"], c["lam"], h, c["eps"])
    delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(lo), jnp.abs(c["x"])))
    err = jnp.max(jnp.sqrt(jnp.mean(((hi - lo) / delta)**2, axis=red)))
    accept = err <= 1.0
    lam_new = jnp.where(accept, c["lam"] + h, c["lam"])
    x_new = jnp.where(accept, hi, c["x"])
    done = lam_new >= l1 - 1e-7 * max(1.0, abs(l1))
    need = accept & ~done
    eps_new = jax.lax.cond(need, lambda: eps_at(x_new, lam_new), lambda: c["eps"])
    h_new = theta * h * jnp.maximum(err, 1e-10)**(-1.0 / order)
    return dict(x=x_new, lam=lam_new, h=h_new.astype(dt), eps=eps_new,
                nfe=c["nfe"] + (order - 1) + need.astype(jnp.int32), steps=c["steps"] + 1,
                rejected=c["rejected"] + (~accept).astype(jnp.int32))

  lam0 = jnp.asarray(l0, dt)
  c0 = dict(x=x_T, lam=lam0, h=jnp.asarray(h_init, dt), eps=eps_at(x_T, lam0),
            nfe=jnp.asarray(1, jnp.int32), steps=jnp.asarray(0, jnp.int32),
            rejected=jnp.asarray(0, jnp.int32))
  c = jax.lax.while_loop(cond_fn, body, c0)
  unfinished = c["lam"] < l1 - 1e-7 * max(1.0, abs(l1))
  # Like ode_adaptive (diffrax's max_steps check): an unfinished solve is a run-time error, not a
  # silently wrong sample.
  x = eqx.error_if(c["x"], unfinished,
                   f"dpm_solver_{order - 1}{order}: reached max_steps={max_steps} before the end "
                   f"of the time grid; increase max_steps (or rtol/atol)")
  nfe = c["nfe"]
  if final_denoise:
    x = denoise(x, engine.bt(t[-1], x), cond).astype(dt)
    nfe = nfe + 1
  return x, {"nfe": nfe, "num_steps": c["steps"], "num_rejected_steps": c["rejected"]}


def _check_adaptive(hp):
  for name in ("rtol", "atol", "h_init"):
    if not hp[name] > 0:
      raise ValueError(f"{name} must be > 0, got {hp[name]!r}")
  if not 0 < hp["theta"] <= 1:
    raise ValueError(f"theta must be in (0, 1], got {hp['theta']!r}")
  if not hp["max_steps"] >= 1:
    raise ValueError(f"max_steps must be an int >= 1, got {hp['max_steps']!r}")


@register_sampler("dpm_solver_12", kind="deterministic", order=2.0, nfe=None,
                  nfe_per_step="2 per accepted step, 1 per rejected (adaptive)",
                  paper=f"{P22A}, sec. 3.3 / Alg. 4 (adaptive step size, orders 1 and 2)",
                  check=_check_adaptive)
def dpm_solver_12(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                  rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                  theta: float = 0.9, max_steps: int = 10_000, final_denoise: bool = False):
  """Adaptive DPM-Solver-12 from time_grid[0] to time_grid[-1] (only the ends of the grid are
  used). Defaults are the paper's for images (atol 0.0078, rtol 0.05). Raises at run time if
  ``max_steps`` (accepted + rejected) steps do not reach the end of the grid."""
  return _adaptive(2, denoise, schedule, key, x_T, time_grid, cond, rtol, atol, h_init, theta,
                   int(max_steps), final_denoise)


@register_sampler("dpm_solver_23", kind="deterministic", order=3.0, nfe=None,
                  nfe_per_step="3 per accepted step, 2 per rejected (adaptive)",
                  paper=f"{P22A}, sec. 3.3 / Alg. 5 (adaptive step size, orders 2 and 3)",
                  check=_check_adaptive)
def dpm_solver_23(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                  rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                  theta: float = 0.9, max_steps: int = 10_000, final_denoise: bool = False):
  """Adaptive DPM-Solver-23 (DPM-Solver-2 with r1 = 1/3 as the lower-order estimate). Raises at
  run time if ``max_steps`` (accepted + rejected) steps do not reach the end of the grid."""
  return _adaptive(3, denoise, schedule, key, x_T, time_grid, cond, rtol, atol, h_init, theta,
                   int(max_steps), final_denoise)


# ------------------------------------------------------------------------------------------------
# DPM-Solver++ (data prediction)
# ------------------------------------------------------------------------------------------------


@register_sampler("dpmpp_2s", kind="deterministic", order=2.0,
                  nfe=lambda n, hp: 2 * n + _fd(hp), nfe_per_step="2",
                  paper=f"{P22B}, Alg. 1 (DPM-Solver++(2S), r = 1/2)",
                  check=lambda hp: _check_r(hp["r"]))
def dpmpp_2s(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
             r: float = 0.5, final_denoise: bool = False):
  """DPM-Solver++(2S): u = sigma_s1/sigma_s x - alpha_s1 (e^{-r h} - 1) D_s;
  x_t = sigma_t/sigma_s x - alpha_t (e^{-h} - 1) [(1 - 1/(2r)) D_s + 1/(2r) D(u, s1)].
  NFE = 2 N (+1)."""
  prog = engine.stepwise_program(lambda p, s, u: dpmpp_2s_step(p, schedule, s, u, r), schedule,
                                 time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)


D2_WEIGHTS = {"taylor": 2.0, "reference": 1.0}


def _check_r(r):
  if not 0 < r < 1:
    raise ValueError(f"dpmpp_2s: r must be in (0, 1), got {r!r}")


def _check_d2_weight(d2_weight):
  if d2_weight not in D2_WEIGHTS:
    raise ValueError(f"dpmpp_3m: d2_weight must be one of {sorted(D2_WEIGHTS)}, got "
                     f"{d2_weight!r}")


def dpmpp_multistep_update(schedule, ts: List[float], rows: List[int], t_next: float,
                           order: int, d2_weight: str = "taylor") -> engine.Lin:
  """DPM-Solver++ multistep update from ts[-1] to t_next with the data predictions of ``rows`` at
  times ``ts`` (oldest first), of order 1, 2 (Lu et al. 2022b, Alg. 2) or 3 (the third-order
  multistep: phi_1 = e^{-h} - 1, phi_2 = phi_1/h + 1, phi_3 = phi_2/h - 1/2, the second-order
  Taylor term of D in lambda integrated exactly).

  Third order: x_t = sigma_t/sigma_s x - alpha_t phi_1 D_0 + alpha_t phi_2 D_1 - w alpha_t phi_3 D_2
  with D_2 ~ h^2 D''/2, so the Taylor expansion needs w = 2 (``d2_weight='taylor'``, measured global
  order 3.1); the DPM-Solver reference code and diffusers use w = 1 (``'reference'``, measured
  order 2.15), available to reproduce their numbers.
  """
  a_t, sg_t, l_t = _as(schedule, t_next)
  a0, sg0, l0 = _as(schedule, ts[-1])
  h = l_t - l0
  phi1 = math.expm1(-h)
  m0 = rows[-1]
  out = {"x": sg_t / sg0}
  out[m0] = -a_t * phi1
  if order == 1:
    return out
  _, _, lm1 = _as(schedule, ts[-2])
  m1 = rows[-2]
  r0 = (l0 - lm1) / h
  if order == 2:
    # x_t = sigma_t/sigma_s x - alpha_t phi1 [(1 + 1/(2 r)) D_0 - 1/(2 r) D_1]
    c = -a_t * phi1 * 0.5 / r0
    out[m0] += c
    out[m1] = -c
    return out
  _, _, lm2 = _as(schedule, ts[-3])
  m2 = rows[-3]
  r1 = (lm1 - lm2) / h
  phi2 = phi1 / h + 1.0
  phi3 = phi2 / h - 0.5
  # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0+r1)(D1_0 - D1_1),
  # D2 = (D1_0 - D1_1)/(r0+r1).
  d10 = {m0: 1 / r0, m1: -1 / r0}
  d11 = {m1: 1 / r1, m2: -1 / r1}
  diff = engine.add(d10, d11, scale=[1.0, -1.0])
  d1 = engine.add(d10, diff, scale=[1.0, r0 / (r0 + r1)])
  d2 = engine.add(diff, scale=[1.0 / (r0 + r1)])
  # Taylor: x_t = sigma_t/sigma_s x + alpha_t [-phi1 D + h phi2 D' - h^2 phi3 D''] with
  # D1 ~ h D' and D2 ~ h^2 D''/2, hence the factor 2 on the last term.
  return engine.add(out, d1, d2, scale=[1.0, a_t * phi2, -D2_WEIGHTS[d2_weight] * a_t * phi3])


def dpmpp_2s_step(prog: Program, schedule, s: float, t: float, r: float = 0.5):
  """Adds one DPM-Solver++(2S) step s -> t (Lu et al. 2022b, Alg. 1): two rows, returns
  (rows, their times)."""
  a_s, sg_s, l_s = _as(schedule, s)
  a_t, sg_t, l_t = _as(schedule, t)
  h = l_t - l_s
  s1 = float(t_from_half_logsnr(schedule, l_s + r * h))
  a1, sg1, _ = _as(schedule, s1)
  r0 = prog.eval(s)
  r1 = prog.eval(s1, y={"x": sg1 / sg_s, r0: -a1 * math.expm1(-r * h)})
  c = -a_t * math.expm1(-h)
  prog.set_update(r1, {"x": sg_t / sg_s, r0: c * (1 - 0.5 / r), r1: c * 0.5 / r})
  return [r0, r1], [float(s), s1]


def dpmpp_3s_step(prog: Program, schedule, s: float, t: float, r1: float = 1.0 / 3.0,
                  r2: float = 2.0 / 3.0):
  """Adds one third-order single-step data-prediction step s -> t (DPM-Solver-3, Lu et al. 2022a
  Alg. 2, written for x0 as in DPM-Solver++, 2022b App.): three rows at s, s1, s2 with
  lambda_{s_k} = lambda_s + r_k h; phi2(h) = (e^{-h} - 1)/h + 1:

    u1 = sigma_1/sigma_s x - alpha_1 (e^{-r1 h} - 1) D_s,                       D1 = D(u1) - D_s
    u2 = sigma_2/sigma_s x - alpha_2 (e^{-r2 h} - 1) D_s + alpha_2 (r2/r1) phi2(r2 h) D1,
    x_t = sigma_t/sigma_s x - alpha_t (e^{-h} - 1) D_s + alpha_t / r2 phi2(h) (D(u2) - D_s).
  Returns (rows, their times)."""
  a_s, sg_s, l_s = _as(schedule, s)
  a_t, sg_t, l_t = _as(schedule, t)
  h = l_t - l_s
  phi2 = lambda z: math.expm1(-z) / z + 1.0
  s1 = float(t_from_half_logsnr(schedule, l_s + r1 * h))
  s2 = float(t_from_half_logsnr(schedule, l_s + r2 * h))
  a1, sg1, _ = _as(schedule, s1)
  a2, sg2, _ = _as(schedule, s2)
  r0 = prog.eval(s)
  i1 = prog.eval(s1, y={"x": sg1 / sg_s, r0: -a1 * math.expm1(-r1 * h)})
  c = a2 * r2 / r1 * phi2(r2 * h)
  i2 = prog.eval(s2, y={"x": sg2 / sg_s, r0: -a2 * math.expm1(-r2 * h) - c, i1: c})
  c3 = a_t / r2 * phi2(h)
  prog.set_update(i2, {"x": sg_t / sg_s, r0: -a_t * math.expm1(-h) - c3, i2: c3})
  return [r0, i1, i2], [float(s), s1, s2]


def _dpmpp_multistep(order, denoise, schedule, key, x_T, time_grid, cond, sample_offset,
                     lower_order_final, final_denoise, warmup=False, d2_weight="taylor"):
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  prog = Program()
  rows: List[int] = []
  times: List[float] = []
  start = 0
  if warmup and order >= 3:
    # Second-order single-step first step; its midpoint evaluation joins the history, so the
    # next step is already third order: every step has local error O(h^4), global O(h^3).
    rows, times = dpmpp_2s_step(prog, schedule, t[0], t[1])
    start = 1
  for i in range(start, n):
    r = prog.eval(t[i])
    rows.append(r)
    times.append(float(t[i]))
    k = min(order, len(rows))
    if lower_order_final and n < 10:
      k = min(k, n - i)
    prog.set_update(r, dpmpp_multistep_update(schedule, times, rows, t[i + 1], k, d2_weight))
  if final_denoise:
    prog.final_denoise(t[-1])
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)


@register_sampler("dpmpp_2m", kind="deterministic", order=2.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{P22B}, Alg. 2 (DPM-Solver++(2M))")
def dpmpp_2m(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
             lower_order_final: bool = True, final_denoise: bool = False):
  """DPM-Solver++(2M): first step first order, then second-order multistep (and first order at
  the last step when N < 10 with ``lower_order_final``, as the DPM-Solver reference code; diffusers
  does so for N < 15: see ``diffusion.samplers.multistep``). NFE = N (+1)."""
  return _dpmpp_multistep(2, denoise, schedule, key, x_T, time_grid, cond, sample_offset,
                          lower_order_final, final_denoise)


@register_sampler("dpmpp_3m", kind="deterministic",
                  order=lambda hp: 3.0 if hp["warmup"] and hp["d2_weight"] == "taylor" else 2.0,
                  nfe=lambda n, hp: n + int(bool(hp["warmup"])) + _fd(hp),
                  nfe_per_step="1 (+1 warm-up)",
                  paper=f"{P22B}, sec. 4 (multistep, third order)",
                  variants=({}, {"warmup": False}, {"d2_weight": "reference"}),
                  check=lambda hp: _check_d2_weight(hp["d2_weight"]))
def dpmpp_3m(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
             warmup: bool = True, d2_weight: str = "taylor", lower_order_final: bool = True,
             final_denoise: bool = False):
  """DPM-Solver++(3M). Start-up: with ``warmup`` the first step is DPM-Solver++(2S) whose midpoint
  evaluation joins the history (one extra NFE; third order globally); without, orders 1, 2, 3 as in
  the paper's code, whose first-order first step limits the global order to 2 (it matters only at
  large NFE, or when t_max is not deep in the noise). Lower order at the end when N < 10 with
  ``lower_order_final`` (last interval first order, the one before second order; the DPM-Solver
  reference code: the same for N < 10; diffusers: N < 15; see ``diffusion.samplers.multistep``).
  NFE = N (+1 warm-up) (+1 final denoise).

  ``d2_weight``: the weight of phi_3 D_2 in the third-order update (see ``dpmpp_multistep_update``).
  'taylor' (default, 2 phi_3 D_2) is the consistent third-order term; 'reference' (phi_3 D_2) is
  what the DPM-Solver reference code and diffusers' DPMSolverMultistepScheduler compute, of global
  order 2 only: use it to reproduce their published numbers exactly."""
  return _dpmpp_multistep(3, denoise, schedule, key, x_T, time_grid, cond, sample_offset,
                          lower_order_final, final_denoise, warmup, d2_weight)


@register_sampler("sde_dpmpp_2m", kind="stochastic", order=2.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{P22B}, SDE-DPM-Solver++(2M) (sec. 5 / App.; data-prediction SDE)")
def sde_dpmpp_2m(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                 final_denoise: bool = True, noise: str = "independent"):
  """SDE-DPM-Solver++(2M) on the reverse SDE written with x0 (Lu et al. 2022b, eq. 9-10):

    x_t = sigma_t/sigma_s e^{-h} x_s + alpha_t (1 - e^{-2h}) D_s
          + alpha_t (1 - (1 - e^{-2h}) / (2h)) (D_s - D_prev) / r + sigma_t sqrt(1 - e^{-2h}) z,
  the linear-in-lambda Taylor term of D integrated exactly against e^{-2(lambda_t - lambda)};
  r = h_prev / h, first step without the correction. NFE = N (+1). ``noise='brownian_tree'``: z is
  the increment of one Brownian path per sample over [t, s] (``diffusion/samplers/brownian.py``).
  The ``/r`` makes the drift second order on any grid (tests/test_brownian.py: on a grid whose
  step ratio alternates 1/3, 3 the drift alone converges at order 1.8 with it, 0.8 without); the
  strong error does not show it, its noise term dominates (docs/samplers.md).

  Order (the registry's, weak for SDE samplers): 2. The noise is exact in law, the drift second
  order, and the multistep difference D_s - D_prev carries the previous step's noise into the
  drift, the drift-noise correlation one step late (an O(h^2) effect in law). Seeing the path only
  through its grid increments caps it there: each step misses the drift's response to the path
  inside it (an O(h^3)-variance Gaussian independent of the increments), weak order <= 2, strong
  <= 1 (Clark & Cameron 1980; docs/samplers.md). Measured: weak 2.00 exactly on Gaussian data (tests/test_sde_solvers.py), ~2 on the
  mixture (benchmarks/results/sde_orders.md); strong 1.3 before its asymptote. (Registered 1
  until the weak order was measured.)"""
  prog = sde_dpmpp_2m_program(schedule, time_grid, final_denoise)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


def sde_dpmpp_2m_program(schedule, time_grid, final_denoise: bool) -> Program:
  """The program of ``sde_dpmpp_2m`` (one row per step, its noise interval the step's)."""
  t = engine.check_grid(time_grid, schedule)
  prog = Program()
  prev = None
  for i in range(len(t) - 1):
    a_s, sg_s, l_s = _as(schedule, t[i])
    a_t, sg_t, l_t = _as(schedule, t[i + 1])
    h = l_t - l_s
    e2 = -math.expm1(-2 * h)
    r = prog.eval(t[i], noise_interval=(t[i], t[i + 1]))
    upd = {"x": sg_t / sg_s * math.exp(-h), r: a_t * e2, "z": sg_t * math.sqrt(e2)}
    if prev is not None:
      rr = (l_s - prev[1]) / h
      c = a_t * (1 - e2 / (2 * h)) / rr
      upd[r] += c
      upd[prev[0]] = -c
    prog.set_update(r, upd)
    prev = (r, l_s)
  if final_denoise:
    prog.final_denoise(t[-1])
  return prog


# ------------------------------------------------------------------------------------------------
# Stochastic DPM-Solver++: (3M) SDE and (2S) SDE on the data-prediction SDE (Lu et al. 2022b, eq. 9)
# ------------------------------------------------------------------------------------------------

# The weight of D_2 in the third-order SDE update as a function of phi_3 = phi_3(2h) (see
# ``sde_dpmpp_multistep_update``): the consistent Taylor term, k-diffusion's, diffusers'.
SDE_D2_COEFFICIENTS = {"taylor": lambda phi3: -2.0 * phi3, "reference": lambda phi3: -phi3,
                       "diffusers": lambda phi3: -(phi3 + 1.0)}
SOLVER_TYPES = ("midpoint", "heun")


def _check_sde_3m(hp):
  if hp["d2_weight"] not in SDE_D2_COEFFICIENTS:
    raise ValueError(f"sde_dpmpp_3m: d2_weight must be one of {sorted(SDE_D2_COEFFICIENTS)}, got "
                     f"{hp['d2_weight']!r}")


def _check_sde_2s(hp):
  _check_r(hp["r"])
  if hp["solver_type"] not in SOLVER_TYPES:
    raise ValueError(f"sde_dpmpp_2s: solver_type must be one of {list(SOLVER_TYPES)}, got "
                     f"{hp['solver_type']!r}")


def sde_dpmpp_multistep_update(schedule, ts: List[float], rows: List[int], t_next: float,
                               order: int, d2_weight: str = "taylor") -> engine.Lin:
  """The SDE-DPM-Solver++ multistep update from ts[-1] = s to t_next = t (its noise not included)
  with the data predictions of ``rows`` at times ``ts`` (oldest first), of order 1, 2 or 3.

  The data-prediction SDE (Lu et al. 2022b, eq. 9) solved exactly in its linear part, in lambda:
    x_t = sigma_t/sigma_s e^{-h} x_s + alpha_t int_{lambda_s}^{lambda_t} 2 e^{-2(lambda_t - l)}
          D(l) dl + sigma_t sqrt(1 - e^{-2h}) z,
  with D Taylor-expanded in lambda at lambda_s. With H = 2h, phi_1 = e^{-H} - 1,
  phi_2 = phi_1/H + 1, phi_3 = phi_2/H - 1/2 (the same functions as the ODE's, at 2h) and D_1, D_2
  the multistep differences of ``dpmpp_multistep_update`` (D_1 ~ h D', D_2 ~ h^2 D''/2):

    x_t = sigma_t/sigma_s e^{-h} x - alpha_t phi_1 D_0 + alpha_t phi_2 D_1 + alpha_t c_3 D_2,

  (order 2: D_1 = (D_0 - D_prev)/r, the 'heun' form of ``sde_dpmpp_2m``). The exact integral of
  the quadratic term needs c_3 = -2 phi_3 (``d2_weight='taylor'``); k-diffusion's
  ``sample_dpmpp_3m_sde`` (eta = 1) uses -phi_3 ('reference', as the ODE's DPM-Solver++(3M) of
  the reference code: ``dpmpp_multistep_update``); diffusers' DPMSolverMultistepScheduler
  (algorithm_type='sde-dpmsolver++', solver_order=3, diffusers 0.42.1) uses
  (1 - e^{-H} - H)/H^2 - 1/2 = -(phi_3 + 1) ('diffusers'), an O(1) weight on D_2 (see
  ``sde_dpmpp_3m``)."""
  a_t, sg_t, l_t = _as(schedule, t_next)
  a0, sg0, l0 = _as(schedule, ts[-1])
  h = l_t - l0
  big_h = 2.0 * h
  phi1 = math.expm1(-big_h)
  phi2 = phi1 / big_h + 1.0
  m0 = rows[-1]
  out = {"x": sg_t / sg0 * math.exp(-h), m0: -a_t * phi1}
  if order == 1:
    return out
  _, _, lm1 = _as(schedule, ts[-2])
  m1 = rows[-2]
  r0 = (l0 - lm1) / h
  d10 = {m0: 1.0 / r0, m1: -1.0 / r0}
  if order == 2:
    return engine.add(out, d10, scale=[1.0, a_t * phi2])
  _, _, lm2 = _as(schedule, ts[-3])
  m2 = rows[-3]
  r1 = (lm1 - lm2) / h
  phi3 = phi2 / big_h - 0.5
  d11 = {m1: 1.0 / r1, m2: -1.0 / r1}
  diff = engine.add(d10, d11, scale=[1.0, -1.0])
  d1 = engine.add(d10, diff, scale=[1.0, r0 / (r0 + r1)])
  d2 = engine.add(diff, scale=[1.0 / (r0 + r1)])
  return engine.add(out, d1, d2,
                    scale=[1.0, a_t * phi2, a_t * SDE_D2_COEFFICIENTS[d2_weight](phi3)])


def sde_dpmpp_3m_program(schedule, time_grid, final_denoise: bool,
                         d2_weight: str = "taylor") -> Program:
  """The program of ``sde_dpmpp_3m``: one row per step (orders 1, 2, 3, 3, ...), its noise
  interval the step's."""
  t = engine.check_grid(time_grid, schedule)
  prog = Program()
  rows: List[int] = []
  times: List[float] = []
  for i in range(len(t) - 1):
    r = prog.eval(t[i], noise_interval=(t[i], t[i + 1]))
    rows.append(r)
    times.append(float(t[i]))
    upd = sde_dpmpp_multistep_update(schedule, times, rows, t[i + 1], min(3, len(rows)),
                                     d2_weight)
    _, sg_t, l_t = _as(schedule, t[i + 1])
    h = l_t - float(half_logsnr(schedule, t[i]))
    upd["z"] = sg_t * math.sqrt(-math.expm1(-2.0 * h))
    prog.set_update(r, upd)
  if final_denoise:
    prog.final_denoise(t[-1])
  return prog


@register_sampler("sde_dpmpp_3m", kind="stochastic",
                  order=lambda hp: 1.0 if hp["d2_weight"] == "diffusers" else 2.0,
                  nfe=lambda n, hp: n + _fd(hp), nfe_per_step="1",
                  paper=f"{P22B}, eq. 9 (data-prediction SDE), third-order multistep "
                        f"(k-diffusion's DPM-Solver++(3M) SDE, eta = 1)",
                  variants=({}, {"d2_weight": "reference"}, {"d2_weight": "diffusers"}),
                  check=_check_sde_3m)
def sde_dpmpp_3m(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                 d2_weight: str = "taylor", final_denoise: bool = True,
                 noise: str = "independent"):
  """DPM-Solver++(3M) SDE: ``sde_dpmpp_multistep_update`` (second-order Taylor expansion of D in
  lambda integrated exactly against e^{-2(lambda_t - lambda)}) plus the exact noise
  sigma_t sqrt(1 - e^{-2h}) z; orders 1, 2, 3 at the first steps (as k-diffusion and diffusers),
  no lower order at the end. NFE = N (+1 final denoise, as k-diffusion's last step to sigma = 0).

  Weak order 2, not 3: the scheme sees the Brownian path only through its increments on the grid,
  so the drift's response to the path inside a step (a Gaussian independent of the increments,
  variance ~ h^3 per step) is missing, an O(h^2) error in law; the third-order drift shows as a
  smaller constant (benchmarks/results/sde_orders.md). Strong order 1 for the same reason (Clark &
  Cameron 1980), faster before the asymptote.

  ``d2_weight``: 'taylor' (default, -2 phi_3 D_2, the exact integral of the Taylor term),
  'reference' (-phi_3 D_2: k-diffusion's ``sample_dpmpp_3m_sde``, to reproduce its numbers;
  equal to it to 1e-15 on tests/data/sde_solvers),
  'diffusers' (-(phi_3 + 1) D_2: diffusers' DPMSolverMultistepScheduler, sde-dpmsolver++,
  solver_order=3, lower_order_final=False, solver_type='heun' for the second step; equal to ours
  to 1e-15 on tests/data/sde_solvers): an O(1) weight on the second difference of D, which on a
  Brownian path is O(sqrt h), not O(h^2): weak order 1 (measured 0.9-1.0, tests/test_sde_solvers.py)
  and no strong convergence at all (its strong error stays ~0.6 from 8 to 32 steps). ``noise='brownian_tree'``: z
  the increment of one Brownian path per sample over the step (as ``sde_dpmpp_2m``)."""
  prog = sde_dpmpp_3m_program(schedule, time_grid, final_denoise, d2_weight)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)


def sde_dpmpp_2s_step(prog: Program, schedule, s: float, t: float, r: float = 0.5,
                      solver_type: str = "midpoint"):
  """Adds one stochastic DPM-Solver++(2S) step s -> t: two rows, the noise of the step split at
  the intermediate time s1 (lambda_s1 = lambda_s + r h) so that both sub-intervals draw from the
  same Brownian path. With E(u) = e^{-u} and e2(u) = 1 - e^{-2u}:

    u   = sigma_1/sigma_s E(r h) x_s + alpha_1 e2(r h) D_s + sigma_1 sqrt(e2(r h)) z_1     [s, s1]
    x_t = sigma_t/sigma_1 E((1-r) h) u + (alpha_t e2(h) - sigma_t/sigma_1 E((1-r) h) alpha_1
          e2(r h) - c) D_s + c D(u, s1) + sigma_t sqrt(e2((1-r) h)) z_2                     [s1, t]

  i.e. x_t = sigma_t/sigma_s E(h) x_s + alpha_t e2(h) D_s + c (D(u) - D_s) + N, where N =
  sigma_t E((1-r) h) sqrt(e2(r h)) z_1 + sigma_t sqrt(e2((1-r) h)) z_2 is the exact noise
  sigma_t sqrt(e2(h)) z of the whole step written on its two halves (the semigroup of the linear
  part; the first row's update moves x to u, so z_1 and z_2 are both the x-channel noise).
  c = alpha_t e2(h) / (2 r) ('midpoint', diffusers' default) or alpha_t phi_2(2h) / r ('heun').
  Returns (rows, their times)."""
  _, sg_s, l_s = _as(schedule, s)
  a_t, sg_t, l_t = _as(schedule, t)
  h = l_t - l_s
  s1 = float(t_from_half_logsnr(schedule, l_s + r * h))
  a1, sg1, _ = _as(schedule, s1)
  e2 = lambda u: -math.expm1(-2.0 * u)
  r0 = prog.eval(s, noise_interval=(s, s1))
  prog.set_update(r0, {"x": sg1 / sg_s * math.exp(-r * h), "m": a1 * e2(r * h),
                       "z": sg1 * math.sqrt(e2(r * h))})
  ratio = sg_t / sg1 * math.exp(-(1.0 - r) * h)
  if solver_type == "midpoint":
    c = a_t * e2(h) * 0.5 / r
  else:
    c = a_t * (math.expm1(-2.0 * h) / (2.0 * h) + 1.0) / r
  r1 = prog.eval(s1, noise_interval=(s1, t))
  prog.set_update(r1, {"x": ratio, r0: a_t * e2(h) - ratio * a1 * e2(r * h) - c, "m": c,
                       "z": sg_t * math.sqrt(e2((1.0 - r) * h))})
  return [r0, r1], [float(s), s1]


def sde_dpmpp_2s_program(schedule, time_grid, final_denoise: bool, r: float = 0.5,
                         solver_type: str = "midpoint") -> Program:
  """The program of ``sde_dpmpp_2s`` (two rows per step)."""
  return engine.stepwise_program(
      lambda p, s, u: sde_dpmpp_2s_step(p, schedule, s, u, r, solver_type), schedule, time_grid,
      final_denoise)


@register_sampler("sde_dpmpp_2s", kind="stochastic", order=2.0,
                  nfe=lambda n, hp: 2 * n + _fd(hp), nfe_per_step="2",
                  paper=f"{P22B}, eq. 9 (data-prediction SDE) with the (2S) step, r = 1/2",
                  variants=({}, {"solver_type": "heun"}), check=_check_sde_2s)
def sde_dpmpp_2s(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0,
                 r: float = 0.5, solver_type: str = "midpoint", final_denoise: bool = True,
                 noise: str = "independent"):
  """Stochastic DPM-Solver++(2S): the singlestep second-order solver of the data-prediction SDE
  (``sde_dpmpp_2s_step``), the intermediate evaluation at lambda_s + r h. NFE = 2 N (+1).

  Reference: diffusers' DPMSolverSinglestepScheduler(algorithm_type='sde-dpmsolver++',
  solver_order=2) computes the same two updates (equal to 1e-15, tests/data/sde_solvers) but draws
  the noise of the full step independently of the intermediate step's; here the full step's noise
  is the intermediate's continued on the same path (z_1, z_2 over [s, s1], [s1, t]), which keeps
  the drift's correlation with the noise inside the step (weak order 2) and lets
  ``noise='brownian_tree'`` refine one path. (k-diffusion's ``sample_dpmpp_sde`` is another
  method: ancestral steps, not the exact SDE solution.)"""
  prog = sde_dpmpp_2s_program(schedule, time_grid, final_denoise, r, solver_type)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset, noise=noise,
                            t_max=schedule.t_max)
