"""Improved consistency training on CIFAR-10 (Song & Dhariwal 2024, "Improved Techniques for
Training Consistency Models", iCT), no teacher.

Settings: the NCSN++ network of configs/cifar10/edm_ve.py trained from scratch with CM's boundary
skip / out on the EDM schedule [0.002, 80]; iCT's recipe: pseudo-Huber metric (c = 0.00054
sqrt(3072) = 0.03), lambda = 1 / (sigma_{i+1} - sigma_i), log-normal index distribution
(P_mean -1.1, P_std 2.0), the exponential curriculum from s0 = 10 to s1 = 1280 scales, no EMA
target; as recalled from the paper (not re-checked offline): batch 1024, lr 1e-4, 400k
iterations, dropout 0.3.
Deliberate differences: Adam instead of the paper's RAdam; the network is edm_ve's NCSN++ with
dropout 0.3, and iCT's other network and EMA details are not reproduced.

THE PAPER'S RESULT (not reproduced here; iCT abstract): FID 2.51 with one step, 2.24 with two.
Not trained here: configs/digits/ct.py and configs/toy/checkerboard_ct.py are the measured ones.

Run (needs a prepared tfds cifar10 and an accelerator):
  python -m experiments.main --config=configs/cifar10/ict.py --workdir=workdirs/cifar10_ict --mode=train
"""
from configs.cifar10.common import edm


def get_config():
  c = edm("ncsnpp")
  c.experiment = "cifar10/ict"
  c.training.objective = "consistency_training"
  c.model.parameterization = "consistency"
  c.model.net.dropout = 0.3
  c.distill.curriculum = "ict"
  c.distill.s0 = 10
  c.distill.s1 = 1280
  c.data.batch_size = 1024
  c.training.num_steps = 400_000
  c.training.ema_decay = 0.9999
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c
