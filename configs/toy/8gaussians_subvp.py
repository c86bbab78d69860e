"""8gaussians under the sub-VP SDE: a residual MLP trained by denoising score matching (eps loss).

Question: how well does a small score network fit the 2-D '8gaussians' density under the sub-VP
process (Song et al. 2021, score SDE), measured by the held-out PF-ODE NLL against the true
entropy, and by sliced Wasserstein / MMD of its samples?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/8gaussians_subvp.py --workdir=workdirs/8gaussians_subvp --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_subvp.py --workdir=workdirs/8gaussians_subvp --mode=eval

Measured: excess NLL 0.003 nats (NLL 2.833 +- 0.022 vs 2.830),
sliced Wasserstein 0.110, MMD 0.0017, Heun 18 steps (NFE 37); training 265 s + evaluation 36 s
(on this 2-core CPU shared with other jobs, 2026-11-21; held-out NLL on 2,000 points, PF-ODE, exact divergence, rtol 1e-4).
"""
from configs.toy.common import toy_config


def get_config():
  return toy_config("8gaussians", "subvp")
