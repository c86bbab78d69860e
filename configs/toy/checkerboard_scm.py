"""checkerboard: sCM distillation (sCD; Lu & Song 2024) of configs/toy/checkerboard_edm.py.

The student is a TrigFlow consistency function f(x_t, t) = cos t x_t - sin t sigma_d F (schedule
and parameterization 'trigflow', sigma_d = 2, the data's scale) trained by the continuous-time
consistency loss with one jvp per step; dx_t/dt is the EDM teacher's PF-ODE velocity at the time
of the same logSNR (its network on another schedule and parameterization, so the student starts
from scratch: distill.init_from_teacher=False). Adaptive weighting by the MLP's log-variance head,
tangent normalisation c = 0.1, tangent warm-up over the first 1,000 steps, log(sigma_d tan t) ~
N(0.39, 1.4^2) (the paper's P_mean = -1.0 for sigma_d = 0.5, shifted by ln 4 for sigma_d = 2).
Sampled by CM's multistep sampler ('consistency'), 1 step.

Run (after training the teacher):
  python -m experiments.main --config=configs/toy/checkerboard_scm.py --workdir=workdirs/checkerboard_scm --mode=train

Measured (2026-12-07, 2 CPU cores shared with other jobs; docs/scm.md): sliced Wasserstein to
held-out data (floor 0.059) 0.091 at 1 step, 0.094 at 2 (checkerboard_cd, started from the
teacher: 0.064 / 0.329); 5,000 steps at 20-34 steps/s.
"""
import math

import ml_collections

from configs.toy.few_step import SIGMA_DATA, student


def scm_toy(objective: str, teacher_name: str) -> ml_collections.ConfigDict:
  """The toy sCM student of ``objective`` on the data of ``teacher_name``'s run (its teacher for
  'scm_distillation'; 'scm_training' reads none)."""
  c = student(objective, teacher_name)
  c.sde.name = "trigflow"
  c.sde.fields = ml_collections.ConfigDict(dict(sigma_data=SIGMA_DATA))
  c.model.parameterization = "trigflow"
  c.model.time_input = "t"
  c.model.sigma_data = SIGMA_DATA
  c.model.net.logvar_head = True
  # Unscaled sinusoidal features of c_noise(t) = t (sCM sec. 4.1: low-frequency time embeddings;
  # the MLP's default scale 1000 makes dF/dt ~1000x larger and the loss does not learn,
  # benchmarks/few_step_mixture.py --only=scm).
  c.model.net.embedding_scale = 1.0
  c.distill.init_from_teacher = False
  c.scm.p_mean = -1.0 + math.log(SIGMA_DATA / 0.5)
  c.scm.p_std = 1.4
  c.scm.tangent_warmup_steps = 1_000
  c.scm.weighting = "adaptive"
  c.training.num_steps = 5_000
  c.training.ckpt_every = 2_500
  c.training.sample_every = 0
  c.training.ema_decay = 0.999
  c.optim.lr = 1e-3
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c


def get_config():
  c = scm_toy("scm_distillation", "edm")
  c.experiment = "toy/checkerboard_scm"
  return c
