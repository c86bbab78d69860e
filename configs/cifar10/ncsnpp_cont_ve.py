"""NCSN++ cont. (VE) on CIFAR-10 (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Settings: see configs/cifar10/common.py:score_sde (ncsnpp, ve, deep=False; App. H).

THE PAPER'S RESULT (not reproduced here; Song et al. 2021): Table 3: FID 2.38, IS 9.83 (PC sampler). No likelihood is reported for VE models.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/ncsnpp_cont_ve.py --workdir=workdirs/cifar10_ncsnpp_cont_ve --mode=train
  python -m experiments.main --config=configs/cifar10/ncsnpp_cont_ve.py --workdir=workdirs/cifar10_ncsnpp_cont_ve --mode=sample
  python -m experiments.main --config=configs/cifar10/ncsnpp_cont_ve.py --workdir=workdirs/cifar10_ncsnpp_cont_ve --mode=eval
"""
from configs.cifar10.common import score_sde


def get_config():
  return score_sde("ncsnpp", "ve", deep=False)
