"""Align Your Steps (Sabour, Fidler & Kreis, ICML 2024): time grids that minimise the KL upper
bound (KLUB) between the reverse SDE and its discretisation, and the grids the authors published.

Coordinates: the scaled noise level sigma = sigma(t) / alpha(t) = exp(-logsnr(t) / 2) (EDM's
sigma; x / alpha = x0 + sigma eps), so one grid serves every schedule of the same logSNR range.
A step from sigma_b down to sigma_a of the linearised reverse SDE (the stochastic DDIM step:
the denoiser frozen at the step's start, AYS sec. 3.2) differs from the true SDE by, per
Girsanov (AYS eq. 8-9 for s(t) = 1, sigma(t) = t),

  KLUB(a, b) = int_{sigma_a}^{sigma_b} sigma^-3 E || D(x_sigma, sigma) - D(x_{sigma_b}, sigma_b) ||^2 dsigma

and the grid minimises the sum over its steps. The expectation is over pairs of the reverse SDE's
path, whose law is the forward process's (time reversal): estimated from data samples x0 with
x_sigma = x0 + W(sigma^2), W one Brownian path per sample (``coupling='brownian'``, the default:
no approximation beyond Monte Carlo and quadrature), or with one eps at every sigma, x_sigma =
x0 + sigma eps (``coupling='shared'``: the pairs of a deterministic path).

Here, deliberately unlike the paper's procedure (iterative coordinate search over one grid point
at a time with importance-sampled t, and early stopping): the denoiser is evaluated once on a
lattice of K noise levels uniform in log sigma (``klub_costs``: common random numbers for every
step, trapezoidal quadrature in log sigma), which gives the KLUB of every step between lattice
nodes, and ``optimal_nodes`` finds the grid of any number of steps whose total KLUB is the global
minimum over the lattice by dynamic programming. So one set of costs, stored with a run
(``save_costs``), serves every step count (``grid_from_costs``): a sweep over NFE costs no new
denoiser calls. No reference implementation of the optimisation was released (the authors
published grids only).

Published grids (``PUBLISHED``): the 10-step sigma lists of the AYS project page for SD-1.5,
SDXL and Stable Video Diffusion; other step counts by the authors' recommended log-linear
interpolation of those sigmas (``published_sigmas``).
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import schedules as schedules_lib

Array = Any
# The authors' 10-step grids (sigma, EDM convention; the last 0 = the clean end), as published on
# the AYS project page and shipped by diffusers (``AysSchedules``).
PUBLISHED: Dict[str, tuple] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.0),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0),
}
COSTS_FORMAT = "ays_klub_costs_v1"


def scaled_sigma(schedule: schedules_lib.Schedule, t) -> np.ndarray:
  """sigma(t) / alpha(t) (``Schedule.edm_sigma``), float64."""
  return np.asarray(schedule.edm_sigma(np.asarray(t, np.float64)), np.float64)


def time_of_sigma(schedule: schedules_lib.Schedule, sigma) -> np.ndarray:
  """The times t with sigma(t) / alpha(t) = ``sigma`` (> 0), float64."""
  return np.asarray(schedule.t_from_edm_sigma(np.asarray(sigma, np.float64)), np.float64)


def published_sigmas(name: str, num_steps: int) -> np.ndarray:
  """The published AYS grid ``name`` (``PUBLISHED``) for ``num_steps`` steps: (N+1,) decreasing
  sigmas ending with 0. For N != 10 the 10 non-zero sigmas are interpolated linearly in
  log sigma at N points uniform in the step index (the AYS authors' ``loglinear_interp``), then
  the final 0."""
  if name not in PUBLISHED:
    raise ValueError(f"unknown published AYS grid {name!r}; available: {sorted(PUBLISHED)}")
  n = schedules_lib.check_int("num_steps", num_steps)
  pos = np.asarray(PUBLISHED[name][:-1], np.float64)
  if n == len(pos):
    return np.asarray(PUBLISHED[name], np.float64)
  xs = np.linspace(0.0, 1.0, len(pos))
  logs = np.interp(np.linspace(0.0, 1.0, n), xs, np.log(pos))
  return np.append(np.exp(logs), 0.0)


def published_grid(schedule: schedules_lib.Schedule, name: str, num_steps: int) -> np.ndarray:
  """``published_sigmas`` as decreasing times (N+1,) of ``schedule``: t(sigma) for the non-zero
  sigmas, the schedule's t_min for the final 0. ValueError when a sigma lies outside the
  schedule's range [sigma(t_min), sigma(t_max)] by more than their rounding, 1e-3 relative (those
  within it are clipped to the range; the grids belong to their models' schedules:
  SD-1.5 / SDXL are ``vp_discrete`` with scaled-linear betas 0.00085..0.012, sigma_max 14.6)."""
  sig = published_sigmas(name, num_steps)
  lo, hi = scaled_sigma(schedule, schedule.t_min), scaled_sigma(schedule, schedule.t_max)
  pos = sig[:-1]
  if pos.max() > hi * (1 + 1e-3) or pos.min() < lo * (1 - 1e-3):  # published to 4-5 digits
    raise ValueError(f"the published AYS grid {name!r} spans sigma {pos.min():.4g}..{pos.max():.4g}"
                     f", outside the {schedule.name!r} schedule's {lo:.4g}..{hi:.4g}; it belongs "
                     f"to its model's schedule")
  t = np.clip(time_of_sigma(schedule, pos), schedule.t_min, schedule.t_max)
  return np.append(t, float(schedule.t_min))


# ------------------------------------------------------------------------------------------------
# KLUB costs on a lattice and the optimal grid
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KlubCosts:
  """KLUB of every step between the nodes of a lattice of noise levels.

  Attributes:
    sigma: (K,) increasing scaled noise levels (uniform in log sigma).
    t: (K,) their times in the schedule the costs were computed for.
    costs: (K, K) costs[a, b] (a < b) the KLUB of a step from sigma[b] down to sigma[a]
      (per data dimension); +inf on and below the diagonal.
    schedule: the schedule's name (checked against the schedule on use, with ``t``).
    num_samples: data samples of the estimate.
    coupling: how the noise of the levels was coupled (``denoiser_lattice``).
  """
  sigma: np.ndarray
  t: np.ndarray
  costs: np.ndarray
  schedule: str
  num_samples: int
  coupling: str = "brownian"


def lattice(schedule: schedules_lib.Schedule, num_nodes: int,
            t_min: Optional[float] = None, t_max: Optional[float] = None):
  """(sigma (K,), t (K,)): K nodes uniform in log sigma from sigma(t_min) to sigma(t_max), the
  ends exactly t_min / t_max (None: the schedule's)."""
  k = schedules_lib.check_int("num_nodes", num_nodes, 3)
  t_min, t_max = schedules_lib.check_time_range(schedule, t_min, t_max)
  lo, hi = np.log(scaled_sigma(schedule, t_min)), np.log(scaled_sigma(schedule, t_max))
  if not hi > lo:
    raise ValueError(f"sigma(t) / alpha(t) must increase from t_min={t_min} to t_max={t_max}")
  sigma = np.exp(np.linspace(lo, hi, k))
  t = time_of_sigma(schedule, sigma)
  t[0], t[-1] = t_min, t_max
  return sigma, t


COUPLINGS = ("brownian", "shared")


def denoiser_lattice(denoise: Callable, schedule: schedules_lib.Schedule, x0: Array, key,
                     t: np.ndarray, cond=None, batch_nodes: int = 8,
                     coupling: str = "brownian") -> np.ndarray:
  """D(alpha_k (x0 + W_k), t_k) at every increasing lattice time t_k (K,) for the samples x0
  (B, ...): (K, B, d) float64, ``denoise(x_t, t (B,), cond) -> x0_hat``, ``batch_nodes`` nodes
  per call. The noise W_k of sample b, from ``key``:

    'brownian'  W_k = W_{k-1} + sqrt(sigma_k^2 - sigma_{k-1}^2) xi_k (W_0 = sigma_0 xi_0): one
                Brownian path in sigma^2 per sample, so every pair (x_j, x_k) has the joint law
                of the forward process, which is the reverse SDE's (its time reversal): the
                KLUB's expectation without approximation;
    'shared'    W_k = sigma_k eps, one eps at every level (the pairs of a deterministic path
                x0 + sigma eps, an approximation of the reverse SDE's pairs)."""
  if coupling not in COUPLINGS:
    raise ValueError(f"coupling={coupling!r}; accepted: {COUPLINGS}")
  x0 = jnp.asarray(x0)
  if x0.ndim < 2 or x0.shape[0] < 2:
    raise ValueError(f"x0 must be (B, ...) with B >= 2 data samples, got shape {x0.shape}")
  t = np.asarray(t, np.float64)
  sig = scaled_sigma(schedule, t)
  if not np.all(np.diff(sig) > 0):
    raise ValueError("the lattice times must have increasing sigma(t) / alpha(t)")
  b, nd = x0.shape[0], x0.ndim
  eps = jax.random.normal(key, x0.shape, x0.dtype)
  col = lambda v: jnp.repeat(v, b).reshape((-1,) + (1,) * (nd - 1))

  @jax.jit
  def block(tb, w):  # (n,) times, (n, B, ...) noise -> (n, B, d)
    n = tb.shape[0]
    a = col(schedule.alpha(tb))
    x = a * jnp.tile(x0, (n,) + (1,) * (nd - 1)) + a * w.reshape((n * b,) + x0.shape[1:])
    c = None if cond is None else jnp.tile(cond, (n,) + (1,) * (jnp.ndim(cond) - 1))
    return denoise(x, jnp.repeat(tb, b), c).reshape(n, b, -1)

  out = []
  path = jnp.zeros_like(x0)
  prev = 0.0
  for i in range(0, len(t), batch_nodes):
    idx = list(range(i, min(i + batch_nodes, len(t))))
    ws = []
    for k in idx:
      if coupling == "shared":
        ws.append(jnp.asarray(sig[k], x0.dtype) * eps)
      else:
        xi = jax.random.normal(jax.random.fold_in(key, k), x0.shape, x0.dtype)
        path = path + jnp.asarray(np.sqrt(sig[k]**2 - prev**2), x0.dtype) * xi
        prev = sig[k]
        ws.append(path)
    pad = batch_nodes - len(idx)  # one compiled shape: pad the last block with its last node
    tb = np.concatenate([t[idx], np.full(pad, t[idx[-1]])])
    w = jnp.stack(ws + [ws[-1]] * pad)
    out.append(np.asarray(block(jnp.asarray(tb, x0.dtype), w), np.float64)[:len(idx)])
  return np.concatenate(out)


def klub_from_lattice(sigma: np.ndarray, d: np.ndarray) -> np.ndarray:
  """(K, K) costs[a, b] = int_{sigma_a}^{sigma_b} sigma^-3 M(sigma, b) dsigma by the trapezoidal
  rule in u = log sigma over the lattice nodes (sigma^-3 dsigma = sigma^-2 du), with
  M(sigma_j, b) = E || D_j - D_b ||^2 / d from ``d`` (K, B, d) of ``denoiser_lattice``; +inf for
  a >= b."""
  sigma = np.asarray(sigma, np.float64)
  k = len(sigma)
  flat = d.reshape(k, -1)
  dim = d.shape[2]
  gram = flat @ flat.T / d.shape[1]  # E <D_j, D_b> summed over dimensions
  sq = np.diag(gram)
  m = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0) / dim  # (K, K): E||D_j - D_b||^2 / d
  f = m / sigma[:, None]**2  # integrand in u at node j for a step starting at b
  du = np.diff(np.log(sigma))  # (K-1,)
  seg = 0.5 * du[:, None] * (f[:-1] + f[1:])  # (K-1, K): node j -> j+1 of a step from b
  costs = np.full((k, k), np.inf)
  for b in range(1, k):
    # costs[a, b] = sum_{j=a}^{b-1} seg[j, b]
    costs[:b, b] = np.cumsum(seg[:b, b][::-1])[::-1]
  return costs


