"""checkerboard: consistency distillation of configs/toy/checkerboard_edm.py.

Song et al. 2023 (CM), Alg. 2: the student f(x, sigma) (the teacher's network, initialised from
it, with CM's boundary skip / out) maps x at sigma_{i+1} to the stop-gradient of f at the point
one Heun step of the teacher brings it to, sigma_i, on the Karras grid of N = 18 scales (CM's
CIFAR-10 choice); uniform indices, squared L2, lambda = 1. Sampled by CM's multistep sampler
('consistency'), 1 step.

Run (after training the teacher):
  python -m experiments.main --config=configs/toy/checkerboard_cd.py --workdir=workdirs/checkerboard_cd --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): sliced Wasserstein to held-out data
(floor 0.059) 0.064 at 1 step (the teacher with Heun at 51 NFE: 0.048), 0.329 at 2 (the 2-step
Karras grid's intermediate sigma of 2.5 is this student's worst); training 183 s.
"""
from configs.toy.few_step import student


def get_config():
  c = student("consistency_distillation", "edm")
  c.experiment = "toy/checkerboard_cd"
  c.model.parameterization = "consistency"
  c.distill.num_scales = 18
  c.distill.teacher_solver = "heun"
  c.training.num_steps = 5_000
  c.training.ckpt_every = 2_500
  c.training.sample_every = 0
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 0
  c.training.ema_decay = 0.999
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c
