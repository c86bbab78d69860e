"""Class-conditional 8gaussians under the VP SDE, trained for classifier-free guidance.

Question: does the residual MLP of configs/toy/8gaussians_vp.py learn the 8 conditional
densities p(x | k) (k = the mixture component, diffusion.data.toy2d) and the unconditional one
in one network, with labels dropped to the NULL label at rate 0.1 (Ho & Salimans 2022; their
paper uses 0.1-0.2)? Same data, process, network and optimizer as 8gaussians_vp.py, plus an
8-class embedding (model.net.num_classes = 8, label_dropout = 0.1). --mode=eval evaluates the
unconditional model (NULL label): held-out PF-ODE NLL, sliced Wasserstein, MMD.

Run (train, then evaluate):
  python -m experiments.main --config=configs/toy/8gaussians_vp_cond.py --workdir=workdirs/8gaussians_vp_cond --mode=train
  python -m experiments.main --config=configs/toy/8gaussians_vp_cond.py --workdir=workdirs/8gaussians_vp_cond --mode=eval

Measured: (to fill)
"""
from configs.toy.common import toy_config


def get_config():
  c = toy_config("8gaussians", "vp")
  c.experiment = "toy/8gaussians_vp_cond"
  c.model.conditional = True
  c.model.net.num_classes = 8
  c.model.net.label_dropout = 0.1
  return c
