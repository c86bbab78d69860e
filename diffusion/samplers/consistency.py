"""Multistep consistency sampling (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models",
Alg. 1).

The ``denoise`` argument is a *consistency function* f(x_t, t, cond) -> the PF-ODE trajectory's
point at the boundary (``diffusion.consistency``; same interface as a denoiser), so this sampler
is registered with kind 'consistency': the registry-wide tests check its exact NFE and batch
invariance, not the PF-ODE order or the denoiser-distribution tests.

On the grid t_0 = T > t_1 > ... > t_N (N = num_steps), in EDM variables u = x/alpha, s =
sigma/alpha, with s_N = s(t_N) the boundary where f's output lives:

  u <- f(x_T, t_0);
  for n = 1 .. N-1:  x <- alpha(t_n) (u + sqrt(s_n^2 - s_N^2) z_n),  u <- f(x, t_n);
  return u.

(CM Alg. 1: x_{tau_n} = x + sqrt(tau_n^2 - eps^2) z.) If u is distributed as the data at s_N,
the re-noised x is distributed exactly as x_{t_n}, so with the exact consistency function every
N gives exact samples at t_N. NFE = N: one call per grid point but the last (where f is the
identity). z_n of sample b is drawn from the engine's per-sample key stream, so samples do not
depend on the batch composition.
"""
from __future__ import annotations

import math

from diffusion.samplers import engine
from diffusion.samplers.engine import Program, alpha_sigma
from diffusion.samplers.registry import register_sampler


def consistency_program(schedule, time_grid) -> Program:
  """The engine program of CM Alg. 1 on the (checked) grid: one row per t_0 .. t_{N-1}."""
  t = engine.check_grid(time_grid, schedule)
  a_n, sg_n = alpha_sigma(schedule, t[-1])
  s_end = float(sg_n / a_n)
  prog = Program()
  prog.eval(t[0], x={"m": 1.0})
  for tn in t[1:-1]:
    a, sg = alpha_sigma(schedule, tn)
    s = float(sg / a)
    prog.eval(tn, y={"x": float(a), "z": float(a) * math.sqrt(s * s - s_end * s_end)},
              x={"m": 1.0})
  return prog


@register_sampler("consistency", kind="consistency", order=1.0,
                  nfe=lambda n, hp: n, nfe_per_step="1",
                  paper="Song, Dhariwal, Chen & Sutskever 2023, Consistency Models, Alg. 1 "
                  "(multistep consistency sampling)")
def consistency(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
  """CM Alg. 1 with ``denoise`` a consistency function: f at t_0 = T, then re-noise to each t_n,
  n = 1..N-1, and apply f again; returns f's output (the sample at the boundary t_N). NFE = N."""
  prog = consistency_program(schedule, time_grid)
  return engine.run_program(prog, denoise, key, x_T, cond, sample_offset)
