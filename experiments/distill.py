"""Few-step training in the driver: teachers, students, rounds (docs/few_step.md).

Wiring only (the math is diffusion.distillation and diffusion.consistency). The objectives
(config.training.objective) and what they read from config.distill:

  progressive_distillation  (Salimans & Ho 2022, Alg. 2) a student learns in one DDIM step what
      its teacher does in two. The first teacher is a trained run (distill.teacher_config /
      teacher_workdir, its EMA parameters), sampled with DDIM on 2 * distill.student_steps uniform
      steps; the student starts as the teacher (same network). distill.rounds rounds of
      K = training.num_steps / rounds steps each: at step r K the student's EMA becomes the
      teacher of round r, the student restarts from it (fresh optimizer, EMA = teacher) and its
      step count halves. The checkpoint at step r K holds round r-1's student (kept whatever
      training.max_to_keep says); its sampler is 'ddim' on the 'uniform' grid with
      ``round_student_steps(config, r - 1)`` steps. The teacher of the current round is part of
      the train state (``training.DistillState``), so a killed run resumes mid-round exactly.
  consistency_distillation  (Song et al. 2023, CM, Alg. 2) a consistency function (model.
      parameterization 'consistency') learns to map x_{t_{i+1}} to the teacher's one PF-ODE step
      to t_i (distill.teacher_solver 'euler' | 'heun') on the Karras grid of distill.num_scales;
      the target is the student itself under a stop-gradient (iCT sec. 3.2; no EMA target).
      The teacher's parameters are restored at every start and passed to the compiled step.
  consistency_training  (iCT, Song & Dhariwal 2024) no teacher: x_hat_i = x0 + s_i z with the
      same z; the curriculum N(k) (distill.curriculum 'ict' | 'cm' | 'none') is traced, so one
      compiled step serves the whole run.
  reflow  (Liu et al. 2023, sec. 2.3) a rectified flow trained on (noise, sample) pairs of a
      trained flow written by --mode=pairs (experiments/reflow.py, distill.pairs); the loss is
      the config's dsm_loss with the pair's noise as eps.

A student's config names its teacher's config file and workdir; the teacher's config is that file
with the workdir's config.json values set on it (``setup.saved_config``), and anything that makes
the pair incompatible (another forward process or data, another network where the student starts
from the teacher's parameters, a teacher that is not a denoiser) is a ConfigError before anything
is compiled.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from diffusion import consistency, distillation, training
from experiments import build, checks, config_files
from experiments.errors import ConfigError
from experiments.setup import restore_params, saved_config

Config = ml_collections.ConfigDict

TEACHER_OBJECTIVES = ("progressive_distillation", "consistency_distillation")
# Objectives whose student starts from the teacher's parameters (PD always; the others when
# distill.init_from_teacher).
DENOISER_OBJECTIVES = ("dsm", "reflow", "progressive_distillation")  # what a teacher may be
CURRICULA = ("ict", "cm", "none")
CURRICULUM_DEFAULTS = {"ict": (10, 1280), "cm": (2, 150)}
# Per objective: (weighting, metric, index distribution) when config.distill leaves them None.
CONSISTENCY_DEFAULTS = {"consistency_distillation": ("uniform", "l2", "uniform"),
                        "consistency_training": ("ict", "pseudo_huber", "lognormal")}


def objective(config: Config) -> str:
  return config.training.objective


def needs_teacher(config: Config) -> bool:
  """Whether the run reads a teacher: PD and CD always, reflow to start from the old flow."""
  return objective(config) in TEACHER_OBJECTIVES or (
      objective(config) == "reflow" and bool(config.distill.init_from_teacher))


def is_consistency(config: Config) -> bool:
  """Whether the run's "denoiser" is a consistency function (sampled by 'consistency' only)."""
  return config.model.parameterization == "consistency"


# -- progressive distillation rounds ---------------------------------------------------------------


def steps_per_round(config: Config) -> int:
  return int(config.training.num_steps) // int(config.distill.rounds)


