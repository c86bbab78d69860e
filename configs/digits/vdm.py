"""8x8 digits with VDM's learned noise schedule (Kingma et al. 2021, "Variational Diffusion
Models"): the bits/dim of a learned schedule against the fixed VP schedule (configs/digits/
vdm_fixed.py), same network, loss, time sampling and steps.

gamma(t) = -logSNR(t) is VDM's monotone network (diffusion.vdm), its endpoints learned from
VDM's -13.3 / 5 by the whole bound (prior + diffusion + the discrete decoder over the digits'
17 levels), its shape by minimising the variance of the diffusion loss (VDM Sec. 5.2). The
network (the digits U-Net) sees the logSNR; the loss is VDM's continuous-time diffusion loss with
stratified times (training.weighting='likelihood').

Run:
  python -m experiments.main --config=configs/digits/vdm.py --workdir=workdirs/digits_vdm --mode=train
  python -m experiments.main --config=configs/digits/vdm.py --workdir=workdirs/digits_vdm --mode=eval

Measured here: docs/images.md (VDM's learned schedule).
"""
from configs.digits.vdm_fixed import vdm_config


def get_config():
  return vdm_config(learned=True)
