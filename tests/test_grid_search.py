"""diffusion.samplers.grid_search: CM's greedy search of the intermediate times, on synthetic
scores with known minimisers and on the exact 8gaussians mixture with imperfect consistency
functions (the searched grid is never worse than fewer steps)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, consistency as C, schedules
from diffusion.data import toy2d
from diffusion.metrics import sliced_wasserstein
from diffusion.samplers import grids
from diffusion.samplers.grid_search import golden_section, sampling_score, search_time_grid

EDM = schedules.EDM()


def log_s(t):
  return float(np.log(EDM.edm_sigma(np.float64(t))))


# -- the one-dimensional search ------------------------------------------------------------------


def test_golden_section_finds_the_minimiser_of_a_unimodal_function():
  best, value, order = golden_section(lambda x: (x - 0.3)**2 + 1.0, -2.0, 5.0, 40)
  assert abs(best - 0.3) < 1e-6 and abs(value - 1.0) < 1e-10
  assert order[0][0] == -2.0 and order[1][0] == 5.0  # both end points scored first
  assert len(order) == 42


@pytest.mark.parametrize("slope, expected", [(1.0, -2.0), (-1.0, 5.0)])
def test_golden_section_returns_an_end_point_when_the_minimum_is_there(slope, expected):
  best, value, _ = golden_section(lambda x: slope * x, -2.0, 5.0, 10)
  assert best == expected and value == slope * expected


def test_golden_section_with_no_iterations_scores_the_end_points_only():
  best, _, order = golden_section(lambda x: abs(x - 4.0), 0.0, 5.0, 0)
  assert [x for x, _ in order] == [0.0, 5.0] and best == 5.0


# -- the greedy search on synthetic scores ------------------------------------------------------


def test_two_step_search_finds_the_known_intermediate_time():
  target = 0.7
  calls = []

  def score(grid):
    calls.append(grid)
    assert grid[0] == EDM.t_max and grid[-1] == EDM.t_min and np.all(np.diff(grid) < 0)
    if len(grid) == 2:
      return 10.0
    return (log_s(grid[1]) - math.log(target))**2

  grid, trace = search_time_grid(score, EDM, 2, iterations=30)
  assert grid.shape == (3,) and grid.dtype == np.float64
  np.testing.assert_allclose(grid[1], target, rtol=1e-4)
  assert trace["num_evaluations"] == len(calls) == 1 + 32  # one-step, 2 end points, 30 steps
  assert trace["one_step_score"] == 10.0 and trace["score"] < 1e-8
  s = trace["searches"][0]
  assert s["stage"] == "greedy" and s["index"] == 1 and s["interval"] == [EDM.t_min, EDM.t_max]
  assert s["best_t"] == grid[1] and len(s["evaluated"]) == 32


def test_greedy_stages_fix_the_earlier_times():
  """Stage k minimises over t_k alone with t_1..t_{k-1} fixed: on a separable score the minimisers
  are found one after another."""
  targets = [5.0, 0.4, 0.03]

  def score(grid):
    return sum((log_s(t) - math.log(c))**2 for t, c in zip(grid[1:-1], targets))

  grid, trace = search_time_grid(score, EDM, 4, iterations=30)
  np.testing.assert_allclose(grid[1:-1], targets, rtol=1e-4)
  assert [s["index"] for s in trace["searches"]] == [1, 2, 3]
  # stage k scores (k+1)-step grids
  assert [len(s["grid"]) for s in trace["searches"]] == [3, 4, 5]
  for k, s in enumerate(trace["searches"], start=1):
    assert s["interval"] == [EDM.t_min, float(grid[k - 1])]


def test_greedy_is_not_joint_and_sweeps_refine():
  """A coupled score (joint minimiser v = log s = (2, -1)): the greedy stages put t_1 at the
  2-step optimum v_1 = 1, then v_2 = -1.5 given it; each coordinate sweep is one exact step of
  coordinate descent, v_1 <- v_2 + 3, v_2 <- (v_1 - 4)/2."""
  def score(grid):
    v = [log_s(t) for t in grid[1:-1]]
    if len(v) == 0:
      return 10.0
    if len(v) == 1:
      return (v[0] - 1.0)**2
    return (v[0] - v[1] - 3.0)**2 + (v[1] + 1.0)**2

  g0, t0 = search_time_grid(score, EDM, 3, iterations=40)
  np.testing.assert_allclose([log_s(t) for t in g0[1:-1]], [1.0, -1.5], atol=1e-5)
  np.testing.assert_allclose(t0["score"], 0.5, atol=1e-8)
  g1, t1 = search_time_grid(score, EDM, 3, iterations=40, sweeps=3)
  np.testing.assert_allclose([log_s(t) for t in g1[1:-1]], [1.875, -1.0625], atol=1e-5)
  assert [s["stage"] for s in t1["searches"]] == ["greedy"] * 2 + [
      f"sweep {j}" for j in (1, 1, 2, 2, 3, 3)]
  np.testing.assert_allclose(t1["score"], 2 * 0.0625**2, atol=1e-8)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_end_points_are_in_the_search(sign):
  """A score that decreases towards an end of the interval is minimised at that end (up to the
  margin): the search can reproduce 'no intermediate step'."""
  margin = 1e-4

  def score(grid):
    return sign * log_s(grid[1]) if len(grid) == 3 else 0.0

  grid, _ = search_time_grid(score, EDM, 2, iterations=6, endpoint_margin=margin)
  end = EDM.t_min if sign > 0 else EDM.t_max
  np.testing.assert_allclose(log_s(grid[1]), log_s(end) + sign * margin, atol=1e-9)


def test_times_pushed_to_the_lower_end_stay_strictly_decreasing():
  """Every stage prefers t_min: each new time lands next to the previous one (the margin shrinks
  to a third of what is left), the grid stays strictly decreasing and its score is the one-step
  score up to the margins."""
  def score(grid):
    return float(sum(log_s(t) - math.log(EDM.t_min) for t in grid[1:-1]))

  grid, trace = search_time_grid(score, EDM, 4, iterations=4)
  assert np.all(np.diff(grid) < 0) and grid[1] < EDM.t_min * 1.001
  assert 0 < trace["score"] < 4e-4


def test_one_step_has_nothing_to_search():
  grid, trace = search_time_grid(lambda g: 1.5, EDM, 1)
  np.testing.assert_array_equal(grid, [EDM.t_max, EDM.t_min])
  assert trace["searches"] == [] and trace["score"] == 1.5 and trace["num_evaluations"] == 1


def test_search_is_deterministic_and_respects_t_min_t_max():
  def score(grid):
    return float(np.sum(np.sin(3 * np.log(grid))))

  a = search_time_grid(score, EDM, 3, t_min=0.01, t_max=40.0, iterations=8)
  b = search_time_grid(score, EDM, 3, t_min=0.01, t_max=40.0, iterations=8)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1]
  assert a[0][0] == 40.0 and a[0][-1] == 0.01


def test_search_on_a_vp_schedule_stays_inside_its_range():
  vp = schedules.VPCosine() if hasattr(schedules, "VPCosine") else schedules.get_schedule("vp")
  grid, _ = search_time_grid(lambda g: -float(np.sum(g)), vp, 3, iterations=5)
  assert grid[0] == vp.t_max and grid[-1] == vp.t_min and np.all(np.diff(grid) < 0)


@pytest.mark.parametrize("kwargs, error", [
    ({"num_steps": 0}, ValueError), ({"num_steps": 2.0}, TypeError),
    ({"iterations": -1}, ValueError), ({"sweeps": -1}, ValueError),
    ({"endpoint_margin": 0.0}, ValueError), ({"endpoint_margin": math.inf}, ValueError),
    ({"endpoint_margin": 3.0}, ValueError), ({"procedure": "joint"}, ValueError),
    ({"t_min": 1.0, "t_max": 0.5}, ValueError), ({"t_max": 100.0}, ValueError),
])
def test_bad_arguments_are_refused(kwargs, error):
  args = dict(num_steps=2)
  args.update(kwargs)
  n = args.pop("num_steps")
  with pytest.raises(error):
    search_time_grid(lambda g: 0.0, EDM, n, **args)


@pytest.mark.parametrize("bad, error", [(math.nan, ValueError), ("x", TypeError)])
def test_bad_scores_are_refused(bad, error):
  with pytest.raises(error, match="score_fn"):
    search_time_grid(lambda g: bad, EDM, 2)


def test_a_non_callable_score_is_refused():
  with pytest.raises(TypeError, match="score_fn"):
    search_time_grid(None, EDM, 2)


# -- on the exact mixture: consistency functions with known defects ------------------------------


@pytest.fixture(scope="module")
def mixture_setup():
  gm = analytic.GaussianMixture.create(*toy2d.gaussian_mixture_params("8gaussians"))
  f_exact = C.ode_consistency_fn(gm.denoiser(EDM), EDM, 16)
  n = 1000
  x_T = EDM.prior_sample(jax.random.PRNGKey(3), (n, 2))
  ref = np.asarray(gm.sample0(jax.random.PRNGKey(4), n))
  metric = lambda x: sliced_wasserstein(np.asarray(x), ref, 0)  # noqa: E731
  return f_exact, x_T, metric


def _score(f, mixture_setup):
  _, x_T, metric = mixture_setup
  return sampling_score(metric, jax.jit(f), EDM, x_T, jax.random.PRNGKey(6))


def test_searched_two_steps_beat_one_and_the_karras_grid_for_a_time_offset(mixture_setup):
  """f evaluated at the wrong time (s -> s_min + (s - s_min)/2): one step is poor, a re-noise at a
  small time repairs much of it; the searched 2-step grid is no worse than 1 step nor the fixed
  Karras grid's 2 steps."""
  f_exact = mixture_setup[0]

  def f_offset(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return f_exact(x, EDM.t_min + 0.5 * (t - EDM.t_min), cond)

  score = _score(f_offset, mixture_setup)
  grid, trace = search_time_grid(score, EDM, 2, iterations=6)
  karras = score(grids.time_grid(EDM, 2, "karras"))
  assert trace["score"] <= trace["one_step_score"]
  assert trace["score"] <= karras + 5e-3  # Karras's t_1 is near this optimum: equal up to the
  # resolution of 6 golden-section steps
  assert trace["score"] < 0.8 * trace["one_step_score"]  # the defect is repaired, not kept
  assert score(grid) == trace["score"]  # the returned grid is the one scored


def test_two_steps_never_worse_than_one_when_every_interior_time_is_bad(mixture_setup):
  """f exact at t_max and t_min but shifted at every time in between: any interior t_1 hurts, so
  the fixed Karras grid's 2 steps are much worse than 1; the search finds an end point and
  reproduces one step's quality (up to evaluation noise)."""
  f_exact = mixture_setup[0]
  v_lo, v_hi = math.log(EDM.t_min), math.log(EDM.t_max)

  def f_bump(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    bump = jnp.sin(math.pi * (jnp.log(t) - v_lo) / (v_hi - v_lo))
    return f_exact(x, t, cond) + bump[:, None] * jnp.asarray([1.0, 0.0])

  score = _score(f_bump, mixture_setup)
  _, trace = search_time_grid(score, EDM, 2, iterations=6)
  karras = score(grids.time_grid(EDM, 2, "karras"))
  one = trace["one_step_score"]
  assert karras > one + 0.1  # a fixed grid makes two steps worse than one
  assert trace["score"] <= one + 2e-3
  _, trace3 = search_time_grid(score, EDM, 3, iterations=4)
  assert trace3["score"] <= one + 2e-3
