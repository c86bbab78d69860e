"""The exact law of a program's output when the data are Gaussian: weak errors without Monte Carlo.

With x0 ~ N(mu, C0) the denoiser is affine, D(x, t) = A_t x + b_t with
A_t = alpha C0 (alpha^2 C0 + sigma^2 I)^{-1}, b_t = mu - alpha A_t mu, and every engine program
(``engine.Program``) is then affine in x_T and in the normals its rows draw: x_N = G x_T + c +
sum_r H_r z_r. For x_T ~ N(m_T, S_T) the output is N(G m_T + c, G S_T G^T + sum_r H_r H_r^T),
which ``program_law`` computes on the host in float64 from the program's coefficients. The
exact marginal at t is N(alpha mu, alpha^2 C0 + sigma^2 I) (``gaussian_marginal``), so a
stochastic sampler's weak error in the first two moments is exact, and its weak order measurable
to any step count (tests/test_sde_solvers.py, benchmarks/sde_orders.py). The law does not depend
on the noise source ('independent' and 'brownian_tree' draw the same normals in law).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from diffusion.samplers import engine


def gaussian_denoiser(schedule, mu, c0, t) -> Tuple[np.ndarray, np.ndarray]:
  """(A_t (d, d), b_t (d,)): E[x0 | x_t = x] = A_t x + b_t for x0 ~ N(mu, c0)."""
  a, s = (float(v) for v in engine.alpha_sigma(schedule, t))
  mu, c0 = np.asarray(mu, np.float64), np.asarray(c0, np.float64)
  A = a * c0 @ np.linalg.inv(a * a * c0 + s * s * np.eye(len(mu)))
  return A, mu - a * A @ mu


def gaussian_marginal(schedule, mu, c0, t) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, cov) of x_t = alpha x0 + sigma eps, x0 ~ N(mu, c0)."""
  a, s = (float(v) for v in engine.alpha_sigma(schedule, t))
  mu, c0 = np.asarray(mu, np.float64), np.asarray(c0, np.float64)
  return a * mu, a * a * c0 + s * s * np.eye(len(mu))


def program_law(prog: engine.Program, schedule, mu, c0, mean_T, cov_T):
  """(mean (d,), cov (d, d)) of the program's output for x_T ~ N(mean_T, cov_T) and the
  denoiser of x0 ~ N(mu, c0). Each quantity is carried as (G, c): value = G v + c over
  v = (x_T, then the y- and x-channel normals of each row)."""
  d, n = len(mu), len(prog.rows)
  width = d * (1 + 2 * n)

  def normal(r, ch):
    g = np.zeros((d, width))
    j = d * (1 + 2 * r + ch)
    g[:, j:j + d] = np.eye(d)
    return g, np.zeros(d)

  def comb(form, get):
    g, c = np.zeros((d, width)), np.zeros(d)
    for k, v in form.items():
      gk, ck = get(k)
      g, c = g + v * gk, c + v * ck
    return g, c

  x = (np.eye(d, width), np.zeros(d))
  outs = []
  for r, row in enumerate(prog.rows):
    y = comb(row.y, lambda k: x if k == "x" else normal(r, 0) if k == "z" else outs[k])
    A, b = gaussian_denoiser(schedule, mu, c0, row.t)
    m = (A @ y[0], A @ y[1] + b)
    outs.append((row.p * y[0] + row.q * m[0], row.p * y[1] + row.q * m[1]))
    env = {"x": x, "y": y, "m": m, "z": normal(r, 1)}
    x = comb(row.x, lambda k: env[k] if isinstance(k, str) else outs[k])
  g0, gz = x[0][:, :d], x[0][:, d:]
  mean_T, cov_T = np.asarray(mean_T, np.float64), np.asarray(cov_T, np.float64)
  return g0 @ mean_T + x[1], g0 @ cov_T @ g0.T + gz @ gz.T


def weak_error(prog: engine.Program, schedule, mu, c0) -> float:
  """|E x_N - E x| + |Cov x_N - Cov x|_F against the exact marginal at schedule.t_min, x_T drawn
  from the exact marginal at schedule.t_max (a program on a grid from t_max to t_min, without a
  final denoise)."""
  mean, cov = program_law(prog, schedule, mu, c0, *gaussian_marginal(schedule, mu, c0,
                                                                     schedule.t_max))
  m, c = gaussian_marginal(schedule, mu, c0, schedule.t_min)
  return float(np.linalg.norm(mean - m) + np.linalg.norm(cov - c))
