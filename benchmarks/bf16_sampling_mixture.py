"""The error bf16 sampling adds, measured against ground truth on Gaussian mixtures.

A network that computes in bfloat16 (``sampling.compute_dtype='bfloat16'``, experiments/build.py
``denoiser``) sees its input rounded to bf16 and returns an output rounded to bf16, while the
sampler's state and the parameterization's skip path x0 = to_x0(F, x_t, t) stay float32. Here
that network is simulated exactly: the *exact* denoiser of a Gaussian mixture (diffusion.analytic)
behind the parameterization, F(x_in) = from_x0(E[x0 | x_t], x_t, t) evaluated at the rounded
input, its output rounded (``rounded_network_denoiser``). Each sampler runs from the same noise
(and the same sampler noise) with the float32 exact denoiser and with the bf16-rounded one:

  |bf16-f32|    mean over samples of ||x_bf16 - x_f32|| / sqrt(tr Cov(data)) (the data scale);
  |f32-ODE|     the same for the float32 run against the exact PF-ODE solution at t_min from the
                same x_T (float64 DPM-Solver-3, 200 logSNR steps; its own error is in the header):
                the sampler's discretisation error at that NFE (deterministic samplers only);
  bf16 / disc.  |bf16-f32| / |f32-ODE|: the bf16 error in units of the discretisation error;
  dlogp         mean of log p(x_bf16) - log p(x_f32) under the exact target density (p_{t_min},
                or p_0 after a final denoise), paired on the same noise, +- its standard error:
                a distribution-level change the bf16 rounding makes;
  SW            sliced 2-Wasserstein distance (diffusion.metrics) of the f32 and of the bf16
                samples to as many exact samples of the target; SW floor = exact vs exact.

The time input c of the network is not rounded (a real network embeds it; its rounding is part
of its own bf16 error, not simulated here).

  python benchmarks/bf16_sampling_mixture.py [--n 2000] [--dims 2 64]

Writes benchmarks/results/bf16_sampling_mixture.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffusion import analytic, schedules  # noqa: E402
from diffusion.metrics import sliced_wasserstein  # noqa: E402
from diffusion.parameterization import Parameterization, make_denoiser  # noqa: E402
from diffusion.samplers import build_sampler, sampler_info  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")

# (sampler, schedule, parameterization, num_steps, grid, hparams): each at its paper's NFE.
RUNS = (
    ("ddim", "vp", "eps", 50, "uniform", {}),  # Song et al. 2021 (DDIM), 50-100 steps
    ("euler", "edm", "edm", 35, "karras", {}),  # first order at EDM Heun's NFE
    ("heun", "edm", "edm", 18, "karras", {"final_denoise": False}),  # EDM, 35 NFE
    ("dpmpp_2m", "vp", "eps", 20, "logsnr", {}),  # DPM-Solver++(2M), 20 NFE
    ("dpmpp_3m", "vp", "eps", 20, "logsnr", {}),
    ("ddpm", "vp", "eps", 1000, "uniform", {}),  # Ho et al. 2020, ancestral, 1000 steps
    ("euler_maruyama", "vp", "eps", 1000, "uniform", {}),  # Song et al. 2021, reverse SDE
)


def round_to(x, dtype=jnp.bfloat16):
  """x rounded to ``dtype`` (round to nearest even) and back to x's dtype."""
  return x.astype(dtype).astype(x.dtype)


def rounded_network_denoiser(gm: analytic.GaussianMixture, schedule: schedules.Schedule,
                             param: Parameterization, dtype=jnp.bfloat16):
  """``denoise(x_t, t, cond=None) -> x0_hat`` of the exact network of ``param`` computing in
  ``dtype``: its input x_in = c_in x_t (``param.net_inputs``) rounded to ``dtype``, its output
  the exact F = param.from_x0(E[x0 | x_t'], x_t', t) at the x_t' = round(x_in) / c_in that the
  rounded input stands for, rounded to ``dtype``; x0_hat = param.to_x0(F, x_t, t) in x_t's
  dtype (``make_denoiser``, as ``diffusion.networks.eval_denoiser`` with compute_dtype='bfloat16')."""
  scaled = param.kind in ("edm", "consistency") or param.scale_input

  def denoise(x, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    tb = t.reshape((-1,) + (1,) * (x.ndim - 1))
    a, s = schedule.alpha(tb), schedule.sigma(tb)
    c_in = 1.0 / jnp.sqrt(a * a * param.sigma_data**2 + s * s) if scaled else jnp.ones_like(a)

    def apply_fn(x_in, c, cd):
      x_seen = round_to(x_in, dtype) / c_in
      f = param.from_x0(gm.denoise(x_seen, t, cd, schedule=schedule), x_seen, t, schedule)
      return round_to(f, dtype)

    return make_denoiser(apply_fn, schedule, param)(x, t, cond)

  return denoise


def exact_ode(gm, sched, x_T, num_steps: int = 200) -> np.ndarray:
  """The PF-ODE solution at t_min from x_T at t_max: float64 DPM-Solver-3 on a logSNR grid."""
  with jax.enable_x64(True):
    f = build_sampler("dpm_solver_3", sched, num_steps=num_steps, grid="logsnr")
    out, _ = f(gm.denoiser(sched), jax.random.PRNGKey(0), jnp.asarray(x_T, jnp.float64))
  return np.asarray(out, np.float64)


def _logp64(fn, x) -> np.ndarray:
  """fn(x) (B,) evaluated in float64."""
  with jax.enable_x64(True):
    return np.asarray(fn(jnp.asarray(x, jnp.float64)), np.float64)


def _mean_norm(a, b, scale) -> float:
  return float(np.mean(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64),
                                      axis=-1)) / scale)


