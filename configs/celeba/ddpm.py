"""CelebA 64x64 with the DDPM recipe (Ho et al. 2020: VP / linear betas, eps, L_simple, Adam
2e-4, batch 128, EMA 0.9999, dropout 0.1, flips) and its U-Net one level deeper for 64x64.

No paper result exists for this setting (DDPM reports CelebA-HQ 256 samples, no CelebA 64
numbers); not measured here.

Run:
  python -m experiments.main --config=configs/celeba/ddpm.py --workdir=workdirs/celeba_ddpm --mode=train
  python -m experiments.main --config=configs/celeba/ddpm.py --workdir=workdirs/celeba_ddpm --mode=sample
"""
from configs.celeba.common import celeba_config


def get_config():
  return celeba_config("ddpm")
