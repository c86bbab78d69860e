"""8x8 digits with VDM's loss on the fixed VP schedule (beta in [0.1, 20]): the baseline of
configs/digits/vdm.py, which learns the schedule. Same network (the digits U-Net conditioned on
the logSNR), loss (VDM's continuous-time diffusion loss, training.weighting='likelihood',
stratified times), optimizer and steps as the digits VP run (configs/digits/vp.py).

Run:
  python -m experiments.main --config=configs/digits/vdm_fixed.py --workdir=workdirs/digits_vdm_fixed --mode=train
  python -m experiments.main --config=configs/digits/vdm_fixed.py --workdir=workdirs/digits_vdm_fixed --mode=eval
"""
import ml_collections

from configs.digits.common import digits_config

# VDM's initial endpoints (gamma = -logSNR at t = 0 and 1), learned from there.
VDM_FIELDS = dict(gamma_min=-13.3, gamma_max=5.0, learn_endpoints=True, hidden=1024,
                  t_min=0.0, t_max=1.0)


def vdm_config(learned: bool) -> ml_collections.ConfigDict:
  c = digits_config("vp")
  c.experiment = "digits/vdm" if learned else "digits/vdm_fixed"
  if learned:
    c.sde.name = "vdm_learned"
    c.sde.fields = ml_collections.ConfigDict(VDM_FIELDS)
  c.model.time_input = "logsnr"
  c.model.net.embedding_scale = 50.0  # logSNR in about [-10, 13]: positional features of 50 c
  c.training.weighting = "likelihood"
  c.training.time_sampling = "stratified"
  return c


def get_config():
  return vdm_config(learned=False)
