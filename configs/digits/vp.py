"""8x8 digits under the VP SDE (the default image experiment): DDPM U-Net, eps prediction.

Question: does the whole image pipeline (data, U-Net, DSM loss, EMA, sampler, PF-ODE bits/dim)
learn recognisable digits on 2 CPU cores in about 10 minutes?

VP SDE with beta in [0.1, 20] (Song et al. 2021; DDPM's linear betas), eps prediction with the
"simple" loss (Ho et al. 2020), Adam 1e-3 with cosine decay, EMA 0.995 with warm-up, batch 128, 1,500 steps.
Samples: Heun on the Karras grid, 18 noise levels (num_steps = 17, 35 NFE).

Run (train, then a sample grid, then bits/dim on the 297 test digits):
  python -m experiments.main --config=configs/digits/vp.py --workdir=workdirs/digits_vp --mode=train
  python -m experiments.main --config=configs/digits/vp.py --workdir=workdirs/digits_vp --mode=sample
  python -m experiments.main --config=configs/digits/vp.py --workdir=workdirs/digits_vp --mode=eval

Measured here: see docs/images.md (grid: benchmarks/results/digits_vp_samples.png).
"""
from configs.digits.common import digits_config


def get_config():
  return digits_config("vp")
