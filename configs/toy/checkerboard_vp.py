"""checkerboard under the VP SDE: a residual MLP trained by denoising score matching (eps loss).

Question: how well does a small score network fit the 2-D 'checkerboard' density under the VP
process (Song et al. 2021, score SDE), measured by the held-out PF-ODE NLL against the true
entropy, and by sliced Wasserstein / MMD of its samples?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/checkerboard_vp.py --workdir=workdirs/checkerboard_vp --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_vp.py --workdir=workdirs/checkerboard_vp --mode=eval

Measured: excess NLL 0.111 nats (NLL 3.576 +- 0.008 vs ln 32 = 3.466), Heun 18 steps (NFE 37);
sliced Wasserstein 0.119, MMD 0.00003 (2026-12-01; 0.084 and 0.0023 with the earlier version's
sampling keys); the whole `make demo` 121 s in a fresh clone with an existing venv (114 s on an
idle machine, 2026-11-21); held-out NLL on 2,000 points, PF-ODE, exact divergence, rtol 1e-4.
"""
from configs.toy.common import toy_config


def get_config():
  return toy_config("checkerboard", "vp")
