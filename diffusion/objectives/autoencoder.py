"""A KL-regularised autoencoder ('autoencoder'): the first stage of latent diffusion (Rombach et al.
2022), trained by ``diffusion.autoencoding.autoencoder_loss`` (reconstruction + kl_weight KL, an
optional perceptual term; normalisation and defaults in that module's docstring) on the image
data, for datasets the released Stable-Diffusion VAE does not fit (8x8 digits, MNIST, small
CIFAR runs).

Its network is registered with ``outputs='autoencoder'`` (``encode(x) -> (mean, logvar)``,
``decode(z) -> x_rec``; e.g. 'autoencoder_kl'); the posterior's eps comes from the train step's
key. It draws no samples (--mode=sample / sweep / pairs refuse it) and has no likelihood; eval
reports held-out reconstruction metrics (MSE, PSNR, KL) and a grid of originals and
reconstructions. config.training.loss_opts: recon ('l1' | 'l2'), kl_weight, reduction
('mean' | 'sum'), perceptual (a registered feature function), perceptual_weight; the
diffusion fields (sde, parameterization, weighting, time sampling) are not read.
"""
from __future__ import annotations

from typing import Callable

from diffusion import autoencoding
from diffusion.config_checks import ConfigError
from diffusion.data import toy2d
from diffusion.objectives.base import LossContext, LossFn, Objective, register


@register
class Autoencoder(Objective):
  """autoencoder: see the module docstring."""
  name = "autoencoder"
  aux_metrics = ("recon", "kl", "mse")
  network = "autoencoder"
  required_outputs = "autoencoder"
  supports_conditional = False  # q(z | x) and p(x | z) take no labels

  def make_loss(self, ctx: LossContext) -> LossFn:
    library_loss = ctx.loss_fn or autoencoding.autoencoder_loss
    opts = dict(ctx.step.loss_opts)

    def loss(net, batch, key, context=None):
      del context
      return library_loss(net.encode, net.decode, batch["x"], key, **opts)

    return loss

  def loss_function(self) -> Callable:
    return autoencoding.autoencoder_loss

  def check(self, config, mode: str) -> None:
    """Image data (not a 2-D toy density), no training.t_min (no diffusion times here), and loss
    options the loss accepts (a perceptual term needs a registered feature function)."""
    if config.data.name in toy2d.available():
      raise ConfigError(f"config.training.objective='autoencoder' trains on images (H, W, C); "
                        f"config.data.name={config.data.name!r} is a 2-D toy density")
    if config.training.get("t_min") is not None:
      raise ConfigError(f"config.training.t_min={config.training.t_min} sets the diffusion "
                        f"loss's smallest time; config.training.objective='autoencoder' has no "
                        f"times: unset it")
    opts = {"recon": "l1", "kl_weight": autoencoding.LDM_KL_WEIGHT, "reduction": "mean",
            "perceptual": autoencoding.NO_PERCEPTUAL, "perceptual_weight": 0.0,
            **config.training.loss_opts.to_dict()}
    try:
      autoencoding.check_loss_options(**opts)
    except ValueError as e:
      raise ConfigError(f"config.training.loss_opts: {e}") from None

  def describe(self, config) -> str:
    o = config.training.loss_opts
    perceptual = o.get("perceptual", autoencoding.NO_PERCEPTUAL)
    return (f"a KL-regularised autoencoder: {o.get('recon', 'l1')} reconstruction + kl_weight "
            f"{o.get('kl_weight', autoencoding.LDM_KL_WEIGHT):g} KL"
            + (f" + {o.get('perceptual_weight')} x perceptual {perceptual!r}"
               if perceptual != autoencoding.NO_PERCEPTUAL else "")
            + f" (reduction {o.get('reduction', 'mean')!r})")

  def reads_labels(self, config) -> bool:
    return False

