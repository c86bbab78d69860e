"""A KL-regularised autoencoder of the 8x8 digits (8x8x1 -> 4x4x2 latents), for latent diffusion.

Question: the first stage of latent diffusion (Rombach et al. 2022) for data the released
Stable-Diffusion VAE does not fit. Network: autoencoder_kl (diffusion/models/autoencoder.py) with
two levels (32 / 64 channels, one residual block each, f = 2) and 2 latent channels: 64 pixel
values -> 32 latent dimensions. Loss (diffusion/autoencoding.py): L1 reconstruction per pixel
value + kl_weight KL / 64 (LDM's loss divided by the pixel count; no perceptual term).

Run (train, then held-out reconstructions of the 297 test digits: MSE, PSNR, KL and a grid):
  python -m experiments.main --config=configs/digits/autoencoder.py --workdir=workdirs/digits_ae --mode=train
  python -m experiments.main --config=configs/digits/autoencoder.py --workdir=workdirs/digits_ae --mode=eval
"""
import ml_collections

from configs.digits.common import digits_config


def get_config():
  c = digits_config("vp")  # data, batch, optimizer and EMA of the digits runs; sde unused
  c.experiment = "digits/autoencoder"
  c.model.name = "autoencoder_kl"
  c.model.net = ml_collections.ConfigDict(dict(
      out_channels=1, latent_channels=2, channels=(32, 64), num_res_blocks=1, norm_groups=8,
      mid_attention=False))
  c.training.objective = "autoencoder"
  # Every option of the loss, so that each can be set on the command line.
  c.training.loss_opts = ml_collections.ConfigDict(dict(
      recon="l1", kl_weight=1e-6, reduction="mean", perceptual="none", perceptual_weight=0.0))
  c.training.num_steps = 1_500
  c.training.sample_every = 500  # a grid of held-out reconstructions
  return c
