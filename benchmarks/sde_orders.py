"""Strong and weak orders of the stochastic samplers on one Brownian path per sample
(``noise='brownian_tree'``), on the exact 2-D mixture.

  .venv/bin/python -m benchmarks.sde_orders     # ~2-4 minutes on 2 CPU cores

Setting (that of tests/test_brownian.py): VP on t in [0.05, 0.5], x_T (1,000 samples) drawn from
the exact marginal at t = 0.5, float64, no final denoise, key 0. For each sampler and grid
('uniform' in t, 'karras'):

* strong error at N: RMS over samples of |x_N - x_ref|, x_ref the same sampler on the same paths
  at 1,024 steps of the same grid kind; the order is the least-squares slope over N = 8..64;
* weak error at N: |mean |x_N|^2 - mean |x_ref|^2| on the same paths (coupled: little Monte Carlo
  noise in the difference);
* the distance of each sampler's x_ref from Euler-Maruyama's (do they reach the same strong
  solution?);
* weak errors without Monte Carlo: on Gaussian data x0 ~ N(mu, C0) every engine sampler is
  affine in x_T and its normals, so the law of x_N is exact (``gaussian_law.program_law``):
  |E x_N - E x| + |Cov x_N - Cov x|_F against the exact marginal at t_min, N = 16..256;
* SDE-DPM-Solver++(2M)'s drift alone (its program without the noise, the ODE
  dx = [f x - g^2 score] dt) against diffrax Dopri8 (rtol = atol = 1e-10) on a grid whose step
  ratio alternates 1 : 3, with and without the multistep correction's /r.

Writes benchmarks/results/sde_orders.md and .json.

  .venv/bin/python -m benchmarks.sde_orders --cost   # the noise's cost only, printed

times 32 Euler-Maruyama steps of 64 x 3x32x32 with a trivial denoiser (0.5 x) under each noise.
"""
from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
SAMPLERS = (("euler_maruyama", {}), ("reverse_diffusion", {}), ("ddpm", {}),
            ("euler_ancestral", {}), ("ddim", {"eta": 1.0}), ("sde_dpmpp_2m", {}),
            ("sde_dpmpp_3m", {}), ("sde_dpmpp_3m", {"d2_weight": "diffusers"}),
            ("sde_dpmpp_2s", {}), ("sa_solver", {}))
# Exact weak orders on Gaussian data (diffusion/samplers/gaussian_law.py): N and the grids.
EXACT_STEPS = (16, 32, 64, 128, 256)
EXACT_GRIDS = ("logsnr", "uniform")
# The Gaussian data x0 ~ N(MU, C0) of the exact weak orders (those of tests/test_sde_solvers.py).
MU = (0.7, -0.4)
C0 = ((0.5, 0.2), (0.2, 0.15))
GRIDS = ("uniform", "karras")
STEPS = (8, 16, 32, 64)
REF = 1024
BATCH = 1000


