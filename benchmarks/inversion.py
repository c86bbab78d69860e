"""Inversion benchmark: every fixed-step deterministic sampler inverting exact data of the 2-D and
64-D mixtures (``analytic.random_mixture``, VP, t in [1e-3, 1]) against the exact inversion.

  .venv/bin/python -m benchmarks.inversion          # ~5 minutes on 2 CPU cores

Writes benchmarks/results/inversion.md and inversion.json. Per sampler (default hyper-parameters,
final denoise off), grid (uniform logSNR and the power-warped one, kappa = 0.8) and NFE target
(10, 20, 50; the largest num_steps within it):
  * inversion error: ||x_T - x_T*|| / ||x_T*|| over 1,000 exact samples x of p_{t_min}, x_T the
    inverter's result (``samplers.build_inverter``) and x_T* the exact inversion
    (``flow_map.exact_flow_map`` from t_min to t_max, float64 Dopri8, rtol = atol = 1e-10);
  * cycle error: ||sample(x_T) - x|| / ||x||, the same sampler and grid back to t_min (the editing
    workflow: what is lost by inverting and regenerating);
all in float64.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
GRIDS = ("logsnr", "logsnr_power")
NFES = (10, 20, 50)


def rows_for(dim: int, n: int) -> List[Dict[str, Any]]:
  import jax
  import jax.numpy as jnp
  from benchmarks.samplers import _setup_jax, steps_for
  from diffusion import analytic, flow_map, schedules
  from diffusion.samplers import build_inverter, build_sampler, registered_samplers, sampler_info
  from diffusion.samplers.registry import _invertible
  _setup_jax()
  sch = schedules.VP()
  gm = analytic.random_mixture(0, dim, num_components=4)
  rows = []
  with jax.enable_x64(True):
    den = gm.denoiser(sch)
    x = gm.sample(jax.random.PRNGKey(3), n, sch.t_min, sch, jnp.float64)
    exact = np.asarray(flow_map.exact_flow_map(den, sch, x, sch.t_min, sch.t_max))
    x_np = np.asarray(x)
    for name in registered_samplers():
      info = sampler_info(name)
      if not _invertible(info):
        continue
      extra = {"final_denoise": False} if "final_denoise" in info.defaults() else {}
      hp = info.resolve(extra)
      for grid in GRIDS:
        for target in NFES:
          steps = steps_for(info, hp, target)
          t0 = time.time()
          x_T, out = build_inverter(name, sch, steps, grid=grid, jit=False)(den, x)
          back, _ = build_sampler(name, sch, steps, grid=grid, jit=False, **extra)(
              den, jax.random.PRNGKey(0), x_T)
          x_T, back = np.asarray(x_T), np.asarray(back)
          ok = np.all(np.isfinite(x_T)) and np.all(np.isfinite(back))
          row = dict(dim=dim, sampler=name, grid=grid, steps=steps, nfe=int(out["nfe"]),
                     inv_err=float(np.linalg.norm(x_T - exact) / np.linalg.norm(exact))
                     if ok else float("nan"),
                     cycle_err=float(np.linalg.norm(back - x_np) / np.linalg.norm(x_np))
                     if ok else float("nan"),
                     seconds=time.time() - t0)
          rows.append(row)
          print(f"[{dim}-D] {name:13s} {grid:12s} nfe={row['nfe']:3d} inv={row['inv_err']:.2e} "
                f"cycle={row['cycle_err']:.2e}", flush=True)
  return rows


def report(rows: List[Dict[str, Any]], n: int, seconds: float) -> str:
  lines = [f"Written by `python -m benchmarks.inversion` ({n} exact samples of p_t_min per "
           f"mixture, float64; {seconds:.0f} s). Inversion error: relative to the exact float64 "
           f"inversion (flow_map.exact_flow_map); cycle: invert then sample with the same sampler "
           f"and grid, relative to the data.", ""]
  for dim in sorted({r["dim"] for r in rows}):
    for grid in GRIDS:
      sub = [r for r in rows if r["dim"] == dim and r["grid"] == grid]
      lines += [f"### {dim}-D mixture, grid `{grid}`", "",
                "| sampler | " + " | ".join(f"NFE {t}: inversion / cycle" for t in NFES) + " |",
                "|---|" + "---|" * len(NFES)]
      for name in sorted({r["sampler"] for r in sub}):
        cells = []
        for t in NFES:
          r = [r for r in sub if r["sampler"] == name and r["nfe"] <= t]
          r = max(r, key=lambda r: r["nfe"]) if r else None
          cells.append(f"{r['inv_err']:.2e} / {r['cycle_err']:.2e} ({r['nfe']})" if r else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
      lines.append("")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--num", type=int, default=1000, help="exact samples per mixture")
  ap.add_argument("--out", default=RESULTS)
  args = ap.parse_args(argv)
  t0 = time.time()
  rows = [r for dim in (2, 64) for r in rows_for(dim, args.num)]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "inversion.json"), "w") as fh:
    json.dump({"rows": rows, "seconds": time.time() - t0}, fh, indent=1)
  md = report(rows, args.num, time.time() - t0)
  from benchmarks.hardware import with_machine_line
  with open(os.path.join(args.out, "inversion.md"), "w") as fh:
    fh.write(with_machine_line(md))
  print(md)


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  main()
