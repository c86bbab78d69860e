"""SMC benchmark: TDS and its baselines against the exact posterior of the 4-D mixture.

  .venv/bin/python -m benchmarks.smc_mixture            # ~3-5 minutes on 2 CPU cores
  .venv/bin/python -m benchmarks.smc_mixture --quick    # ~1 minute, 200 groups, K = 16 / 64
  .venv/bin/python -m benchmarks.smc_mixture --steps 300 1000 --particles 64 --methods tds \
      --out benchmarks/results/smc_mixture_steps.md      # the chain's limit as the steps grow
  .venv/bin/python -m benchmarks.smc_mixture --steps 300 --particles 4 16 64 256 --methods tds \
      --out benchmarks/results/smc_mixture_particles.md  # the particles' limit on a fine chain

Writes benchmarks/results/smc_mixture.md (and .json).

Problem: ``benchmarks.inverse_mixture.problem`` (3-component 4-D mixture, coordinates 0 and 1
observed, y = (0, 0.3)) with noise_std 0.3, and noiselessly for TDS; the exact mixture denoiser,
float64, VP schedule, uniform grids of 30 and 100 DDPM steps (the SMC's transition). Methods
(``diffusion.smc.tds``, adaptive systematic resampling at ESS < K/2):
  * tds: twisted proposal and weights (Wu et al. 2023), twist N(y; A x0_hat, r_t^2 AA^T + s^2 I)
    with the Pi-GDM r_t^2 (sigma_data = 1), one VJP through the denoiser per particle and step;
  * bootstrap: the same twisted weights, the plain reverse step as proposal (no VJP);
  * none: no twist (importance sampling of the unconditional chain by the final likelihood).
Each row runs G independent groups (all with the same y) of K particles. Measures:
  * SW, weight err (draws): one sample per group drawn from its final weighted particles
    (``smc.select``): G independent samples of the SMC's approximation of p(x0 | y); the metrics
    of ``inverse_mixture.metrics`` (SW to G exact posterior samples, 256 projections; the
    mode-weight error max_k |mean r_k - w_k'|). The floor row: two exact sets of G samples.
    (Pooling all particles would count each group's resampled duplicates as independent.)
  * weight err (weighted): the same mode-weight error from the weighted particles of all groups,
    mean_g sum_k W_gk r(x_gk): a lower-noise estimate of the SMC's bias in the mode weights;
  * |E log Z - log p(y)|: mean over groups of log Z_hat minus the exact log evidence
    (``analytic.linear_gaussian_evidence``): the downward (Jensen) bias of log Z_hat;
    |log E Z / p(y)|: the log of the mean of Z_hat / p(y) over groups (Z_hat is unbiased for the
    chain's evidence, so this is the discretised chain's own bias plus Monte Carlo error);
  * ESS min: the smallest ESS along the run (mean over groups); resamplings per group;
  * NFE / VJP per sample: K (N + 1) denoiser calls (and VJPs for tds) per final sample (one per
    group); time: wall seconds of the row, compilation included.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

from benchmarks import inverse_mixture as im

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
PARTICLES = (16, 64, 256)
STEPS = (30, 100)
METHODS = ("tds", "bootstrap", "none")


def run_one(method: str, k: int, steps: int, noise_std: float, groups: int, seed: int = 0
            ) -> Dict[str, Any]:
  import jax
  import jax.numpy as jnp
  from diffusion import analytic, inverse, schedules, smc
  from diffusion.samplers import grids
  vp = schedules.VP()
  gm, A, y = im.problem()
  post = im.exact_posterior(noise_std)
  tg = grids.time_grid(vp, steps, "uniform")
  fn = jax.jit(lambda key, xt, c: smc.tds(gm.denoiser(vp), vp, key, xt, tg,
                                          inverse.MatrixOperator(A), cond=c,
                                          noise_std=noise_std, proposal=method))
  t0 = time.time()
  x_T = smc.prior_particles(vp, jax.random.PRNGKey(seed), groups, k, (4,), dtype=jnp.float64)
  cond = {"y": jnp.broadcast_to(jnp.asarray(y), (groups, 2))}
  x0, info = fn(jax.random.PRNGKey(seed + 1), x_T, cond)
  draws = np.asarray(smc.select(jax.random.PRNGKey(seed + 2), x0, info["log_weights"])[:, 0])
  seconds = time.time() - t0
  exact = im.exact_samples(post, groups, 100)
  met = im.metrics(draws, post, noise_std, exact)
  f = im.free_coords(noise_std)
  covs = post.covariances()[:, f][:, :, f]
  x = np.asarray(x0)
  w = np.exp(np.asarray(info["log_weights"]))
  r = im.responsibilities(post.weights, post.means[:, f], covs, x.reshape(-1, 4)[:, f])
  west = np.einsum("gk,gkc->c", w, r.reshape(groups, k, -1)) / groups
  lz = np.asarray(info["log_evidence"]) - analytic.linear_gaussian_evidence(gm, A, y, noise_std)
  nfe = int(info["nfe"]) * k
  return dict(method=method, noise_std=noise_std, K=k, steps=steps, groups=groups,
              sw=met["sw"], werr_draws=met["weights"],
              werr_weighted=float(np.max(np.abs(west - post.weights))),
              logz_bias=float(abs(lz.mean())), logz_mean_err=float(abs(np.log(np.mean(np.exp(
                  lz))))), ess_min=float(np.asarray(info["ess"]).mean(1).min()),
              resamplings=float(np.asarray(info["num_resampled"]).mean()), nfe=nfe,
              vjp=nfe if info["network_vjp"] else 0, seconds=seconds)


def floor_row(noise_std: float, groups: int) -> Dict[str, Any]:
  post = im.exact_posterior(noise_std)
  met = im.metrics(im.exact_samples(post, groups, 101), post, noise_std,
                   im.exact_samples(post, groups, 100))
  return dict(method="exact (floor)", noise_std=noise_std, K=0, steps=0, groups=groups,
              sw=met["sw"], werr_draws=met["weights"], werr_weighted=float("nan"),
              logz_bias=float("nan"), logz_mean_err=float("nan"), ess_min=float("nan"),
              resamplings=float("nan"), nfe=0, vjp=0, seconds=0.0)


def run(groups: int, particles=PARTICLES, steps=STEPS, methods=METHODS) -> List[Dict[str, Any]]:
  import jax
  rows = []
  with jax.enable_x64(True):
    for noise_std, meths in ((im.NOISY_STD, methods), (0.0, ("tds",))):
      if not meths:
        continue
      rows.append(floor_row(noise_std, groups))
      print(_fmt(rows[-1]), flush=True)
      for method in meths:
        for n in steps:
          for k in particles:
            rows.append(run_one(method, k, n, noise_std, groups))
            print(_fmt(rows[-1]), flush=True)
  return rows


HEADER = ("| method | noise_std | steps | K | SW (draws) | weight err (draws) | weight err "
          "(weighted) | \\|E log Z - log p(y)\\| | \\|log E Z/p(y)\\| | ESS min | resamplings | "
          "NFE / sample | VJP / sample | time (s) |")


def _f(v, fmt):
  return "-" if v != v else format(v, fmt)


def _fmt(r) -> str:
  return (f"| {r['method']} | {r['noise_std']:g} | {r['steps'] or '-'} | {r['K'] or '-'} | "
          f"{r['sw']:.3f} | {r['werr_draws']:.3f} | {_f(r['werr_weighted'], '.3f')} | "
          f"{_f(r['logz_bias'], '.3f')} | {_f(r['logz_mean_err'], '.3f')} | "
          f"{_f(r['ess_min'], '.1f')} | {_f(r['resamplings'], '.1f')} | {r['nfe'] or '-'} | "
          f"{r['vjp'] or '-'} | {r['seconds']:.1f} |")


def markdown(rows, groups: int, total: float, cmd: str) -> str:
  from diffusion import analytic
  gm, A, y = im.problem()
  lines = [
      "# SMC on a Gaussian mixture: TDS and baselines vs the exact posterior",
      "",
      f"Generated by `{cmd}` (see its docstring for the measures); {groups} groups per row "
      "(one final sample each), float64, VP schedule, uniform grid, DDPM transition, the exact "
      "mixture denoiser, adaptive systematic resampling (ESS < K/2). Exact posterior weights: "
      f"noise_std {im.NOISY_STD}: {im._floats(im.exact_posterior(im.NOISY_STD).weights)}, "
      f"noiseless: {im._floats(im.exact_posterior(0.0).weights)}; exact log p(y): "
      f"{analytic.linear_gaussian_evidence(gm, A, y, im.NOISY_STD):.4f} (noise_std "
      f"{im.NOISY_STD}), {analytic.linear_gaussian_evidence(gm, A, y, 0.0):.4f} (noiseless, a "
      f"density of A x0). Total {total:.0f} s.",
      "",
      HEADER,
      "|" + "---|" * 14,
  ] + [_fmt(r) for r in rows]
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--groups", type=int, default=1000)
  p.add_argument("--quick", action="store_true", help="200 groups, K = 16 / 64, 30 steps")
  p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
  p.add_argument("--particles", type=int, nargs="+", default=list(PARTICLES))
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                 help="methods of the noisy rows (the noiseless rows are tds)")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache")))
  t0 = time.time()
  print(HEADER)
  if args.quick:
    groups, rows = 200, run(200, (16, 64), (30,))
  else:
    groups, rows = args.groups, run(args.groups, args.particles, args.steps, args.methods)
  cmd = "python -m benchmarks.smc_mixture" + " ".join([""] + (argv if argv is not None
                                                             else sys.argv[1:]))
  md = markdown(rows, groups, time.time() - t0, cmd)
  out = args.out or os.path.join(RESULTS, "smc_mixture_quick.md" if args.quick
                                 else "smc_mixture.md")
  from benchmarks.train_throughput import write_table
  write_table(md, out)
  with open(out[:-3] + ".json", "w") as fh:
    json.dump(rows, fh, indent=1)


if __name__ == "__main__":
  main()
