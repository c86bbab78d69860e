"""Writes tests/data/sde_solvers/reference.npz: diffusers' and k-diffusion's stochastic solvers.

The ground truth of ``sde_dpmpp_3m``, ``sde_dpmpp_2s`` and ``sa_solver``
(diffusion/samplers/dpm_solver.py, sa_solver.py) in tests/test_sde_solvers.py. diffusers (Apache
licence) is run unmodified in float64 on a fixed VE-sigma grid (sigma = sigma_t / alpha_t of a VP
process, diffusers' convention alpha = 1/sqrt(1 + sigma^2)), with the normals it uses fed in:

* ``mstep3_diffusers/x``: DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++',
  solver_order=3, solver_type='heun', lower_order_final=False): its update methods
  (``dpm_solver_first_order_update``, ``multistep_dpm_solver_second_order_update``,
  ``multistep_dpm_solver_third_order_update``) called in step()'s order 1, 2, 3, 3, ...  directly
  (step() casts the sample to float32); ``noise[i]`` the normal of step i.
* ``kdiff3m/x``: k-diffusion's ``sample_dpmpp_3m_sde`` (MIT licence, k-diffusion 0.1.1.post1
  from PyPI, installed with --no-deps: its function definition is read from
  ``k_diffusion/sampling.py`` with ``ast`` and executed as written with torch and a plain
  ``trange``; the module's other imports are not needed), eta = 1, on the VE-scaled x / alpha
  (its output multiplied back by alpha), ``noise_sampler`` feeding ``noise[i]``.
* ``sstep2_<solver_type>/x``: DPMSolverSinglestepScheduler(algorithm_type='sde-dpmsolver++',
  solver_order=2): per step s -> t, its first-order update to the intermediate s1 (VE sigma
  sqrt(sigma_s sigma_t): lambda midpoint) with normal z1, then its second-order update from s with
  normal (K z1 + C z2) / (sigma_t sqrt(1 - e^{-2h})), K = sigma_t e^{-h/2} sqrt(1 - e^{-h}),
  C = sigma_t sqrt(1 - e^{-h}) (the step's noise on one path, as the project's sde_dpmpp_2s draws
  it; diffusers itself would draw it independently of z1). ``z1[i]``, ``z2[i]`` stored.
* ``sa_p<p>c<c>_tau<tau>[_nolof]``: SASolverScheduler(predictor_order=p, corrector_order=c,
  tau_func=lambda t: tau, prediction_type='sample', lower_order_final=True unless '_nolof'),
  step() as is (it stays in float64), its sigmas replaced by the grid, ``randn_tensor`` replaced
  by a feeder of ``noise[i]``.

Arrays: ``sigmas`` (N+1,) the grid (``sigmas2s`` for the 2S cases), ``x_T`` (B, D) the start;
per case ``<case>/x`` (B, D) the result at the last sigma (no final denoise) and its normals.
The denoiser (also in the test): D(x, s) = 0.8 tanh(1.3 a x + 0.2) - 0.3 a x / (1 + s^2),
a = 1/sqrt(1 + s^2), s the VE sigma.

Made with torch 2.14 (CPU), diffusers 0.42.1 and k-diffusion 0.1.1.post1, numpy RandomState(0)
normals, by

    /work/torch_env/bin/python tests/data/sde_solvers/make_sde_solver_fixtures.py

Deterministic (a second run writes equal arrays). Pytest does not collect this script (its name
does not start with test_).
"""
import ast
import importlib.util
import os

import numpy as np
import torch
from diffusers import (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler,
                       SASolverScheduler)
from diffusers.schedulers import scheduling_sasolver

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "reference.npz")
B, D = 4, 3
# Non-uniform in lambda (consecutive step ratios from 0.5 to 1.9), 8 steps.
SIGMAS = np.array([9.0, 5.5, 2.4, 1.5, 0.8, 0.33, 0.21, 0.09, 0.05])
SIGMAS_2S = np.array([7.0, 3.1, 1.2, 0.4, 0.17, 0.06])
SA_CASES = ((2, 2, 1.0, True), (1, 1, 1.0, True), (3, 3, 0.7, True), (4, 4, 0.5, True),
            (2, 2, 0.0, True), (3, 2, 1.0, False), (2, 3, 1.0, False))


def denoise(x, s):
  s = torch.as_tensor(s, dtype=torch.float64)
  a = 1.0 / torch.sqrt(1.0 + s * s)
  return 0.8 * torch.tanh(1.3 * a * x + 0.2) - 0.3 * a * x / (1.0 + s * s)


def t64(a):
  return torch.tensor(np.asarray(a), dtype=torch.float64)