def main():
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks.samplers import _setup_jax
  from diffusion import analytic, schedules
  from diffusion.samplers import build_sampler, engine
  from diffusion.samplers.dpm_solver import sde_dpmpp_2m_program
  _setup_jax()
  t0 = time.time()
  sch = schedules.VP(t_min=0.05, t_max=0.5)
  gm = analytic.random_mixture(0, 2, num_components=4)
  den = gm.denoiser(sch)
  rows, drift = [], {}
  rms = lambda a, b: float(np.sqrt(np.mean(np.sum((a - b)**2, axis=-1))))
  second = lambda x: float(np.mean(np.sum(x * x, axis=-1)))
  slope = lambda ns, e: float(-np.polyfit(np.log(ns), np.log(e), 1)[0])
  with jax.enable_x64(True):
    x_T = gm.sample(jax.random.PRNGKey(7), BATCH, sch.t_max, sch, jnp.float64)

    def solve(name, hp, n, grid):
      f = build_sampler(name, sch, n, grid=grid, final_denoise=False, noise="brownian_tree", **hp)
      return np.asarray(f(den, jax.random.PRNGKey(0), x_T)[0])

    em_ref = {g: solve("euler_maruyama", {}, REF, g) for g in GRIDS}
    for name, hp in SAMPLERS:
      for grid in GRIDS:
        ref = em_ref[grid] if name == "euler_maruyama" else solve(name, hp, REF, grid)
        xs = [solve(name, hp, n, grid) for n in STEPS]
        strong = [rms(x, ref) for x in xs]
        weak = [abs(second(x) - second(ref)) for x in xs]
        # The Monte Carlo standard error of the coupled weak error at the largest N.
        d2 = np.sum(xs[-1] * xs[-1], axis=-1) - np.sum(ref * ref, axis=-1)
        rows.append(dict(sampler=name, hparams=hp, grid=grid, steps=list(STEPS), strong=strong,
                         weak=weak, strong_order=slope(STEPS, strong),
                         weak_order=slope(STEPS, weak), ref_vs_em=rms(ref, em_ref[grid]),
                         weak_se_last=float(np.std(d2) / np.sqrt(BATCH))))
        print(name, hp, grid, [f"{e:.4f}" for e in strong], f"{rows[-1]['strong_order']:.2f}",
              f"{rows[-1]['weak_order']:.2f}", f"{rows[-1]['ref_vs_em']:.4f}", flush=True)

    exact_weak = exact_weak_orders()

    # The drift alone, with and without the /r.
    import diffrax

    def vf(t, x, args):
      return sch.drift(t) * x - sch.diffusion_sq(t) * gm.score(x, t, sch)

    xd = x_T[:64]
    exact = np.asarray(diffrax.diffeqsolve(
        diffrax.ODETerm(vf), diffrax.Dopri8(), t0=sch.t_max, t1=sch.t_min, dt0=-1e-3, y0=xd,
        max_steps=100_000,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10)).ys[-1])

    def alternating(n):
      lam0, lam1 = engine.half_logsnr(sch, sch.t_max), engine.half_logsnr(sch, sch.t_min)
      w = np.where(np.arange(n) % 2 == 0, 1.0, 3.0)
      t = engine.t_from_half_logsnr(sch, lam0 + (lam1 - lam0) * np.concatenate(
          [[0.0], np.cumsum(w) / w.sum()]))
      t[0], t[-1] = sch.t_max, sch.t_min
      return t

    def drift_program(t, divide, keep_noise=False):
      prog = sde_dpmpp_2m_program(sch, t, False)
      lam = engine.half_logsnr(sch, t)
      for i, row in enumerate(prog.rows):
        if not keep_noise:
          row.x.pop("z", None)
        if i > 0 and not divide:  # the correction c / r -> c: scale the c terms by r
          r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
          c = -row.x[i - 1]
          row.x[i] += c * (r - 1.0)
          row.x[i - 1] = -c * r
      return prog

    for divide in (True, False):
      errs = [rms(np.asarray(engine.run_program(drift_program(alternating(n), divide), den,
                                                jax.random.PRNGKey(0), xd)[0]), exact)
              for n in (16, 32, 64, 128)]
      drift["with /r" if divide else "without /r"] = dict(steps=[16, 32, 64, 128], errors=errs,
                                                          order=slope((16, 32, 64, 128), errs))
      print("drift", divide, errs, flush=True)

    # The whole stochastic step with and without the /r: strong and second-moment errors
    # against SDE-DPM-Solver++(2M) at 1,024 uniform steps on the same paths.
    ref2m = solve("sde_dpmpp_2m", {}, REF, "uniform")
    from diffusion.samplers import grids as grids_lib
    stoch = []
    for gname in ("alternating", "karras"):
      for divide in (True, False):
        for n in (16, 32, 64):
          t = alternating(n) if gname == "alternating" else grids_lib.time_grid(sch, n, "karras")
          x = np.asarray(engine.run_program(drift_program(t, divide, keep_noise=True), den,
                                            jax.random.PRNGKey(0), x_T, noise="brownian_tree",
                                            t_max=sch.t_max)[0])
          stoch.append(dict(grid=gname, divide=divide, steps=n, strong=rms(x, ref2m),
                            second=abs(second(x) - second(ref2m))))
          print("stochastic", stoch[-1], flush=True)

  lines = [f"Written by `python -m benchmarks.sde_orders` ({time.time() - t0:.0f} s): "
           f"`noise='brownian_tree'`, VP on t in [0.05, 0.5], exact 2-D mixture, {BATCH} samples "
           f"from the exact marginal at t = 0.5, float64, no final denoise. Strong error: RMS "
           f"|x_N - x_ref| over samples, x_ref the same sampler on the same paths at {REF} steps "
           f"of the same grid kind; weak: |mean |x_N|^2 - mean |x_ref|^2| (coupled). Orders: "
           f"least-squares slopes over N = {', '.join(map(str, STEPS))}. 'x_ref vs EM': RMS "
           f"distance of the sampler's {REF}-step solution from Euler-Maruyama's (the same "
           f"strong solution when small).", ""]
  lines += ["| sampler | grid | strong error at N = " + " / ".join(map(str, STEPS))
            + " | strong order | weak error at N = " + " / ".join(map(str, STEPS))
            + f" (MC s.e. at {STEPS[-1]}) | weak order | x_ref vs EM |",
            "|---|---|---|---|---|---|---|"]
  for r in rows:
    hp = "".join(f", {k}={v}" for k, v in r["hparams"].items())
    lines.append(f"| {r['sampler']}{hp} | {r['grid']} | "
                 + " / ".join(f"{e:.4f}" for e in r["strong"])
                 + f" | {r['strong_order']:.2f} | " + " / ".join(f"{e:.1e}" for e in r["weak"])
                 + f" ({r['weak_se_last']:.0e}) | {r['weak_order']:.2f} | {r['ref_vs_em']:.4f} |")
  lines += ["", "The coupled weak error has a Monte Carlo floor (its standard error, in brackets): "
            "the weak orders above are only meaningful where the errors stand well above it. "
            "Exact weak errors on Gaussian data x0 ~ N(mu, C0), mu = (0.7, -0.4), "
            "C0 = [[0.5, 0.2], [0.2, 0.15]] (the law of x_N from the program's coefficients, "
            "`diffusion/samplers/gaussian_law.py`; no Monte Carlo), |E x_N - E x| + |Cov x_N - "
            "Cov x|_F against the exact marginal at t = 0.05; order: the slope over the last "
            "three N:", "",
            "| sampler | grid | weak error at N = " + " / ".join(map(str, EXACT_STEPS))
            + " | weak order | registered order |", "|---|---|---|---|---|"]
  for r in exact_weak:
    hp = "".join(f", {k}={v}" for k, v in r["hparams"].items())
    lines.append(f"| {r['sampler']}{hp} | {r['grid']} | "
                 + " / ".join(f"{e:.2e}" for e in r["errors"])
                 + f" | {r['order']:.2f} | {r['registered']:.0f} |")
  lines += ["", "SDE-DPM-Solver++(2M)'s drift alone (noise removed: the ODE dx = [f x - g^2 "
            "score] dt) against diffrax Dopri8, 64 samples, on a grid whose step ratio "
            "alternates 1 : 3 in lambda:", "",
            "| correction | RMS error at N = 16 / 32 / 64 / 128 | order |", "|---|---|---|"]
  for k, v in drift.items():
    lines.append(f"| {k} | " + " / ".join(f"{e:.2e}" for e in v["errors"])
                 + f" | {v['order']:.2f} |")
  lines += ["", "The whole SDE-DPM-Solver++(2M) step with and without the /r: strong error and "
            "|mean |x|^2 - mean |x_ref|^2| against its 1,024-step uniform-grid solution on the "
            "same paths:", "", "| grid | correction | strong error at N = 16 / 32 / 64 | "
            "second-moment error at N = 16 / 32 / 64 |", "|---|---|---|---|"]
  for gname in ("alternating", "karras"):
    for divide in (True, False):
      sel = [r for r in stoch if r["grid"] == gname and r["divide"] == divide]
      lines.append(f"| {gname} | {'with /r' if divide else 'without /r'} | "
                   + " / ".join(f"{r['strong']:.4f}" for r in sel) + " | "
                   + " / ".join(f"{r['second']:.4f}" for r in sel) + " |")
  md = "\n".join(lines) + "\n"
  from benchmarks.hardware import with_machine_line
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "sde_orders.md"), "w") as fh:
    fh.write(with_machine_line(md))
  with open(os.path.join(RESULTS, "sde_orders.json"), "w") as fh:
    json.dump(dict(rows=rows, drift=drift, stochastic=stoch, exact_weak=exact_weak), fh, indent=1)
  print(md)


