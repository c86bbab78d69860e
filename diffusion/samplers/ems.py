"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, NeurIPS 2023).

Notation (the paper's sec. 3): lambda = log(alpha / sigma) (half the logSNR), x_lambda on the
PF-ODE of a denoiser with eps_theta = (x - alpha x0_hat) / sigma, and, for coefficients l, s, b,

  N_theta  = sigma eps_theta - l x                                        (eq. 5, the non-linear part)
  f_theta  = N_theta / alpha = (1 - l) x / alpha - x0_hat                 (eq. 7)
  f^(1)    = d f_theta(x_lambda, lambda) / d lambda along the PF-ODE      (total derivative)

The EMS are the minimisers of the paper's objectives at each lambda, expectations over x_lambda:

  l*       = argmin_l E || grad_x N_theta ||_F^2                           (eq. 6)
  s*, b*   = argmin_{s,b} E || f^(1) - s f_theta - b ||_2^2                (eq. 8, with l = l*)

Two forms. The paper's l, s, b are vectors of the data's shape (elementwise products):
``per_coordinate=True``, l_i* = E[(sigma grad eps)_ii], s_i* = Cov(f^(1)_i, f_i) / Var(f_i),
b_i* = E f^(1)_i - s_i* E f_i. **Our default differs on purpose**: l and s scalars (multiples of
the identity) and b a vector, the minimisers of the same objectives over that family, whose
sampler coefficients are scalars (the engine's fast path); closed forms

  l*  = 1 - alpha E[tr(d x0_hat / dx)] / D         (sigma grad eps = I - alpha grad x0_hat)
  s*  = sum_i Cov(f^(1)_i, f_i) / sum_i Var(f_i)   (sum over the D coordinates; ridge-regularised)
  b*  = E f^(1) - s* E f                            (a vector)

On the analytic mixtures both forms give about the same errors (benchmarks/dpm_solver_v3.py).

Estimation (the paper's App. C.1.1 Monte Carlo procedure, x_lambda = alpha x0 + sigma eps over
data samples x0 and noise eps): the same x0, eps and probe vectors at every lambda of the grid
(common random numbers: the estimates are smooth in lambda); tr by Hutchinson's estimator
v^T J v with Rademacher v (``trace='hutchinson'``) or exactly with the D basis vectors
(``trace='exact'``) (per coordinate: the diagonal v * J v, Hutchinson's diagonal estimator); J v
and f^(1) by forward-mode ``jax.jvp`` (f^(1) needs the JVP of x0_hat
along (dx/dlambda, dt/dlambda)); the l' = dl/dlambda inside f^(1) by a JVP of the l estimate
itself in lambda (forward over forward), so l' is the exact derivative of the estimate, not a
finite difference. The lambda grid is uniform from lambda(t_max) to lambda(t_min) with
``num_intervals`` intervals (the reference's published Stable Diffusion statistics use 250
intervals and 1024 samples: its folder name 7.5_250_1024; the reference's EMS-computing code is
not public).

Saved as .npz (``EMS.save`` / ``load_ems``) with the schedule's ``schedule_id``, which the sampler
checks, as it checks that the EMS's lambda range covers the sampling grid.
"""
from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.schedules import Schedule

Array = Any
TRACES = ("hutchinson", "exact")


@dataclasses.dataclass(frozen=True, eq=False)
class EMS:
  """Empirical model statistics on a lambda grid (float64 numpy).

  Attributes:
    lambdas: (K+1,) strictly increasing lambda = log(alpha/sigma) nodes.
    l, s: (K+1,) scalar statistics at the nodes (ours), or (K+1, *data shape) per coordinate
      (the paper's; ``estimate_ems(per_coordinate=True)``).
    b: (K+1, *data shape) vector statistic, or None (zero).
    schedule: ``schedule_id`` of the schedule they were computed for ('' for schedule-free
      constants).
    num_samples: number of Monte Carlo samples (0 for constants).
  Between nodes the statistics are piecewise linear in lambda (``EMSIntegrals``).
  """
  lambdas: np.ndarray
  l: np.ndarray
  s: np.ndarray
  b: Optional[np.ndarray] = None
  schedule: str = ""
  num_samples: int = 0

  def __post_init__(self):
    lam = np.asarray(self.lambdas, np.float64)
    if lam.ndim != 1 or lam.shape[0] < 2 or not np.all(np.isfinite(lam)) or not np.all(
        np.diff(lam) > 0):
      raise ValueError(f"EMS lambdas must be a strictly increasing finite 1-D array of >= 2 "
                       f"nodes, got shape {lam.shape}")
    l, s = (np.asarray(v, np.float64) for v in (self.l, self.s))
    for name, v in (("l", l), ("s", s)):
      if v.ndim < 1 or v.shape[0] != lam.shape[0] or v.shape != l.shape or not np.all(
          np.isfinite(v)):
        raise ValueError(f"EMS {name} must be finite of shape (K+1,) or (K+1, *data shape) with "
                         f"K+1 = {lam.shape[0]}, l and s alike, got {v.shape}")
    if self.b is not None:
      b = np.asarray(self.b, np.float64)
      if b.ndim < 2 or b.shape[0] != lam.shape[0] or not np.all(np.isfinite(b)) or (
          l.ndim > 1 and b.shape != l.shape):
        raise ValueError(f"EMS b must be finite of shape (K+1, *data shape) with K+1 = "
                         f"{lam.shape[0]} (per-coordinate l: its shape {l.shape}), got {b.shape}")

  @property
  def per_coordinate(self) -> bool:
    return np.ndim(self.l) > 1

  @property
  def data_shape(self):
    if self.per_coordinate:
      return tuple(np.shape(self.l)[1:])
    return None if self.b is None else tuple(np.shape(self.b)[1:])

  def save(self, path: str):
    """Writes an .npz (lambdas, l, s, b if any, schedule, num_samples)."""
    arrays = dict(lambdas=self.lambdas, l=self.l, s=self.s, schedule=np.asarray(self.schedule),
                  num_samples=np.asarray(self.num_samples))
    if self.b is not None:
      arrays["b"] = self.b
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})

  def check_schedule(self, schedule: Schedule):
    """ValueError unless these statistics were computed for ``schedule`` (same ``schedule_id``:
    its class and fields but t_min / t_max, which ``check_covers`` checks through lambda)."""
    if self.schedule and self.schedule != schedule_id(schedule):
      raise ValueError(f"these EMS were computed for the schedule {self.schedule}, not for "
                       f"{schedule_id(schedule)}: recompute them "
                       f"(diffusion.samplers.ems.estimate_ems)")

  def check_covers(self, lambdas, tol: float = 1e-9):
    """ValueError unless every lambda lies in the grid's [lambdas[0], lambdas[-1]]."""
    lam = np.asarray(lambdas, np.float64)
    lo, hi = float(self.lambdas[0]), float(self.lambdas[-1])
    slack = tol * max(1.0, abs(lo), abs(hi))
    if lam.min() < lo - slack or lam.max() > hi + slack:
      raise ValueError(f"the sampling grid's lambda = log(alpha/sigma) range [{lam.min()}, "
                       f"{lam.max()}] leaves the EMS grid's [{lo}, {hi}]: compute the EMS over "
                       f"the sampling range (estimate_ems(t_min=..., t_max=...))")


def schedule_id(schedule: Schedule) -> str:
  """The schedule's class and fields without t_min / t_max, e.g. 'VP(beta_min=0.1, beta_max=20.0)':
  the EMS are functions of lambda, valid for any time range of the same alpha, sigma."""
  fields = [f for f in dataclasses.fields(schedule) if f.name not in ("t_min", "t_max")]
  return (f"{type(schedule).__name__}("
          + ", ".join(f"{f.name}={getattr(schedule, f.name)!r}" for f in fields) + ")")


def load_ems(path: str) -> EMS:
  """The EMS saved at ``path`` (an .npz written by ``EMS.save``)."""
  if not os.path.isfile(path):
    raise ValueError(f"EMS file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      z = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # np.load's errors, named
    raise ValueError(f"{path!r} is not a readable EMS file: {e}") from e
  missing = [k for k in ("lambdas", "l", "s", "schedule") if k not in z]
  if missing:
    raise ValueError(f"{path!r} is not an EMS file: it lacks {missing}")
  return EMS(np.asarray(z["lambdas"], np.float64), np.asarray(z["l"], np.float64),
             np.asarray(z["s"], np.float64),
             np.asarray(z["b"], np.float64) if "b" in z else None, str(z["schedule"]),
             int(z["num_samples"]) if "num_samples" in z else 0)


def constant_ems(l: float, s: float, lam_lo: float, lam_hi: float) -> EMS:
  """Constant statistics l, s (b = 0) on [lam_lo, lam_hi]: (1, 0) is DPM-Solver++'s data
  prediction, (0, -1) DPM-Solver's noise prediction (the paper's App. A.2)."""
  lam = np.array([float(lam_lo), float(lam_hi)])
  return EMS(lam, np.full(2, float(l)), np.full(2, float(s)))


# ------------------------------------------------------------------------------------------------
# Integrals of the piecewise-linear statistics (host, float64)
# ------------------------------------------------------------------------------------------------


class EMSIntegrals:
  """Exact and Gauss-Legendre integrals of piecewise-linear EMS on their grid (float64).

  L(lam) = int_{lambda_0}^{lam} l, S(lam) = int s (exact: piecewise quadratic; (n,) for scalar
  statistics, (n, D) per coordinate, D the flattened data size),
  Bc(lam) = int_{lambda_0}^{lam} e^{-S(r)} b(r) dr (vector; ``n_gl``-point Gauss-Legendre per grid
  interval, whose integrand is smooth: ~1e-16 relative), and ``quad(a, c)``: nodes and weights of
  int_a^c split at the grid's nodes (a > c allowed: signed weights).
  """

  def __init__(self, ems: EMS, n_gl: int = 8):
    self.lam = np.asarray(ems.lambdas, np.float64)
    k1 = len(self.lam)
    self.per_coordinate = ems.per_coordinate
    flat = (lambda v: v.reshape(k1, -1)) if self.per_coordinate else (lambda v: v)
    self.l = flat(np.asarray(ems.l, np.float64))
    self.s = flat(np.asarray(ems.s, np.float64))
    self.gl = np.polynomial.legendre.leggauss(n_gl)
    dl = self._col(np.diff(self.lam))
    zero = np.zeros((1,) + self.l.shape[1:])
    self.L_nodes = np.concatenate([zero, np.cumsum(0.5 * dl * (self.l[1:] + self.l[:-1]), 0)])
    self.S_nodes = np.concatenate([zero, np.cumsum(0.5 * dl * (self.s[1:] + self.s[:-1]), 0)])
    self.b = None if ems.b is None else np.asarray(ems.b, np.float64).reshape(len(self.lam), -1)
    self.data_shape = ems.data_shape
    if self.b is not None:
      pieces = self._pieces_b(np.arange(len(self.lam) - 1), self.lam[1:])
      self.B_nodes = np.concatenate([np.zeros((1, self.b.shape[1])), np.cumsum(pieces, axis=0)])

  def _col(self, v):
    """v (n,) as (n, 1) for per-coordinate statistics (broadcast against (n, D))."""
    return v[:, None] if self.per_coordinate else v

  def _index(self, lam):
    return np.clip(np.searchsorted(self.lam, lam, side="right") - 1, 0, len(self.lam) - 2)

  def interp(self, v, lam):
    """Piecewise-linear values of node array v (K+1, ...) at lam (n,) -> (n, ...)."""
    lam = np.atleast_1d(np.asarray(lam, np.float64))
    i = self._index(lam)
    w = (lam - self.lam[i]) / (self.lam[i + 1] - self.lam[i])
    w = w.reshape((-1,) + (1,) * (np.ndim(v) - 1))
    return (1 - w) * v[i] + w * v[i + 1]

  def _cum(self, nodes, v, lam):
    lam = np.atleast_1d(np.asarray(lam, np.float64))
    i = self._index(lam)
    return nodes[i] + 0.5 * self._col(lam - self.lam[i]) * (v[i] + self.interp(v, lam))

  def L(self, lam):
    return self._cum(self.L_nodes, self.l, lam)

  def S(self, lam):
    return self._cum(self.S_nodes, self.s, lam)

  def _gl(self, a, c):
    g, w = self.gl
    return 0.5 * (c - a) * g + 0.5 * (a + c), 0.5 * (c - a) * w

  def _pieces_b(self, i, c):
    """int_{lambda_i}^{c} e^{-S} b for each c inside grid interval i (arrays (n,)), (n, D)."""
    g, w = self.gl
    lo = self.lam[i]
    x = 0.5 * (c - lo)[:, None] * g[None] + 0.5 * (c + lo)[:, None]  # (n, G)
    wx = 0.5 * (c - lo)[:, None] * w[None]
    es = np.exp(-self.S(x.ravel())).reshape(x.shape + (-1,))  # (n, G, 1 or D)
    bx = self.interp(self.b, x.ravel()).reshape(x.shape + (-1,))
    return np.sum(wx[..., None] * es * bx, axis=1)

  def Bc(self, lam):
    """int_{lambda_0}^{lam} e^{-S(r)} b(r) dr, (n, D); zeros when b is None."""
    lam = np.atleast_1d(np.asarray(lam, np.float64))
    if self.b is None:
      return np.zeros((lam.shape[0], 1))
    i = self._index(lam)
    return self.B_nodes[i] + self._pieces_b(i, lam)

  def quad(self, a: float, c: float):
    """(nodes, weights) of int_a^c f(lambda) dlambda, split at the grid nodes between a and c."""
    lo, hi = min(a, c), max(a, c)
    inner = self.lam[(self.lam > lo) & (self.lam < hi)]
    edges = np.concatenate([[lo], inner, [hi]])
    xs, ws = zip(*(self._gl(edges[k], edges[k + 1]) for k in range(len(edges) - 1)))
    x, w = np.concatenate(xs), np.concatenate(ws)
    return x, (w if c >= a else -w)


# ------------------------------------------------------------------------------------------------
# Monte Carlo estimation from a denoiser
# ------------------------------------------------------------------------------------------------


def lambda_grid(schedule: Schedule, num_intervals: int, t_min: Optional[float] = None,
                t_max: Optional[float] = None) -> np.ndarray:
  """(K+1,) increasing lambda = logsnr/2, uniform from lambda(t_max) to lambda(t_min)."""
  t_min = float(schedule.t_min if t_min is None else t_min)
  t_max = float(schedule.t_max if t_max is None else t_max)
  if not schedule.t_min <= t_min < t_max <= schedule.t_max:
    raise ValueError(f"need schedule.t_min <= t_min < t_max <= schedule.t_max, got t_min={t_min}, "
                     f"t_max={t_max} for {schedule!r}")
  lo = 0.5 * float(schedule.logsnr(np.float64(t_max)))
  hi = 0.5 * float(schedule.logsnr(np.float64(t_min)))
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f"lambda(t) must be finite at t_min and t_max, got [{lo}, {hi}]")
  return np.linspace(lo, hi, num_intervals + 1)


def _at(schedule, lam):
  t = schedule.t_from_logsnr(2.0 * lam)
  return t, schedule.alpha(t), schedule.sigma(t)


def node_l(denoise, schedule: Schedule, lam, x0, eps, probes, cond=None):
  """(sums over samples of l, of dl/dlambda), each of the data's shape, at one lambda (jit-able;
  x0, eps (n, *shape), probes (P, n, *shape)): each sample's per-coordinate
  l_i = 1 - alpha sum_p v_{p,i} (J v_p)_i (the diagonal of sigma grad eps; Hutchinson's diagonal
  estimator for Rademacher probes, exact for the basis), J = d x0_hat / dx at
  x = alpha x0 + sigma eps, and its lambda-derivative by a JVP over the whole estimate (x0, eps
  and the probes fixed). The scalar l is their mean over the coordinates."""
  n = x0.shape[0]

  def l_sum(lam_):
    t, a, sg = _at(schedule, lam_)
    x = a * x0 + sg * eps
    tb = jnp.full((n,), t, x0.dtype)
    fn = lambda xx: denoise(xx, tb, cond)
    jv = jax.vmap(lambda v: jax.jvp(fn, (x,), (v,))[1])(probes)
    diag = jnp.sum(probes * jv, axis=0)  # (n, *shape)
    return jnp.sum(1.0 - a * diag, axis=0)

  lam = jnp.asarray(lam, x0.dtype)
  return jax.jvp(l_sum, (lam,), (jnp.ones_like(lam),))


def node_f(denoise, schedule: Schedule, lam, l, dl, x0, eps, cond=None):
  """(f, f^(1)) (n, *shape) at one lambda for the statistic l and its derivative dl (jit-able):
  f = (1 - l) x/alpha - x0_hat, f^(1) = -l' x/alpha + (1 - l)(x0_hat - x/alpha) - Z with
  Z = d x0_hat/d lambda along the PF-ODE dx/dlambda = (a - 1) x + alpha x0_hat
  (a = d log alpha / d lambda), a JVP of the denoiser in (x, t)."""
  n = x0.shape[0]
  lam = jnp.asarray(lam, x0.dtype)
  t, a, sg = _at(schedule, lam)
  dt_dlam = 2.0 / schedule.dlogsnr_dt(t)
  da = schedule.drift(t) * dt_dlam
  x = a * x0 + sg * eps
  tb = jnp.full((n,), t, x0.dtype)
  m = denoise(x, tb, cond)
  xdot = (da - 1.0) * x + a * m
  _, z = jax.jvp(lambda xx, tt: denoise(xx, tt, cond), (x, tb),
                 (xdot, jnp.full((n,), dt_dlam, x0.dtype)))
  X = x / a
  return (1.0 - l) * X - m, -dl * X + (1.0 - l) * (m - X) - z


def solve_sb(n: int, sum_f, sum_f1, c_ff, c_f1f, ridge: float = 1e-10,
             per_coordinate: bool = False):
  """(s, b) at one node from n samples' sums of f and f^(1) (D,) and their centred co-moments per
  coordinate (D,): s = C(f1, f) / (V(f) + ridge E f^2), with C, V and E f^2 summed over the
  coordinates (scalar s) or not (``per_coordinate``: s (D,)); the ridge only matters when f has
  no variance, e.g. Gaussian data with the optimal l, where any s fits exactly and s = 0 is
  taken; b = E f1 - s E f."""
  ef, ef1 = np.asarray(sum_f) / n, np.asarray(sum_f1) / n
  var, cov = np.asarray(c_ff) / n, np.asarray(c_f1f) / n
  if not per_coordinate:
    var, cov, ef2 = np.sum(var), np.sum(cov), ef @ ef
  else:
    ef2 = ef * ef
  s = cov / (var + ridge * (var + ef2))
  return (s if per_coordinate else float(s)), ef1 - s * ef


def estimate_ems(denoise, schedule: Schedule, x0, key, *, num_intervals: int = 250,
                 t_min: Optional[float] = None, t_max: Optional[float] = None,
                 trace: str = "hutchinson", batch_size: int = 1024, cond=None,
                 ridge: float = 1e-10, per_coordinate: bool = False) -> EMS:
  """EMS of ``denoise`` (x0_hat(x_t, t, cond)) from data samples ``x0`` (n, *shape) by the Monte
  Carlo procedure of the module docstring, on the uniform lambda grid of ``lambda_grid``.
  The computation runs in x0's dtype (use float64 inside ``jax.enable_x64`` for "exact"
  statistics of an exact denoiser). ``key`` draws eps and the Rademacher probes (one per
  sample); ``trace='exact'`` uses the D basis vectors instead (D JVPs per sample).
  ``per_coordinate``: l and s per coordinate, the paper's EMS (the scalar ones are ours, module
  doc; ``dpm_solver_v3`` takes both)."""
  if trace not in TRACES:
    raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
  if isinstance(num_intervals, bool) or not isinstance(num_intervals, int) or num_intervals < 1:
    raise ValueError(f"num_intervals must be an int >= 1, got {num_intervals!r}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
  if not (isinstance(ridge, (int, float)) and ridge >= 0):
    raise ValueError(f"ridge must be a real >= 0, got {ridge!r}")
  x0 = jnp.asarray(x0)
  if x0.ndim < 2 or x0.shape[0] < 2:
    raise ValueError(f"x0 must be (n >= 2, *data shape), got {x0.shape}")
  n, shape = x0.shape[0], x0.shape[1:]
  dim = int(np.prod(shape))
  lams = lambda_grid(schedule, num_intervals, t_min, t_max)
  ke, kv = jax.random.split(key)
  eps = jax.random.normal(ke, x0.shape, x0.dtype)
  if trace == "hutchinson":
    probes = jax.random.rademacher(kv, (1,) + x0.shape, x0.dtype)
  else:
    probes = jnp.broadcast_to(jnp.eye(dim, dtype=x0.dtype).reshape((dim, 1) + shape),
                              (dim,) + x0.shape)
  jl = jax.jit(lambda lam, a, e, p, c: node_l(denoise, schedule, lam, a, e, p, c))
  jf = jax.jit(lambda lam, l, dl, a, e, c: node_f(denoise, schedule, lam, l, dl, a, e, c))
  batches = [slice(i, i + batch_size) for i in range(0, n, batch_size)]
  cond_of = lambda sl: (None if cond is None else
                        jax.tree_util.tree_map(lambda c: c[sl] if np.ndim(c) else c, cond))
  ls, dls = [], []
  for lam in lams:
    tot = np.zeros((2,) + shape)
    for sl in batches:
      tot += np.asarray(jl(lam, x0[sl], eps[sl], probes[:, sl], cond_of(sl)), np.float64)
    tot /= n
    ls.append(tot[0] if per_coordinate else float(np.mean(tot[0])))
    dls.append(tot[1] if per_coordinate else float(np.mean(tot[1])))
  ss, bs = [], []
  for lam, l, dl in zip(lams, ls, dls):
    # Centred co-moments merged over batches (Chan et al.'s pairwise update): no cancellation
    # when f is nearly constant.
    cnt, mf, mf1, cff, cf1f = 0, 0.0, 0.0, 0.0, 0.0
    for sl in batches:
      f, f1 = (np.asarray(v, np.float64).reshape(v.shape[0], -1)
               for v in jf(lam, jnp.asarray(l, x0.dtype), jnp.asarray(dl, x0.dtype), x0[sl],
                           eps[sl], cond_of(sl)))
      k = f.shape[0]
      bf, bf1 = f.mean(0), f1.mean(0)
      df, df1 = bf - mf, bf1 - mf1
      tot = cnt + k
      cff = cff + np.sum((f - bf)**2, 0) + df * df * cnt * k / tot
      cf1f = cf1f + np.sum((f1 - bf1) * (f - bf), 0) + df1 * df * cnt * k / tot
      mf, mf1, cnt = mf + df * k / tot, mf1 + df1 * k / tot, tot
    s, b = solve_sb(n, mf * n, mf1 * n, cff, cf1f, ridge, per_coordinate)
    ss.append(np.reshape(s, shape) if per_coordinate else s)
    bs.append(b.reshape(shape))
  return EMS(lams, np.asarray(ls), np.asarray(ss), np.stack(bs), schedule_id(schedule), n)
