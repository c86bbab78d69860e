"""Optimised time grids: Align Your Steps' KLUB costs and their optimal grid
(diffusion/samplers/ays.py), the published AYS grids, and grids fitted to a sampler's own error
(diffusion/samplers/grid_fit.py), against closed forms, brute force and the exact mixture."""
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, schedules
from diffusion.samplers import ays, build_sampler, grid_fit, grids


def _gaussian_m(sig_j, sig_b, c, coupling):
  """E||D_j - D_b||^2 / d for data N(0, c^2 I): D = w x, w = c^2 / (c^2 + sigma^2), with
  x = x0 + sigma eps (one eps: 'shared') or x0 + W(sigma^2) (a Brownian path: Cov(x_j, x_b) =
  c^2 + min(sigma_j, sigma_b)^2)."""
  w = lambda s: c**2 / (c**2 + s**2)
  if coupling == "shared":
    return c**2 * (w(sig_j) - w(sig_b))**2 + (w(sig_j) * sig_j - w(sig_b) * sig_b)**2
  cov = c**2 + np.minimum(sig_j, sig_b)**2
  return (w(sig_j)**2 * (c**2 + sig_j**2) + w(sig_b)**2 * (c**2 + sig_b**2)
          - 2 * w(sig_j) * w(sig_b) * cov)


@pytest.mark.parametrize("coupling", ["brownian", "shared"])
def test_klub_costs_equal_the_closed_form_on_gaussian_data(coupling):
  """On N(0, c^2 I) data with its exact denoiser the Monte Carlo KLUB of every lattice step
  equals the quadrature of the closed-form integrand (within the MC error of 20k samples)."""
  sch = schedules.VP()
  c, dim = 0.7, 4
  den = lambda x, t, cond=None: (c**2 / (c**2 + sch.edm_sigma(t)**2))[:, None] * x / sch.alpha(t)[:, None]
  x0 = c * jax.random.normal(jax.random.PRNGKey(0), (20_000, dim))
  costs = ays.klub_costs(den, sch, x0, jax.random.PRNGKey(1), num_nodes=17, coupling=coupling)
  assert costs.coupling == coupling
  sig = costs.sigma
  m = _gaussian_m(sig[:, None], sig[None, :], c, coupling)  # exact E||D_j - D_b||^2 / d
  exact = np.full((len(sig), len(sig)), np.inf)
  f = m / sig[:, None]**2
  du = np.diff(np.log(sig))
  for b in range(1, len(sig)):
    for a in range(b):
      exact[a, b] = sum(0.5 * du[j] * (f[j, b] + f[j + 1, b]) for j in range(a, b))
  iu = np.triu_indices(len(sig), 1)
  np.testing.assert_allclose(costs.costs[iu], exact[iu], rtol=0.03)
  assert np.all(np.isinf(costs.costs[np.tril_indices(len(sig))]))


def test_optimal_nodes_is_the_brute_force_minimum():
  rng = np.random.default_rng(0)
  k = 9
  costs = np.full((k, k), np.inf)
  iu = np.triu_indices(k, 1)
  costs[iu] = rng.uniform(0.1, 2.0, len(iu[0]))
  for n in (1, 2, 3, 5, 8):
    nodes = ays.optimal_nodes(costs, n)
    assert nodes[0] == k - 1 and nodes[-1] == 0 and len(nodes) == n + 1
    assert np.all(np.diff(nodes) < 0)
    total = sum(costs[nodes[i + 1], nodes[i]] for i in range(n))
    best = min(sum(costs[p[i + 1], p[i]] for i in range(n))
               for mid in itertools.combinations(range(1, k - 1), n - 1)
               for p in [(k - 1,) + tuple(sorted(mid, reverse=True)) + (0,)])
    assert total == pytest.approx(best, rel=1e-12)
  with pytest.raises(ValueError, match="exceeds the lattice"):
    ays.optimal_nodes(costs, k)


