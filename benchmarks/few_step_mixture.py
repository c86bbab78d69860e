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
  sCD / sCT     continuous-time consistency students (sCM, Lu & Song 2024) on TrigFlow
                (sigma_d = 2): sCD from the exact denoiser's velocity (an EDM-schedule teacher,
                SNR-matched), sCT from the conditional one; the same MLP with a log-variance head
                (adaptive weighting) and unscaled time features, tangent warm-up over the first
                quarter of the steps; measured as CD / CT.

  python benchmarks/few_step_mixture.py [--steps=2000] [--only=scm]

--only runs one section (reflow, progressive, consistency or scm) and writes
few_step_mixture_<section>.md / .json instead of the full report.

Writes benchmarks/results/few_step_mixture.md and .json.
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
          teacher_params=None, **loss_context):
  """Adam steps of ``loss_fn`` (training.make_train_step); data_fn(i) -> batch dict;
  ``teacher_params`` passed to every step, ``loss_context`` (config, teacher) to the loss."""
  opt = training.make_optimizer(training.OptimConfig(lr=lr, warmup_steps=min(100, steps // 4),
                                                     decay="cosine",
                                                     decay_steps=steps))
  cfg = training.StepConfig(objective=objective, ema_decay=0.0,
                            weighting="flow" if objective == "reflow" else "eps")
  step = jax.jit(training.make_train_step(net, sched, param, opt, cfg, loss_fn=loss_fn,
                                          **loss_context))
  state = training.init_state(net, opt, key, jnp.zeros((1, 2)))
  if init is not None:
    state = state.replace(params=init, ema_params=init, opt_state=opt.init(init))
  for i in range(steps):
    state, m = (step(state, data_fn(i)) if teacher_params is None else
                step(state, data_fn(i), teacher_params))
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


# -- sCM (continuous-time consistency) ----------------------------------------------------------------


def exact_teacher_module(gm, sched):
  """A parameter-free flax module whose denoiser (parameterization 'x0', time input t) is the
  exact mixture denoiser on ``sched``: the exact teacher as a TeacherModel's network."""
  import flax.linen as nn
  exact = gm.denoiser(sched)

  class Exact(nn.Module):
    @nn.compact
    def __call__(self, x, c, labels=None, train=False):
      return exact(x, c)

  return Exact()


def scm_students(gm, steps):
  from configs.base import get_base_config
  from diffusion.objectives import TeacherModel
  sd = 2.0  # about the per-coordinate std of 8gaussians (2.03)
  trig = schedules.TrigFlow(sigma_data=sd)
  param = Parameterization("trigflow", sigma_data=sd)
  exact = gm.denoiser(trig)
  x_T = np.asarray(trig.prior_sample(jax.random.PRNGKey(3), (N_EVAL, 2)))
  f_exact = C.ode_consistency_fn(exact, trig, 256)
  ode = np.asarray(jax.jit(f_exact)(jnp.asarray(x_T), jnp.full((N_EVAL,), trig.t_max)))
  x_exact = gm.sample0(jax.random.PRNGKey(4), N_EVAL)
  config = get_base_config()
  config.scm.p_mean = -1.0 + np.log(sd / 0.5)  # the paper's -1.0 at sigma_d = 0.5, scaled
  config.scm.tangent_warmup_steps = max(steps // 4, 1)
  teacher_sched = schedules.EDM()
  teacher = TeacherModel(exact_teacher_module(gm, teacher_sched), Parameterization("x0"),
                         teacher_sched)
  out = {"sigma_data": sd, "p_mean": float(config.scm.p_mean),
         "tangent_warmup_steps": int(config.scm.tangent_warmup_steps)}
  for name in ("sCD", "sCT"):
    # c_noise(t) = t with unscaled sinusoidal features (the paper's low-frequency time
    # embedding, sec. 4.1): with the MLP's default scale 1000 dF/dt is ~1000x larger and the
    # students do not learn (1-step rel. err. 1.10 sCD / 0.99 sCT at 2,000 steps; sCD at 600
    # steps: 0.29 at scale 30, 0.15 at scale 1).
    net = get_model("mlp", width=128, num_blocks=3, embed_dim=64, logvar_head=True,
                    embedding_scale=1.0)
    obj = "scm_distillation" if name == "sCD" else "scm_training"
    # sCD: the exact teacher (no parameters) in the loss context, {} as its per-step parameters
    distil = dict(teacher=teacher, teacher_params={}) if name == "sCD" else {}
    t0 = time.time()
    params = train(net, trig, param, None, obj, steps, jax.random.PRNGKey(20),
                   lambda i: {"x": gm.sample0(jax.random.PRNGKey(5000 + i), BATCH)},
                   config=config, **distil)
    secs = time.time() - t0
    f = jax.jit(denoiser_of(net, trig, param, params))
    row = {"train_seconds": secs,
           "rel_err_1_vs_ode": rel(f(jnp.asarray(x_T), jnp.full((N_EVAL,), trig.t_max)), ode)}
    for n in (1, 2):
      smp = build_sampler("consistency", trig, num_steps=n, grid="karras")
      x, _ = smp(f, jax.random.PRNGKey(6), jnp.asarray(x_T))
      row[f"sw_{n}"] = sw(x, x_exact)
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
  cs = res["consistency"]
  lines += ["", "Consistency models (1-step map against the exact consistency function):", "",
            "| student | 1-step rel. err. | SW 1 step | SW 2 steps | training s |",
            "|---|---|---|---|---|"]
  for k in ("CD", "CT"):
    r = cs[k]
    lines.append(f"| {k} | {r['rel_err_1_vs_ode']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} | "
                 f"{r['train_seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def markdown_scm(sc) -> str:
  lines = [f"sCM on TrigFlow (sigma_d = {sc['sigma_data']}, P_mean = {sc['p_mean']:.3f}, "
           f"P_std = 1.4, tangent warm-up {sc['tangent_warmup_steps']} steps, adaptive "
           f"weighting; 1-step map against the exact consistency function):", "",
           "| student | 1-step rel. err. | SW 1 step | SW 2 steps | training s |",
           "|---|---|---|---|---|"]
  for k in [k for k in ("sCD", "sCT") if k in sc]:
    r = sc[k]
    lines.append(f"| {k} | {r['rel_err_1_vs_ode']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} | "
                 f"{r['train_seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=2000, help="training steps per student / round")
  p.add_argument("--only", choices=sorted(SECTIONS), default=None,
                 help="run one section; writes few_step_mixture_<section>.md / .json")
  a = p.parse_args()
  gm = mixture()
  if a.only is not None:
    fn, md = SECTIONS[a.only]
    res = fn(gm, a.steps)
    text = md(res) if md is not None else json.dumps(res, indent=2) + "\n"
    name, cmd = f"few_step_mixture_{a.only}", f"--steps={a.steps} --only={a.only}"
  else:
    res = {"reflow": reflow(gm, a.steps), "progressive": progressive(gm, a.steps),
           "consistency": consistency_students(gm, a.steps)}
    text = markdown(res)
    name, cmd = "few_step_mixture", f"--steps={a.steps}"
  print(text)
  out = os.path.join(ROOT, "benchmarks", "results", name)
  from benchmarks.hardware import with_machine_line
  with open(out + ".md", "w") as f:
    f.write(with_machine_line(
        f"Written by `python benchmarks/few_step_mixture.py {cmd}`.\n\n" + text))
  with open(out + ".json", "w") as f:
    json.dump(res, f, indent=2)


# --only: section -> (function(gm, steps), its markdown or None for JSON)
SECTIONS = {"reflow": (reflow, None), "progressive": (progressive, None),
            "consistency": (consistency_students, None), "scm": (scm_students, markdown_scm)}


if __name__ == "__main__":
  main()
