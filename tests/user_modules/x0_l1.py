"""A researcher's objective in a file of its own (tests/test_user_objective.py): x0-prediction
with an L1 error, L = E_{t, x0, eps} | denoise(alpha x0 + sigma eps, t) - x0 |, reporting the
mean absolute error at the largest noise level of the batch as an extra metric.

Nothing else in the codebase is edited: a config names this module in ``config.imports``
(``--config.imports="('tests.user_modules.x0_l1',)"``) and sets
``--config.training.objective=x0_l1``.
"""
import jax.numpy as jnp

from diffusion import losses
from diffusion.objectives import LossContext, Objective, register
from diffusion.objectives.base import time_sampling_of
from diffusion.parameterization import make_denoiser


def l1_loss(denoise, x0, key, schedule, *, time_sampling="uniform", cond=None):
  """(mean |x0_hat - x0|, aux) at times drawn by ``time_sampling`` (a ``losses.TimeSampling``
  or a method name); aux 'l1_at_t_max' (the per-example error of the batch's noisiest
  example)."""
  t, x_t = losses.noisy_batch(key, x0, schedule, time_sampling)
  err = jnp.mean(jnp.abs(denoise(x_t, t, cond) - x0).reshape(x0.shape[0], -1), axis=-1)
  return jnp.mean(err), {"l1_at_t_max": err[jnp.argmax(t)]}


@register
class X0L1(Objective):
  """x0_l1: see the module docstring."""
  name = "x0_l1"
  aux_metrics = ("l1_at_t_max",)
  can_teach = True

  def make_loss(self, ctx: LossContext):
    cfg, schedule, param = ctx.step, ctx.schedule, ctx.param
    times, opts = time_sampling_of(cfg)  # time sampling with its loss_opts (t_min, p_mean...)

    def loss(net, batch, key, context=None):
      cond = batch.get("label") if cfg.conditional else None
      return l1_loss(make_denoiser(net, schedule, param), batch["x"], key, schedule,
                     time_sampling=times, cond=cond, **opts)

    return loss

  def loss_function(self):
    return l1_loss

  def describe(self, config) -> str:
    return "x0-prediction with an L1 error (tests/user_modules/x0_l1.py)"
