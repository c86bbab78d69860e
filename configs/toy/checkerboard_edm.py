"""checkerboard under EDM: the teacher of consistency distillation (configs/toy/checkerboard_cd.py).

EDM's process sigma(t) = t in [0.002, 80] and preconditioning with sigma_data = 2, loss weight
lambda(sigma) with ln sigma ~ N(0.2, 1.2^2) (EDM's -1.2 shifted by ln 4 for the 4x larger data
scale); Heun, 17 steps on the Karras grid (35 NFE). The residual MLP, optimizer and steps of the
other toy configs.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_edm.py --workdir=workdirs/checkerboard_edm --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_edm.py --workdir=workdirs/checkerboard_edm --mode=eval

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): sliced Wasserstein to held-out data
(floor 0.059) 0.832 / 0.183 / 0.048 with Heun at 11 / 21 / 51 NFE; training 149 s.
"""
from configs.toy.few_step import teacher


def get_config():
  return teacher("edm")
