"""DDPM on CIFAR-10 (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models").

The 35,746,307-parameter U-Net (App. B), T = 1000 linear betas 1e-4..0.02 (here the VP SDE with
beta in [0.1, 20], its continuous limit; the network sees c = 999 t), eps prediction with
L_simple, Adam 2e-4, batch 128, 800k steps, warm-up 5000, grad clip 1, EMA 0.9999, dropout 0.1,
random horizontal flips; ancestral sampling with 1000 steps.

THE PAPER'S RESULT (not reproduced here; Ho et al. 2020, Table 1, unconditional CIFAR-10):
FID 3.17, IS 9.46 +- 0.11, test NLL <= 3.75 bits/dim (variational bound) for this L_simple model;
the model trained on the true bound L has NLL <= 3.70 bits/dim and FID 13.51.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/ddpm.py --workdir=workdirs/cifar10_ddpm --mode=train
  python -m experiments.main --config=configs/cifar10/ddpm.py --workdir=workdirs/cifar10_ddpm --mode=sample
  python -m experiments.main --config=configs/cifar10/ddpm.py --workdir=workdirs/cifar10_ddpm --mode=eval
Faster samples from the same model: --config.sampling.sampler=heun --config.sampling.num_steps=18
--config.sampling.grid=karras.
"""
from configs.cifar10.common import ddpm


def get_config():
  return ddpm()
