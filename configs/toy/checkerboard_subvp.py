"""checkerboard under the sub-VP SDE: a residual MLP trained by denoising score matching (eps loss).

Question: how well does a small score network fit the 2-D 'checkerboard' density under the sub-VP
process (Song et al. 2021, score SDE), measured by the held-out PF-ODE NLL against the true
entropy, and by sliced Wasserstein / MMD of its samples?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/checkerboard_subvp.py --workdir=workdirs/checkerboard_subvp --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_subvp.py --workdir=workdirs/checkerboard_subvp --mode=eval

Measured: excess NLL 0.107 nats (NLL 3.572 +- 0.008 vs ln 32 = 3.466),
sliced Wasserstein 0.119, MMD 0.0038, Heun 18 steps (NFE 37); training 356 s + evaluation 109 s
(on this 2-core CPU shared with other jobs, 2026-11-21; held-out NLL on 2,000 points, PF-ODE, exact divergence, rtol 1e-4).
"""
from configs.toy.common import toy_config


def get_config():
  return toy_config("checkerboard", "subvp")
