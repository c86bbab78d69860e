"""8x8 digits: consistency distillation of configs/digits/edm.py.

CM (Song et al. 2023), Alg. 2: the student (the teacher's U-Net and parameters, CM's boundary
skip / out) maps x at sigma_{i+1} to the stop-gradient of its own output at the point one Heun
step of the teacher reaches, sigma_i, on CM's 18-scale Karras grid; uniform indices, squared L2
(CM used LPIPS on images), lambda = 1, no EMA target. 800 steps. Sampled by CM's multistep
sampler, 1 step (--config.sampling.num_steps=2 for two).

Run (after training the teacher):
  python -m experiments.main --config=configs/digits/cd.py --workdir=workdirs/digits_cd --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): FID of 500 samples against the
training split (500 training images: 8.38) 21.70 at 1 step, 27.57 at 2 (the EDM teacher with Heun
at 21 NFE: 14.10); 1,018 s.
"""
from configs.digits.common import digits_config
from configs.digits.few_step import student


def get_config():
  c = student("consistency_distillation", digits_config("edm"), "edm")
  c.experiment = "digits/cd"
  c.model.parameterization = "consistency"
  c.distill.num_scales = 18
  c.distill.teacher_solver = "heun"
  c.training.num_steps = 800
  c.training.ckpt_every = 200
  c.optim.lr = 2e-4
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c
