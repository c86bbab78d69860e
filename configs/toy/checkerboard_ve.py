"""checkerboard under the VE SDE: a residual MLP trained by denoising score matching (eps loss).

Question: how well does a small score network fit the 2-D 'checkerboard' density under the VE
process (Song et al. 2021, score SDE), measured by the held-out PF-ODE NLL against the true
entropy, and by sliced Wasserstein / MMD of its samples?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/checkerboard_ve.py --workdir=workdirs/checkerboard_ve --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_ve.py --workdir=workdirs/checkerboard_ve --mode=eval

Measured: excess NLL 0.061 nats (NLL 3.527 +- 0.006 vs ln 32 = 3.466),
sliced Wasserstein 0.045, MMD 0.0012, Heun 18 steps (NFE 37); training 347 s + evaluation 87 s
(on this 2-core CPU shared with other jobs, 2026-11-21; held-out NLL on 2,000 points, PF-ODE, exact divergence, rtol 1e-4).
"""
from configs.toy.common import toy_config


def get_config():
  return toy_config("checkerboard", "ve")
