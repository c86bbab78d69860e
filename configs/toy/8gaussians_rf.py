"""8gaussians under rectified flow: flow matching with logit-normal times.

Question: the 8gaussians counterpart of configs/toy/checkerboard_rf.py, with the times drawn
logit-normally, t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024, SD3, sec. 3.1: more weight on
the middle of the path, where the velocity of a multimodal density is hardest to predict). The
data are an exact Gaussian mixture, so the learned velocity can be compared with the exact one
(diffusion.analytic; tests/test_flow_matching.py does so for a short run of a smaller MLP).

Rectified flow on t in [1e-3, 0.999], 'flow' parameterization and weighting (E ||u_hat - u||^2),
the residual MLP, optimizer and step budget of the other toy configs.

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/8gaussians_rf.py --workdir=workdirs/8gaussians_rf --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_rf.py --workdir=workdirs/8gaussians_rf --mode=eval

Measured: not run here (the checkerboard RF config was; docs/flow_matching.md).
"""
from configs.toy.checkerboard_rf import rf_toy_config


def get_config():
  return rf_toy_config("8gaussians", "logit_normal")
