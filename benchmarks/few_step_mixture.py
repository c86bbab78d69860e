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
                --searched_grids adds CD with CM's EMA target (mu = 0.95) and a table of 2- and
                3-step samples on the fixed Karras grid next to the grid found by CM's greedy
                search (diffusion.samplers.grid_search, 8 golden-section steps per time),
                searched on its own noise and exact samples (other seeds than the reported
                ones, so the reported SW is not the minimised one).

  sCD / sCT     continuous-time consistency students (sCM, Lu & Song 2024) on TrigFlow
                (sigma_d = 2): sCD from the exact denoiser's velocity (an EDM-schedule teacher,
                SNR-matched), sCT from the conditional one; the same MLP with a log-variance head
                (adaptive weighting) and unscaled time features, tangent warm-up over the first
                quarter of the steps; measured as CD / CT.
  flow maps     two-time MLP students (parameterization 'mean_flow') trained from scratch on the
                data, on rectified flow: MeanFlow (Geng et al. 2025, the paper's default
                options, and with 75% of the batch r != t) and shortcut (Frans et al. 2024, M = 128, k = 1/4); their 1-, 2- and
                4-step 'flow_map' samples against the exact PF-ODE map from the same noise (the
                reflow rows' x_T and reference) and exact samples.

  python benchmarks/few_step_mixture.py [--steps=2000] [--searched_grids] [--only=SECTION]

Writes benchmarks/results/few_step_mixture.md and .json; with --only=SECTION (reflow, progressive,
consistency, scm, flow_map) only that section runs, written to few_step_mixture_<SECTION>.md and
.json (the full results are left as they are).
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
from diffusion.samplers import build_sampler, grid_search, grids  # noqa: E402

N_EVAL = 4096
BATCH = 512
SECTIONS = ("reflow", "progressive", "consistency", "scm", "flow_map")
CM_TARGET_EMA = 0.95  # CM Table 3 (CD on CIFAR-10, N = 18)


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
          target_ema=0.0, teacher_params=None, time_inputs=1, loss_opts=(), **loss_context):
  """Adam steps of ``loss_fn`` (training.make_train_step); data_fn(i) -> batch dict;
  ``target_ema``: a target network in the state (training.TargetState), context['target'];
  ``teacher_params`` passed to every step, ``loss_context`` (config, teacher) to the loss;
  ``time_inputs`` 2 for a two-time network, ``loss_opts`` the objective's loss options."""
  opt = training.make_optimizer(training.OptimConfig(lr=lr, warmup_steps=min(100, steps // 4),
                                                     decay="cosine",
                                                     decay_steps=steps))
  cfg = training.StepConfig(objective=objective, ema_decay=0.0, loss_opts=tuple(loss_opts),
                            weighting="flow" if objective == "reflow" else "eps",
                            target_ema=target_ema)
  step = jax.jit(training.make_train_step(net, sched, param, opt, cfg, loss_fn=loss_fn,
                                          **loss_context))
  state = training.init_state(net, opt, key, jnp.zeros((1, 2)), time_inputs=time_inputs)
  if init is not None:
    state = state.replace(params=init, ema_params=init, opt_state=opt.init(init))
  if target_ema:
    state = training.with_target(state)
  for i in range(steps):
    state, m = (step(state, data_fn(i)) if teacher_params is None else
                step(state, data_fn(i), teacher_params))
  jax.block_until_ready(state.params)
  return state.params


def consistency_row(f, sched, x_T, ode, x_exact, train_seconds) -> dict:
  """A consistency student f's row: its 1-step map from t_max against the exact one (``ode``)
  and the SW of its 1- and 2-step samples (Karras grid) to exact samples."""
  row = {"train_seconds": train_seconds,
         "rel_err_1_vs_ode": rel(f(jnp.asarray(x_T), jnp.full((N_EVAL,), sched.t_max)), ode)}
  for n in (1, 2):
    smp = build_sampler("consistency", sched, num_steps=n, grid="karras")
    x, _ = smp(f, jax.random.PRNGKey(6), jnp.asarray(x_T))
    row[f"sw_{n}"] = sw(x, x_exact)
  return row


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


def searched_grid_rows(gm, edm, f, x_T, x_exact):
  """2- and 3-step SW of the consistency sampler with ``f`` on the fixed Karras grid and on the
  grid of CM's greedy search, searched on other noise / exact samples / re-noising key than the
  reported ones (8 golden-section steps per time)."""
  x_T_search = edm.prior_sample(jax.random.PRNGKey(13), (N_EVAL, 2))
  ref_search = np.asarray(gm.sample0(jax.random.PRNGKey(14), N_EVAL))
  score = grid_search.sampling_score(lambda x: sw(x, ref_search), f, edm, x_T_search,
                                     jax.random.PRNGKey(15))
  rows = {}
  for n in (2, 3):
    t0 = time.time()
    grid, trace = grid_search.search_time_grid(score, edm, n, iterations=8)
    secs = time.time() - t0
    out = {}
    for kind, g in (("karras", grids.time_grid(edm, n, "karras")), ("searched", grid)):
      s = build_sampler("consistency", edm, time_grid=g)
      x, _ = s(f, jax.random.PRNGKey(6), jnp.asarray(x_T))
      out[f"sw_{kind}"] = sw(x, x_exact)
      out[f"grid_{kind}"] = [float(t) for t in g]
    out.update(search_seconds=secs, evaluations=trace["num_evaluations"],
               search_score=trace["score"], search_one_step_score=trace["one_step_score"])
    rows[str(n)] = out
  return rows


def consistency_students(gm, steps, searched=False):
  edm = schedules.EDM()
  exact = gm.denoiser(edm)
  param = Parameterization("consistency", sigma_data=1.0)
  x_T = np.asarray(edm.prior_sample(jax.random.PRNGKey(3), (N_EVAL, 2)))
  f_exact = C.ode_consistency_fn(exact, edm, 256)
  ode = np.asarray(jax.jit(f_exact)(jnp.asarray(x_T), jnp.full((N_EVAL,), edm.t_max)))
  x_exact = gm.sample0(jax.random.PRNGKey(4), N_EVAL)
  out = {"sw_floor": sw(gm.sample0(jax.random.PRNGKey(5), N_EVAL), x_exact)}
  teacher_step = C.traced_teacher_step("heun", edm, exact)
  names = ("CD", "CT") + (("CD (EMA target)",) if searched else ())
  for name in names:
    net = make_net()
    mu = CM_TARGET_EMA if name == "CD (EMA target)" else 0.0
    if name.startswith("CD"):
      def loss(denoise, x0, key, context, net=net, mu=mu):
        target = denoiser_of(net, edm, param, context["target"]) if mu else None
        return C.consistency_distillation_loss(denoise, target, teacher_step, x0, key, edm, 18)
    else:
      max_n = C.max_num_scales(steps)

      def loss(denoise, x0, key, context):
        n = C.traced_num_scales(context["step"], steps)
        return C.consistency_training_loss(denoise, None, x0, key, edm, n, max_scales=max_n,
                                           c=0.0054)
    obj = "consistency_distillation" if name.startswith("CD") else "consistency_training"
    t0 = time.time()
    params = train(net, edm, param, loss, obj, steps, jax.random.PRNGKey(20),
                   lambda i: {"x": gm.sample0(jax.random.PRNGKey(5000 + i), BATCH)},
                   target_ema=mu)
    secs = time.time() - t0
    f = jax.jit(denoiser_of(net, edm, param, params))
    row = consistency_row(f, edm, x_T, ode, x_exact, secs)
    if searched:
      row["searched_grids"] = searched_grid_rows(gm, edm, f, x_T, x_exact)
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
    out[name] = consistency_row(f, trig, x_T, ode, x_exact, secs)
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


def markdown_reflow(rf) -> list:
  lines = [f"Reflow ({rf['steps']} steps on 50,000 pairs of the exact flow; pairs "
           f"{rf['pairs_seconds']:.0f} s, training {rf['train_seconds']:.0f} s):", "",
           "| flow | straightness | 1-step rel. err. | 2-step rel. err. | SW 1 step | SW 2 steps |",
           "|---|---|---|---|---|---|"]
  for k in ("1-RF (exact)", "2-RF (trained)"):
    r = rf[k]
    lines.append(f"| {k} | {r['straightness']:.4f} | {r['rel_err_1']:.4f} | "
                 f"{r['rel_err_2']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} |")
  return lines


def markdown_progressive(pd) -> list:
  lines = [f"Progressive distillation ({pd['steps_per_round']} steps per round, "
           f"{pd['train_seconds']:.0f} s):", "",
           "| round | DDIM steps | rel. err. vs PF-ODE map | exact teacher's N-step DDIM map "
           "(no distillation) | vs its teacher's 2N-step map | SW |", "|---|---|---|---|---|---|"]
  for r in pd["rounds"]:
    lines.append(f"| {r['round']} | {r['student_steps']} | {r['rel_err_vs_ode']:.4f} | "
                 f"{r['teacher_ddim_rel_err_vs_ode']:.4f} | {r['rel_err_vs_teacher']:.4f} | "
                 f"{r['sw']:.4f} |")
  return lines


def markdown_consistency(cs) -> list:
  names = [k for k in ("CD", "CT", "CD (EMA target)") if k in cs]
  lines = ["Consistency models (1-step map against the exact consistency function):", "",
           "| student | 1-step rel. err. | SW 1 step | SW 2 steps | training s |",
           "|---|---|---|---|---|"]
  for k in names:
    r = cs[k]
    lines.append(f"| {k} | {r['rel_err_1_vs_ode']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} | "
                 f"{r['train_seconds']:.0f} |")
  if any("searched_grids" in cs[k] for k in names):
    lines += ["", "The same students on the fixed Karras grid and on the grid of CM's greedy "
              "search (searched on other noise and exact samples than those reported; sigma = t "
              "on EDM; the intermediate times only). 'On the search set': the searched grid's "
              "SW and the 1-step SW on the samples the search minimised (their difference from "
              "the reported ones is the set-to-set noise):", "",
              "| student | steps | SW Karras grid | SW searched grid | on the search set: "
              "searched / 1 step | Karras times | searched times | search s (evaluations) |",
              "|---|---|---|---|---|---|---|---|"]
    for k in names:
      for n, g in sorted(cs[k].get("searched_grids", {}).items()):
        fmt = lambda ts: ", ".join(f"{t:.3g}" for t in ts[1:-1])  # noqa: E731
        lines.append(f"| {k} | {n} | {g['sw_karras']:.4f} | {g['sw_searched']:.4f} | "
                     f"{g['search_score']:.4f} / {g['search_one_step_score']:.4f} | "
                     f"{fmt(g['grid_karras'])} | {fmt(g['grid_searched'])} | "
                     f"{g['search_seconds']:.0f} ({g['evaluations']}) |")
  return lines


def markdown(res) -> str:
  floors = [r["sw_floor"] for r in res.values() if "sw_floor" in r]
  lines = [f"Exact-vs-exact sliced Wasserstein (the floor): {floors[0]:.4f}."] if floors else []
  for name, fn in (("reflow", markdown_reflow), ("progressive", markdown_progressive),
                   ("consistency", markdown_consistency), ("scm", markdown_scm),
                   ("flow_map", markdown_flow_map)):
    if name in res:
      lines += [""] + fn(res[name])
  return "\n".join(lines) + "\n"


def markdown_flow_map(fm) -> list:
  head = " | ".join(f"{n}-step rel. err." for n in FLOW_MAP_STEPS)
  sws = " | ".join(f"SW {n}" for n in FLOW_MAP_STEPS)
  lines = [f"Flow maps from scratch (two-time MLP, {fm['steps']} steps; 'flow_map' sampler "
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


def markdown_scm(sc) -> list:
  lines = [f"sCM on TrigFlow (sigma_d = {sc['sigma_data']}, P_mean = {sc['p_mean']:.3f}, "
           f"P_std = 1.4, tangent warm-up {sc['tangent_warmup_steps']} steps, adaptive "
           f"weighting; 1-step map against the exact consistency function):", "",
           "| student | 1-step rel. err. | SW 1 step | SW 2 steps | training s |",
           "|---|---|---|---|---|"]
  for k in [k for k in ("sCD", "sCT") if k in sc]:
    r = sc[k]
    lines.append(f"| {k} | {r['rel_err_1_vs_ode']:.4f} | {r['sw_1']:.4f} | {r['sw_2']:.4f} | "
                 f"{r['train_seconds']:.0f} |")
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=2000, help="training steps per student / round")
  p.add_argument("--searched_grids", action="store_true",
                 help="consistency: also CD with an EMA target, and 2- and 3-step samples on "
                      "the searched grid next to the fixed Karras grid")
  p.add_argument("--only", choices=SECTIONS, default=None,
                 help="run this section only (written to few_step_mixture_<SECTION>.md/.json)")
  a = p.parse_args()
  gm = mixture()
  run = {"reflow": lambda: reflow(gm, a.steps), "progressive": lambda: progressive(gm, a.steps),
         "consistency": lambda: consistency_students(gm, a.steps, a.searched_grids),
         "scm": lambda: scm_students(gm, a.steps), "flow_map": lambda: flow_map_students(gm, a.steps)}
  res = {name: run[name]() for name in SECTIONS if a.only in (None, name)}
  text = markdown(res)
  print(text)
  out = os.path.join(ROOT, "benchmarks", "results",
                     "few_step_mixture" + (f"_{a.only}" if a.only else ""))
  flags = f"--steps={a.steps}" + (" --searched_grids" if a.searched_grids else "") + (
      f" --only={a.only}" if a.only else "")
  from benchmarks.hardware import with_machine_line
  with open(out + ".md", "w") as f:
    f.write(with_machine_line(
        f"Written by `python benchmarks/few_step_mixture.py {flags}`.\n\n" + text))
  with open(out + ".json", "w") as f:
    json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
