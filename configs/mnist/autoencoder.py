"""A KL-regularised autoencoder of MNIST (28x28x1 -> 7x7x4 latents), for latent diffusion.

The first stage of latent diffusion (Rombach et al. 2022) for data the released Stable-Diffusion
VAE does not fit. Network: autoencoder_kl (diffusion/models/autoencoder.py), its 'small_f4'
preset: three levels (32 / 64 / 64 channels, one residual block each, attention in the middle
blocks), f = 4 (28 = 4 x 7), 4 latent channels: 784 pixel values -> 196 latent dimensions,
953,413 parameters. Loss (diffusion/autoencoding.py): L1 reconstruction per pixel value +
kl_weight KL / 784 with LDM's kl_weight 1e-6 (LDM's loss divided by the pixel count; no
perceptual term). Adam 5e-4 with warm-up and cosine decay, batch 128, 20,000 steps. Not measured
here (the data must first be prepared with TensorFlow: configs/mnist/common.py).

Run (train, then held-out reconstructions of the 10,000 test images: MSE, PSNR, KL and a grid):
  python -m experiments.main --config=configs/mnist/autoencoder.py --workdir=workdirs/mnist_ae --mode=train
  python -m experiments.main --config=configs/mnist/autoencoder.py --workdir=workdirs/mnist_ae --mode=eval
"""
import ml_collections

from configs.images import image_config

# autoencoder_kl's 'small_f4' preset with one output and four latent channels (literal values:
# configs import no library code).
NET = dict(out_channels=1, latent_channels=4, channels=(32, 64, 64), num_res_blocks=1,
           norm_groups=8, mid_attention=True)


def get_config():
  c = image_config("mnist", "vp", model="autoencoder_kl", net=NET)  # the sde is not read
  c.experiment = "mnist/autoencoder"
  c.training.objective = "autoencoder"
  # Every option of the loss, so that each can be set on the command line.
  c.training.loss_opts = ml_collections.ConfigDict(dict(
      recon="l1", kl_weight=1e-6, reduction="mean", perceptual="none", perceptual_weight=0.0))
  c.training.num_steps = 20_000
  c.training.log_every = 500
  c.training.ckpt_every = 5_000
  c.training.sample_every = 5_000  # a grid of held-out reconstructions
  c.training.ema_decay = 0.999
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 500
  c.optim.decay = "cosine"
  return c
