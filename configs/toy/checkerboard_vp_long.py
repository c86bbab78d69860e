"""checkerboard under the VP SDE, the longer run: the demo network trained for 30k steps instead of 10k.

Question: how close does a longer-trained score network get to the true entropy of
'checkerboard' (held-out NLL by the PF-ODE with the exact divergence)?

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/checkerboard_vp_long.py --workdir=workdirs/checkerboard_vp_long --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_vp_long.py --workdir=workdirs/checkerboard_vp_long --mode=eval

Measured: excess NLL 0.049 nats (NLL 3.515 +- 0.004 vs ln 32 = 3.466;
target <= 0.10), sliced Wasserstein 0.070, MMD 0.0018; training 1065 s + evaluation 115 s
(on this 2-core CPU shared with other jobs, 2026-11-21; 4,000 held-out points, PF-ODE, exact divergence).
"""
from configs.toy.common import long_config


def get_config():
  return long_config("checkerboard", "vp")
