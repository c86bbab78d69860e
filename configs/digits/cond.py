"""Class-conditional 8x8 digits under the VP SDE, trained for classifier-free guidance.

Question: does the digits U-Net of configs/digits/vp.py learn the 10 class-conditional
densities and the unconditional one in one network, with labels dropped to the NULL label at
rate 0.1 (Ho & Salimans 2022; their paper uses 0.1-0.2)? Everything as configs/digits/vp.py
(VP, eps prediction, the "simple" loss, 1,500 steps), plus a 10-class embedding with a NULL
class (model.net.num_classes = 10, label_dropout = 0.1) fed the training labels. --mode=eval and
--mode=sample use the unconditional model (NULL label).

Run (train, then a sample grid, then bits/dim on the 297 test digits):
  python -m experiments.main --config=configs/digits/cond.py --workdir=workdirs/digits_cond --mode=train
  python -m experiments.main --config=configs/digits/cond.py --workdir=workdirs/digits_cond --mode=sample
  python -m experiments.main --config=configs/digits/cond.py --workdir=workdirs/digits_cond --mode=eval

Measured: (to fill)
"""
from configs.digits.common import digits_config


def get_config():
  c = digits_config("vp")
  c.experiment = "digits/cond"
  c.model.conditional = True
  c.model.net.num_classes = 10
  c.model.net.label_dropout = 0.1
  return c
