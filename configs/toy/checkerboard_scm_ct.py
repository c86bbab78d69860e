"""checkerboard: sCM training (sCT; Lu & Song 2024), no teacher.

As configs/toy/checkerboard_scm.py, with dx_t/dt = cos t z - sin t x0 (one sample of the
conditional velocity) in place of a teacher's.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_scm_ct.py --workdir=workdirs/checkerboard_scm_ct --mode=train
"""
from configs.toy.checkerboard_scm import scm_toy


def get_config():
  c = scm_toy("scm_training", "edm")
  c.experiment = "toy/checkerboard_scm_ct"
  return c