def test_ays_costs_round_trip_and_grid_kind(tmp_path):
  sch = schedules.VP()
  gm = analytic.random_mixture(0, 2)
  c = ays.klub_costs(gm.denoiser(sch), sch, gm.sample0(jax.random.PRNGKey(0), 256),
                     jax.random.PRNGKey(1), num_nodes=32)
  path = str(tmp_path / "costs.npz")
  ays.save_costs(path, c, {"note": "test"})
  with pytest.raises(FileExistsError):
    ays.save_costs(path, c)
  back = ays.load_costs(path)
  np.testing.assert_array_equal(back.costs, c.costs)
  g = grids.time_grid(sch, 6, f"ays:{path}")
  np.testing.assert_array_equal(g, c.t[ays.optimal_nodes(c.costs, 6)])
  assert g[0] == sch.t_max and g[-1] == sch.t_min and np.all(np.diff(g) < 0)
  # any sampler takes it by name
  f = build_sampler("dpmpp_2m", sch, 6, grid=f"ays:{path}", jit=False)
  x, info = f(gm.denoiser(sch), jax.random.PRNGKey(0), jnp.ones((3, 2)))
  assert info["nfe"] == 6 and np.all(np.isfinite(np.asarray(x)))
  with pytest.raises(ValueError, match="computed for the 'vp' schedule"):
    grids.time_grid(schedules.get_schedule("ve"), 4, f"ays:{path}")
  with pytest.raises(ValueError, match="no AYS costs file"):
    grids.time_grid(sch, 4, f"ays:{tmp_path}/missing.npz")
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable AYS costs file"):
    ays.load_costs(str(bad))


def test_published_grids_and_their_interpolation():
  """SD-1.5's published 10 sigmas map to SD's discrete schedule (sigma_max 14.615 is t = 1); other
  step counts interpolate log sigma linearly in the step index and keep the ends."""
  sd = schedules.get_schedule("vp_discrete", num_timesteps=1000, beta_start=0.00085,
                              beta_end=0.012, beta_schedule="scaled_linear")
  g = grids.time_grid(sd, 10, "ays_sd15")
  assert len(g) == 11 and g[-1] == sd.t_min and np.all(np.diff(g) < 0)
  np.testing.assert_allclose(np.asarray(sd.edm_sigma(g[:-1])), ays.PUBLISHED["sd15"][:-1],
                             rtol=1e-3)
  assert abs(g[0] - 1.0) < 2e-3  # 14.615 is SD's sigma at its last timestep (rounded)
  s5 = ays.published_sigmas("sd15", 5)
  assert s5[0] == pytest.approx(14.615) and s5[-2] == pytest.approx(0.152) and s5[-1] == 0.0
  # log-linear: the midpoint of 5 points is the log-midpoint of sigma_4.5 of the 10
  pos = np.log(np.asarray(ays.PUBLISHED["sd15"][:-1]))
  assert np.log(s5[2]) == pytest.approx(0.5 * (pos[4] + pos[5]))
  with pytest.raises(ValueError, match="outside"):
    grids.time_grid(schedules.VP(), 10, "ays_svd")
  with pytest.raises(ValueError, match="unknown published"):
    ays.published_sigmas("sd3", 10)


def _reference(gm, sch, x_T):
  """The PF-ODE solution at t_min: DPM-Solver++(3M) with 300 steps in float64 (error ~1e-9
  against the exact solve, far below the 4-step errors compared)."""
  f = build_sampler("dpmpp_3m", sch, 300, grid="logsnr", jit=False, final_denoise=False)
  return np.asarray(f(gm.denoiser(sch), jax.random.PRNGKey(0), jnp.asarray(x_T))[0])


