"""Reference outputs of DPM-Solver-v3 (github.com/thu-ml/DPM-Solver-v3, MIT, its top-level
dpm_solver_v3.py at commit ba16871) on the 2-D analytic mixture, for tests/test_dpm_solver_v3.py.

Two stages (README.md next to this file):

  # 1. project env: the mixture, x_T and EMS from diffusion.samplers.ems -> inputs.npz
  PYTHONPATH=. .venv/bin/python tests/data/dpm_solver_v3/make_reference_fixture.py inputs
  # 2. an env with torch (CPU) and the reference file: its sampler on the same inputs
  /work/torch_env/bin/python tests/data/dpm_solver_v3/make_reference_fixture.py reference \
      --reference_file /path/to/DPM-Solver-v3/dpm_solver_v3.py

Stage 2 runs the reference's ``DPM_Solver_v3`` (CPU: ``.cuda()`` made the identity) with the
statistics of stage 1 broadcast to its per-coordinate layout (l, s: the same value in every
coordinate), the continuous linear VP schedule (beta 0.1..20), t from 1 to 1e-3, 'logSNR' steps
(5 steps on the EMS grid of 250 intervals, resampled 10x finer for the reference, whose
trapezoid rule is then ~100x more accurate: the times fall on the grid's nodes, so its rounding to
nodes changes nothing), noise prediction from the mixture's exact denoiser (numpy, float64).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {  # name: kwargs of the reference's sample() (our hyper-parameters in the test)
    "order3": dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True),
    "order2": dict(order=2, p_pseudo=False, use_corrector=True, c_pseudo=True),
    "p_pseudo": dict(order=3, p_pseudo=True, use_corrector=True, c_pseudo=True),
    "c_order": dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=False),
    "no_corrector": dict(order=3, p_pseudo=False, use_corrector=False, c_pseudo=False),
}
# The same with the reference's degenerated=True (l = 1, s = b = 0: our statistics='').
DEGENERATED = ("order3", "no_corrector")
# The same with per-coordinate statistics (the paper's; estimate_ems(per_coordinate=True)).
PER_COORDINATE = ("order3", "no_corrector")
STEPS = 5
INTERVALS = 250
REFINE = 30


def inputs():
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  from diffusion import analytic, schedules
  from diffusion.samplers import ems
  sch = schedules.VP()
  gm = analytic.random_mixture(0, 2, num_components=4)
  x0 = gm.sample0(jax.random.PRNGKey(10), 1024, jnp.float64)
  e = ems.estimate_ems(gm.denoiser(sch), sch, x0, jax.random.PRNGKey(11),
                       num_intervals=INTERVALS, trace="exact")
  pc = ems.estimate_ems(gm.denoiser(sch), sch, x0, jax.random.PRNGKey(11),
                        num_intervals=INTERVALS, trace="exact", per_coordinate=True)
  x_T = np.asarray(sch.prior_sample(jax.random.PRNGKey(1), (16, 2)), np.float64)
  np.savez(os.path.join(HERE, "inputs.npz"), weights=gm.weights, means=gm.means,
           eigvals=gm.eigvals, eigvecs=gm.eigvecs, x_T=x_T, lambdas=e.lambdas, l=e.l, s=e.s,
           b=e.b, schedule=np.asarray(e.schedule), num_samples=np.asarray(e.num_samples),
           l_pc=pc.l, s_pc=pc.s, b_pc=pc.b)


def _mixture_eps(z, x, t):
  """eps_hat = (x - alpha x0_hat) / sigma of the mixture (numpy float64); x (B, D), t scalar."""
  log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
  a, sg = np.exp(log_a), np.sqrt(-np.expm1(2 * log_a))
  diff = x[:, None, :] - a * z["means"][None]  # (B, K, D)
  coord = np.einsum("kdj,bkd->bkj", z["eigvecs"], diff)
  var = a * a * z["eigvals"][None] + sg * sg
  logc = np.log(z["weights"])[None] - 0.5 * np.sum(coord**2 / var + np.log(2 * np.pi * var), -1)
  r = np.exp(logc - logc.max(1, keepdims=True))
  r /= r.sum(1, keepdims=True)
  post = z["means"][None] + np.einsum("kdj,bkj->bkd", z["eigvecs"], a * z["eigvals"][None] / var
                                      * coord)
  x0 = np.einsum("bk,bkd->bd", r, post)
  return (x - a * x0) / sg


def reference(reference_file: str):
  import importlib.util
  import tempfile
  import torch
  torch.Tensor.cuda = lambda self, *a, **k: self  # CPU
  # float64 throughout: its float32 FloatTensor times and cumulative integrals would limit the
  # agreement to ~2e-4.
  torch.set_default_dtype(torch.float64)
  torch.FloatTensor = lambda v: torch.tensor([float(u) for u in v], dtype=torch.float64)
  spec = importlib.util.spec_from_file_location("dpm_solver_v3_ref", reference_file)
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  z = dict(np.load(os.path.join(HERE, "inputs.npz")))
  d = z["x_T"].shape[1]
  def write_stats(l, s_, b):
    """The statistics (K+1, D) resampled REFINE x finer, as the reference's l.npz / sb.npz."""
    stats = tempfile.mkdtemp()
    lam = z["lambdas"]
    fine = np.linspace(lam[0], lam[-1], (len(lam) - 1) * REFINE + 1)
    interp = lambda v: np.stack([np.interp(fine, lam, v[:, i]) for i in range(d)], 1).reshape(
        -1, d, 1, 1)
    np.savez(os.path.join(stats, "l.npz"), l=interp(l))
    np.savez(os.path.join(stats, "sb.npz"), s=interp(s_), b=interp(b))
    return stats

  per_coord = lambda v: np.broadcast_to(v[:, None], (len(v), d))
  # The statistics resampled REFINE x finer (linear interpolation: the same piecewise-linear
  # functions our sampler integrates exactly), so the reference's trapezoid rule is ~REFINE^2
  # times more accurate. Ours: scalar l, s (the same in every coordinate); the paper's: per
  # coordinate.
  stats = write_stats(per_coord(z["l"]), per_coord(z["s"]), z["b"])
  stats_pc = write_stats(z["l_pc"], z["s_pc"], z["b_pc"])
  ns = ref.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)

  def model_fn(x, t):  # x (B, D, 1, 1)
    xs = x.detach().double().numpy().reshape(x.shape[0], d)
    eps = _mixture_eps(z, xs, float(t.reshape(-1)[0]))
    return torch.from_numpy(eps.reshape(x.shape)).to(x.dtype)

  out = {}
  runs = [(name, kw, False, stats) for name, kw in CONFIGS.items()]
  runs += [(name + "_degenerated", CONFIGS[name], True, stats) for name in DEGENERATED]
  runs += [(name + "_per_coordinate", CONFIGS[name], False, stats_pc) for name in PER_COORDINATE]
  for name, kw, degenerated, stats_dir in runs:
    solver = ref.DPM_Solver_v3(stats_dir, ns, steps=STEPS, t_start=1.0, t_end=1e-3,
                               skip_type="logSNR", degenerated=degenerated, device="cpu")
    x = torch.from_numpy(z["x_T"].reshape(-1, d, 1, 1))
    y = solver.sample(x, model_fn, lower_order_final=True, **kw)
    out[name] = y.double().numpy().reshape(-1, d)
    out["timesteps"] = solver.timesteps.double().numpy()
    out["indexes"] = np.asarray(solver.indexes)
  np.savez(os.path.join(HERE, "reference.npz"), **out)
  print({k: v.shape for k, v in out.items()}, "torch", torch.__version__)


if __name__ == "__main__":
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("stage", choices=("inputs", "reference"))
  ap.add_argument("--reference_file", default=None)
  args = ap.parse_args()
  if args.stage == "inputs":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
    inputs()
  else:
    reference(args.reference_file)