def exact_weak_orders():
  """Exact weak errors and orders on Gaussian data (``gaussian_law``) of the engine SDE samplers
  whose programs are exposed."""
  import numpy as np
  from diffusion import schedules
  from diffusion.samplers import gaussian_law, grids, sampler_info, sde
  from diffusion.samplers.dpm_solver import (sde_dpmpp_2m_program, sde_dpmpp_2s_program,
                                             sde_dpmpp_3m_program)
  from diffusion.samplers.sa_solver import sa_solver_program
  sch = schedules.VP(t_min=0.05, t_max=0.5)
  programs = {
      "euler_maruyama": lambda t, hp: sde._linear_sde_program(sde.em_coefs, sch, t, False),
      "sde_dpmpp_2m": lambda t, hp: sde_dpmpp_2m_program(sch, t, False),
      "sde_dpmpp_3m": lambda t, hp: sde_dpmpp_3m_program(sch, t, False, hp["d2_weight"]),
      "sde_dpmpp_2s": lambda t, hp: sde_dpmpp_2s_program(sch, t, False, hp["r"],
                                                         hp["solver_type"]),
      "sa_solver": lambda t, hp: sa_solver_program(sch, t, hp["predictor_order"],
                                                   hp["corrector_order"], hp["tau"],
                                                   hp["lower_order_final"], False)}
  cases = (("euler_maruyama", {}), ("sde_dpmpp_2m", {}), ("sde_dpmpp_3m", {}),
           ("sde_dpmpp_3m", {"d2_weight": "reference"}), ("sde_dpmpp_3m", {"d2_weight": "diffusers"}),
           ("sde_dpmpp_2s", {}), ("sde_dpmpp_2s", {"solver_type": "heun"}), ("sa_solver", {}),
           ("sa_solver", {"tau": 0.0}), ("sa_solver", {"predictor_order": 3, "corrector_order": 3}))
  out = []
  for grid in EXACT_GRIDS:
    for name, hp in cases:
      info = sampler_info(name)
      full = info.resolve(hp)
      errs = [gaussian_law.weak_error(programs[name](grids.time_grid(sch, n, grid), full), sch, MU,
                                      C0) for n in EXACT_STEPS]
      order = float(-np.polyfit(np.log(EXACT_STEPS[-3:]), np.log(errs[-3:]), 1)[0])
      out.append(dict(sampler=name, hparams=hp, grid=grid, steps=list(EXACT_STEPS), errors=errs,
                      order=order, registered=float(info.order(full))))
      print("exact", name, hp, grid, [f"{e:.2e}" for e in errs], f"{order:.2f}", flush=True)
  return out


def cost():
  import jax
  from diffusion import schedules
  from diffusion.samplers import build_sampler
  sch = schedules.VP()
  den = lambda x, t, c: 0.5 * x
  x_T = sch.prior_sample(jax.random.PRNGKey(0), (64, 3, 32, 32))
  for noise in ("independent", "brownian_tree"):
    f = build_sampler("euler_maruyama", sch, 32, noise=noise)
    jax.block_until_ready(f(den, jax.random.PRNGKey(1), x_T)[0])
    ts = []
    for _ in range(3):
      t0 = time.perf_counter()
      jax.block_until_ready(f(den, jax.random.PRNGKey(1), x_T)[0])
      ts.append(time.perf_counter() - t0)
    print(f"{noise}: {min(ts):.3f} s per 32-step Euler-Maruyama run of 64 x 3x32x32 "
          f"({jax.devices()[0].platform})")


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cost", action="store_true",
                      help="time the two noises only (printed, no results written)")
  sys.path.insert(0, REPO)
  cost() if parser.parse_args().cost else main()
