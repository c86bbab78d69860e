"""EDM on CIFAR-10 with the VP architecture (DDPM++ backbone; Karras et al. 2022, "Elucidating
the Design Space of Diffusion-Based Generative Models", config F).

Settings: see configs/cifar10/common.py:edm and configs/images.py:set_edm (preconditioning
c_skip / c_out / c_in / c_noise with sigma_data 0.5, lognormal ln sigma ~ N(-1.2, 1.2^2), the edm
loss weighting, Heun over 18 noise levels = 35 NFE on the rho = 7 grid in [0.002, 80]).

THE PAPER'S RESULT (not reproduced here; Karras et al. 2022, Table 2, CIFAR-10 32x32): FID 1.97 unconditional, 1.79 class-conditional, 35 NFE (Heun, 18 steps).
Those runs use the paper's non-leaking augmentation (p = 0.12), which is not implemented here.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/edm_vp.py --workdir=workdirs/cifar10_edm_vp --mode=train
  python -m experiments.main --config=configs/cifar10/edm_vp.py --workdir=workdirs/cifar10_edm_vp --mode=sample
Class-conditional: add --config.model.conditional=True --config.model.net.num_classes=10.
"""
from configs.cifar10.common import edm


def get_config():
  return edm("ddpmpp")
