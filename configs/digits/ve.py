"""8x8 digits under the VE SDE: DDPM U-Net, eps prediction (= NCSN's sigma-scaled score).

VE SDE with sigma in [0.01, 20] (Song et al. 2021; sigma_max above the largest distance between
two digits in [-1, 1]^64, about 15: Song & Ermon 2020, technique 1), the network fed
x / sqrt(0.75^2 + sigma^2), eps prediction with the "simple" loss (the sigma^2-weighted score
matching loss of NCSN in other units), otherwise as configs/digits/vp.py.

Run:
  python -m experiments.main --config=configs/digits/ve.py --workdir=workdirs/digits_ve --mode=train
  python -m experiments.main --config=configs/digits/ve.py --workdir=workdirs/digits_ve --mode=sample
  python -m experiments.main --config=configs/digits/ve.py --workdir=workdirs/digits_ve --mode=eval

Measured here: see docs/images.md (grid: benchmarks/results/digits_ve_samples.png).
"""
from configs.digits.common import digits_config


def get_config():
  return digits_config("ve")
