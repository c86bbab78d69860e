"""A KL-regularised autoencoder of the 8x8 digits (8x8x1 -> 4x4x2 latents), for latent diffusion.

Question: the first stage of latent diffusion (Rombach et al. 2022) for data the released
Stable-Diffusion VAE does not fit. Network: autoencoder_kl (diffusion/models/autoencoder.py) with
two levels (32 / 64 channels, one residual block each, no attention, f = 2) and 2 latent
channels: 64 pixel values -> 32 latent dimensions, 620,159 parameters. Loss
(diffusion/autoencoding.py): L1 reconstruction per pixel value + kl_weight KL / 64 with LDM's
kl_weight 1e-6 (LDM's loss divided by the pixel count; no perceptual term). Batch 128, 1,500
steps (Adam 1e-3, warm-up 100, cosine decay), EMA 0.995 with warm-up: the digits runs' recipe.
This is the autoencoder of configs/digits/latent_dit.py (README, "Latent diffusion on digits").

Run (train, then held-out reconstructions of the 297 test digits: MSE, PSNR, KL and a grid):
  python -m experiments.main --config=configs/digits/autoencoder.py --workdir=workdirs/digits_ae --mode=train
  python -m experiments.main --config=configs/digits/autoencoder.py --workdir=workdirs/digits_ae --mode=eval

Measured (2026-12-07, 2 CPU cores shared with other jobs, load ~8): training 32 min wall under
that load; held-out (297 test digits, posterior means decoded): PSNR 28.4 dB on the 17 levels
(mse 0.0050 in [-1, 1]) against 11.4 dB (mse 0.256) for the trivial mean-image reconstruction;
KL 379 nats per image, latent std 3.40, posterior std 0.0052.

A smaller one (16 / 32 channels, 157,007 parameters, batch 64, 600 steps: 78 s of training)
reaches 24.3 dB; a larger KL weight trades a little reconstruction for a smoother, unit-scale
latent (that run, --config.training.loss_opts.kl_weight=...):
  kl_weight  PSNR dB  KL nats  latent std  posterior std
  1e-6       24.3     258      2.71        0.029
  1e-3       24.2     167      1.84        0.040
  1e-2       23.4     82       0.85        0.103
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
  c.data.num_heldout = 297  # eval: the whole test split
  c.training.sample_every = 500  # a grid of held-out reconstructions in plots/
  return c
