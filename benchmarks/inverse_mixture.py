"""Inverse-problem benchmark: replacement, Pi-GDM, DPS, DAPS and DDRM against the exact posterior
of a mixture.

  .venv/bin/python -m benchmarks.inverse_mixture            # ~3-4 minutes on 2 CPU cores

Writes benchmarks/results/inverse_mixture.md.

Problem (``problem``): x0 ~ a 3-component Gaussian mixture in 4-D with full covariances (so the
observed coordinates inform the unobserved ones); coordinates 0 and 1 observed, y = (0, 0.3),
noiselessly or with noise_std = 0.3. The exact posterior p(x0 | y) is
``analytic.linear_gaussian_posterior``; its component weights (0.12, 0.28, 0.59 noiseless) differ
a lot from the prior's (0.40, 0.35, 0.25), which is what makes the problem hard. Each method's
completions (4,000, float64, VP schedule, the exact mixture denoiser as the "network") are compared
with as many exact posterior samples on the free coordinates (the unobserved ones when noiseless,
all when noisy):
  * obs: max |A x - y| (noiseless only; exactly 0 for replacement);
  * mean: ||mean - exact posterior mean||_2;
  * cov: ||covariance - exact posterior covariance||_F;
  * weights: max_k |mean_x r_k(x) - w_k'|, r_k the exact posterior's component responsibilities
    on the free coordinates (E r_k = w_k' under the exact posterior);
  * SW: sliced 2-Wasserstein distance to exact posterior samples (all coordinates, 256
    projections); the floor row measures two independent exact sample sets against each other.
tests/test_inverse.py imports ``problem``, ``complete`` and ``metrics`` from here.

The posterior samplers (``diffusion.inverse.dps_sampler``, ``daps_sampler``, ``ddrm_sampler``)
are samplers of their own, run by ``complete_posterior`` on the Karras grid (build_sampler's
default) at 30 and 100 steps with the same seeds; their NFE is the true denoiser-call count per
sample (DPS's calls each back-propagate). Hyper-parameters (``POSTERIOR_HPARAMS``): DPS's zeta is
TUNED on ``DPS_ZETA_GRID`` by SW (the grid's table is written too; 0.5 wins at 30 and 100 steps,
noiseless and noisy); DAPS uses the reference's 5 Euler ODE steps and 100 Langevin steps, r_i =
sigma_i, a learning rate picked from (1e-3, 3e-3, 1e-2) by SW (also tuned), and for the noiseless
observation the likelihood floor tau = 0.05 (DAPS's Langevin target needs tau > 0); DDRM the
reference's eta = 0.85, eta_b = 1. tests/test_posterior_methods.py imports
``complete_posterior``.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, List, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
MEANS = ((1.0, 0.0, 1.5, 0.5), (-1.0, 0.0, -1.5, 0.0), (0.0, 1.2, 0.0, -1.5))
WEIGHTS = (0.4, 0.35, 0.25)
OBSERVED = (0, 1)
Y = (0.0, 0.3)
NOISY_STD = 0.3
# (sampler, hyper-parameters): an ODE solver, a multistep one, an ancestral (stochastic) one; the
# final denoise puts the noiseless observed coordinates exactly at y (dpmpp_2m's default is off).
SAMPLERS = (("heun", {}), ("dpmpp_2m", {"final_denoise": True}), ("ddpm", {}))
STEPS = (10, 30, 100)
POSTERIOR_STEPS = (30, 100)
POSTERIOR_METHODS = ("dps", "daps", "ddrm")
DPS_ZETA_GRID = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
DAPS_TAU_NOISELESS = 0.05
# (method, noise_std) -> the sampler's hyper-parameters (DPS's zeta and DAPS's lr tuned, above).
POSTERIOR_HPARAMS = {
    ("dps", 0.0): dict(zeta=0.5), ("dps", NOISY_STD): dict(zeta=0.5),
    ("daps", 0.0): dict(noise_std=0.0, tau=DAPS_TAU_NOISELESS, lr=3e-3),
    ("daps", NOISY_STD): dict(noise_std=NOISY_STD, lr=3e-3),
    ("ddrm", 0.0): dict(noise_std=0.0), ("ddrm", NOISY_STD): dict(noise_std=NOISY_STD),
}


def problem():
  """(mixture, A (2, 4) selecting the observed coordinates, y (2,))."""
  from diffusion import analytic
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.standard_normal((3, 4, 4)))[0]
  lam = rng.uniform(0.05, 0.4, (3, 4))
  covs = np.einsum("kij,kj,klj->kil", q, lam, q)
  gm = analytic.GaussianMixture.create(WEIGHTS, np.asarray(MEANS), covs)
  return gm, np.eye(4)[list(OBSERVED)], np.asarray(Y)


def transformed(method: str, gm, schedule, A, noise_std: float):
  """The denoiser of ``method`` ('replacement' or 'pigdm') for the exact mixture denoiser."""
  from diffusion import inverse
  op = inverse.MatrixOperator(A)
  if method == "replacement":
    if noise_std:
      raise ValueError("the replacement method is for noiseless observations only")
    return inverse.replacement(gm.denoiser(schedule), op)
  if method == "pigdm":
    return inverse.pigdm(gm.denoiser(schedule), schedule, op, noise_std=noise_std)
  raise ValueError(f"unknown method {method!r}; accepted: 'replacement', 'pigdm'")


def complete(method: str, sampler: str, num_steps: int, noise_std: float = 0.0, n: int = 4000,
             seed: int = 0, **hparams) -> np.ndarray:
  """n completions (n, 4) of ``problem()``'s observation, float64 (call with x64 enabled)."""
  import jax
  import jax.numpy as jnp
  from diffusion import schedules
  from diffusion.samplers import build_sampler
  sched = schedules.VP()
  gm, A, y = problem()
  den = transformed(method, gm, sched, A, noise_std)
  run = build_sampler(sampler, sched, num_steps, **hparams)
  key = jax.random.PRNGKey(seed)
  x_T = sched.prior_sample(jax.random.fold_in(key, 1), (n, gm.dim)).astype(jnp.float64)
  cond = {"y": jnp.broadcast_to(jnp.asarray(y, jnp.float64), (n, len(y)))}
  x, _ = run(den, jax.random.fold_in(key, 2), x_T, cond)
  return np.asarray(x, np.float64)


