"""Optimised time grids on the exact mixtures: the PF-ODE error of deterministic samplers on
hand-made grids, on Align Your Steps' least-KLUB grid and on grids fitted to each sampler's own
error, against DPM-Solver++(2M) on the uniform-logSNR grid (the issue's reference).

  .venv/bin/python -m benchmarks.optimised_grids            # ~4 minutes on 2 CPU cores
  .venv/bin/python -m benchmarks.optimised_grids --quick    # 2-D only, NFE 5 and 10

Set-up as benchmarks/samplers.py: VP schedule, t in [1e-3, 1], the 2-D and 64-D mixtures of
``analytic.random_mixture(0, dim)``, no final denoise; rel. error ||x - x_ref|| / ||x_ref|| at
t_min on 1,000 held-out starting points, x_ref the exact PF-ODE solution (diffrax Dopri8, rtol =
atol = 1e-9, float64).
  ays     ``ays.klub_costs`` with the exact denoiser on 4,096 exact data samples and 256 noise
          levels, the DP-optimal grid for each N (one set of costs serves every N and sampler),
          the levels' noise coupled by a Brownian path (the exact KLUB); ays_shared: by one eps;
  fitted  ``grid_fit.fit_grid`` per sampler and N: Nelder-Mead (at most 60 N sampler runs) from
          'logsnr_power' on 256 other starting points with their exact solutions.
Writes benchmarks/results/optimised_grids.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
SAMPLERS = ("dpmpp_2m", "unipc", "dpmpp_3m", "ddim")
HAND_GRIDS = ("logsnr", "logsnr_power", "karras")


def run(quick: bool) -> List[Dict[str, Any]]:
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_compilation_cache_dir", os.path.join(REPO, ".jax_cache"))
  from benchmarks.samplers import steps_for
  from diffusion import analytic, schedules
  from diffusion.flow_map import exact_flow_map
  from diffusion.samplers import ays, build_sampler, grid_fit, sampler_info

  sch = schedules.VP()
  rows = []
  for dim in ((2,) if quick else (2, 64)):
    gm = analytic.random_mixture(0, dim, num_components=4)
    den = gm.denoiser(sch)

    def exact(x):
      n = len(x)
      with jax.enable_x64(True):
        return np.asarray(exact_flow_map(den, sch, jnp.asarray(x, jnp.float64),
                                         jnp.full((n,), sch.t_max), jnp.full((n,), sch.t_min),
                                         rtol=1e-9, atol=1e-9))

    x_T = np.asarray(sch.prior_sample(jax.random.PRNGKey(1), (1000, dim)))
    ref = exact(x_T)
    fit_x = np.asarray(sch.prior_sample(jax.random.PRNGKey(11), (256, dim)))
    fit_ref = exact(fit_x)
    t0 = time.time()
    costs = {c: ays.klub_costs(den, sch, gm.sample0(jax.random.PRNGKey(7), 4096),
                               jax.random.PRNGKey(8), num_nodes=256, coupling=c)
             for c in ays.COUPLINGS}
    ays_secs = (time.time() - t0) / len(costs)
    for name in SAMPLERS:
      info = sampler_info(name)
      hp = {"final_denoise": False} if "final_denoise" in info.defaults() else {}
      for nfe in ((5, 10) if quick else (5, 10, 20)):
        steps = steps_for(info, info.resolve(hp), nfe)

        def err(**grid_args):
          f = build_sampler(name, sch, jit=False, **grid_args, **hp)
          x, out = f(den, jax.random.PRNGKey(0), jnp.asarray(x_T))
          e = float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))
          return e, int(out["nfe"])

        for g in HAND_GRIDS:
          e, n = err(num_steps=steps, grid=g)
          rows.append(dict(dim=dim, sampler=name, grid=g, steps=steps, nfe=n, rel_err=e))
        for c, g in (("brownian", "ays"), ("shared", "ays_shared")):
          e, n = err(time_grid=ays.grid_from_costs(costs[c], sch, steps))
          rows.append(dict(dim=dim, sampler=name, grid=g, steps=steps, nfe=n, rel_err=e,
                           seconds=ays_secs))
        loss = grid_fit.trajectory_loss(name, sch, den, jnp.asarray(fit_x), fit_ref, **hp)
        t0 = time.time()
        grid, trace = grid_fit.fit_grid(loss, sch, steps, max_evals=60 * steps)
        e, n = err(time_grid=grid)
        rows.append(dict(dim=dim, sampler=name, grid="fitted", steps=steps, nfe=n, rel_err=e,
                         seconds=time.time() - t0, evaluations=trace["num_evaluations"],
                         times=[float(t) for t in grid]))
        print(f"[{dim}-D] {name:9s} NFE {n:3d}: " + "  ".join(
            f"{r['grid']} {r['rel_err']:.4f}" for r in rows[-6:]), flush=True)
  return rows


def stochastic(quick: bool) -> List[Dict[str, Any]]:
  """AYS on the samplers it was derived for: sliced Wasserstein SW_2 of 2,000 samples of the
  stochastic samplers (final denoise on) to 2,000 exact data samples, per grid; 'floor' the SW of
  two exact sample sets."""
  import jax
  import jax.numpy as jnp
  from benchmarks.samplers import steps_for
  from diffusion import analytic, schedules
  from diffusion.metrics import sliced_wasserstein
  from diffusion.samplers import ays, build_sampler, sampler_info

  sch = schedules.VP()
  rows = []
  for dim in ((2,) if quick else (2, 64)):
    gm = analytic.random_mixture(0, dim, num_components=4)
    den = gm.denoiser(sch)
    n = 2000
    x_T = jnp.asarray(sch.prior_sample(jax.random.PRNGKey(1), (n, dim)))
    exact = np.asarray(gm.sample0(jax.random.PRNGKey(2), n))
    sw = lambda a, b: sliced_wasserstein(np.asarray(a), np.asarray(b), 0, num_projections=128)
    floor = sw(exact, gm.sample0(jax.random.PRNGKey(4), n))
    costs = {c: ays.klub_costs(den, sch, gm.sample0(jax.random.PRNGKey(7), 4096),
                               jax.random.PRNGKey(8), num_nodes=256, coupling=c)
             for c in ays.COUPLINGS}
    for name in ("ddpm", "euler_maruyama"):
      info = sampler_info(name)
      for nfe in ((10,) if quick else (10, 20)):
        steps = steps_for(info, info.resolve({}), nfe)
        for g in HAND_GRIDS + ("ays", "ays_shared"):
          c = {"ays": "brownian", "ays_shared": "shared"}.get(g)
          kw = ({"time_grid": ays.grid_from_costs(costs[c], sch, steps)} if c
                else {"num_steps": steps, "grid": g})
          x, out = build_sampler(name, sch, jit=False, **kw)(den, jax.random.PRNGKey(0), x_T)
          rows.append(dict(dim=dim, sampler=name, grid=g, steps=steps, nfe=int(out["nfe"]),
                           sw=sw(x, exact), floor=floor))
        print(f"[{dim}-D] {name:14s} NFE {rows[-1]['nfe']:3d}: " + "  ".join(
            f"{r['grid']} {r['sw']:.4f}" for r in rows[-5:]), flush=True)
  return rows


def stochastic_table(rows: List[Dict[str, Any]]) -> str:
  grids = HAND_GRIDS + ("ays", "ays_shared")
  out = ["| dim | sampler | NFE | " + " | ".join(grids) + " | floor |",
         "|---:|---|---:|" + "---:|" * (len(grids) + 1)]
  keys = sorted({(r["dim"], r["sampler"], r["nfe"]) for r in rows})
  for dim, name, nfe in keys:
    by = {r["grid"]: r for r in rows if (r["dim"], r["sampler"], r["nfe"]) == (dim, name, nfe)}
    best = min(r["sw"] for r in by.values())
    out.append(f"| {dim} | `{name}` | {nfe} | " + " | ".join(
        f"**{by[g]['sw']:.4f}**" if by[g]["sw"] == best else f"{by[g]['sw']:.4f}"
        for g in grids) + f" | {by[grids[0]]['floor']:.4f} |")
  return "\n".join(out)


def table(rows: List[Dict[str, Any]]) -> str:
  grids = HAND_GRIDS + ("ays", "ays_shared", "fitted")
  ref = {(r["dim"], r["nfe"]): r["rel_err"] for r in rows
         if r["sampler"] == "dpmpp_2m" and r["grid"] == "logsnr"}
  out = ["| dim | sampler | NFE | " + " | ".join(grids) + " | best / DPM++(2M) logSNR |",
         "|---:|---|---:|" + "---:|" * (len(grids) + 1)]
  keys = sorted({(r["dim"], r["sampler"], r["nfe"]) for r in rows},
                key=lambda k: (k[0], list(SAMPLERS).index(k[1]), k[2]))
  for dim, name, nfe in keys:
    by = {r["grid"]: r["rel_err"] for r in rows
          if (r["dim"], r["sampler"], r["nfe"]) == (dim, name, nfe)}
    best = min(by.values())
    base = ref.get((dim, nfe))
    ratio = f"{best / base:.2f} ({min(by, key=by.get)})" if base else "-"
    out.append(f"| {dim} | `{name}` | {nfe} | " + " | ".join(
        f"**{by[g]:.4f}**" if by[g] == best else f"{by[g]:.4f}" for g in grids) +
               f" | {ratio} |")
  return "\n".join(out)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  t0 = time.time()
  rows = run(args.quick)
  srows = stochastic(args.quick)
  md = ("Measured by `python -m benchmarks.optimised_grids" + (" --quick" if args.quick else "")
        + f"` ({time.time() - t0:.0f} s on this host). Relative error at t_min against the exact "
        "PF-ODE solution on 1,000 held-out starting points (module docstring); bold: the best "
        "grid of the row; the last column: the row's best error over DPM-Solver++(2M)'s on the "
        "uniform-logSNR grid at the same NFE (the issue's goal at NFE 5: <= 0.5).\n\n"
        + table(rows) + "\n\nThe stochastic samplers AYS's KLUB is derived for (the linearised "
        "reverse SDE: DDPM's step is stochastic DDIM), with the final denoise: SW_2 of 2,000 "
        "samples to 2,000 exact data samples (floor: two exact sets).\n\n"
        + stochastic_table(srows) + "\n")
  from benchmarks.hardware import with_machine_line
  md = with_machine_line(md)
  os.makedirs(RESULTS, exist_ok=True)
  name = "optimised_grids_quick" if args.quick else "optimised_grids"
  with open(os.path.join(RESULTS, name + ".md"), "w") as f:
    f.write(md)
  with open(os.path.join(RESULTS, name + ".json"), "w") as f:
    json.dump({"ode": rows, "sde": srows}, f, indent=1)
  print(md)


if __name__ == "__main__":
  main()
