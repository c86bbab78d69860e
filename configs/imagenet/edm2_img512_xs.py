"""EDM2-XS on class-conditional ImageNet 512x512 latents (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", CVPR 2024; NVlabs/edm2, its preset
edm2-img512-xs).

Settings (configs/imagenet/common.py, ``edm2_img512_config``): ``edm2_unet`` with model_channels
128 (levels 64/32/16/8 at 1, 2, 3, 4 x 128 channels, 3 blocks per level, attention at 16 and 8,
the 1000-class embedding, no label dropout), dropout 0: 124,713,253 parameters with the
u(sigma) head, the release's count (paper Table 2: 125M). Data: the 64x64x4 latents of
stabilityai/sd-vae-ft-mse of ADM-cropped ImageNet-512, normalised per channel to mean 0, std 0.5
with the latent folder's statistics, a fresh posterior sample every batch. EDM's
preconditioning (sigma_data 0.5) with the learned uncertainty weighting, ln sigma ~ N(-0.4,
1.0^2). Adam (b1 0.9, b2 0.99, eps 1e-8) without weight decay or gradient clipping, batch 2048,
a linear warm-up over 10 Mimg (4,883 steps), then lr_ref / sqrt(max(step / 70,000, 1)) with
lr_ref 0.0120; 2048 Mi images = 2147.5 Mimg = 1,048,576 steps. Power EMAs sigma_rel 0.05 and 0.10,
snapshots every 4,096 steps (8 Mi images) for the post-hoc EMA; a plain EMA 0.9999 for the run's
own samples. Sampling: Heun on EDM's rho = 7 grid in [0.002, 80], 32 noise levels (63 NFE), no
guidance.

Differs from the release: the normalisation's statistics (the folder's own, of latents of
pixels in [-1, 1]; the release's fixed ones are of latents of pixels in [0, 1]: common.py);
bfloat16 where the release computes in float16; a non-finite gradient stops the run (the release
zeroes its non-finite entries and steps on; ``--config.training.nonfinite=skip`` skips the step);
the sampled classes cycle (sample i gets class i mod 1000) where the release draws them at
random; and guidance (below). ``--config.training.grad_accum_steps=K`` splits the batch of 2048
as the release's --batch-gpu does, without changing the optimisation.

Guidance: the paper guides with a separately trained unconditional EDM2-XS (train it with
configs/imagenet/edm2_img512_xs.py and ``--config.model.conditional=False
--config.model.net.num_classes=0``: 124,201,253 parameters); this codebase's classifier-free
guidance (``guidance.kind='cfg'``) uses the network's own NULL label instead and cannot yet take
a second network, so the guided numbers below need that added (or a run trained with
``--config.model.net.label_dropout=0.1``, which is not the paper's method).

THE PAPER'S RESULTS (not reproduced here; nothing has been trained): FID 3.53 without guidance,
post-hoc EMA sigma_rel 0.135 (paper Table 2; the release's edm2-img512-xs-fid); FID 2.91
with classifier-free guidance of weight 1.4 by the unconditional EDM2-XS, both at sigma_rel
0.045 (Table 2; edm2-img512-xs-guid-fid). 50,000 images, 63 NFE (of each network when
guided), against the statistics of the whole training set; the paper reports the minimum of
repeated evaluations (the release's README).

Run (needs ImageNet, the VAE stabilityai/sd-vae-ft-mse downloaded by you, and accelerators;
docs/latent.md):
  python -m experiments.convert --format=diffusers_vae --source=sd-vae-ft-mse --workdir=workdirs/sd_vae_mse --dataset=imagenet2012 --image_size=512
  python -m experiments.encode --autoencoder_config=workdirs/sd_vae_mse/config.py --autoencoder=workdirs/sd_vae_mse --dataset=imagenet2012 --image_size=512 --out=workdirs/imagenet512_latents
  python -m experiments.reference_stats --dataset=imagenet2012 --split=train --resolution=512 --out=stats
  python -m experiments.main --config=configs/imagenet/edm2_img512_xs.py --workdir=workdirs/imagenet_edm2_img512_xs --mode=train
  python -m experiments.posthoc_ema --config=configs/imagenet/edm2_img512_xs.py --workdir=workdirs/imagenet_edm2_img512_xs --sigma_rel=0.135
  python -m experiments.main --config=configs/imagenet/edm2_img512_xs.py --workdir=workdirs/imagenet_edm2_img512_xs/posthoc_ema/sigma_rel_0.135_step_1048576 --mode=eval --config.eval.fid_stats=stats/imagenet2012_train_512px_1281167.npz
"""
from configs.imagenet.common import edm2_img512_config


def get_config():
  return edm2_img512_config("xs")
