"""CelebA 64x64 with NCSN++ cont. under the VE SDE (Song et al. 2021's recipe: sigma in
[0.01, 90], Fourier features of log sigma, EMA 0.999, PC sampler with reverse diffusion +
Langevin, 1000 steps).

No paper result exists for this setting (score SDE reports CelebA-HQ 1024 samples, no CelebA 64
numbers); not measured here.

Run:
  python -m experiments.main --config=configs/celeba/ncsnpp_ve.py --workdir=workdirs/celeba_ncsnpp_ve --mode=train
  python -m experiments.main --config=configs/celeba/ncsnpp_ve.py --workdir=workdirs/celeba_ncsnpp_ve --mode=sample
"""
from configs.celeba.common import celeba_config


def get_config():
  return celeba_config("ncsnpp_ve")
