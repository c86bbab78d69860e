"""Reflow ('reflow'; Liu et al. 2023, rectified flow, Sec. 2.2): denoising score matching on
(noise, sample) pairs of a trained flow (config.distill.pairs, written by ``--mode=pairs``), so
the new flow's paths straighten; the batch's 'noise' is the loss's eps. With
distill.init_from_teacher the new flow starts from the old one's EMA parameters.
"""
from __future__ import annotations

from typing import Callable

from diffusion import losses
from diffusion.config_checks import ConfigError
from diffusion.objectives.base import LossContext, LossFn, register
from diffusion.objectives.denoising import denoising_loss
from diffusion.objectives.students import StudentObjective


@register
class Reflow(StudentObjective):
  """reflow: see the module docstring."""
  name = "reflow"
  batch_source = "pairs"
  can_teach = True
  teacher_same_process = False  # a new flow of the same data; its schedule may differ

  def needs_teacher(self, config) -> bool:
    return bool(config.distill.init_from_teacher)

  def make_loss(self, ctx: LossContext) -> LossFn:
    return denoising_loss(ctx, ctx.loss_fn or losses.dsm_loss)

  def loss_function(self) -> Callable:
    return losses.dsm_loss

  def check(self, config, mode: str) -> None:
    if not config.distill.pairs:
      raise ConfigError("config.training.objective='reflow' needs config.distill.pairs, the "
                        "folder --mode=pairs wrote with the previous flow's config and workdir")

  def describe(self, config) -> str:
    return f"reflow on the pairs in {config.distill.pairs}"
