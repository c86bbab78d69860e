"""Few-step students of an exact teacher: 8gaussians, whose PF-ODE map is known (docs/few_step.md).

8gaussians is a Gaussian mixture (diffusion.analytic), so its denoiser, its PF-ODE map x_T -> x_0
and exact samples are known at every t. Each few-step method is trained here against that exact
teacher through the library's own losses and ``training.make_train_step``, and each student's
few-step map is compared with the exact PF-ODE map from the same noise (relative error
||map(x_T) - ODE(x_T)|| / ||ODE(x_T)|| over 4,096 draws) and its samples with exact samples
(sliced Wasserstein; the exact-vs-exact value is the floor):

  reflow        1-RF = the exact rectified flow; the 2-RF, an MLP trained by flow matching on
                (x_T, ODE(x_T)) pairs of the exact flow; straightness (Liu et al.) of both, and
                their 1- and 2-step Euler maps (the 2-RF against the pairs' map, its target).
  progressive   rounds 8 -> 4 -> 2 -> 1 on the cosine schedule, v-prediction student that starts
                as the exact teacher (a zero-initialised residual); each round's student's N-step
                DDIM map against the exact PF-ODE map and against its teacher's 2N-step map,
                next to the exact teacher's own N-step DDIM map (what no distillation gives).
  CD / CT       consistency students (MLP, CM's boundary parameterization) on the EDM schedule:
                CD from the exact denoiser's Heun steps (18 scales), CT with iCT's recipe; 1- and
                2-step samples and the 1-step map against the exact consistency function.
  flow maps     two-time MLP students (parameterization 'mean_flow') trained from scratch on the
                data, on rectified flow: MeanFlow (Geng et al. 2025, the paper's default
                options, and with 75% of the batch r != t) and shortcut (Frans et al. 2024, M = 128, k = 1/4); their 1-, 2- and
                4-step 'flow_map' samples against the exact PF-ODE map from the same noise (the
                reflow rows' x_T and reference) and exact samples.

  python benchmarks/few_step_mixture.py [--steps=2000] [--only=flow_map]

Writes benchmarks/results/few_step_mixture.md and .json; with --only the other sections are kept
from the .json already there (their numbers are not re-measured).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffusion import analytic, consistency as C, distillation as D, flow, schedules, training  # noqa: E402,E501
from diffusion.data import toy2d  # noqa: E402
from diffusion.metrics import sliced_wasserstein  # noqa: E402
from diffusion.models import get_model  # noqa: E402
from diffusion.parameterization import Parameterization, make_denoiser  # noqa: E402
from diffusion.samplers import build_sampler  # noqa: E402

N_EVAL = 4096
BATCH = 512


def mixture() -> analytic.GaussianMixture:
  return analytic.GaussianMixture.create(*toy2d.gaussian_mixture_params("8gaussians"))


def rel(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def sw(x, y) -> float:
  return float(sliced_wasserstein(np.asarray(x), np.asarray(y), 0))


def exact_ode_map(gm, sched, x_T):
  """The exact PF-ODE map from t_max to t_min: DPM-Solver-3, 200 logSNR steps (float64)."""
  with jax.enable_x64(True):
    f = build_sampler("dpm_solver_3", sched, num_steps=200, grid="logsnr")
    out, _ = f(gm.denoiser(sched), jax.random.PRNGKey(0), jnp.asarray(x_T, jnp.float64))
  return np.asarray(out, np.float32)


def make_net(width=128, blocks=3):
  return get_model("mlp", width=width, num_blocks=blocks, embed_dim=64)


def train(net, sched, param, loss_fn, objective, steps, key, data_fn, lr=1e-3, init=None,
          time_inputs=1, loss_opts=()):
  """Adam steps of ``loss_fn`` (training.make_train_step); data_fn(i) -> batch dict."""
  opt = training.make_optimizer(training.OptimConfig(lr=lr, warmup_steps=min(100, steps // 4),
                                                     decay="cosine",
                                                     decay_steps=steps))
  cfg = training.StepConfig(objective=objective, ema_decay=0.0, loss_opts=tuple(loss_opts),
                            weighting="flow" if objective == "reflow" else "eps")
  step = jax.jit(training.make_train_step(net, sched, param, opt, cfg, loss_fn=loss_fn))
  state = training.init_state(net, opt, key, jnp.zeros((1, 2)), time_inputs=time_inputs)
  if init is not None:
    state = state.replace(params=init, ema_params=init, opt_state=opt.init(init))
  for i in range(steps):
    state, m = step(state, data_fn(i))
  jax.block_until_ready(state.params)
  return state.params


def denoiser_of(net, sched, param, params):
  return make_denoiser(lambda x, c, cond=None: net.apply({"params": params}, x, c), sched, param)


# -- reflow ----------------------------------------------------------------------------------------


def reflow(gm, steps):
  rf = schedules.RectifiedFlow()
  exact = gm.denoiser(rf)
  key = jax.random.PRNGKey(1)
  n_pairs = 50_000
  noise = np.asarray(rf.prior_sample(key, (n_pairs, 2)))
  t0 = time.time()
  targets = exact_ode_map(gm, rf, noise)
  t_pairs = time.time() - t0
  net, param = make_net(), Parameterization("flow")
  rng = np.random.default_rng(0)

  def data(i):
    idx = rng.integers(0, n_pairs, BATCH)
    return {"x": jnp.asarray(targets[idx]), "noise": jnp.asarray(noise[idx])}

  t0 = time.time()
  params = train(net, rf, param, None, "reflow", steps, jax.random.PRNGKey(2), data)
  t_train = time.time() - t0
  student = denoiser_of(net, rf, param, params)
  x_T = np.asarray(rf.prior_sample(jax.random.PRNGKey(3), (N_EVAL, 2)))
  ode = exact_ode_map(gm, rf, x_T)
  x_exact = gm.sample0(jax.random.PRNGKey(4), N_EVAL)
  out = {"pairs_seconds": t_pairs, "train_seconds": t_train, "steps": steps,
         "sw_floor": sw(gm.sample0(jax.random.PRNGKey(5), N_EVAL), x_exact)}
  for name, den in (("1-RF (exact)", exact), ("2-RF (trained)", student)):
    row = {"straightness": float(flow.straightness(den, rf, jnp.asarray(x_T[:2000]), 100)[0])}
    for n in (1, 2):
      f = build_sampler("euler", rf, num_steps=n, grid="uniform")
      x, _ = f(den, jax.random.PRNGKey(0), jnp.asarray(x_T))
      row[f"rel_err_{n}"] = rel(x, ode)
      row[f"sw_{n}"] = sw(x, x_exact)
    out[name] = row
  return out


# -- progressive distillation ------------------------------------------------------------------------


def residual_student(teacher):
  """v-prediction student = the teacher's v + a zero-initialised MLP head: it starts as the
  teacher (Salimans & Ho 2022 initialise the student from the teacher)."""
  import flax.linen as nn
  from diffusion.models.mlp import sinusoidal_embedding
  cos = schedules.VPCosine()
  v = Parameterization("v")

  class Student(nn.Module):
    @nn.compact
    def __call__(self, x, c, labels=None, train=False):
      h = jnp.concatenate([x, sinusoidal_embedding(c, 32, 10.0)], axis=-1)
      for _ in range(3):
        h = nn.silu(nn.Dense(128)(h))
      head = nn.Dense(2, kernel_init=nn.initializers.zeros)(h)
      return v.from_x0(teacher(x, c), x, c, cos) + head

  return Student()


def progressive(gm, steps_per_round):
  cos = schedules.VPCosine()
  v = Parameterization("v")
  exact = gm.denoiser(cos)
  x_T = np.asarray(cos.prior_sample(jax.random.PRNGKey(3), (N_EVAL, 2)))
  ode = exact_ode_map(gm, cos, x_T)
  x_exact = gm.sample0(jax.random.PRNGKey(4), N_EVAL)
  teacher, n_teacher = exact, 16
  rows, t_total = [], 0.0
  rng_key = jax.random.PRNGKey(10)
  for r, n in enumerate(D.round_steps(8, 3)):
    net = residual_student(teacher)
    loss_fn = D.make_loss_fn(teacher, n)

    def pd(denoise, x0, key, context, loss_fn=loss_fn):
      return loss_fn(denoise, x0, key, cos)

    t0 = time.time()
    params = train(net, cos, v, pd, "progressive_distillation", steps_per_round,
                   jax.random.fold_in(rng_key, r),
                   lambda i: {"x": gm.sample0(jax.random.PRNGKey(1000 * r + i), BATCH)}, lr=3e-4)
    t_total += time.time() - t0
    student = jax.jit(denoiser_of(net, cos, v, params))
    x = D.ddim_map(student, jnp.asarray(x_T), cos, n)
    own = D.ddim_map(exact, jnp.asarray(x_T), cos, n)
    rows.append({"round": r + 1, "student_steps": n, "rel_err_vs_ode": rel(x, ode),
                 "rel_err_vs_teacher": rel(x, D.ddim_map(teacher, jnp.asarray(x_T), cos,
                                                         n_teacher)),
                 "teacher_ddim_rel_err_vs_ode": rel(own, ode), "sw": sw(x, x_exact)})
    teacher, n_teacher = student, n
  return {"rounds": rows, "train_seconds": t_total, "steps_per_round": steps_per_round}


# -- consistency distillation / training --------------------------------------------------------------


def consistency_students(gm, steps):
  edm = schedules.EDM()
  exact = gm.denoiser(edm)
  param = Parameterization("consistency", sigma_data=1.0)
  x_T = np.asarray(edm.prior_sample(jax.random.PRNGKey(3), (N_EVAL, 2)))
  f_exact = C.ode_consistency_fn(exact, edm, 256)
  ode = np.asarray(jax.jit(f_exact)(jnp.asarray(x_T), jnp.full((N_EVAL,), edm.t_max)))
  x_exact = gm.sample0(jax.random.PRNGKey(4), N_EVAL)
  out = {}
  teacher_step = C.traced_teacher_step("heun", edm, exact)
  for name in ("CD", "CT"):
    if name == "CD":
      def loss(denoise, x0, key, context):
        return C.consistency_distillation_loss(denoise, None, teacher_step, x0, key, edm, 18)
    else:
      max_n = C.max_num_scales(steps)

      def loss(denoise, x0, key, context):
        n = C.traced_num_scales(context["step"], steps)
        return C.consistency_training_loss(denoise, None, x0, key, edm, n, max_scales=max_n,
                                           c=0.0054)
    net = make_net()
    obj = "consistency_distillation" if name == "CD" else "consistency_training"
    t0 = time.time()
    params = train(net, edm, param, loss, obj, steps, jax.random.PRNGKey(20),
                   lambda i: {"x": gm.sample0(jax.random.PRNGKey(5000 + i), BATCH)})
    secs = time.time() - t0
    f = jax.jit(denoiser_of(net, edm, param, params))
    row = {"train_seconds": secs,
           "rel_err_1_vs_ode": rel(f(jnp.asarray(x_T), jnp.full((N_EVAL,), edm.t_max)), ode)}
    for n in (1, 2):
      s = build_sampler("consistency", edm, num_steps=n, grid="karras")
      x, _ = s(f, jax.random.PRNGKey(6), jnp.asarray(x_T))
      row[f"sw_{n}"] = sw(x, x_exact)
    out[name] = row
  return out


# -- flow maps: MeanFlow and shortcut ---------------------------------------------------------------


FLOW_MAP_STEPS = (1, 2, 4)
# (row, objective, loss_opts): the papers' defaults, and MeanFlow with 75% of the batch r != t
# (the paper's CIFAR-10 ratio; its other CIFAR-10 options are image-specific).
FLOW_MAP_STUDENTS = (("MeanFlow", "mean_flow", ()),
                     ("MeanFlow, 75% r != t", "mean_flow", (("ratio_r_neq_t", 0.75),)),
                     ("shortcut", "shortcut", ()))


def flow_map_students(gm, steps):
  """MeanFlow and shortcut students (two-time MLP, the CD / CT rows' size, steps and batch) on
  rectified flow, sampled by the 'flow_map' sampler on the uniform grid from t_max = 0.999 to
  t_min = 1e-3 (the reflow rows' x_T and exact map)."""
  from diffusion.flow_map import make_flow_map
  rf = schedules.RectifiedFlow()
  grid_sched = schedules.RectifiedFlow(t_min=0.0, t_max=rf.t_max)
  param = Parameterization("mean_flow")
  x_T = np.asarray(rf.prior_sample(jax.random.PRNGKey(3), (N_EVAL, 2)))
  ode = exact_ode_map(gm, rf, x_T)
  x_exact = gm.sample0(jax.random.PRNGKey(4), N_EVAL)
  out = {"steps": steps}
  for name, objective, opts in FLOW_MAP_STUDENTS:
    net = make_net()
    t0 = time.time()
    params = train(net, rf, param, None, objective, steps, jax.random.PRNGKey(30),
                   lambda i: {"x": gm.sample0(jax.random.PRNGKey(7000 + i), BATCH)},
                   time_inputs=2, loss_opts=opts)
    row = {"train_seconds": time.time() - t0}
    phi = make_flow_map(lambda x, c, cond=None: net.apply({"params": params}, x, c), rf, param)
    for n in FLOW_MAP_STEPS:
      f = build_sampler("flow_map", rf, num_steps=n, grid="uniform")
      x, _ = f(phi, jax.random.PRNGKey(0), jnp.asarray(x_T))
      row[f"rel_err_{n}"] = rel(x, ode)
      row[f"sw_{n}"] = sw(x, x_exact)
      # to t = 0 (the data) instead of t_min = 1e-3: the flow maps' own endpoint
      f0 = build_sampler("flow_map", grid_sched, num_steps=n, grid="uniform")
      row[f"sw_{n}_to_0"] = sw(f0(phi, jax.random.PRNGKey(0), jnp.asarray(x_T))[0], x_exact)
    out[name] = row
  return out


def markdown(res) -> str:
  rf = res["reflow"]
  lines = [f"Exact-vs-exact sliced Wasserstein (the floor): {rf['sw_floor']:.4f}.", "",
           f"Reflow ({rf['steps']} steps on 50,000 pairs of the exact flow; pairs "
           f"{rf['pairs_seconds']:.0f} s, training {rf['train_seconds']:.0f} s):", "",
           "| flow | straightness | 1-step rel. err. | 2-step rel. err. | SW 1 step | SW 2 steps |",
           "|---|---|---|---|---|---|"]
  for k in ("1-RF (exact)", "2-RF (trained)"):
    r = rf[k]
    lines.append(f"| {k} | {r['straightness']:.4f} | {r['rel_err_1']:.4f} | "
                 f"{r['rel_err_2']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} |")
  pd = res["progressive"]
  lines += ["", f"Progressive distillation ({pd['steps_per_round']} steps per round, "
            f"{pd['train_seconds']:.0f} s):", "",
            "| round | DDIM steps | rel. err. vs PF-ODE map | exact teacher's N-step DDIM map "
            "(no distillation) | vs its teacher's 2N-step map | SW |", "|---|---|---|---|---|---|"]
  for r in pd["rounds"]:
    lines.append(f"| {r['round']} | {r['student_steps']} | {r['rel_err_vs_ode']:.4f} | "
                 f"{r['teacher_ddim_rel_err_vs_ode']:.4f} | {r['rel_err_vs_teacher']:.4f} | "
                 f"{r['sw']:.4f} |")
  cs = res.get("consistency")
  if cs is None:
    return "\n".join(lines + _flow_map_lines(res)) + "\n"
  lines += ["", "Consistency models (1-step map against the exact consistency function):", "",
            "| student | 1-step rel. err. | SW 1 step | SW 2 steps | training s |",
            "|---|---|---|---|---|"]
  for k in ("CD", "CT"):
    r = cs[k]
    lines.append(f"| {k} | {r['rel_err_1_vs_ode']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} | "
                 f"{r['train_seconds']:.0f} |")
  return "\n".join(lines + _flow_map_lines(res)) + "\n"


def _flow_map_lines(res):
  fm = res.get("flow_map")
  if fm is None:
    return []
  head = " | ".join(f"{n}-step rel. err." for n in FLOW_MAP_STEPS)
  sws = " | ".join(f"SW {n}" for n in FLOW_MAP_STEPS)
  lines = ["", f"Flow maps from scratch (two-time MLP, {fm['steps']} steps; 'flow_map' sampler "
           f"from t = 0.999 to 1e-3 against the exact PF-ODE map, the reflow rows' x_T; SW to "
           f"exact samples, and in brackets the same map run on to t = 0):", "",
           f"| student | {head} | {sws} | training s |",
           "|---|" + "---|" * (2 * len(FLOW_MAP_STEPS) + 1)]
  for k in (row for row, _, _ in FLOW_MAP_STUDENTS if row in fm):
    r = fm[k]
    errs = " | ".join(f"{r[f'rel_err_{n}']:.4f}" for n in FLOW_MAP_STEPS)
    s = " | ".join(f"{r[f'sw_{n}']:.4f} ({r[f'sw_{n}_to_0']:.4f})" for n in FLOW_MAP_STEPS)
    lines.append(f"| {k} | {errs} | {s} | {r['train_seconds']:.0f} |")
  return lines


def header(steps: int, only=None) -> str:
  """The .md's first line: the command that wrote it (and which section it re-measured)."""
  line = f"Written by `python benchmarks/few_step_mixture.py --steps={steps}`."
  if only is not None:
    line += (f" The {only} section re-measured alone by `python benchmarks/few_step_mixture.py "
             f"--steps={steps} --only={only}`; the others are kept from the full run.")
  return line


SECTIONS = {"reflow": reflow, "progressive": progressive, "consistency": consistency_students,
            "flow_map": flow_map_students}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=2000, help="training steps per student / round")
  p.add_argument("--only", choices=sorted(SECTIONS), default=None,
                 help="run this section only; the others are kept from the existing .json")
  a = p.parse_args()
  gm = mixture()
  out = os.path.join(ROOT, "benchmarks", "results", "few_step_mixture")
  res = {}
  if a.only is not None and os.path.exists(out + ".json"):
    with open(out + ".json") as f:
      res = json.load(f)
  for name, fn in SECTIONS.items():
    if a.only in (None, name):
      res[name] = fn(gm, a.steps)
  if "reflow" not in res:
    raise SystemExit("the reflow section (the SW floor) is missing from the .json: run all")
  text = markdown(res)
  print(text)
  from benchmarks.hardware import with_machine_line
  with open(out + ".md", "w") as f:
    f.write(with_machine_line(
        header(a.steps, a.only) + "\n\n" + text))
  with open(out + ".json", "w") as f:
    json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