def round_of(config: Config, step: int) -> int:
  """The round (0-based) that trains at ``step``: step // K, the last round up to num_steps."""
  return min(int(step) // steps_per_round(config), int(config.distill.rounds) - 1)


def round_student_steps(config: Config, r: int) -> int:
  """DDIM steps of round r's student: distill.student_steps / 2^r."""
  return int(config.distill.student_steps) // 2**int(r)


def round_boundaries(config: Config):
  """Steps r K (r = 1 .. rounds - 1) where a new round starts."""
  k = steps_per_round(config)
  return [r * k for r in range(1, int(config.distill.rounds))]


def begin_round(state: training.DistillState, optimizer) -> training.DistillState:
  """The state of a new round: the previous student's EMA becomes the teacher and the new
  student's parameters and EMA, with a fresh optimizer. Idempotent (applying it twice gives the
  same state), so a run resumed at a round's first step can apply it again."""
  t = state.ema_params
  return state.replace(teacher=t, params=t, ema_params=jax.tree_util.tree_map(jnp.copy, t),
                       opt_state=optimizer.init(t))


# -- validation (no JAX work: before anything is compiled) -----------------------------------------


def teacher_config(config: Config) -> Config:
  """The teacher's config: distill.teacher_config (a file) with the values of
  distill.teacher_workdir/config.json set on it."""
  d = config.distill
  try:
    file_config = config_files.load_config_file(d.teacher_config)
  except FileNotFoundError as e:
    raise ConfigError(f"config.distill.teacher_config: {e}") from None
  return saved_config(file_config, d.teacher_workdir)


def check_teacher(config: Config, teacher: Config) -> None:
  """The teacher must be a denoiser of this forward process and data; a student that starts from
  its parameters needs its network. ConfigError naming the differing field."""
  obj, d = objective(config), config.distill
  where = f"the teacher (config.distill.teacher_config={d.teacher_config!r})"
  t_obj = teacher.training.get("objective", "dsm")
  if t_obj not in DENOISER_OBJECTIVES or teacher.model.parameterization == "consistency":
    raise ConfigError(f"{where} is not a denoiser (training.objective={t_obj!r}, "
                      f"model.parameterization={teacher.model.parameterization!r}); a teacher is "
                      f"a run of objective {DENOISER_OBJECTIVES} with a denoiser parameterization")
  fields = [("data.name", teacher.data.name, config.data.name),
            ("data.image_size", teacher.data.image_size, config.data.image_size)]
  if obj in TEACHER_OBJECTIVES:  # the student works on the teacher's PF-ODE
    fields += [("sde.name", teacher.sde.name, config.sde.name),
               ("sde.fields", teacher.sde.fields, config.sde.fields)]
  if obj == "progressive_distillation" or bool(d.init_from_teacher):
    fields += [("model.name", teacher.model.name, config.model.name),
               ("model.net", teacher.model.net, config.model.net)]
  if teacher.model.conditional:
    raise ConfigError(f"{where} is class-conditional; the few-step objectives distil "
                      f"unconditional models")
  for name, t_val, s_val in fields:
    if _plain(t_val) != _plain(s_val):
      why = ("the student starts from the teacher's parameters (set config.distill."
             "init_from_teacher=False to train it from scratch)"
             if name.startswith("model") and obj != "progressive_distillation" else
             "progressive distillation's student is its teacher's network"
             if name.startswith("model") else "they must agree")
      raise ConfigError(f"config.{name}={_plain(s_val)!r} differs from {where}'s "
                        f"{_plain(t_val)!r}: {why}")


def _plain(v):
  return v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v


def check_distill(config: Config, mode: str) -> None:
  """config.distill for the run's objective (called by validate.validate_config)."""
  obj, d = objective(config), config.distill
  checks.is_bool("distill.init_from_teacher", d.init_from_teacher)
  consistency_param = is_consistency(config)
  if obj in ("consistency_distillation", "consistency_training") and not consistency_param:
    raise ConfigError(f"config.training.objective={obj!r} trains a consistency function: set "
                      f"config.model.parameterization='consistency' (got "
                      f"{config.model.parameterization!r})")
  if consistency_param and obj not in ("consistency_distillation", "consistency_training"):
    raise ConfigError(f"config.model.parameterization='consistency' is trained by the "
                      f"objectives 'consistency_distillation' or 'consistency_training', not "
                      f"config.training.objective={obj!r}")
  if obj in training.STUDENT_OBJECTIVES + ("reflow",) and config.model.conditional:
    raise ConfigError(f"config.training.objective={obj!r} trains unconditional students; set "
                      f"config.model.conditional=False")
  if obj == "reflow":
    if not d.pairs:
      raise ConfigError("config.training.objective='reflow' needs config.distill.pairs, the "
                        "folder --mode=pairs wrote with the previous flow's config and workdir")
  if mode == "pairs":
    checks.int_at_least("distill.num_pairs", d.num_pairs, 1)
    checks.int_at_least("distill.pairs_shard_size", d.pairs_shard_size, 1)
  if needs_teacher(config):
    _check_teacher_fields(config, mode)
  if obj == "progressive_distillation":
    _check_rounds(config)
  if obj in CONSISTENCY_DEFAULTS:
    _check_consistency(config)


def _check_teacher_fields(config: Config, mode: str) -> None:
  """distill.teacher_config / teacher_workdir / teacher_step; for --mode=train the teacher
  itself (``check_teacher``)."""
  obj, d = objective(config), config.distill
  for name in ("teacher_config", "teacher_workdir"):
    if not d[name]:
      raise ConfigError(f"config.training.objective={obj!r} needs config.distill.{name}"
                        + (" (or config.distill.init_from_teacher=False)"
                           if obj == "reflow" else ""))
  if d.teacher_step is not None:
    checks.int_at_least("distill.teacher_step", d.teacher_step, 0)
  if mode == "train":  # sample / eval of a student read only its own workdir
    if not os.path.isdir(d.teacher_workdir):
      raise ConfigError(f"config.distill.teacher_workdir={d.teacher_workdir!r} is not a "
                        f"directory (train the teacher there first)")
    check_teacher(config, teacher_config(config))


def _check_rounds(config: Config) -> None:
  """Progressive distillation: rounds, student steps and weighting, and rounds that divide the
  run (and its warm-up and steps per call)."""
  d = config.distill
  checks.int_at_least("distill.rounds", d.rounds, 1)
  checks.int_at_least("distill.student_steps", d.student_steps, 1)
  checks.from_library("distill.student_steps / rounds", distillation.round_steps,
                      int(d.student_steps), int(d.rounds) - 1)
  checks.one_of("distill.weighting", d.weighting or "truncated_snr", distillation.WEIGHTINGS)
  k = steps_per_round(config)
  if k < 1 or int(config.training.num_steps) % int(d.rounds):
    raise ConfigError(f"config.training.num_steps={config.training.num_steps} must be a "
                      f"positive multiple of config.distill.rounds={d.rounds} (each round "
                      f"trains num_steps / rounds steps)")
  if int(config.optim.warmup_steps) >= k:
    raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} must be smaller "
                      f"than the steps per round {k} (each round starts a fresh optimizer, "
                      f"warm-up included)")
  if k % int(config.training.steps_per_call):
    raise ConfigError(f"config.training.steps_per_call={config.training.steps_per_call} must "
                      f"divide the steps per round {k}")