def klub_costs(denoise: Callable, schedule: schedules_lib.Schedule, x0: Array, key,
               num_nodes: int = 128, t_min: Optional[float] = None,
               t_max: Optional[float] = None, cond=None, batch_nodes: int = 8,
               coupling: str = "brownian") -> KlubCosts:
  """The KLUB of every step between the nodes of ``lattice(schedule, num_nodes, t_min, t_max)``
  (module doc), estimated from the data samples x0 (B, ...) with ``denoise`` (K B denoiser
  evaluations; ``coupling`` of the noise levels: ``denoiser_lattice``). With the exact denoiser
  of an analytic density (``analytic.GaussianMixture``) and the 'brownian' coupling the only
  errors are the Monte Carlo average over B samples and the quadrature."""
  sigma, t = lattice(schedule, num_nodes, t_min, t_max)
  d = denoiser_lattice(denoise, schedule, x0, key, t, cond, batch_nodes, coupling)
  return KlubCosts(sigma=sigma, t=t, costs=klub_from_lattice(sigma, d),
                   schedule=str(schedule.name), num_samples=int(np.shape(x0)[0]),
                   coupling=coupling)


def optimal_nodes(costs: np.ndarray, num_steps: int) -> np.ndarray:
  """The lattice nodes (N+1,) decreasing from K-1 to 0 of the N-step path whose summed
  costs[a, b] is minimal (dynamic programming, O(N K^2); ties to the lower node)."""
  costs = np.asarray(costs, np.float64)
  k = costs.shape[0]
  n = schedules_lib.check_int("num_steps", num_steps)
  if n > k - 1:
    raise ValueError(f"num_steps={n} exceeds the lattice's {k - 1} intervals; compute the costs "
                     f"on more nodes (num_nodes > {n})")
  best = np.full(k, np.inf)  # best[a]: least cost of a path from K-1 to a in s steps
  best[k - 1] = 0.0
  back = np.zeros((n, k), np.int64)
  for s in range(n):
    total = best[None, :] + costs  # [a, b]: come from b to a
    back[s] = np.argmin(total, axis=1)
    best = total[np.arange(k), back[s]]
  nodes = [0]
  for s in range(n - 1, -1, -1):
    nodes.append(int(back[s][nodes[-1]]))
  if nodes[-1] != k - 1 or not np.isfinite(best[0]):
    raise ValueError(f"no {n}-step path through the lattice")  # unreachable with finite costs
  return np.asarray(nodes[::-1])