def posterior_sampler(method: str, noise_std: float, **overrides):
  """The sampler of ``method`` ('dps', 'daps', 'ddrm') with ``POSTERIOR_HPARAMS`` (updated by
  ``overrides``) for ``problem()``'s operator."""
  from diffusion import inverse
  if method not in POSTERIOR_METHODS:
    raise ValueError(f"unknown method {method!r}; accepted: {POSTERIOR_METHODS}")
  _, A, _ = problem()
  hp = dict(POSTERIOR_HPARAMS[(method, noise_std)], **overrides)
  make = {"dps": inverse.dps_sampler, "daps": inverse.daps_sampler,
          "ddrm": inverse.ddrm_sampler}[method]
  return make(inverse.MatrixOperator(A), **hp)


def complete_posterior(method: str, num_steps: int, noise_std: float = 0.0, n: int = 4000,
                       seed: int = 0, **overrides):
  """(n completions (n, 4), info) of ``problem()``'s observation by a posterior sampler, with the
  keys of ``complete`` and the Karras grid; float64 (call with x64 enabled)."""
  import jax
  import jax.numpy as jnp
  from diffusion import schedules
  from diffusion.samplers import grids
  sched = schedules.VP()
  gm, _, y = problem()
  run = posterior_sampler(method, noise_std, **overrides)
  key = jax.random.PRNGKey(seed)
  x_T = sched.prior_sample(jax.random.fold_in(key, 1), (n, gm.dim)).astype(jnp.float64)
  cond = {"y": jnp.broadcast_to(jnp.asarray(y, jnp.float64), (n, len(y)))}
  x, info = run(gm.denoiser(sched), sched, jax.random.fold_in(key, 2), x_T,
                grids.time_grid(sched, num_steps, "karras"), cond=cond)
  return np.asarray(x, np.float64), info


