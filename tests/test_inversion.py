"""Inversion (``samplers.build_inverter``): every fixed-step deterministic sampler run toward the
noise converges to the exact float64 inversion of the mixture's PF-ODE (``flow_map.
exact_flow_map`` from t_min up to t_max) at its stated order, the cycle invert -> sample returns
to the data as the steps grow, and what has no inverse is refused."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import flow_map, schedules
from diffusion.samplers import build_inverter, build_sampler, sampler_info
from tests.test_samplers import DET_FIXED, NFE_TARGETS, ORDER_SETTING, _steps_for, mixture

SCH = ORDER_SETTING["schedule"]  # VP on [0.05, 0.5], as the sampling order tests


@functools.lru_cache(None)
def _data_and_exact():
  """(x at t_min: exact samples of the mixture's marginal, exact inversion to t_max), float64."""
  gm = mixture(2)
  with jax.enable_x64(True):
    x = gm.sample(jax.random.PRNGKey(11), ORDER_SETTING["batch"], SCH.t_min, SCH, jnp.float64)
    exact = flow_map.exact_flow_map(gm.denoiser(SCH), SCH, x, SCH.t_min, SCH.t_max)
  return np.asarray(x), np.asarray(exact)


@pytest.mark.parametrize("name", DET_FIXED)
def test_inversion_converges_to_the_exact_one_at_the_samplers_order(name):
  info = sampler_info(name)
  variant = dict(info.variants[0])
  hp = info.resolve({**variant, **({"final_denoise": False}
                                   if "final_denoise" in info.defaults() else {})})
  x, exact = _data_and_exact()
  nfes, errs = [], []
  with jax.enable_x64(True):
    den = mixture(2).denoiser(SCH)
    for target in NFE_TARGETS:
      inv = build_inverter(name, SCH, _steps_for(info, hp, target), grid=info.order_grid,
                           **variant)
      x_T, out = inv(den, jnp.asarray(x))
      nfes.append(int(out["nfe"]))
      errs.append(float(np.linalg.norm(np.asarray(x_T) - exact) / np.linalg.norm(exact)))
  slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
  assert abs(slope - info.order(hp)) <= 0.3, (name, slope, info.order(hp), nfes, errs)


def test_ddim_inversion_then_sampling_returns_to_the_data():
  x, _ = _data_and_exact()
  cycle = []
  with jax.enable_x64(True):
    den = mixture(2).denoiser(SCH)
    for n in (8, 32, 128):
      x_T, _ = build_inverter("ddim", SCH, n, grid="logsnr")(den, jnp.asarray(x))
      back, _ = build_sampler("ddim", SCH, n, grid="logsnr")(den, jax.random.PRNGKey(0), x_T)
      cycle.append(float(np.max(np.abs(np.asarray(back) - x))))
  # First order: 4x the steps, about 1/4 the error (2.9x and 3.7x measured: pre-asymptotic).
  assert cycle[1] < cycle[0] / 2.5 and cycle[2] < cycle[1] / 3, cycle
  assert cycle[2] < 0.05, cycle


def test_inversion_runs_on_the_sampling_grid_reversed():
  # One DDIM step up from t_min to t_max is the closed-form DDIM update with the roles swapped.
  gm = mixture(2)
  den = gm.denoiser(SCH)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
  x_T, out = build_inverter("ddim", SCH, 1, grid="uniform")(den, x)
  a0, s0 = SCH.alpha(SCH.t_min), SCH.sigma(SCH.t_min)
  a1, s1 = SCH.alpha(SCH.t_max), SCH.sigma(SCH.t_max)
  x0 = den(x, jnp.full((4,), SCH.t_min), None)
  want = a1 * x0 + s1 * (x - a0 * x0) / s0
  np.testing.assert_allclose(np.asarray(x_T), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert int(out["nfe"]) == 1


def test_what_has_no_inverse_is_refused():
  vp = schedules.VP()
  with pytest.raises(ValueError, match="'euler_maruyama' \\(stochastic\\) cannot invert.*'ddim'"):
    build_inverter("euler_maruyama", vp, 4)
  with pytest.raises(ValueError, match="'ode_adaptive' \\(adaptive\\) cannot invert"):
    build_inverter("ode_adaptive", vp, 4)
  with pytest.raises(ValueError, match="eta=1.0 makes DDIM stochastic"):
    build_inverter("ddim", vp, 4, eta=1.0)
  with pytest.raises(ValueError, match="final_denoise=True .* has no inverse"):
    build_inverter("heun", vp, 4, final_denoise=True)
  # Sampling still refuses an increasing grid: only the inverter runs toward the noise.
  with pytest.raises(ValueError, match="strictly decreasing"):
    build_sampler("ddim", vp, time_grid=np.asarray([0.1, 0.5, 1.0]))