def grid_from_costs(c: KlubCosts, schedule: schedules_lib.Schedule, num_steps: int,
                    t_min: Optional[float] = None, t_max: Optional[float] = None) -> np.ndarray:
  """The AYS grid (N+1,) decreasing times with the least total KLUB on ``c``'s lattice, checked
  to belong to ``schedule`` (its name and the lattice's sigma(t) to 1e-9) and to the requested
  ends (None: the lattice's, which are the only ones it can give)."""
  check_costs_schedule(c, schedule)
  check_ends(t_min, t_max, c.t[0], c.t[-1], "the AYS costs' lattice end",
             "; the costs define the grid's ends (compute them for that range)")
  return np.asarray(c.t, np.float64)[optimal_nodes(c.costs, num_steps)]


def check_ends(t_min: Optional[float], t_max: Optional[float], have_min: float,
               have_max: float, what: str, note: str = "") -> None:
  """ValueError unless the requested ends t_min / t_max (None: any) equal a stored grid's ends
  have_min / have_max to 1e-9 relative: "<name>=<want> differs from <what> <have><note>"."""
  for name, want, have in (("t_min", t_min, have_min), ("t_max", t_max, have_max)):
    if want is not None and not np.isclose(float(want), float(have), rtol=1e-9, atol=0.0):
      raise ValueError(f"{name}={want!r} differs from {what} {float(have)!r}{note}")