def measure(dim: int, n: int, runs=RUNS) -> Dict[str, Any]:
  """All rows for the ``analytic.random_mixture(0, dim)`` mixture."""
  gm = analytic.random_mixture(0, dim, num_components=4)
  scale = float(np.sqrt(np.trace(gm.covariance())))
  sd = scale / np.sqrt(dim)  # EDM's sigma_data: the data's per-coordinate std
  sw = lambda a, b: sliced_wasserstein(np.asarray(a), np.asarray(b), 0, num_projections=128)
  rows: List[Dict[str, Any]] = []
  refs: Dict[str, Any] = {}
  for name, sched_name, kind, steps, grid, hp in runs:
    sched = schedules.get_schedule(sched_name)
    param = Parameterization(kind, sigma_data=sd)
    info = sampler_info(name)
    det = info.kind == "deterministic"
    fd = bool(info.resolve(hp).get("final_denoise", False))
    if sched_name not in refs:
      x_T = np.asarray(sched.prior_sample(jax.random.PRNGKey(1), (n, dim)), np.float32)
      ode, ode_half = exact_ode(gm, sched, x_T), exact_ode(gm, sched, x_T, 100)
      lp_tmin = lambda x, s=sched: _logp64(lambda y: gm.log_prob(y, s.t_min, s), x)
      refs[sched_name] = dict(
          x_T=x_T, ode=ode, ode_err=_mean_norm(ode, ode_half, scale),
          exact_tmin=np.asarray(gm.sample(jax.random.PRNGKey(3), n, sched.t_min, sched)),
          floor_tmin=sw(gm.sample(jax.random.PRNGKey(4), n, sched.t_min, sched),
                        gm.sample(jax.random.PRNGKey(3), n, sched.t_min, sched)),
          logp_tmin=lp_tmin)
    ref = refs[sched_name]
    f = build_sampler(name, sched, num_steps=steps, grid=grid, **hp)
    t0 = time.time()
    key = jax.random.PRNGKey(0)
    x32, out = f(gm.denoiser(sched), key, jnp.asarray(ref["x_T"]))
    x16, _ = f(rounded_network_denoiser(gm, sched, param), key, jnp.asarray(ref["x_T"]))
    x32, x16 = np.asarray(x32), np.asarray(x16)
    if fd:
      exact = np.asarray(gm.sample0(jax.random.PRNGKey(3), n))
      floor = sw(exact, gm.sample0(jax.random.PRNGKey(4), n))
      logp = lambda x: _logp64(gm.log_prob0, x)
    else:
      exact, floor, logp = ref["exact_tmin"], ref["floor_tmin"], ref["logp_tmin"]
    d = logp(x16) - logp(x32)
    row = dict(dim=dim, sampler=name, schedule=sched_name, param=kind, grid=grid, steps=steps,
               nfe=int(out["nfe"]), kind=info.kind, final_denoise=fd,
               bf16_vs_f32=_mean_norm(x16, x32, scale),
               f32_vs_ode=_mean_norm(x32, ref["ode"], scale) if det else None,
               bf16_vs_ode=_mean_norm(x16, ref["ode"], scale) if det else None,
               dlogp=float(np.mean(d)), dlogp_se=float(np.std(d) / np.sqrt(n)),
               logp_f32=float(np.mean(logp(x32))), logp_exact=float(np.mean(logp(exact))),
               sw_f32=sw(x32, exact), sw_bf16=sw(x16, exact), sw_floor=floor,
               seconds=time.time() - t0)
    rows.append(row)
    print(f"[{dim}-D] {name:15s} nfe={row['nfe']:5d} |bf16-f32|={row['bf16_vs_f32']:.2e} "
          f"|f32-ODE|={row['f32_vs_ode']} dlogp={row['dlogp']:+.2e}+-{row['dlogp_se']:.1e} "
          f"SW {row['sw_f32']:.4f}/{row['sw_bf16']:.4f} (floor {floor:.4f})", flush=True)
  return dict(dim=dim, n=n, data_scale=scale, sigma_data=sd,
              ode_ref_err={k: v["ode_err"] for k, v in refs.items()}, rows=rows)


