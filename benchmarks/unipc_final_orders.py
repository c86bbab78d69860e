"""UniPC-3's final orders: the N < 10 rule (this codebase's default, the DPM-Solver code's) against
lowering them at every N (``lower_order_final_every_n``: the UniPC code's and diffusers'), on the
exact mixtures.

  .venv/bin/python -m benchmarks.unipc_final_orders     # ~3 minutes on 2 CPU cores

Relative error ||x - x_ref|| / ||x_ref|| of 1,000 samples against the float64 PF-ODE solution
(``flow_map.exact_flow_map``) from the same x_T, VP on [1e-3, 1], the 2-D and 64-D mixtures of
``analytic.random_mixture``, float64, for each grid and N. Writes
benchmarks/results/unipc_final_orders.md and .json.
"""
from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
GRIDS = ("uniform", "quadratic", "karras", "logsnr", "logsnr_power")
STEPS = (5, 8, 10, 12, 15, 20)


def main():
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks.samplers import _setup_jax
  from diffusion import analytic, flow_map, schedules
  from diffusion.samplers import build_sampler
  _setup_jax()
  t0 = time.time()
  sch = schedules.VP()
  rows = []
  with jax.enable_x64(True):
    for dim in (2, 64):
      gm = analytic.random_mixture(0, dim, num_components=4)
      den = gm.denoiser(sch)
      x_T = sch.prior_sample(jax.random.PRNGKey(1), (1000, dim)).astype(jnp.float64)
      ref = np.asarray(flow_map.exact_flow_map(den, sch, x_T, sch.t_max, sch.t_min))
      for grid in GRIDS:
        for every in (False, True):
          for n in STEPS:
            f = build_sampler("unipc", sch, n, grid=grid, jit=False,
                              lower_order_final_every_n=every)
            x, _ = f(den, jax.random.PRNGKey(0), x_T)
            err = float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))
            rows.append(dict(dim=dim, grid=grid, every_n=every, steps=n, rel_err=err))
            print(dim, grid, every, n, f"{err:.4f}", flush=True)
  lines = [f"Written by `python -m benchmarks.unipc_final_orders` ({time.time() - t0:.0f} s): "
           f"UniPC-3 (bh2), relative error against the float64 PF-ODE solution, 1,000 samples, "
           f"VP on [1e-3, 1]; 'N < 10' is the default rule, 'every N' is "
           f"`lower_order_final_every_n=True` (the UniPC code and diffusers).", ""]
  for dim in (2, 64):
    lines += [f"### {dim}-D mixture", "", "| grid | rule | " + " | ".join(f"N = {n}" for n in STEPS)
              + " |", "|---|---|" + "---|" * len(STEPS)]
    for grid in GRIDS:
      for every in (False, True):
        errs = [r["rel_err"] for r in rows if r["dim"] == dim and r["grid"] == grid
                and r["every_n"] == every]
        lines.append(f"| {grid} | {'every N' if every else 'N < 10'} | "
                     + " | ".join(f"{e:.3f}" for e in errs) + " |")
    lines.append("")
  md = "\n".join(lines)
  from benchmarks.hardware import with_machine_line
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "unipc_final_orders.md"), "w") as fh:
    fh.write(with_machine_line(md))
  with open(os.path.join(RESULTS, "unipc_final_orders.json"), "w") as fh:
    json.dump(rows, fh, indent=1)
  print(md)


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  main()
