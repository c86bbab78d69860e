"""checkerboard under the VE SDE: a residual MLP trained by denoising score matching (eps loss).

Question: how well does a small score network fit the 2-D 'checkerboard' density under the VE
process (Song et al. 2021, score SDE), measured by the held-out PF-ODE NLL against the true
entropy, and by sliced Wasserstein / MMD of its samples?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/checkerboard_ve.py --workdir=workdirs/checkerboard_ve --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_ve.py --workdir=workdirs/checkerboard_ve --mode=eval

Measured: see README.
"""
from configs.toy.common import toy_config


def get_config():
  return toy_config("checkerboard", "ve")
