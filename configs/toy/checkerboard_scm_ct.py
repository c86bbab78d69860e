"""checkerboard: sCM training (sCT; Lu & Song 2024), no teacher.

As configs/toy/checkerboard_scm.py, with dx_t/dt = cos t z - sin t x0 (one sample of the
conditional velocity) in place of a teacher's.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_scm_ct.py --workdir=workdirs/checkerboard_scm_ct --mode=train

Measured (2026-12-07, 2 CPU cores shared with other jobs; docs/scm.md): sliced Wasserstein to
held-out data (floor 0.059) 0.137 at 1 step, 0.119 at 2 (checkerboard_ct, iCT with 4x the steps:
0.120 / 0.083); 5,000 steps at 19-30 steps/s.
"""
from configs.toy.checkerboard_scm import scm_toy


def get_config():
  c = scm_toy("scm_training", "edm")
  c.experiment = "toy/checkerboard_scm_ct"
  return c
