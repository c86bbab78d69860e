"""checkerboard: consistency training (iCT, Song & Dhariwal 2024) on the EDM schedule, no teacher.

x at sigma_{i+1} and at sigma_i share one noise draw (x0 + sigma z); the student at sigma_{i+1}
is pulled to its own stop-gradient output at sigma_i (no EMA target), pseudo-Huber metric,
lambda = 1 / (sigma_{i+1} - sigma_i), log-normal index distribution (P_mean -1.1, P_std 2.0) and
the exponential curriculum N(k) from 10 to 1280 scales. The toy MLP of checkerboard_edm trained
from scratch; sampled by CM's multistep sampler, 1 step.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_ct.py --workdir=workdirs/checkerboard_ct --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): sliced Wasserstein to held-out data
(floor 0.059) 0.120 at 1 step, 0.083 at 2; training 745 s.
"""
from configs.toy.few_step import student


def get_config():
  c = student("consistency_training", "edm")
  c.experiment = "toy/checkerboard_ct"
  c.model.parameterization = "consistency"
  c.distill.curriculum = "ict"
  c.training.num_steps = 20_000
  c.training.ckpt_every = 5_000
  c.training.sample_every = 0
  c.optim.lr = 1e-3
  c.training.ema_decay = 0.999
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c
