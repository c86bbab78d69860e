"""DDPM++ cont. (deep, VP) on CIFAR-10 (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Settings: see configs/cifar10/common.py:score_sde (ddpmpp, vp, deep=True; App. H).

THE PAPER'S RESULT (not reproduced here; Song et al. 2021): Table 3: FID 2.41, IS 9.68; Table 2: NLL 3.13 bits/dim, FID 3.08 with the PF-ODE.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_deep_vp.py --workdir=workdirs/cifar10_ddpmpp_cont_deep_vp --mode=train
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_deep_vp.py --workdir=workdirs/cifar10_ddpmpp_cont_deep_vp --mode=sample
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_deep_vp.py --workdir=workdirs/cifar10_ddpmpp_cont_deep_vp --mode=eval
"""
from configs.cifar10.common import score_sde


def get_config():
  return score_sde("ddpmpp", "vp", deep=True)
