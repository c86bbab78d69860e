"""DDPM++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Settings: see configs/cifar10/common.py:score_sde (ddpmpp, subvp, deep=False; App. H).

THE PAPER'S RESULT (not reproduced here; Song et al. 2021): Table 3: FID 2.61, IS 9.56; Table 2: NLL 3.02 bits/dim, FID 3.16 with the PF-ODE.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_subvp.py --workdir=workdirs/cifar10_ddpmpp_cont_subvp --mode=train
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_subvp.py --workdir=workdirs/cifar10_ddpmpp_cont_subvp --mode=sample
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_subvp.py --workdir=workdirs/cifar10_ddpmpp_cont_subvp --mode=eval
"""
from configs.cifar10.common import score_sde


def get_config():
  return score_sde("ddpmpp", "subvp", deep=False)