def _check_consistency(config: Config) -> None:
  """Consistency distillation / training: weighting, metric, index distribution, rho, and the
  teacher's solver and scales (CD) or the curriculum (CT)."""
  obj, d = objective(config), config.distill
  w, m, idx = consistency_options(config)
  checks.one_of("distill.weighting", w, consistency.WEIGHTINGS)
  checks.one_of("distill.metric", m, consistency.METRICS)
  checks.one_of("distill.index_distribution", idx, consistency.INDEX_DISTRIBUTIONS)
  checks.positive("distill.rho", d.rho)
  if obj == "consistency_distillation":
    checks.one_of("distill.teacher_solver", d.teacher_solver, consistency.TRACED_TEACHERS)
    checks.int_at_least("distill.num_scales", d.num_scales, 2)
  else:
    checks.one_of("distill.curriculum", d.curriculum, CURRICULA)
    if d.curriculum == "none":
      checks.int_at_least("distill.num_scales", d.num_scales, 2)
    else:
      s0, s1 = curriculum_bounds(config)
      checks.from_library("distill.s0 / s1", consistency.max_num_scales,
                          int(config.training.num_steps), d.curriculum, s0, s1)


def consistency_options(config: Config) -> Tuple[str, str, str]:
  """(weighting, metric, index distribution): config.distill's, or the objective's defaults
  (CD: CM's 'uniform', 'l2', 'uniform'; CT: iCT's 'ict', 'pseudo_huber', 'lognormal')."""
  dw, dm, di = CONSISTENCY_DEFAULTS[objective(config)]
  d = config.distill
  return d.weighting or dw, d.metric or dm, d.index_distribution or di


