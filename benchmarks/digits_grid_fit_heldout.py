"""Held-out trajectory error of 5-step samplers on a trained digits run: the mean squared distance
(summed over the 64 pixels) of DPM-Solver++(2M) / UniPC samples to the model's own fine PF-ODE
solution (DPM-Solver++(3M), 100 steps, logsnr_power) from 256 starting points the grid fit never
saw (seed 12345), on the karras / logsnr / logsnr_power grids and on the fitted grid of
``python -m experiments.search_grid --method=fit`` (the newest fit_step_*.json of the workdir).

  .venv/bin/python -m benchmarks.digits_grid_fit_heldout [--workdir=workdirs/digits_vp]

Prints one line per sampler (results quoted in benchmarks/results/digits_vp_optimised_grids.md).
"""
import argparse
import glob
import json

import jax
import numpy as np

from diffusion.samplers import build_sampler
from experiments import search_grid
from experiments.config_files import load_config_file
from experiments.setup import restore_params


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="workdirs/digits_vp")
  ap.add_argument("--config", default="configs/digits/vp.py")
  args = ap.parse_args()
  cfg = load_config_file(args.config)
  s, params, _ = restore_params(cfg, args.workdir)
  den = search_grid._model_denoiser(s, params, cfg)
  files = sorted(glob.glob(f"{args.workdir}/grids/fit_step_*.json"))
  if not files:
    raise SystemExit(f"no fitted grids in {args.workdir}/grids: run search_grid --method=fit")
  fit = json.load(open(files[-1]))
  x_T = s.schedule.prior_sample(jax.random.PRNGKey(12345), (256,) + tuple(s.example["x"].shape[1:]))
  ref, _ = build_sampler("dpmpp_3m", s.schedule, 100, grid="logsnr_power", jit=False)(
      den, jax.random.PRNGKey(0), x_T)
  ref = np.asarray(ref)
  for name in ("dpmpp_2m", "unipc"):
    rows = {}
    for g in ("karras", "logsnr", "logsnr_power", "fitted"):
      kw = ({"time_grid": np.asarray(fit["grids"][name]["5"])} if g == "fitted"
            else {"num_steps": 5, "grid": g})
      x, _ = build_sampler(name, s.schedule, jit=False, **kw)(den, jax.random.PRNGKey(0), x_T)
      rows[g] = float(np.mean(np.sum((np.asarray(x) - ref).reshape(len(ref), -1)**2, 1)))
    print(name, {k: round(v, 3) for k, v in rows.items()},
          "fitted/karras %.3f" % (rows["fitted"] / rows["karras"]), flush=True)


if __name__ == "__main__":
  main()
