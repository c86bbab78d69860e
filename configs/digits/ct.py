"""8x8 digits: consistency training (iCT, Song & Dhariwal 2024), no teacher.

The U-Net of configs/digits/edm.py from scratch on the EDM schedule with CM's boundary skip /
out: pseudo-Huber metric (c = 0.00054 sqrt(64)), lambda = 1 / (sigma_{i+1} - sigma_i), log-normal
index distribution, the exponential curriculum from 10 to 1280 scales over the run, the student's
own stop-gradient as target; the 1,500 steps of the other digits runs. Sampled by CM's multistep
sampler, 1 step.

Run:
  python -m experiments.main --config=configs/digits/ct.py --workdir=workdirs/digits_ct --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): FID of 500 samples against the
training split (500 training images: 8.38) 77.79 at 1 step, 22.75 at 2 (far from converged in
1,500 steps); 1,003 s.
"""
from configs.digits.common import digits_config
from configs.digits.few_step import student


def get_config():
  c = student("consistency_training", digits_config("edm"), "")
  c.experiment = "digits/ct"
  c.model.parameterization = "consistency"
  c.distill.curriculum = "ict"
  c.training.num_steps = 1_500
  c.optim.warmup_steps = 100
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c