def curriculum_bounds(config: Config) -> Tuple[int, int]:
  d = config.distill
  s0, s1 = CURRICULUM_DEFAULTS[d.curriculum]
  return (int(d.s0) if d.s0 is not None else s0, int(d.s1) if d.s1 is not None else s1)


# -- the teacher ---------------------------------------------------------------------------------


def load_teacher(config: Config):
  """(teacher Setup, its EMA params, step) of distill.teacher_workdir (read-only)."""
  d = config.distill
  t_cfg = teacher_config(config)
  check_teacher(config, t_cfg)
  return restore_params(t_cfg, d.teacher_workdir, step=d.teacher_step)


# -- the losses ------------------------------------------------------------------------------------


def _denoiser_of(net, param, schedule, dtype):
  """params -> ``build.denoiser`` of ``net`` (evaluation mode, no dropout) computing in dtype,
  with no gradient into the params (a teacher)."""
  model = training.compute_model(net, dtype)

  def of(params):
    p = jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a).astype(dtype), params)
    return build.denoiser(model, p, schedule, param)

  return of


def loss_fn(config: Config, s, teacher_setup=None, round_index: int = 0) -> Optional[Callable]:
  """The train step's ``loss_fn(denoise, x0, key, context)`` of the run's objective (None for
  dsm, classifier and reflow, whose losses the step builds itself). ``s``: the student's
  ``setup.Setup``; ``teacher_setup``: the teacher's (consistency distillation); PD's loss is
  compiled per round (its step count is static)."""
  obj, d = objective(config), config.distill
  dtype = jnp.bfloat16 if config.training.compute_dtype == "bfloat16" else jnp.float32
  sched = s.schedule
  if obj == "progressive_distillation":
    n = round_student_steps(config, round_index)
    teacher_of = _denoiser_of(s.net, s.param, sched, dtype)  # the student's own network
    weighting = d.weighting or "truncated_snr"

    def pd(denoise, x0, key, context):
      return distillation.progressive_distillation_loss(
          denoise, teacher_of(context["teacher"]), x0, key, sched, n, weighting=weighting)

    return pd
  if obj == "consistency_distillation":
    w, m, idx = consistency_options(config)
    teacher_of = _denoiser_of(teacher_setup.net, teacher_setup.param, teacher_setup.schedule,
                              dtype)
    solver, n_scales, rho = d.teacher_solver, int(d.num_scales), float(d.rho)

    def cd(denoise, x0, key, context):
      step = consistency.traced_teacher_step(solver, sched, teacher_of(context["teacher"]))
      return consistency.consistency_distillation_loss(
          denoise, None, step, x0, key, sched, n_scales, rho=rho, index_distribution=idx,
          weighting=w, metric=m)

    return cd
  if obj == "consistency_training":
    w, m, idx = consistency_options(config)
    total, rho = int(config.training.num_steps), float(d.rho)
    if d.curriculum == "none":
      fixed, max_scales = int(d.num_scales), None
    else:
      s0, s1 = curriculum_bounds(config)
      fixed, max_scales = None, consistency.max_num_scales(total, d.curriculum, s0, s1)

    def ct(denoise, x0, key, context):
      n = fixed if fixed is not None else consistency.traced_num_scales(
          context["step"], total, d.curriculum, s0, s1)
      return consistency.consistency_training_loss(
          denoise, None, x0, key, sched, n, rho=rho, index_distribution=idx, weighting=w,
          metric=m, max_scales=max_scales)

    return ct
  return None


def describe(config: Config) -> str:
  """One line naming what the run trains (the start-up message)."""
  obj, d = objective(config), config.distill
  if obj == "progressive_distillation":
    steps = [round_student_steps(config, r) for r in range(int(d.rounds))]
    return (f"progressive distillation: {d.rounds} round(s) of {steps_per_round(config)} steps, "
            f"students of {steps} DDIM steps from a teacher of {2 * steps[0]}")
  if obj == "consistency_distillation":
    return (f"consistency distillation: {d.teacher_solver} teacher steps on {d.num_scales} "
            f"Karras scales")
  if obj == "consistency_training":
    return (f"consistency training: curriculum {d.curriculum}"
            + (f" (s0, s1) = {curriculum_bounds(config)}" if d.curriculum != "none" else
               f", {d.num_scales} scales"))
  if obj == "reflow":
    return f"reflow on the pairs in {d.pairs}"
  return ""

