"""CIFAR-10 32x32 with EDM2's network and training recipe (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models"); the paper has no CIFAR-10 model: this
config transfers its ImageNet-64 (pixel-space) choices.

From the paper (its ImageNet-64 recipe, the released presets edm2-img64-*): the magnitude-
preserving U-Net (``edm2_unet``, forced weight normalisation after every update), the learned
uncertainty weighting u(sigma) of the loss (training.weighting 'edm2'), ln sigma ~ N(P_mean =
-0.8, P_std = 1.6^2), sigma_data = 0.5 with EDM's preconditioning (configs.images.set_edm),
Adam (b1 0.9, b2 0.99, eps 1e-8) without weight decay or gradient clipping, batch 2048, the
inverse square-root decay lr_ref / sqrt(max(t / t_ref, 1)) with lr_ref = 0.012 (XS) and t_ref =
35,000 steps, a linear warm-up over 10 Mimg (4,883 steps), and Heun with 32 noise levels (31
intervals, 63 NFE: EDM2's sampler).
Our choices: the network (edm2.PRESETS['cifar10']: levels 32/16/8, 128/256/256 channels, 3
blocks per level, attention at 16 and 8, dropout 0.13 as EDM's CIFAR-10: 36,610,076 parameters
with the u(sigma) head), 200 Mimg as EDM's CIFAR-10 runs (97,656 steps), random flips, and a
plain EMA with EDM's 0.5 Mimg half-life (0.5^(2048 / 5e5) = 0.99716 per step) instead of EDM2's
post-hoc power-function EMA.

THE PAPER'S RESULTS (not reproduced here; the paper has none on CIFAR-10): ImageNet-512 FID
1.81, down from the previous record 2.41 (the paper's abstract; its Table 2 per model size), and
ImageNet-64 results in its Table 3. Nothing here was trained beyond a CPU smoke test.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/edm2.py --workdir=workdirs/cifar10_edm2 --mode=train
"""
import ml_collections

from configs.images import image_config, set_edm, set_edm2

# edm2_unet's 'cifar10' preset (diffusion.models.edm2.PRESETS['cifar10']).
EDM2_UNET = dict(model_channels=128, channel_mult=(1, 2, 2), num_blocks=3,
                 attn_resolutions=(16, 8), dropout=0.13)


def get_config() -> ml_collections.ConfigDict:
  c = set_edm(image_config("cifar10", "edm", model="edm2_unet", net=dict(EDM2_UNET)))
  c.experiment = "cifar10/edm2"
  c.data.random_flip = True
  c.data.batch_size = 2048
  set_edm2(c, lr=0.012, rsqrt_ref_steps=35_000, warmup_steps=4_883)  # 10 Mimg warm-up
  c.optim.eps = 1e-8
  c.training.num_steps = 97_656
  c.training.ckpt_every = 5_000
  c.training.ema_decay = 0.99716
  c.sampling.num_steps = 31  # 32 noise levels: 31 Heun intervals + the step to 0, 63 NFE
  return c
