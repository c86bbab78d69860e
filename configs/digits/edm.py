"""8x8 digits with EDM (Karras et al. 2022): preconditioning, lognormal sigmas, Heun sampler.

sigma(t) = t in [0.002, 80], the network F wrapped by c_skip / c_out / c_in / c_noise with
sigma_data = 0.5, loss weight (sigma^2 + sd^2) / (sigma sd)^2 with ln sigma ~ N(-1.2, 1.2^2),
Heun on the rho = 7 grid, 18 noise levels (num_steps = 17 intervals, 35 NFE). Same U-Net, optimizer and steps as
configs/digits/vp.py (Fourier features of c_noise instead of the positional embedding of t).

Run:
  python -m experiments.main --config=configs/digits/edm.py --workdir=workdirs/digits_edm --mode=train
  python -m experiments.main --config=configs/digits/edm.py --workdir=workdirs/digits_edm --mode=sample
  python -m experiments.main --config=configs/digits/edm.py --workdir=workdirs/digits_edm --mode=eval

Measured here: see docs/images.md (grid: benchmarks/results/digits_edm_samples.png).
"""
from configs.digits.common import digits_config


def get_config():
  return digits_config("edm")
