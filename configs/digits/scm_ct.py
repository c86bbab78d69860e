"""8x8 digits: sCM training (sCT; Lu & Song 2024), no teacher.

As configs/digits/scm_cd.py with dx_t/dt = cos t z - sin t x0 in place of a teacher's.

Run:
  python -m experiments.main --config=configs/digits/scm_ct.py --workdir=workdirs/digits_scm_ct --mode=train
"""
from configs.digits.scm_cd import scm_digits


def get_config():
  c = scm_digits("scm_training", "")
  c.experiment = "digits/scm_ct"
  return c
