"""checkerboard: one reflow of configs/toy/checkerboard_rf.py (the 2-rectified flow).

Liu et al. 2023, sec. 2.3: the 1-rectified flow's ODE (Heun, 17 steps on the Karras grid, 35 NFE)
maps 50,000 noise draws to samples (--mode=pairs on its workdir); the 2-rectified flow starts
from its parameters and is trained by flow matching on those pairs, x_t = (1 - t) x_0 + t x_T
with each sample's own noise. Its paths are straighter, so 1 and 2 Euler steps do better.

Run (after training checkerboard_rf):
  python -m experiments.main --config=configs/toy/checkerboard_rf.py --workdir=workdirs/checkerboard_rf --mode=pairs
  python -m experiments.main --config=configs/toy/checkerboard_reflow.py --workdir=workdirs/checkerboard_reflow --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): sliced Wasserstein to held-out data
(floor 0.059) 0.128 / 0.128 with 1 / 2 Euler steps (the 1-RF: 2.258 / 2.031), straightness 2.08 ->
0.0004; pairs 10 s, training 55 s.
"""
from configs.toy.few_step import student


def get_config():
  c = student("reflow", "rf")
  c.experiment = "toy/checkerboard_reflow"
  c.distill.pairs = "workdirs/checkerboard_rf/pairs"
  c.training.num_steps = 5_000
  c.training.ckpt_every = 2_500
  c.training.sample_every = 0
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.sampling.sampler = "euler"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 1
  return c