def _fmt(v, f="{:.2e}") -> str:
  return "-" if v is None else f.format(v)


def ratio(r: Dict[str, Any]) -> Optional[float]:
  """|bf16-f32| / |f32-ODE|: the bf16 error in units of the sampler's discretisation error."""
  return None if r["f32_vs_ode"] is None else r["bf16_vs_f32"] / r["f32_vs_ode"]


def markdown(results: List[Dict[str, Any]], command: str, seconds: float) -> str:
  out = ["# bf16 sampling error on Gaussian mixtures (ground truth)", "",
         f"Command: `{command}` ({seconds:.0f} s on CPU, {jax.devices()[0].platform}).", "",
         __doc__.split("\n\n  /work")[0].split("\n", 1)[1].strip(), ""]
  rows = [r for res in results for r in res["rows"]]
  errs = [r["bf16_vs_f32"] for r in rows]
  worst = max((r for r in rows if ratio(r) is not None), key=ratio)
  out += ["Summary: |bf16-f32| is between {:.1e} and {:.1e} of the data scale over all samplers "
          "and mixtures; for the deterministic samplers it is at most {:.2f} of the sampler's own "
          "discretisation error at its paper NFE (largest: `{}` in {}-D).".format(
              min(errs), max(errs), ratio(worst), worst["sampler"], worst["dim"]), ""]
  for res in results:
    refs = ", ".join(f"{k}: {v:.1e}" for k, v in res["ode_ref_err"].items())
    out += [f"## {res['dim']}-D mixture (`analytic.random_mixture(0, {res['dim']})`, 4 "
            f"components), {res['n']} samples", "",
            f"Data scale sqrt(tr Cov) = {res['data_scale']:.3f}; EDM sigma_data = "
            f"{res['sigma_data']:.3f}. Error of the ODE reference (200 vs 100 steps, relative "
            f"to the data scale): {refs}.", "",
            "| sampler | schedule / param / grid | NFE | \\|bf16-f32\\| | \\|f32-ODE\\| | "
            "\\|bf16-ODE\\| | bf16 / disc. | dlogp (bf16 - f32) | logp f32 / exact | SW f32 | "
            "SW bf16 | SW floor |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
      out.append(
          f"| `{r['sampler']}`{' (final denoise)' if r['final_denoise'] else ''} | "
          f"{r['schedule']} / {r['param']} / {r['grid']} | {r['nfe']} | "
          f"{_fmt(r['bf16_vs_f32'])} | {_fmt(r['f32_vs_ode'])} | {_fmt(r['bf16_vs_ode'])} | "
          f"{_fmt(ratio(r), '{:.2f}')} | "
          f"{r['dlogp']:+.1e} +- {r['dlogp_se']:.0e} | {r['logp_f32']:.3f} / "
          f"{r['logp_exact']:.3f} | {r['sw_f32']:.4f} | {r['sw_bf16']:.4f} | "
          f"{r['sw_floor']:.4f} |")
    out.append("")
  return "\n".join(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--n", type=int, default=2000, help="samples per run")
  ap.add_argument("--dims", type=int, nargs="+", default=[2, 64])
  ap.add_argument("--out", default=os.path.join(RESULTS, "bf16_sampling_mixture.md"))
  args = ap.parse_args(argv)
  command = "python benchmarks/bf16_sampling_mixture.py " + " ".join(argv or sys.argv[1:])
  t0 = time.time()
  results = [measure(d, args.n) for d in args.dims]
  secs = time.time() - t0
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  from benchmarks.hardware import with_machine_line
  with open(args.out, "w") as fh:
    fh.write(with_machine_line(markdown(results, command.strip(), secs)))
  with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
    json.dump({"command": command.strip(), "seconds": secs, "results": results}, fh, indent=1)
  print(f"wrote {args.out} ({secs:.0f} s)")


if __name__ == "__main__":
  main()