def check_costs_schedule(c: KlubCosts, schedule: schedules_lib.Schedule) -> None:
  """ValueError unless ``c`` was computed for ``schedule`` (same name, same sigma(t))."""
  if c.schedule != schedule.name or not np.allclose(scaled_sigma(schedule, c.t), c.sigma,
                                                     rtol=1e-9, atol=0.0):
    raise ValueError(f"the AYS costs were computed for the {c.schedule!r} schedule (sigma(t) on "
                     f"its lattice), not for this {schedule.name!r} one")


def save_costs(path: str, c: KlubCosts, settings: Optional[Dict[str, Any]] = None) -> None:
  """Writes ``c`` (and JSON-able ``settings``) to the .npz ``path`` atomically; refuses to
  overwrite an existing file."""
  import json
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; AYS costs are never overwritten")
  tmp = path + ".tmp.npz"
  np.savez(tmp, format=COSTS_FORMAT, sigma=c.sigma, t=c.t, costs=c.costs, schedule=c.schedule,
           num_samples=c.num_samples, coupling=c.coupling,
           settings=json.dumps(settings or {}, sort_keys=True))
  os.replace(tmp, path)


def load_costs(path: str) -> KlubCosts:
  """The ``KlubCosts`` of ``save_costs``; ValueError naming the file when it is not one."""
  if not os.path.isfile(path):
    raise ValueError(f"no AYS costs file {path!r} (python -m experiments.search_grid "
                     f"--method=ays writes one)")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {name: z[name] for name in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # np.load's errors, named
    raise ValueError(f"{path} is not a readable AYS costs file: {e}") from e
  fmt = str(arrays["format"]) if "format" in arrays else None
  missing = sorted({"sigma", "t", "costs", "schedule", "num_samples", "coupling"} - set(arrays))
  if fmt != COSTS_FORMAT or missing:
    raise ValueError(f"{path} is not an AYS costs file (format {fmt!r}, expected "
                     f"{COSTS_FORMAT!r}; missing {missing})")
  c = KlubCosts(sigma=np.asarray(arrays["sigma"], np.float64),
                t=np.asarray(arrays["t"], np.float64),
                costs=np.asarray(arrays["costs"], np.float64), schedule=str(arrays["schedule"]),
                num_samples=int(arrays["num_samples"]), coupling=str(arrays["coupling"]))
  k = len(c.sigma)
  if (c.t.shape != (k,) or c.costs.shape != (k, k) or not np.all(np.diff(c.sigma) > 0)
      or not np.all(np.isfinite(np.triu(c.costs, 1)[np.triu_indices(k, 1)]))):
    raise ValueError(f"{path}: inconsistent AYS costs (lattice of {k} nodes, costs "
                     f"{c.costs.shape})")
  return c
