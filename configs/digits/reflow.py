"""8x8 digits: one reflow of configs/digits/rf.py (the 2-rectified flow).

Liu et al. 2023, sec. 2.3: the 1-rectified flow's ODE (Heun, 35 NFE) maps 10,000 noise draws to
samples (--mode=pairs); the 2-rectified flow starts from its parameters and is trained for 1,000
steps by flow matching on those pairs (x_t = (1 - t) x_0 + t x_T with each sample's own noise).
Euler, 1 step.

Run (after training configs/digits/rf.py):
  python -m experiments.main --config=configs/digits/rf.py --workdir=workdirs/digits_rf --mode=pairs
  python -m experiments.main --config=configs/digits/reflow.py --workdir=workdirs/digits_reflow --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): FID of 500 samples against the
training split (500 training images: 8.38) 19.69 / 17.70 with 1 / 2 Euler steps (the 1-RF: 101.5
at 1 step, 20.06 with Heun at 21 NFE), straightness 8.51 -> 0.32; pairs 355 s, training 633 s.
"""
from configs.digits import rf
from configs.digits.few_step import student


def get_config():
  c = student("reflow", rf.get_config(), "rf")
  c.experiment = "digits/reflow"
  c.distill.pairs = "workdirs/digits_rf/pairs"
  c.training.num_steps = 1_000
  c.training.ckpt_every = 500
  c.optim.lr = 2e-4
  c.sampling.sampler = "euler"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 1
  return c