def free_coords(noise_std: float) -> List[int]:
  return [i for i in range(4) if noise_std or i not in OBSERVED]


def responsibilities(weights, means, covs, x) -> np.ndarray:
  """Component responsibilities (n, K) of the mixture (weights, means, covs) at x (n, d)."""
  logs = []
  for w, m, c in zip(weights, means, covs):
    d = x - m
    sol = np.linalg.solve(c, d.T).T
    logs.append(np.log(w) - 0.5 * np.sum(d * sol, -1) - 0.5 * np.linalg.slogdet(c)[1])
  logs = np.stack(logs, 1)
  logs -= logs.max(1, keepdims=True)
  r = np.exp(logs)
  return r / r.sum(1, keepdims=True)


def metrics(x: np.ndarray, post, noise_std: float, exact: np.ndarray, seed: int = 0
            ) -> Dict[str, float]:
  """The error measures of the module docstring for completions x (n, 4) against the exact
  posterior ``post`` and exact posterior samples ``exact`` (m, 4)."""
  from diffusion.metrics import sliced_wasserstein
  _, A, y = problem()
  f = free_coords(noise_std)
  mean, cov = post.mean()[f], post.covariance()[np.ix_(f, f)]
  covs = post.covariances()[:, f][:, :, f]
  r = responsibilities(post.weights, post.means[:, f], covs, x[:, f])
  return {
      "obs": float(np.max(np.abs(x @ A.T - y))) if not noise_std else float("nan"),
      "mean": float(np.linalg.norm(x[:, f].mean(0) - mean)),
      "cov": float(np.linalg.norm(np.cov(x[:, f], rowvar=False) - cov)),
      "weights": float(np.max(np.abs(r.mean(0) - post.weights))),
      "sw": sliced_wasserstein(x, exact, seed, num_projections=256),
  }


def exact_posterior(noise_std: float):
  from diffusion import analytic
  gm, A, y = problem()
  return analytic.linear_gaussian_posterior(gm, A, y, noise_std)


def exact_samples(post, n: int, seed: int) -> np.ndarray:
  import jax
  import jax.numpy as jnp
  return np.asarray(post.sample0(jax.random.PRNGKey(seed), n, jnp.float64))


