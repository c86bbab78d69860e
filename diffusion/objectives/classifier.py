"""A noise-conditional classifier p(y | x_t, t) ('classifier'): cross-entropy of its logits on
noisy labelled data (``losses.classifier_loss``; Song et al. 2021, App. I; Dhariwal & Nichol
2021), for classifier guidance. Its network is registered with ``outputs='logits'``; it draws
no samples, and eval reports its held-out accuracy per noise level.
"""
from __future__ import annotations

from typing import Callable

from diffusion import losses
from diffusion.networks import make_logits_fn
from diffusion.objectives.base import LossContext, LossFn, Objective, register, time_sampling_of


@register
class Classifier(Objective):
  """classifier: see the module docstring."""
  name = "classifier"
  aux_metrics = ("accuracy",)
  network = "classifier"
  required_outputs = "logits"
  supports_conditional = False  # it predicts the labels; they are not an input

  def make_loss(self, ctx: LossContext) -> LossFn:
    cfg, schedule, param = ctx.step, ctx.schedule, ctx.param
    library_loss = ctx.loss_fn or losses.classifier_loss
    times, opts = time_sampling_of(cfg)

    def loss(net, batch, key, context=None):
      del context
      if "label" not in batch:
        raise ValueError("objective 'classifier' needs the class labels batch['label'] (B,); "
                         f"the batch has only {sorted(batch)}")
      return library_loss(make_logits_fn(net, schedule, param), batch["x"], batch["label"],
                          key, schedule, time_sampling=times, **opts)

    return loss

  def loss_function(self) -> Callable:
    return losses.classifier_loss

  def reads_labels(self, config) -> bool:
    return True