def test_fitted_grid_beats_the_logsnr_grid_on_held_out_points(tmp_path):
  """DPM-Solver++(2M) at 4 steps on the exact 2-D mixture: the grid fitted on 64 starting points
  has under 0.6x the uniform-logSNR grid's error on 128 others (measured 0.3-0.4x: benchmarks/
  grid_fit.py); its file is read back by name for that sampler and step count only."""
  sch = schedules.VP()
  gm = analytic.random_mixture(0, 2)
  den = gm.denoiser(sch)
  fit_x = np.asarray(sch.prior_sample(jax.random.PRNGKey(3), (64, 2)), np.float64)
  test_x = np.asarray(sch.prior_sample(jax.random.PRNGKey(4), (128, 2)), np.float64)
  with jax.enable_x64(True):
    loss = grid_fit.trajectory_loss("dpmpp_2m", sch, den, jnp.asarray(fit_x),
                                    _reference(gm, sch, fit_x), final_denoise=False)
    grid, trace = grid_fit.fit_grid(loss, sch, 4, max_evals=80)
    assert trace["loss"] < trace["init_loss"] and grid[0] == sch.t_max and grid[-1] == sch.t_min
    ref = _reference(gm, sch, test_x)

    def err(**kw):
      f = build_sampler("dpmpp_2m", sch, jit=False, final_denoise=False, **kw)
      return float(np.linalg.norm(np.asarray(f(den, jax.random.PRNGKey(0),
                                                 jnp.asarray(test_x))[0]) - ref))

    assert err(time_grid=grid) < 0.6 * err(num_steps=4, grid="logsnr")
  path = tmp_path / "fit.json"
  path.write_text(json.dumps({"format": grids.FITTED_FORMAT, "schedule": "vp",
                              "grids": {"dpmpp_2m": {"4": grid.tolist()}}}))
  np.testing.assert_array_equal(grids.time_grid(sch, 4, f"fitted:{path}", sampler="dpmpp_2m"),
                                grid)
  with pytest.raises(ValueError, match="no grid fitted for sampler 'unipc' with 4 steps"):
    build_sampler("unipc", sch, 4, grid=f"fitted:{path}")
  with pytest.raises(ValueError, match="no grid fitted for sampler 'dpmpp_2m' with 5 steps"):
    build_sampler("dpmpp_2m", sch, 5, grid=f"fitted:{path}")


def test_theta_parameterisation_round_trips():
  sch = schedules.VP()
  g = grids.time_grid(sch, 7, "karras")
  back = grid_fit.grid_of_theta(sch, grid_fit.theta_of_grid(sch, g), sch.t_min, sch.t_max)
  np.testing.assert_allclose(back, g, rtol=1e-9)
  with pytest.raises(ValueError, match="fixed-step deterministic"):
    grid_fit.trajectory_loss("euler_maruyama", sch, None, np.zeros((2, 2)), np.zeros((2, 2)))


def test_grids_that_fix_their_ends_refuse_other_ends(tmp_path):
  """A fitted grid, AYS costs, a published grid and a discrete spacing define their own ends:
  another t_min / t_max is refused naming it."""
  sch = schedules.VP()
  path = tmp_path / "fit.json"
  path.write_text(json.dumps({"format": grids.FITTED_FORMAT, "schedule": "vp",
                              "grids": {"euler": {"2": [1.0, 0.5, 0.01]}}}))
  with pytest.raises(ValueError, match=r"t_min=0\.001 differs from the fitted grid's end 0\.01"):
    grids.time_grid(sch, 2, f"fitted:{path}", sampler="euler", t_min=1e-3)
  np.testing.assert_array_equal(grids.time_grid(sch, 2, f"fitted:{path}", sampler="euler",
                                                t_min=0.01), [1.0, 0.5, 0.01])
  gm = analytic.random_mixture(0, 2)
  c = ays.klub_costs(gm.denoiser(sch), sch, gm.sample0(jax.random.PRNGKey(0), 64),
                     jax.random.PRNGKey(1), num_nodes=8)
  with pytest.raises(ValueError, match="t_max=0.5 differs from the AYS costs' lattice end"):
    ays.grid_from_costs(c, sch, 3, t_max=0.5)
  with pytest.raises(ValueError, match="'ays_sd15' fixes its own noise levels"):
    grids.time_grid(sch, 4, "ays_sd15", t_min=0.01)
  sd = schedules.get_schedule("vp_discrete", num_timesteps=1000)
  with pytest.raises(ValueError, match="'trailing' is fixed by the schedule's timesteps"):
    grids.time_grid(sd, 4, "trailing", t_max=0.5)
