"""8gaussians under the sub-VP SDE: a residual MLP trained by denoising score matching (eps loss).

Question: how well does a small score network fit the 2-D '8gaussians' density under the sub-VP
process (Song et al. 2021, score SDE), measured by the held-out PF-ODE NLL against the true
entropy, and by sliced Wasserstein / MMD of its samples?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/8gaussians_subvp.py --workdir=workdirs/8gaussians_subvp --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_subvp.py --workdir=workdirs/8gaussians_subvp --mode=eval

Measured: see README.
"""
from configs.toy.common import toy_config


def get_config():
  return toy_config("8gaussians", "subvp")
