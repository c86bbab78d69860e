"""Intermediate times of a few-step sampler chosen by search on a sample-quality score.

Consistency Models (Song, Dhariwal, Chen & Sutskever 2023, CM below; sec. 6 and App. C) choose the
intermediate times of multistep consistency sampling by a greedy search on FID: the two-step
sampler's t_1 by ternary search, then, with t_1 fixed, the three-step sampler's t_2, and so on.
``search_time_grid`` implements that procedure for any score of a time grid
(``score_fn(grid (N+1,)) -> float``, lower is better: e.g. the sliced Wasserstein distance or the
FID of samples drawn with that grid from fixed noise and a fixed key).

The procedure, exactly (N = num_steps, t_0 = t_max > t_1 > ... > t_N = t_min):

  stage k = 1 .. N-1 ('greedy', CM's): the grid [t_0, t_1, .., t_{k-1}, x, t_min] of k + 1 steps,
    t_1 .. t_{k-1} fixed by the earlier stages, x searched over the closed interval
    [t_min, t_{k-1}]; t_k = the best x. (Stage k scores (k+1)-step grids.)
  then ``sweeps`` passes of coordinate refinement (0 by default: not in CM): for n = 1 .. N-1 in
    turn, t_n searched over [t_{n+1}, t_{n-1}] with every other time of the N-step grid fixed.

Each one-dimensional search works in v = log s(t), s = sigma/alpha (EDM's sigma, log-uniform is
the natural scale of noise levels; Karras et al. 2022), over [v(lo) + margin, v(hi) - margin]:
both end points are scored first, then ``iterations`` golden-section steps (one new score each;
Kiefer 1953) narrow the bracket, and the result is the best time ever scored in that search (the
end points included), so the search never returns a time worse than an end point. The margin
(``endpoint_margin``, 1e-4 in log sigma, at most a third of the interval, so that a time an
earlier stage put next to an end point still leaves room) keeps the grid strictly decreasing,
which every sampler requires; at x -> t_min the (k+1)-step consistency sampler re-noises by sqrt(s_x^2 - s_min^2) ~
s_min sqrt(2 margin) and its f at s_x is the identity up to c_out(s_x) ~ margin s_min / sigma_data
(``diffusion.consistency.boundary_coefficients``), so it reproduces the k-step sampler up to
that: stage k's result is never worse than stage k-1's by more than the evaluation noise ("two
steps are never worse than one because of a poor grid"; tests/test_grid_search.py).

Ties are broken towards the earlier evaluation (the lower end point first), so the search is
deterministic given a deterministic ``score_fn``; scores are cached by the candidate time, so a
time is scored once per search.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from diffusion.samplers.registry import build_sampler, sampler_info
from diffusion.schedules import Schedule, check_int, check_real

ScoreFn = Callable[[np.ndarray], float]
PROCEDURES = ("greedy",)
INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/phi, the golden-section ratio


def _log_sigma(schedule: Schedule, t: float) -> float:
  return float(np.log(np.asarray(schedule.edm_sigma(np.float64(t)), np.float64)))


def _time_of(schedule: Schedule, v: float) -> float:
  return float(np.asarray(schedule.t_from_edm_sigma(np.float64(math.exp(v))), np.float64))


def _check_range(schedule: Schedule, t_min, t_max) -> Tuple[float, float]:
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion.schedules.Schedule, got {schedule!r}")
  lo, hi = float(schedule.t_min), float(schedule.t_max)
  a = lo if t_min is None else check_real("t_min", t_min)
  b = hi if t_max is None else check_real("t_max", t_max)
  for name, v in (("t_min", a), ("t_max", b)):
    if not (math.isfinite(v) and lo <= v <= hi):
      raise ValueError(f"{name}={v!r} is outside the {schedule.name} schedule's range "
                       f"[{lo}, {hi}]")
  if not a < b:
    raise ValueError(f"need t_min < t_max, got t_min={a!r}, t_max={b!r}")
  s = np.asarray(schedule.edm_sigma(np.asarray([a, b], np.float64)), np.float64)
  if not (np.all(np.isfinite(s)) and np.all(s > 0)):
    raise ValueError(f"the search works in log sigma/alpha, which must be finite at both ends; "
                     f"got sigma/alpha = {s} at t_min={a}, t_max={b} (use t_min > 0 and t_max < "
                     f"the schedule's end)")
  return a, b


def _score(score_fn: ScoreFn, grid: np.ndarray) -> float:
  value = score_fn(grid.copy())
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"score_fn must return a real number, got {value!r} for the grid "
                    f"{grid.tolist()}") from None
  if math.isnan(v):
    raise ValueError(f"score_fn returned NaN for the grid {grid.tolist()}")
  return v


def golden_section(fn: Callable[[float], float], a: float, b: float,
                   iterations: int) -> Tuple[float, float, List[Tuple[float, float]]]:
  """(best x, its value, every (x, value) scored in order) of the minimisation of ``fn`` over the
  closed interval [a, b], a <= b: fn(a), fn(b), then ``iterations`` golden-section steps (the
  first places two interior points, each later one adds one). The best x is over all points
  scored, end points included (ties: the first scored). A unimodal fn's minimiser is bracketed
  to a width (b - a) / phi^(iterations - 1)."""
  cache: Dict[float, float] = {}
  order: List[Tuple[float, float]] = []

  def f(x: float) -> float:
    if x not in cache:
      cache[x] = float(fn(x))
      order.append((x, cache[x]))
    return cache[x]

  f(a)
  f(b)
  lo, hi = a, b
  if iterations > 0 and hi > lo:
    c, d = hi - INV_PHI * (hi - lo), lo + INV_PHI * (hi - lo)
    fc = f(c)
    fd = f(d) if iterations > 1 else math.inf
    for _ in range(iterations - 2):
      if fc <= fd:  # the minimiser is in [lo, d]
        hi, d, fd = d, c, fc
        c = hi - INV_PHI * (hi - lo)
        fc = f(c)
      else:  # in [c, hi]
        lo, c, fc = c, d, fd
        d = lo + INV_PHI * (hi - lo)
        fd = f(d)
  best_x, best_v = min(order, key=lambda p: p[1])  # min keeps the first of equal values
  return best_x, best_v, order


def search_time_grid(score_fn: ScoreFn, schedule: Schedule, num_steps: int, *,
                     t_min: Optional[float] = None, t_max: Optional[float] = None,
                     iterations: int = 10, sweeps: int = 0, endpoint_margin: float = 1e-4,
                     procedure: str = "greedy") -> Tuple[np.ndarray, Dict[str, Any]]:
  """(grid (N+1,) float64 decreasing from t_max to t_min, trace) of CM's greedy search (module
  docstring) of the N - 1 intermediate times, N = ``num_steps`` >= 1.

  score_fn(grid) -> float, lower is better, called with decreasing float64 grids from t_max to
    t_min of 2 .. N+1 times (stage k scores (k+1)-step grids), strictly decreasing; it should be
    deterministic (fixed noise and key) so that scores of different grids compare.
  t_min / t_max: the grid's ends (None: the schedule's); sigma/alpha must be finite and > 0 there.
  iterations: golden-section steps per one-dimensional search (>= 0; 0 scores the end points
    only), so each search costs iterations + 2 scores at most.
  sweeps: passes of coordinate refinement after the greedy stages (>= 0).
  endpoint_margin: how far, in log sigma/alpha, the searched end points stay from their
    neighbours (> 0, keeps the grid strictly decreasing).

  trace: {'procedure', 'num_steps', 'iterations', 'sweeps', 'endpoint_margin', 't_min', 't_max',
  'one_step_score' (the score of [t_max, t_min]), 'searches': one dict per one-dimensional
  search: 'stage' ('greedy' or 'sweep <j>'), 'index' n, 'interval' [lo, hi] in t, 'evaluated'
  [[t, score], ...] in order, 'best_t', 'best_score', 'grid' after the search; 'score' (the
  final grid's), 'num_evaluations'}.
  """
  n = check_int("num_steps", num_steps)
  iters = check_int("iterations", iterations, minimum=0)
  n_sweeps = check_int("sweeps", sweeps, minimum=0)
  margin = check_real("endpoint_margin", endpoint_margin)
  if not (math.isfinite(margin) and margin > 0):
    raise ValueError(f"endpoint_margin must be a finite number > 0, got {endpoint_margin!r}")
  if procedure not in PROCEDURES:
    raise ValueError(f"unknown procedure {procedure!r}; accepted: {PROCEDURES}")
  if not callable(score_fn):
    raise TypeError(f"score_fn must be callable grid -> float, got {score_fn!r}")
  a, b = _check_range(schedule, t_min, t_max)
  v_min, v_max = _log_sigma(schedule, a), _log_sigma(schedule, b)
  if n > 1 and (v_max - v_min) <= 2 * margin * n:
    raise ValueError(f"endpoint_margin={margin} is too large for {n} steps on log sigma/alpha in "
                     f"[{v_min}, {v_max}]")
  evaluations = 0

  def scored(grid: np.ndarray) -> float:
    nonlocal evaluations
    evaluations += 1
    return _score(score_fn, grid)

  one_step = np.asarray([b, a], np.float64)
  trace: Dict[str, Any] = {"procedure": procedure, "num_steps": n, "iterations": iters,
                           "sweeps": n_sweeps, "endpoint_margin": margin, "t_min": a,
                           "t_max": b, "one_step_score": scored(one_step), "searches": []}
  times: List[float] = [b, a]  # the current grid, t_max .. t_min

  def search(stage: str, index: int, base: List[float]) -> None:
    """Searches times[index] of ``base`` (with a placeholder there) between its neighbours."""
    hi_t, lo_t = base[index - 1], base[index + 1]
    lo_raw, hi_raw = _log_sigma(schedule, lo_t), _log_sigma(schedule, hi_t)
    m = min(margin, (hi_raw - lo_raw) / 3)  # room left next to an earlier stage's end point
    lo_v, hi_v = lo_raw + m, hi_raw - m

    def at(v: float) -> float:
      grid = np.asarray(base[:index] + [_time_of(schedule, v)] + base[index + 1:], np.float64)
      if not np.all(np.diff(grid) < 0):
        raise ValueError(f"the candidate grid {grid.tolist()} is not strictly decreasing: "
                         f"endpoint_margin={margin} is below the round-off of the schedule's "
                         f"time <-> sigma conversion; use a larger one")
      return scored(grid)

    best_v, best_s, order = golden_section(at, lo_v, hi_v, iters)
    base[index] = _time_of(schedule, best_v)
    trace["searches"].append({
        "stage": stage, "index": index, "interval": [lo_t, hi_t],
        "evaluated": [[_time_of(schedule, v), s] for v, s in order],
        "best_t": base[index], "best_score": best_s, "grid": list(base)})

  for k in range(1, n):  # CM's greedy stages: t_k between t_{k-1} and t_min
    times = times[:k] + [math.nan] + [a]
    search("greedy", k, times)
  for j in range(n_sweeps):
    for idx in range(1, n):
      search(f"sweep {j + 1}", idx, times)
  grid = np.asarray(times, np.float64)
  trace["score"] = trace["searches"][-1]["best_score"] if n > 1 else trace["one_step_score"]
  trace["num_evaluations"] = evaluations
  return grid, trace


def sampling_score(metric: Callable[[Any], float], denoise: Callable[..., Any],
                   schedule: Schedule, x_T, key, *, sampler: str = "consistency", cond=None,
                   **hparams) -> ScoreFn:
  """score_fn(grid) = metric(samples), the samples those of ``build_sampler(sampler, schedule,
  time_grid=grid, jit=False, **hparams)`` from the fixed ``x_T`` (B, ...) and ``key`` with
  ``denoise`` (a consistency function for kind 'consistency' samplers, else a denoiser): what
  ``search_time_grid`` minimises when the samples fit in memory (the driver,
  experiments/search_grid.py, scores the run's samples with eval's metrics instead)."""
  sampler_info(sampler).validate(hparams)
  if not callable(metric):
    raise TypeError(f"metric must be callable samples -> float, got {metric!r}")

  def score(grid: np.ndarray) -> float:
    run = build_sampler(sampler, schedule, time_grid=grid, jit=False, **hparams)
    x, _ = run(denoise, key, x_T, cond=cond)
    return float(metric(x))

  return score
