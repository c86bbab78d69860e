"""Flow-map objectives: a two-time network u(x_t, r, t) (model.parameterization 'mean_flow', a
network with ``capabilities(net).time_inputs == 2``) on the rectified-flow schedule, trained from
scratch on the data, sampled by the samplers of kind 'flow_map' (x <- x - (t - s) u(x, s, t)), with
no PF-ODE likelihood.

  'mean_flow'  MeanFlow (Geng et al. 2025): u regressed on sg(v - (t - r) du/dt), du/dt by one
               jvp (``diffusion.mean_flow.mean_flow_loss``).
  'shortcut'   shortcut models (Frans et al. 2024): a fraction of the batch regressed on the
               self-consistency target of two half steps, the rest on flow matching
               (``diffusion.shortcut.shortcut_loss``).

Their options are config.training.loss_opts, the library losses' keywords (``loss_option_names``;
unset: the papers' defaults, ``mean_flow.DEFAULTS`` / ``shortcut.DEFAULTS``);
training.weighting and training.time_sampling are not read.
"""
from __future__ import annotations

from typing import Callable, Sequence

from diffusion import mean_flow, shortcut
from diffusion.config_checks import ConfigError, from_library
from diffusion.flow_map import make_average_velocity
from diffusion.models import capabilities, get_model
from diffusion.objectives.base import LossContext, LossFn, Objective, register

SCHEDULE = "rectified_flow"


class FlowMapObjective(Objective):
  """Base of the objectives training a flow-map network (module docstring)."""
  network = "flow_map"
  required_parameterization = "mean_flow"
  supports_conditional = False
  supports_ema_profiles = False
  defaults: dict = {}

  def library_loss(self) -> Callable:
    raise NotImplementedError

  def loss_function(self) -> Callable:
    return self.library_loss()

  def loss_option_names(self) -> Sequence[str]:
    return sorted(self.defaults)

  def options(self, config_or_step) -> dict:
    """The loss options: the defaults updated with training.loss_opts (a config or StepConfig)."""
    if hasattr(config_or_step, "training"):
      given = config_or_step.training.loss_opts.to_dict()
    else:
      given = dict(config_or_step.loss_opts)
    return dict(self.defaults, **given)

  def make_loss(self, ctx: LossContext) -> LossFn:
    fn = ctx.loss_fn or self.library_loss()
    opts = self.options(ctx.step)
    sched, param = ctx.schedule, ctx.param

    def loss(net, batch, key, context=None):
      del context
      u = make_average_velocity(net, sched, param)
      return fn(u, batch["x"], key, **opts)

    return loss

  def check(self, config, mode: str) -> None:
    if config.sde.name != SCHEDULE:
      raise ConfigError(f"config.training.objective={self.name!r} trains an average velocity on "
                        f"the rectified-flow path: set config.sde.name={SCHEDULE!r} (got "
                        f"{config.sde.name!r})")
    net = from_library("model.net", get_model, config.model.name, **config.model.net.to_dict())
    if capabilities(net).time_inputs != 2:
      raise ConfigError(f"config.training.objective={self.name!r} trains a two-time network; "
                        f"config.model.name={config.model.name!r} takes one time (networks with "
                        f"two: 'mlp', 'ddpm_unet', 'dit')")
    if config.model.time_input != "t":
      raise ConfigError(f"config.model.time_input={config.model.time_input!r}: the flow-map "
                        f"networks are fed the times (t, t - r) themselves; set 't'")
    if config.training.get("t_min") is not None:
      raise ConfigError(f"config.training.t_min={config.training.t_min} is a dsm loss option; "
                        f"objective {self.name!r} draws its own times (training.loss_opts)")
    self.check_options(self.options(config))

  def check_options(self, opts: dict) -> None:
    raise NotImplementedError


@register
class MeanFlow(FlowMapObjective):
  """mean_flow: see the module docstring."""
  name = "mean_flow"
  aux_metrics = ("mse", "fraction_r_neq_t")
  defaults = dict(mean_flow.DEFAULTS)

  def library_loss(self) -> Callable:
    return mean_flow.mean_flow_loss

  def check_options(self, opts: dict) -> None:
    from_library("training.loss_opts", mean_flow.check_options, **opts)

  def describe(self, config) -> str:
    o = self.options(config)
    return (f"MeanFlow: (r, t) {o['time_distribution']}({o['time_mean']}, {o['time_std']}), "
            f"{o['ratio_r_neq_t']:.0%} with r != t, adaptive weight p={o['adaptive_p']}")


@register
class Shortcut(FlowMapObjective):
  """shortcut: see the module docstring."""
  name = "shortcut"
  aux_metrics = ("mse_consistency", "mse_flow")
  defaults = dict(shortcut.DEFAULTS)

  def library_loss(self) -> Callable:
    return shortcut.shortcut_loss

  def check_options(self, opts: dict) -> None:
    from_library("training.loss_opts", shortcut.check_options, **opts)

  def describe(self, config) -> str:
    o = self.options(config)
    return (f"shortcut model: {o['consistency_fraction']:.0%} self-consistency, finest step "
            f"1/{o['max_steps']}")
