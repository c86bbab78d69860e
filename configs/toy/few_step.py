"""Shared settings of the few-step toy experiments on 'checkerboard' (docs/few_step.md).

Teachers (trained like every toy run) and the students distilled or trained from them:

  checkerboard_edm     EDM teacher: sigma(t) = t in [0.002, 80], EDM preconditioning with
                       sigma_data = 2 (the data's scale), lognormal sigmas shifted by ln 4.
  checkerboard_vcos    v-prediction teacher on the cosine VP schedule (Salimans & Ho 2022's).
  checkerboard_rf      rectified flow (configs/toy/checkerboard_rf.py).
  checkerboard_pd      progressive distillation of checkerboard_vcos: 16 -> 8 -> 4 -> 2 -> 1.
  checkerboard_cd      consistency distillation of checkerboard_edm (Heun teacher steps).
  checkerboard_ct      consistency training on the EDM schedule (iCT recipe), no teacher.
  checkerboard_reflow  2-rectified flow on pairs of checkerboard_rf.

Students name their teacher's config file and workdir (distill.teacher_config /
teacher_workdir); the workdirs default to workdirs/<name>, the README's layout.
"""
import ml_collections

from configs.toy.checkerboard_rf import rf_toy_config
from configs.toy.common import toy_config

SIGMA_DATA = 2.0  # roughly the per-coordinate std of the toy densities
EDM_FIELDS = dict(t_min=0.002, t_max=80.0)


def teacher(name: str) -> ml_collections.ConfigDict:
  """The teacher config ``name``: 'edm', 'vcos' or 'rf'."""
  if name == "rf":
    return rf_toy_config("checkerboard", "uniform")
  c = toy_config("checkerboard", "vp")
  c.experiment = f"toy/checkerboard_{name}"
  if name == "edm":
    c.sde.name = "edm"
    c.sde.fields = ml_collections.ConfigDict(EDM_FIELDS)
    c.model.parameterization = "edm"
    c.model.time_input = "c_noise"
    c.model.sigma_data = SIGMA_DATA
    c.training.weighting = "edm"
    c.training.time_sampling = "lognormal"
    # EDM's P_mean = -1.2 is for sigma_data = 0.5: the same noise-to-signal ratios here are
    # sigma 4x larger, ln 4 = 1.39 higher.
    c.training.loss_opts = ml_collections.ConfigDict(dict(p_mean=0.2, p_std=1.2,
                                                          sigma_data=SIGMA_DATA))
    c.sampling.sampler = "heun"
    c.sampling.num_steps = 17
    c.sampling.grid = "karras"
  elif name == "vcos":
    c.sde.name = "vp_cosine"
    c.sde.fields = ml_collections.ConfigDict(dict(t_min=1e-3, t_max=0.9946))  # the defaults
    c.model.parameterization = "v"
    c.training.weighting = "v"
    c.sampling.sampler = "ddim"
    c.sampling.num_steps = 32
    c.sampling.grid = "uniform"
  else:
    raise ValueError(f"unknown toy teacher {name!r}; available: 'edm', 'vcos', 'rf'")
  return c


def student(objective: str, teacher_name: str = "") -> ml_collections.ConfigDict:
  """The student of ``objective`` on the network, data and process of ``teacher_name``."""
  c = teacher(teacher_name)
  if teacher_name:
    c.distill.teacher_config = f"configs/toy/checkerboard_{teacher_name}.py"
    c.distill.teacher_workdir = f"workdirs/checkerboard_{teacher_name}"
  c.training.objective = objective
  return c
