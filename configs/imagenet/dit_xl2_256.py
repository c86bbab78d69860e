"""DiT-XL/2 on class-conditional ImageNet 256x256 latents (Peebles & Xie 2023, "Scalable
Diffusion Models with Transformers", ICCV 2023; facebookresearch/DiT).

Settings (configs/imagenet/common.py for the data, network and optimizer): DiT-XL/2 on the
32x32x4 latents of Stable Diffusion's VAE (x 0.18215); DDPM's discrete linear schedule, 1000
betas 1e-4..0.02 (``vp_discrete``: DDPM's marginals exactly at t_n = (n + 1) / 1000), the network
fed the step index n = 1000 t - 1 (``time_input='index'``, the release's integer 0..999 at DDPM's
steps; training draws continuous t, so fractional indices in between, where the release draws
integers); eps prediction with the "simple" loss (uniform t). ``learn_sigma`` keeps the paper's 8
output channels, but this codebase's loss ignores the 4 variance channels (the release adds
Nichol & Dhariwal's L_vlb to train them) and its samplers use fixed variances. AdamW lr 1e-4 without
weight decay, batch 256, EMA 0.9999, 400K steps. Sampling: 250 DDPM ancestral steps (the paper's
count) on a uniform grid in t (the release respaces DDPM's integer steps; the posterior variance
here, the learned one there); no guidance by default (the 400K-step comparison is unguided);
the paper's guided setting is ``--config.guidance.kind=cfg --config.guidance.weight=1.5`` (this
codebase guides all 4 latent channels; the release's forward_with_cfg guides the first 3).

THE PAPER'S RESULTS (not reproduced here; nothing has been trained): FID-50K 19.47 for
DiT-XL/2 at 400K steps without guidance (paper Table 4; the release's README: 19.5 trained in JAX,
18.1 retrained in PyTorch, 250 DDPM steps, sd-vae-ft-mse decoder); FID-50K 2.27 with
classifier-free guidance 1.5 after 7M steps (paper Table 2, 250 DDPM steps; 2.21 with the
released PyTorch weights, README). 675M parameters (paper Table 1), 118.6 Gflops.

Run (needs ImageNet encoded to latents and an accelerator; docs/latent.md):
  python -m experiments.encode ...   # writes the latent dataset; set latent.dataset to it
  python -m experiments.main --config=configs/imagenet/dit_xl2_256.py --workdir=workdirs/imagenet_dit_xl2 --mode=train --config.latent.dataset=LATENTS
  python -m experiments.main --config=configs/imagenet/dit_xl2_256.py --workdir=workdirs/imagenet_dit_xl2 --mode=sample --config.latent.dataset=LATENTS
  python -m experiments.main --config=configs/imagenet/dit_xl2_256.py --workdir=workdirs/imagenet_dit_xl2 --mode=eval --config.latent.dataset=LATENTS
The released weights: python -m experiments.convert --format=dit --source=DiT-XL-2-256x256.pt --workdir=W
"""
import ml_collections

from configs.imagenet.common import DIT_XL2, dit_net, latent_imagenet_config

# DDPM's 1000 linear betas (Ho et al. 2020), DiT's create_diffusion default.
DDPM_DISCRETE = dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                     t_min=1e-3, t_max=1.0)


def get_config():
  c = latent_imagenet_config(256, "vp", net=dit_net(DIT_XL2, embedding_scale=1.0))
  c.experiment = "imagenet/dit_xl2_256"
  c.sde.name = "vp_discrete"
  c.sde.fields = ml_collections.ConfigDict(DDPM_DISCRETE)
  c.training.t_min = None
  c.sampling.t_min = None
  c.eval.t_min = None
  c.model.parameterization = "eps"
  c.model.time_input = "index"
  c.training.weighting = "eps"
  c.training.time_sampling = "uniform"
  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 250
  c.sampling.grid = "uniform"
  c.sampling.clip_denoised = False  # latents are not bounded (the release: clip_denoised=False)
  return c
