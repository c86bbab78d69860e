"""Progressive distillation ('progressive_distillation'; Salimans & Ho 2022): rounds of K = 
num_steps / distill.rounds steps; round r trains a student of distill.student_steps / 2^r DDIM
steps to match two DDIM steps of its teacher (``distillation.progressive_distillation_loss``).
The teacher is the student's own network: round 0's is the distill.teacher_workdir run, round
r + 1's the EMA of round r's student. It is carried in the train state
(``training.DistillState``), so a student's workdir holds everything its run needs; each round
starts a fresh optimizer (and lr schedule), and each round's last checkpoint is kept.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp

from diffusion import distillation
from diffusion.config_checks import ConfigError, from_library, int_at_least, one_of
from diffusion.networks import frozen_denoiser_of, jnp_compute_dtype
from diffusion.objectives.base import LossContext, LossFn, register
from diffusion.objectives.students import StudentObjective
from diffusion.parameterization import make_denoiser

DEFAULT_WEIGHTING = "truncated_snr"


def steps_per_round(config) -> int:
  return int(config.training.num_steps) // int(config.distill.rounds)


def round_student_steps(config, r: int) -> int:
  """DDIM steps of round r's student: distill.student_steps / 2^r."""
  return int(config.distill.student_steps) // 2**int(r)


@register
class ProgressiveDistillation(StudentObjective):
  """progressive_distillation: see the module docstring."""
  name = "progressive_distillation"
  teacher_in_state = True
  can_teach = True
  supports_ema_profiles = False  # each round restarts the student from the previous one's EMA
  same_network_reason = "progressive distillation's student is its teacher's network"

  def starts_from_teacher(self, config) -> bool:
    return True

  def student_loss(self, ctx: LossContext, config) -> LossFn:
    n = round_student_steps(config, ctx.round_index)
    dtype = jnp_compute_dtype(config.training.compute_dtype)
    teacher_of = frozen_denoiser_of(ctx.net, ctx.param, ctx.schedule, dtype)
    weighting = config.distill.weighting or DEFAULT_WEIGHTING
    sched, param = ctx.schedule, ctx.param

    def loss(net, batch, key, context):
      denoise = make_denoiser(net, sched, param)
      return distillation.progressive_distillation_loss(
          denoise, teacher_of(context["teacher"]), batch["x"], key, sched, n,
          weighting=weighting)

    return loss

  def lr_schedule_steps(self, config) -> int:
    """One round's: each round starts a fresh optimizer, whose schedule starts again."""
    return int(config.training.num_steps) // max(1, int(config.distill.rounds))

  def round_boundaries(self, config) -> List[int]:
    """Steps r K (r = 1 .. rounds - 1) where a new round starts."""
    k = steps_per_round(config)
    return [r * k for r in range(1, int(config.distill.rounds))]

  def round_of(self, config, step: int) -> int:
    """The round (0-based) that trains at ``step``: step // K, the last round up to num_steps."""
    return min(int(step) // steps_per_round(config), int(config.distill.rounds) - 1)

  def begin_round(self, state, optimizer):
    """The state of a new round: the previous student's EMA becomes the teacher and the new
    student's parameters and EMA, with a fresh optimizer. Idempotent (applying it twice gives
    the same state), so a run resumed at a round's first step can apply it again."""
    t = state.ema_params
    return state.replace(teacher=t, params=t, ema_params=jax.tree_util.tree_map(jnp.copy, t),
                         opt_state=optimizer.init(t))

  def keep_period(self, config) -> Optional[int]:
    return steps_per_round(config)

  def round_message(self, config, step: int) -> str:
    done = self.round_of(config, step - 1)
    return (f"round {done + 1}/{config.distill.rounds} done at step {step}: its student "
            f"({round_student_steps(config, done)} DDIM steps) is the checkpoint at step {step}")

  def check(self, config, mode: str) -> None:
    d, t = config.distill, config.training
    int_at_least("distill.rounds", d.rounds, 1)
    int_at_least("distill.student_steps", d.student_steps, 1)
    from_library("distill.student_steps / rounds", distillation.round_steps,
                 int(d.student_steps), int(d.rounds) - 1)
    one_of("distill.weighting", d.weighting or DEFAULT_WEIGHTING, distillation.WEIGHTINGS)
    k = steps_per_round(config)
    if k < 1 or int(t.num_steps) % int(d.rounds):
      raise ConfigError(f"config.training.num_steps={t.num_steps} must be a positive multiple "
                        f"of config.distill.rounds={d.rounds} (each round trains num_steps / "
                        f"rounds steps)")
    if int(config.optim.warmup_steps) >= k:
      raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} must be smaller "
                        f"than the steps per round {k} (each round starts a fresh optimizer, "
                        f"warm-up included)")
    if k % int(t.steps_per_call):
      raise ConfigError(f"config.training.steps_per_call={t.steps_per_call} must divide the "
                        f"steps per round {k}")

  def describe(self, config) -> str:
    d = config.distill
    steps: Sequence[int] = [round_student_steps(config, r) for r in range(int(d.rounds))]
    return (f"progressive distillation: {d.rounds} round(s) of {steps_per_round(config)} steps, "
            f"students of {list(steps)} DDIM steps from a teacher of {2 * steps[0]}")
