"""8x8 digits: sCM distillation (sCD; Lu & Song 2024) of configs/digits/edm.py.

The student is a TrigFlow consistency function f(x_t, t) = cos t x_t - sin t sigma_d F(x_t /
sigma_d, t) (schedule and parameterization 'trigflow', sigma_d = 0.5) on the teacher's U-Net
architecture with the paper's low-frequency time features (positional embedding of c_noise(t) =
t, unscaled); dx_t/dt is the EDM teacher's PF-ODE velocity at the time of the same logSNR. The
teacher's parameters mean something else under its EDM preconditioning, so the student starts
from scratch (distill.init_from_teacher=False). ddpm_unet has no log-variance head: 'uniform'
weighting. Tangent normalisation c = 0.1, warm-up over the first 200 of 1,500 steps (the
teacher's budget: the student starts from scratch, unlike CD's 800 steps from the teacher), the
paper's CIFAR-10 P_mean = -1.0, P_std = 1.4. Sampled by CM's multistep sampler, 1 step
(--config.sampling.num_steps=2 for two).

Run (after training the teacher):
  python -m experiments.main --config=configs/digits/scm_cd.py --workdir=workdirs/digits_scm_cd --mode=train
"""
import ml_collections

from configs.digits.common import digits_config
from configs.digits.few_step import student


def scm_digits(objective: str, teacher_name: str) -> ml_collections.ConfigDict:
  """The digits sCM student of ``objective`` (from configs/digits/edm.py for sCD)."""
  c = student(objective, digits_config("edm"), teacher_name)
  c.sde.name = "trigflow"
  c.sde.fields = ml_collections.ConfigDict(dict(sigma_data=0.5))
  c.model.parameterization = "trigflow"
  c.model.time_input = "t"
  c.model.sigma_data = 0.5
  c.model.net.embedding_type = "positional"
  c.model.net.embedding_scale = 1.0
  c.distill.init_from_teacher = False
  c.scm.weighting = "uniform"
  c.scm.tangent_warmup_steps = 200
  c.training.num_steps = 1_500
  c.training.ckpt_every = 500
  c.optim.lr = 2e-4
  c.sampling.sampler = "consistency"
  c.sampling.grid = "karras"
  c.sampling.num_steps = 1
  return c


def get_config():
  c = scm_digits("scm_distillation", "edm")
  c.experiment = "digits/scm_cd"
  return c
