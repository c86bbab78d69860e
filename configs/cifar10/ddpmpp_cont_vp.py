"""DDPM++ cont. (VP) on CIFAR-10 (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Settings: see configs/cifar10/common.py:score_sde (ddpmpp, vp, deep=False; App. H).

THE PAPER'S RESULT (not reproduced here; Song et al. 2021): Table 3: FID 2.55, IS 9.58 (Euler-Maruyama); Table 2: NLL 3.16 bits/dim, FID 3.93 with the PF-ODE (RK45).

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_vp.py --workdir=workdirs/cifar10_ddpmpp_cont_vp --mode=train
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_vp.py --workdir=workdirs/cifar10_ddpmpp_cont_vp --mode=sample
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_vp.py --workdir=workdirs/cifar10_ddpmpp_cont_vp --mode=eval
"""
from configs.cifar10.common import score_sde


def get_config():
  return score_sde("ddpmpp", "vp", deep=False)
