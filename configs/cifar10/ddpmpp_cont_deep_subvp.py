"""DDPM++ cont. (deep, sub-VP) on CIFAR-10 (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Settings: see configs/cifar10/common.py:score_sde (ddpmpp, subvp, deep=True; App. H).

THE PAPER'S RESULT (not reproduced here; Song et al. 2021): Table 3: FID 2.41, IS 9.57; Table 2: NLL 2.99 bits/dim (the paper's best likelihood, uniformly dequantized test set), FID 2.92 with the PF-ODE.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_deep_subvp.py --workdir=workdirs/cifar10_ddpmpp_cont_deep_subvp --mode=train
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_deep_subvp.py --workdir=workdirs/cifar10_ddpmpp_cont_deep_subvp --mode=sample
  python -m experiments.main --config=configs/cifar10/ddpmpp_cont_deep_subvp.py --workdir=workdirs/cifar10_ddpmpp_cont_deep_subvp --mode=eval
"""
from configs.cifar10.common import score_sde


def get_config():
  return score_sde("ddpmpp", "subvp", deep=True)
