"""sde_dpmpp_3m, sde_dpmpp_2s and sa_solver: parity with diffusers (tests/data/sde_solvers), the
noise that cancels in SA-Solver's corrector, and the strong / weak orders on the exact 2-D
mixture (the setting of tests/test_brownian.py: VP on t in [0.05, 0.5], one Brownian path per
sample, the reference the same sampler at 256 steps on the same paths)."""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import schedules
from diffusion.samplers import build_sampler, engine, sampler_info
from diffusion.samplers.dpm_solver import sde_dpmpp_2s_program, sde_dpmpp_3m_program
from diffusion.samplers.sa_solver import sa_solver_program
from tests import test_brownian as tb

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "sde_solvers", "reference.npz")
SCH = schedules.VP()


@functools.lru_cache(None)
def fixture():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def ve_sigma(t):
  a, s = engine.alpha_sigma(SCH, t)
  return s / a


def grid_of(ve_sigmas):
  """The VP times of a grid of VE sigmas (lambda = -log sigma)."""
  return engine.t_from_half_logsnr(SCH, -np.log(ve_sigmas))


def toy_denoise(x, t):
  """The fixture's denoiser D(x, s) = 0.8 tanh(1.3 a x + 0.2) - 0.3 a x / (1 + s^2)."""
  s = ve_sigma(t)
  a = 1.0 / math.sqrt(1.0 + s * s)
  return 0.8 * np.tanh(1.3 * a * x + 0.2) - 0.3 * a * x / (1.0 + s * s)


def run_rows(prog: engine.Program, x, noise_x):
  """The engine's equations (engine.py) row by row in float64 numpy, the x-channel normal of row
  r given as noise_x[r] (the programs here draw no y-channel noise)."""
  outs = []
  for r, row in enumerate(prog.rows):
    assert "z" not in row.y
    y = sum(v * (x if k == "x" else outs[k]) for k, v in row.y.items())
    m = toy_denoise(y, row.t)
    outs.append(row.p * y + row.q * m)
    terms = {"x": x, "y": y, "m": m, "z": noise_x[r] if "z" in row.x else None}
    x = sum(v * (terms[k] if isinstance(k, str) else outs[k]) for k, v in row.x.items())
  return x


def test_sde_dpmpp_3m_matches_diffusers():
  f = fixture()
  prog = sde_dpmpp_3m_program(SCH, grid_of(f["sigmas"]), False, "diffusers")
  x = run_rows(prog, f["x_T"], f["noise"])
  np.testing.assert_allclose(x, f["mstep3_diffusers/x"], rtol=0, atol=1e-11)
  # The consistent Taylor weight is another method (and so is k-diffusion's 'reference').
  for d2 in ("taylor", "reference"):
    other = run_rows(sde_dpmpp_3m_program(SCH, grid_of(f["sigmas"]), False, d2), f["x_T"],
                     f["noise"])
    assert np.abs(other - f["mstep3_diffusers/x"]).max() > 1e-4


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_sde_dpmpp_2s_matches_diffusers_on_one_path(solver_type):
  f = fixture()
  prog = sde_dpmpp_2s_program(SCH, grid_of(f["sigmas2s"]), False, 0.5, solver_type)
  z = np.stack([f["z1"], f["z2"]], axis=1).reshape((-1,) + f["z1"].shape[1:])  # rows 2i, 2i + 1
  x = run_rows(prog, f["x_T"], z)
  np.testing.assert_allclose(x, f[f"sstep2_{solver_type}/x"], rtol=0, atol=1e-11)


SA_CASES = ((2, 2, 1.0, True), (1, 1, 1.0, True), (3, 3, 0.7, True), (4, 4, 0.5, True),
            (2, 2, 0.0, True), (3, 2, 1.0, False), (2, 3, 1.0, False))


@pytest.mark.parametrize("p,c,tau,lof", SA_CASES)
def test_sa_solver_matches_diffusers(p, c, tau, lof):
  f = fixture()
  prog = sa_solver_program(SCH, grid_of(f["sigmas"]), p, c, tau, lof, False)
  assert len(prog) == len(f["sigmas"]) - 1  # NFE = N: the corrector re-uses the evaluation
  x = run_rows(prog, f["x_T"], f["noise"])
  np.testing.assert_allclose(x, f[f"sa_p{p}c{c}_tau{tau}{'' if lof else '_nolof'}/x"], rtol=0,
                             atol=1e-11)


def test_sa_solver_corrector_changes_the_result_and_cancels_its_noise():
  """Each row draws one normal (the step's): the corrector of x_i re-uses xi_{i-1}, so its update
  holds one 'z' term, the predictor's; with corrector order 1 < the predictor's the result
  differs from the pure predictor (c = 1 is not a no-op)."""
  f = fixture()
  t = grid_of(f["sigmas"])
  prog = sa_solver_program(SCH, t, 2, 2, 1.0, True, False)
  assert all(list(row.x).count("z") == 1 for row in prog.rows)
  a = run_rows(prog, f["x_T"], f["noise"])
  b = run_rows(sa_solver_program(SCH, t, 2, 1, 1.0, True, False), f["x_T"], f["noise"])
  assert np.abs(a - b).max() > 1e-3


def test_nfe_and_validation():
  den = lambda x, t, c: 0.5 * x
  x = jnp.zeros((2, 2))
  for name, n, nfe in (("sde_dpmpp_3m", 5, 6), ("sde_dpmpp_2s", 5, 11), ("sa_solver", 5, 5)):
    _, info = build_sampler(name, SCH, n)(den, jax.random.PRNGKey(0), x)
    assert int(info["nfe"]) == nfe == sampler_info(name).nfe(n, sampler_info(name).resolve({}))
  for name, hp, match in (("sde_dpmpp_3m", dict(d2_weight="x"), "d2_weight"),
                          ("sde_dpmpp_2s", dict(solver_type="x"), "solver_type"),
                          ("sde_dpmpp_2s", dict(r=1.0), "r must be"),
                          ("sa_solver", dict(predictor_order=5), "order"),
                          ("sa_solver", dict(corrector_order=0), "order"),
                          ("sa_solver", dict(tau=-1.0), "tau")):
    with pytest.raises(ValueError, match=match):
      build_sampler(name, SCH, 4, **hp)
