"""Denoising score matching ('dsm'): a denoiser network trained by ``losses.dsm_loss`` with the
config's weighting and time sampling, in three forms chosen once when the loss is built:

  * plain: ``dsm_loss`` of the network's denoiser (every weighting of diffusion.losses);
  * weighting 'edm2': the network also returns its log-variance u(sigma), and the loss is
    EDM2's uncertainty-weighted one (``losses.make_uncertainty_denoiser``; Karras et al. 2024);
  * a learned schedule (sde 'vdm_learned'): VDM's loss, which also trains the schedule's
    parameters (``diffusion.vdm.vdm_loss``; Kingma et al. 2021).

A batch with 'noise' (reflow's pairs) uses it as the loss's eps.
"""
from __future__ import annotations

from typing import Callable

from diffusion import losses
from diffusion.models import capabilities
from diffusion.objectives.base import LossContext, LossFn, Objective, register, time_sampling_of
from diffusion.parameterization import make_denoiser
from diffusion.vdm import vdm_loss


def check_logvar_output(weighting: str, model) -> None:
  """The uncertainty weightings learn u(sigma) with the network: it must have a log-variance
  head (``capabilities(model).return_logvar``)."""
  if weighting in losses.UNCERTAINTY_WEIGHTINGS and not capabilities(model).return_logvar:
    raise ValueError(f"weighting {weighting!r} learns u(sigma) with the network, which "
                     f"must accept return_logvar=True (edm2_unet); {type(model).__name__} "
                     f"does not")


def denoising_loss(ctx: LossContext, library_loss: Callable) -> LossFn:
  """loss(net, batch, key, context) of ``library_loss`` (dsm_loss's signature) on the network's
  denoiser, in the form the schedule and weighting ask for (module docstring)."""
  cfg, schedule, param = ctx.step, ctx.schedule, ctx.param
  times, opts = time_sampling_of(cfg)
  uncertainty = cfg.weighting in losses.UNCERTAINTY_WEIGHTINGS
  if uncertainty:
    check_logvar_output(cfg.weighting, ctx.net)

  def loss(net, batch, key, context=None):
    del context
    cond = batch.get("label") if cfg.conditional else None
    if schedule.learned:  # VDM: the schedule's parameters are trained too
      tree = {"net": net.params["net"], "schedule": net.raw_params["schedule"]}

      def net_fn(net_params, x_in, c, cond_):
        return net.apply_tree({"net": net_params, "schedule": net.raw_params["schedule"]},
                              x_in, c, cond_)

      return vdm_loss(net_fn, tree, schedule, param, batch["x"], key, cond=cond,
                      time_sampling=times.method, t_min=times.t_min, t_max=times.t_max, **opts)
    if uncertainty:  # 'edm2': the network also returns u(sigma)
      denoise = losses.make_uncertainty_denoiser(net.with_logvar, schedule, param)
    else:
      denoise = make_denoiser(net, schedule, param)
    extra = {"noise": batch["noise"]} if "noise" in batch else {}
    return library_loss(denoise, batch["x"], key, schedule, weighting=cfg.weighting,
                        time_sampling=times, cond=cond, **opts, **extra)

  return loss


@register
class DenoisingScoreMatching(Objective):
  """dsm: see the module docstring."""
  name = "dsm"
  can_teach = True
  supports_learned_schedule = True
  identity_omits_name = True  # runs written before training.objective existed are all dsm

  def make_loss(self, ctx: LossContext) -> LossFn:
    return denoising_loss(ctx, ctx.loss_fn or losses.dsm_loss)

  def loss_function(self) -> Callable:
    return losses.dsm_loss
