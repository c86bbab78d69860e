"""What the objectives that train a student from a teacher share (progressive distillation,
consistency distillation, reflow): the teacher's config must fit the student's, the student is
unconditional, and config.distill is part of the run's identity.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from diffusion import losses
from diffusion.config_checks import ConfigError
from diffusion.objectives.base import DEFAULT, LossContext, LossFn, Objective, get, names
from diffusion.parameterization import make_denoiser


def _plain(v: Any) -> Any:
  return v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v


class StudentObjective(Objective):
  """Base of the objectives configured by config.distill (module docstring)."""
  supports_conditional = False
  identity_fields = ("distill",)
  # The student works on the teacher's PF-ODE: the forward processes must agree.
  teacher_same_process = True
  # Why the networks must agree when the student starts from the teacher's parameters.
  same_network_reason = ("the student starts from the teacher's parameters (set config.distill."
                         "init_from_teacher=False to train it from scratch)")

  def needs_teacher(self, config) -> bool:
    return True

  def make_loss(self, ctx: LossContext) -> LossFn:
    """``student_loss(ctx, config)``, or with ``ctx.loss_fn`` (a student loss given from Python,
    reading no config) ``ctx.loss_fn(denoise, x0, key, context)`` on the student's denoiser."""
    if ctx.loss_fn is None:
      return self.student_loss(ctx, ctx.require_config(self.name))
    sched, param, loss_fn = ctx.schedule, ctx.param, ctx.loss_fn

    def loss(net, batch, key, context):
      return loss_fn(make_denoiser(net, sched, param), batch["x"], key, context)

    return loss

  def student_loss(self, ctx: LossContext, config) -> LossFn:
    """The objective's loss built from the run's config (``make_loss``'s contract)."""
    raise NotImplementedError

  def loss_function(self) -> Callable:
    """The students' losses are configured by config.distill and read no training.loss_opts;
    dsm_loss's keywords are accepted (and ignored) so that a student's config derived from its
    teacher's loads."""
    return losses.dsm_loss

  def check_teacher(self, config, teacher) -> None:
    """The teacher must be a denoiser of this forward process and data; a student that starts
    from its parameters needs its network. ConfigError naming the differing field."""
    d = config.distill
    where = f"the teacher (config.distill.teacher_config={d.teacher_config!r})"
    t_name = teacher.training.get("objective", DEFAULT)
    teachers = [n for n in names() if get(n).can_teach]
    if t_name not in teachers or teacher.model.parameterization == "consistency":
      raise ConfigError(f"{where} is not a denoiser (training.objective={t_name!r}, "
                        f"model.parameterization={teacher.model.parameterization!r}); a teacher "
                        f"is a run of objective {tuple(teachers)} with a denoiser "
                        f"parameterization")
    fields = [("data.name", teacher.data.name, config.data.name),
              ("data.image_size", teacher.data.image_size, config.data.image_size)]
    if self.teacher_same_process:
      fields += [("sde.name", teacher.sde.name, config.sde.name),
                 ("sde.fields", teacher.sde.fields, config.sde.fields)]
    if self.starts_from_teacher(config):
      fields += [("model.name", teacher.model.name, config.model.name),
                 ("model.net", teacher.model.net, config.model.net)]
    if teacher.model.conditional:
      raise ConfigError(f"{where} is class-conditional; the few-step objectives distil "
                        f"unconditional models")
    for name, t_val, s_val in fields:
      if _plain(t_val) != _plain(s_val):
        why = self.same_network_reason if name.startswith("model") else "they must agree"
        raise ConfigError(f"config.{name}={_plain(s_val)!r} differs from {where}'s "
                          f"{_plain(t_val)!r}: {why}")
