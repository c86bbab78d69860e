"""Shared settings of the few-step digits experiments (docs/few_step.md).

The teachers are the digits runs of the same U-Net, optimizer and 1,500 steps (configs/digits/
common.py): 'edm' (configs/digits/edm.py, consistency distillation's teacher), 'rf'
(configs/digits/rf.py, reflow's) and 'vcos' (v-prediction on the cosine VP schedule, progressive
distillation's). Students start from their teacher's parameters and name its config file and
workdir (default workdirs/digits_<name>, the README's layout).
"""
import ml_collections

from configs.digits.common import digits_config


def vcos() -> ml_collections.ConfigDict:
  """v-prediction on the cosine VP schedule (Salimans & Ho 2022's teacher), DDIM 32 uniform
  steps; the network, optimizer and steps of configs/digits/vp.py."""
  c = digits_config("vp")
  c.experiment = "digits/vcos"
  c.sde.name = "vp_cosine"
  c.sde.fields = ml_collections.ConfigDict(dict(t_min=1e-3, t_max=0.9946))  # the defaults
  c.model.parameterization = "v"
  c.training.weighting = "v"
  c.sampling.sampler = "ddim"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 32
  return c


def student(objective: str, base: ml_collections.ConfigDict,
            teacher_name: str) -> ml_collections.ConfigDict:
  """``base`` (the teacher's config, or for CT the EDM one) turned into the student of
  ``objective``; ``teacher_name`` '' for none."""
  c = base
  if teacher_name:
    c.distill.teacher_config = f"configs/digits/{teacher_name}.py"
    c.distill.teacher_workdir = f"workdirs/digits_{teacher_name}"
  c.training.objective = objective
  c.training.sample_every = 0
  c.optim.warmup_steps = 0
  return c
