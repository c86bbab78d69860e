"""8gaussians under the VP SDE, the longer run: the demo network trained for 30k steps instead of 10k.

Question: how close does a longer-trained score network get to the true entropy of
'8gaussians' (held-out NLL by the PF-ODE with the exact divergence)?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/8gaussians_vp_long.py --workdir=workdirs/8gaussians_vp_long --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_vp_long.py --workdir=workdirs/8gaussians_vp_long --mode=eval

Measured: excess NLL 0.0006 nats (NLL 2.831 +- 0.016 vs 2.830;
target <= 0.05), sliced Wasserstein 0.071, MMD 0.0008; training 1073 s + evaluation 100 s
(on this 2-core CPU shared with other jobs, 2026-11-21; 4,000 held-out points, PF-ODE, exact divergence).
"""
from configs.toy.common import long_config


def get_config():
  return long_config("8gaussians", "vp")