def multistep3(x_T, noise):
  sch = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3,
                                    solver_type="heun", lower_order_final=False)
  sch.sigmas = t64(SIGMAS)
  x = t64(x_T)
  outs = []
  for i in range(len(SIGMAS) - 1):
    sch._step_index = i
    outs.append(denoise(x, SIGMAS[i]))
    z = t64(noise[i])
    order = min(3, i + 1)
    if order == 1:
      x = sch.dpm_solver_first_order_update(outs[-1], sample=x, noise=z)
    elif order == 2:
      x = sch.multistep_dpm_solver_second_order_update(outs[-2:], sample=x, noise=z)
    else:
      x = sch.multistep_dpm_solver_third_order_update(outs[-3:], sample=x, noise=z)
  return x.numpy()


def kdiffusion_function(name):
  """The function ``name`` of k_diffusion/sampling.py, its definition executed as written."""
  path = os.path.join(importlib.util.find_spec("k_diffusion").submodule_search_locations[0],
                      "sampling.py")
  with open(path) as f:
    tree = ast.parse(f.read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
  namespace = {"torch": torch, "trange": lambda n, disable=None: range(n)}
  exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), namespace)
  return namespace[name]


def kdiffusion3m(x_T, noise):
  sampler = kdiffusion_function("sample_dpmpp_3m_sde")
  sig = t64(SIGMAS)
  model = lambda x, s: denoise(x / torch.sqrt(1 + s[0]**2), s[0])
  feed = iter(noise)
  x = sampler(model, t64(x_T) * torch.sqrt(1 + sig[0]**2), sig, eta=1.0,
              noise_sampler=lambda s, t: t64(next(feed)))
  return (x / torch.sqrt(1 + sig[-1]**2)).numpy()


def singlestep2(x_T, z1, z2, solver_type):
  sch = DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2,
                                     solver_type=solver_type)
  x = t64(x_T)
  for i in range(len(SIGMAS_2S) - 1):
    s, t = SIGMAS_2S[i], SIGMAS_2S[i + 1]
    s1 = np.sqrt(s * t)
    sch.sigmas = t64([s, s1, t])
    sch._step_index = 0
    d_s = denoise(x, s)
    u = sch.dpm_solver_first_order_update(d_s, sample=x, noise=t64(z1[i]))
    d_1 = denoise(u, s1)
    h = np.log(s) - np.log(t)
    sg_t = t / np.sqrt(1 + t * t)
    k = sg_t * np.exp(-h / 2) * np.sqrt(-np.expm1(-h))
    c = sg_t * np.sqrt(-np.expm1(-h))
    full = (k * z1[i] + c * z2[i]) / (sg_t * np.sqrt(-np.expm1(-2 * h)))
    sch._step_index = 1
    x = sch.singlestep_dpm_solver_second_order_update([d_s, d_1], sample=x, noise=t64(full))
  return x.numpy()


def sa(x_T, noise, p, c, tau, lof):
  sch = SASolverScheduler(predictor_order=p, corrector_order=c, tau_func=lambda t: tau,
                          prediction_type="sample", lower_order_final=lof)
  n = len(SIGMAS) - 1
  sch.set_timesteps(n)
  sch.sigmas = t64(SIGMAS)
  sch.timesteps = torch.arange(n - 1, -1, -1)
  sch.set_begin_index(0)
  feed = iter(noise)
  saved = scheduling_sasolver.randn_tensor
  scheduling_sasolver.randn_tensor = lambda shape, **kw: t64(next(feed))
  try:
    x = t64(x_T)
    for i in range(n):
      x = sch.step(denoise(x, SIGMAS[i]), sch.timesteps[i], x).prev_sample
  finally:
    scheduling_sasolver.randn_tensor = saved
  return x.numpy()


def main():
  rng = np.random.RandomState(0)
  n = len(SIGMAS) - 1
  x_T = 1.5 * rng.randn(B, D)
  out = {"sigmas": SIGMAS, "sigmas2s": SIGMAS_2S, "x_T": x_T}
  noise = rng.randn(n, B, D)
  out["noise"] = noise
  out["mstep3_diffusers/x"] = multistep3(x_T, noise)
  out["kdiff3m/x"] = kdiffusion3m(x_T, noise)
  z1, z2 = rng.randn(len(SIGMAS_2S) - 1, B, D), rng.randn(len(SIGMAS_2S) - 1, B, D)
  out["z1"], out["z2"] = z1, z2
  for st in ("midpoint", "heun"):
    out[f"sstep2_{st}/x"] = singlestep2(x_T, z1, z2, st)
  for p, c, tau, lof in SA_CASES:
    out[f"sa_p{p}c{c}_tau{tau}{'' if lof else '_nolof'}/x"] = sa(x_T, noise, p, c, tau, lof)
  np.savez(OUT, **out)
  for k, v in out.items():
    print(k, v.shape)


if __name__ == "__main__":
  main()
