"""Consistency models (Song et al. 2023; improved training, Song & Dhariwal 2023): the network is a
consistency function f(x_t, t) -> x0 (model.parameterization 'consistency'), sampled by the
consistency samplers, with no PF-ODE likelihood.

  'consistency_distillation' (CD): f at x_{t_{i+1}} matches the target f at the point one
      teacher ODE step (distill.teacher_solver) away, on distill.num_scales Karras scales; the
      teacher is fixed and passed to every step (``consistency_distillation_loss``). The target
      is the student under stop-gradient (iCT sec. 3.2), or with distill.target_ema = mu CM's
      EMA target network theta^- (Alg. 2), held in the train state (``training.TargetState``)
      and updated after every step, theta^- <- mu theta^- + (1 - mu) theta.
  'consistency_training' (CT): no teacher; the pair is two noisings of the same x0, and the
      number of scales follows a curriculum of the step (iCT's or CM's, or fixed)
      (``consistency_training_loss``).

Both measure d(f(x_{t_{i+1}}), target) with distill.metric: 'l2', 'pseudo_huber' or 'lpips' (CM's
best image results; ``diffusion.metrics.lpips`` with the trunk file the user passes in
config.distill.lpips, loaded once per compile; the files' SHA-256 join the run's identity).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import jax

from diffusion import consistency, latent
from diffusion.data import toy2d
from diffusion.config_checks import (ConfigError, from_library, int_at_least, number_in, one_of,
                                     positive)
from diffusion.io_utils import sha256_file
from diffusion.metrics import lpips
from diffusion.networks import frozen_denoiser_of, jnp_compute_dtype
from diffusion.objectives.base import LossContext, LossFn, register
from diffusion.objectives.students import StudentObjective
from diffusion.parameterization import make_denoiser

CURRICULA = ("ict", "cm", "none")
LPIPS = "lpips"  # distill.metric: LPIPS with config.distill.lpips (module doc)
METRICS = consistency.METRICS + (LPIPS,)
CURRICULUM_DEFAULTS = {"ict": (10, 1280), "cm": (2, 150)}


def curriculum_bounds(config) -> Tuple[int, int]:
  """(s0, s1) of distill.curriculum: the config's, or the curriculum's defaults."""
  d = config.distill
  s0, s1 = CURRICULUM_DEFAULTS[d.curriculum]
  return (int(d.s0) if d.s0 is not None else s0, int(d.s1) if d.s1 is not None else s1)


class _Consistency(StudentObjective):
  network = "consistency"
  required_parameterization = "consistency"
  # (weighting, metric, index distribution) when config.distill leaves them None.
  defaults: Tuple[str, str, str] = ("uniform", "l2", "uniform")

  def options(self, config) -> Tuple[str, str, str]:
    """(weighting, metric, index distribution): config.distill's, or this objective's defaults
    (CD: CM's 'uniform', 'l2', 'uniform'; CT: iCT's 'ict', 'pseudo_huber', 'lognormal')."""
    dw, dm, di = self.defaults
    d = config.distill
    return d.weighting or dw, d.metric or dm, d.index_distribution or di

  def check(self, config, mode: str) -> None:
    w, m, idx = self.options(config)
    one_of("distill.weighting", w, consistency.WEIGHTINGS)
    one_of("distill.metric", m, METRICS)
    one_of("distill.index_distribution", idx, consistency.INDEX_DISTRIBUTIONS)
    positive("distill.rho", config.distill.rho)
    check_lpips(config, m)

  def metric(self, config):
    """The loss's distance: a name of consistency.METRICS, or LPIPS's d(a, b) -> (B,) with its
    weights loaded (distill.metric 'lpips')."""
    m = self.options(config)[1]
    if m != LPIPS:
      return m
    lp = config.distill.lpips
    return lpips.make_distance(lp.net, lp.trunk, lp.channel_weights, lp.resize)

  def resolved_facts(self, config) -> Dict[str, Any]:
    """With LPIPS, the SHA-256 of its trunk and channel-weight files (the run's identity holds
    them, not the paths)."""
    if self.options(config)[1] != LPIPS:
      return {}
    lp = config.distill.lpips
    return {"lpips_sha256": {"trunk": sha256_file(lp.trunk), "channel_weights": sha256_file(
        lpips.channel_weights_path(lp.net, lp.channel_weights))}}


def check_lpips(config, metric: str) -> None:
  """config.distill.lpips: set only with metric 'lpips'; then a trunk file that exists, LPIPS's
  channel weights (the lpips wheel's or a file), a net and resize LPIPS accepts, pixel space."""
  lp = config.distill.get("lpips")
  if metric != LPIPS:
    if lp is not None and any(lp.get(k) is not None for k in ("trunk", "channel_weights",
                                                                "resize")):
      raise ConfigError(f"config.distill.lpips is set but config.distill.metric={metric!r} does "
                        f"not read it: set config.distill.metric='lpips' or unset "
                        f"config.distill.lpips")
    return
  one_of("distill.lpips.net", lp.net, lpips.NETS)
  if lp.trunk is None or not os.path.isfile(lp.trunk):
    raise ConfigError(f"config.distill.lpips.trunk={lp.trunk!r} must name torchvision's "
                      f"ImageNet weights of the {lp.net!r} trunk "
                      f"({lpips.TRUNK_FILES[lp.net]}); none ships with a package and nothing "
                      f"is downloaded")
  try:
    lpips.channel_weights_path(lp.net, lp.channel_weights)
  except FileNotFoundError as e:
    raise ConfigError(f"config.distill.lpips.channel_weights: {e}") from None
  from_library("distill.lpips.resize", lpips.check_resize, lp.net, lp.resize)
  if latent.is_latent(config):
    raise ConfigError("config.distill.metric='lpips' compares images; this run is in an "
                      "autoencoder's latent space (config.latent): use 'l2' or 'pseudo_huber'")
  if config.data.name in toy2d.available():
    raise ConfigError(f"config.distill.metric='lpips' compares images; config.data.name="
                      f"{config.data.name!r} is 2-d points: use 'l2' or 'pseudo_huber'")


@register
class ConsistencyDistillation(_Consistency):
  """consistency_distillation: see the module docstring."""
  name = "consistency_distillation"
  teacher_per_step = True

  def student_loss(self, ctx: LossContext, config) -> LossFn:
    d = config.distill
    w, m, idx = self.options(config)
    dtype = jnp_compute_dtype(config.training.compute_dtype)
    t = ctx.teacher
    if t is None:
      raise ValueError("objective 'consistency_distillation' needs its teacher's "
                       "LossContext(teacher=TeacherModel(net, param, schedule))")
    teacher_of = frozen_denoiser_of(t.net, t.param, t.schedule, dtype)
    solver, n_scales, rho = d.teacher_solver, int(d.num_scales), float(d.rho)
    sched, param = ctx.schedule, ctx.param
    ema_target = bool(self.target_ema(config))
    metric = self.metric(config)

    def loss(net, batch, key, context):
      denoise = make_denoiser(net, sched, param)
      step = consistency.traced_teacher_step(solver, sched, teacher_of(context["teacher"]))
      target = None
      if ema_target:  # CM's theta^-: the same network (training mode, dropout key) at theta^-
        tree = jax.tree_util.tree_map(lambda a: a.astype(net.dtype), context["target"])
        target = make_denoiser(lambda x_in, c, cond=None: net.apply_tree(tree, x_in, c, cond),
                               sched, param)
      return consistency.consistency_distillation_loss(
          denoise, target, step, batch["x"], key, sched, n_scales, rho=rho,
          index_distribution=idx, weighting=w, metric=metric)

    return loss

  def target_ema(self, config) -> float:
    """distill.target_ema (None: 0.0, the stop-gradient student)."""
    mu = config.distill.get("target_ema")
    return 0.0 if mu is None else float(mu)

  def check(self, config, mode: str) -> None:
    super().check(config, mode)
    one_of("distill.teacher_solver", config.distill.teacher_solver,
           consistency.TRACED_TEACHERS)
    int_at_least("distill.num_scales", config.distill.num_scales, 2)
    mu = config.distill.get("target_ema")
    if mu is not None:
      number_in("distill.target_ema", mu, 0.0, 1.0, hi_open=True)
      if mu and config.training.ema_profiles:
        raise ConfigError("config.distill.target_ema (an EMA target network in the state) "
                          "cannot be combined with config.training.ema_profiles (EDM2's power "
                          "EMAs, another state) yet; set one of them")

  def describe(self, config) -> str:
    d = config.distill
    target = (f", EMA target mu = {self.target_ema(config)}" if self.target_ema(config)
              else "")
    return (f"consistency distillation: {d.teacher_solver} teacher steps on {d.num_scales} "
            f"Karras scales{target}")


@register
class ConsistencyTraining(_Consistency):
  """consistency_training: see the module docstring."""
  name = "consistency_training"
  aux_metrics = ("num_scales",)
  defaults = ("ict", "pseudo_huber", "lognormal")

  def needs_teacher(self, config) -> bool:
    return False

  def student_loss(self, ctx: LossContext, config) -> LossFn:
    d = config.distill
    w, m, idx = self.options(config)
    total, rho = int(config.training.num_steps), float(d.rho)
    if d.curriculum == "none":
      fixed, max_scales, s0, s1 = int(d.num_scales), None, None, None
    else:
      s0, s1 = curriculum_bounds(config)
      fixed, max_scales = None, consistency.max_num_scales(total, d.curriculum, s0, s1)
    sched, param = ctx.schedule, ctx.param
    metric = self.metric(config)

    def loss(net, batch, key, context):
      denoise = make_denoiser(net, sched, param)
      n = fixed if fixed is not None else consistency.traced_num_scales(
          context["step"], total, d.curriculum, s0, s1)
      return consistency.consistency_training_loss(
          denoise, None, batch["x"], key, sched, n, rho=rho, index_distribution=idx,
          weighting=w, metric=metric, max_scales=max_scales)

    return loss

  def check(self, config, mode: str) -> None:
    super().check(config, mode)
    d = config.distill
    if d.get("target_ema"):
      raise ConfigError(f"config.distill.target_ema={d.target_ema!r} is consistency "
                        f"distillation's EMA target; consistency training's target is the "
                        f"student under stop-gradient (iCT sec. 3.2): leave it unset")
    one_of("distill.curriculum", d.curriculum, CURRICULA)
    if d.curriculum == "none":
      int_at_least("distill.num_scales", d.num_scales, 2)
    else:
      s0, s1 = curriculum_bounds(config)
      from_library("distill.s0 / s1", consistency.max_num_scales,
                   int(config.training.num_steps), d.curriculum, s0, s1)

  def describe(self, config) -> str:
    d = config.distill
    return (f"consistency training: curriculum {d.curriculum}"
            + (f" (s0, s1) = {curriculum_bounds(config)}" if d.curriculum != "none" else
               f", {d.num_scales} scales"))