def run(n: int, steps: Sequence[int], posterior_steps: Sequence[int] = POSTERIOR_STEPS,
        tuning: List[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
  """The table's rows; ``tuning`` (a list) receives the DPS zeta grid's rows."""
  import jax
  from diffusion.samplers import sampler_info
  rows = []
  with jax.enable_x64(True):
    for noise_std in (0.0, NOISY_STD):
      post = exact_posterior(noise_std)
      exact = exact_samples(post, n, 100)
      floor = metrics(exact_samples(post, n, 101), post, noise_std, exact)
      rows.append(dict(method="exact (floor)", noise_std=noise_std, sampler="-", steps=0, nfe=0,
                       seconds=0.0, **floor))
      print(_fmt(rows[-1]), flush=True)
      for method in (("replacement", "pigdm") if noise_std == 0 else ("pigdm",)):
        for sampler, hp in SAMPLERS:
          for k in steps:
            t0 = time.time()
            x = complete(method, sampler, k, noise_std, n, 0, **hp)
            nfe = sampler_info(sampler).nfe(k, sampler_info(sampler).resolve(hp))
            rows.append(dict(method=method, noise_std=noise_std, sampler=sampler, steps=k,
                             nfe=nfe, seconds=time.time() - t0,
                             **metrics(x, post, noise_std, exact)))
            print(_fmt(rows[-1]), flush=True)
      for method in POSTERIOR_METHODS:
        for k in posterior_steps:
          t0 = time.time()
          x, info = complete_posterior(method, k, noise_std, n, 0)
          rows.append(dict(method=method, noise_std=noise_std, sampler="own", steps=k,
                           nfe=info["nfe"], seconds=time.time() - t0,
                           **metrics(x, post, noise_std, exact)))
          print(_fmt(rows[-1]), flush=True)
      if tuning is not None:
        for k in posterior_steps:
          for zeta in DPS_ZETA_GRID:
            t0 = time.time()
            x, info = complete_posterior("dps", k, noise_std, n, 0, zeta=zeta)
            tuning.append(dict(method=f"dps zeta={zeta:g}", noise_std=noise_std, sampler="own",
                               steps=k, nfe=info["nfe"], seconds=time.time() - t0,
                               **metrics(x, post, noise_std, exact)))
            print(_fmt(tuning[-1]), flush=True)
  return rows


HEADER = ("| method | noise_std | sampler | steps | NFE | obs max abs err | mean err | cov err "
          "| weight err | SW | time (s) |")


def _fmt(r) -> str:
  obs = "-" if np.isnan(r["obs"]) else f"{r['obs']:.1e}"
  return (f"| {r['method']} | {r['noise_std']:g} | {r['sampler']} | {r['steps'] or '-'} | "
          f"{r['nfe'] or '-'} | {obs} | {r['mean']:.3f} | {r['cov']:.3f} | {r['weights']:.3f} | "
          f"{r['sw']:.3f} | {r['seconds']:.1f} |")


def _floats(a, digits: int = 3) -> str:
  return "(" + ", ".join(f"{float(v):.{digits}f}" for v in a) + ")"


def write(rows, path: str, n: int, total: float, tuning=()):
  gm, _, y = problem()
  lines = [
      "# Inverse problems on a Gaussian mixture: replacement, Pi-GDM, DPS, DAPS and DDRM vs the "
      "exact posterior",
      "",
      "Generated by `python -m benchmarks.inverse_mixture` (see its docstring for the problem "
      f"and the measures); {n} completions per row, float64, VP schedule, the exact mixture "
      f"denoiser. 4-D, 3 components, prior weights {_floats(gm.weights, 2)}; coordinates "
      f"{OBSERVED} observed, y = {_floats(y, 2)}. Exact posterior weights: noiseless "
      f"{_floats(exact_posterior(0.0).weights)}, noise_std {NOISY_STD}: "
      f"{_floats(exact_posterior(NOISY_STD).weights)}. Time: wall seconds of a row, compilation "
      f"included (JAX's persistent cache makes reruns faster); total {total:.0f} s.",
      "",
      "Rows with sampler 'own' are the posterior samplers of diffusion/inverse/ (dps.py, daps.py, "
      "ddrm.py) on the Karras grid; NFE is denoiser calls per sample (DPS: each with a "
      "vector-Jacobian product, about 3 network passes; DAPS: 5 Euler ODE steps per annealing "
      "level, N + 1 levels, plus 100 Langevin steps per level that cost operator products only). "
      "Hyper-parameters: DPS zeta = "
      f"{POSTERIOR_HPARAMS[('dps', 0.0)]['zeta']:g} (TUNED: the SW-best of the grid below); DAPS "
      f"lr = {POSTERIOR_HPARAMS[('daps', 0.0)]['lr']:g} (tuned on 1e-3, 3e-3, 1e-2), lr_min_ratio "
      f"0.01, r_i = sigma_i, tau = noise_std or {DAPS_TAU_NOISELESS:g} for the noiseless "
      "observation (a floor DAPS needs); DDRM eta = 0.85, eta_b = 1 (the reference's).",
      "",
      HEADER,
      "|" + "---|" * 11,
  ] + [_fmt(r) for r in rows]
  if tuning:
    lines += ["", f"DPS zeta grid {DPS_ZETA_GRID} (the tuning of the rows above; {n} completions "
              "each):", "", HEADER, "|" + "---|" * 11] + [_fmt(r) for r in tuning]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  from benchmarks.hardware import with_machine_line
  with open(path, "w") as fh:
    fh.write(with_machine_line("\n".join(lines) + "\n"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=4000)
  p.add_argument("--out", default=os.path.join(RESULTS, "inverse_mixture.md"))
  args = p.parse_args(argv)
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache")))
  t0 = time.time()
  print(HEADER)
  tuning = []
  rows = run(args.n, STEPS, POSTERIOR_STEPS, tuning)
  write(rows, args.out, args.n, time.time() - t0, tuning)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
