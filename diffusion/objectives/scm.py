"""Continuous-time consistency models on TrigFlow (sCM; Lu & Song 2024): the network is a
consistency function f(x_t, t) = cos t x_t - sin t sigma_d F (model.parameterization 'trigflow',
sde.name 'trigflow'), sampled by the consistency samplers, with no PF-ODE likelihood.

  'scm_distillation' (sCD): dx_t/dt is a fixed teacher's PF-ODE velocity, the teacher any
      trained denoiser of the same data on any schedule (evaluated at the time of the same
      logSNR, ``diffusion.scm.teacher_velocity``); passed to every step as consistency
      distillation's is.
  'scm_training' (sCT): no teacher; dx_t/dt = cos t z - sin t x0.

Both read config.scm (tangent warm-up steps, tangent normalisation c, P_mean / P_std, the
weighting 'adaptive' (the network's log-variance head, ``capabilities(...).return_logvar``) or
'uniform', prior_weighting); the loss is ``diffusion.scm.scm_loss``.
"""
from __future__ import annotations

import jax

from diffusion import scm
from diffusion.config_checks import (ConfigError, from_library, int_at_least, is_bool, one_of,
                                     positive)
from diffusion.models import capabilities, get_model
from diffusion.networks import frozen_denoiser_of, jnp_compute_dtype
from diffusion.objectives.base import LossContext, LossFn, register
from diffusion.objectives.students import StudentObjective


def check_adaptive_head(weighting: str, model) -> None:
  """'adaptive' learns u(t) with the network: it needs a log-variance head (ValueError)."""
  if weighting == "adaptive" and not capabilities(model).return_logvar:
    raise ValueError(f"sCM weighting 'adaptive' learns u(t) with the network, which must offer "
                     f"return_logvar=True (edm2_unet, or mlp with logvar_head=True); "
                     f"{type(model).__name__} does not: set config.scm.weighting='uniform' or "
                     f"give the network its head")


class _SCM(StudentObjective):
  network = "consistency"
  required_parameterization = "trigflow"
  # A trigflow network is also a plain TrigFlow diffusion model (objective 'dsm').
  exclusive_parameterization = False
  identity_fields = ("distill", "scm")
  # The teacher may run on any forward process of the same data (SNR matching).
  teacher_same_process = False

  def student_loss(self, ctx: LossContext, config) -> LossFn:
    s = config.scm
    weighting = s.weighting
    check_adaptive_head(weighting, ctx.net)
    sched, param = ctx.schedule, ctx.param
    param.check_schedule(sched)
    warmup, c = int(s.tangent_warmup_steps), float(s.tangent_c)
    p_mean, p_std, prior = float(s.p_mean), float(s.p_std), bool(s.prior_weighting)
    teacher = self._teacher(ctx, config)

    def loss(net, batch, key, context):
      def frozen(x, t):
        x_in, c_in = param.net_inputs(x, t, sched)
        return net.apply_tree(jax.lax.stop_gradient(net.params), x_in, c_in)

      def student(x, t):
        x_in, c_in = param.net_inputs(x, t, sched)
        return net.with_logvar(x_in, c_in) if weighting == "adaptive" else net(x_in, c_in)

      velocity = None
      if teacher is not None:
        t_model, teacher_of = teacher
        denoise = teacher_of(context["teacher"])
        velocity = lambda x, t: scm.teacher_velocity(denoise, t_model.schedule, sched, x, t)
      return scm.scm_loss(student, frozen, batch["x"], key, sched, velocity=velocity,
                          ratio=scm.tangent_ratio(context["step"], warmup), tangent_c=c,
                          p_mean=p_mean, p_std=p_std, weighting=weighting,
                          prior_weighting=prior)

    return loss

  def _teacher(self, ctx: LossContext, config):
    return None

  def check(self, config, mode: str) -> None:
    s = config.scm
    one_of("scm.weighting", s.weighting, scm.WEIGHTINGS)
    int_at_least("scm.tangent_warmup_steps", s.tangent_warmup_steps, 0)
    positive("scm.tangent_c", s.tangent_c)
    positive("scm.p_std", s.p_std)
    if isinstance(s.p_mean, bool) or not isinstance(s.p_mean, (int, float)):
      raise ConfigError(f"config.scm.p_mean must be a number, got {s.p_mean!r}")
    is_bool("scm.prior_weighting", s.prior_weighting)
    model = from_library("model.net", get_model, config.model.name,
                         **config.model.net.to_dict())
    if s.weighting == "adaptive" and not capabilities(model).return_logvar:
      raise ConfigError(f"config.scm.weighting='adaptive' learns u(t) with the network: "
                        f"config.model.name={config.model.name!r} must offer a log-variance head "
                        f"(edm2_unet; mlp with model.net.logvar_head=True); or set "
                        f"config.scm.weighting='uniform'")

  def describe(self, config) -> str:
    s = config.scm
    return (f"{self.name}: {s.weighting} weighting, tangent warm-up {s.tangent_warmup_steps} "
            f"steps, c = {s.tangent_c}, (P_mean, P_std) = ({s.p_mean}, {s.p_std})")


@register
class SCMDistillation(_SCM):
  """scm_distillation: see the module docstring."""
  name = "scm_distillation"
  teacher_per_step = True

  def _teacher(self, ctx: LossContext, config):
    t = ctx.teacher
    if t is None:
      raise ValueError("objective 'scm_distillation' needs its teacher's "
                       "LossContext(teacher=TeacherModel(net, param, schedule))")
    dtype = jnp_compute_dtype(config.training.compute_dtype)
    return t, frozen_denoiser_of(t.net, t.param, t.schedule, dtype)

  def check_teacher(self, config, teacher) -> None:
    super().check_teacher(config, teacher)
    if self.starts_from_teacher(config) and teacher.model.parameterization != "trigflow":
      raise ConfigError(f"config.distill.init_from_teacher=True starts the sCM student from the "
                        f"teacher's parameters, whose output means something else under "
                        f"model.parameterization={teacher.model.parameterization!r}: set "
                        f"config.distill.init_from_teacher=False (or distil a 'trigflow' "
                        f"teacher)")


@register
class SCMTraining(_SCM):
  """scm_training: see the module docstring."""
  name = "scm_training"

  def needs_teacher(self, config) -> bool:
    return False
