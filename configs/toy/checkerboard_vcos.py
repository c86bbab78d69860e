"""checkerboard, v-prediction on the cosine VP schedule: progressive distillation's teacher.

Salimans & Ho 2022 distil a v-prediction model on the cosine schedule (alpha = cos(pi t / 2)
shifted, t in [0, 1]) sampled by DDIM on the uniform grid; this is that teacher for the toy MLP
(configs/toy/checkerboard_pd.py distils it). DDIM, 32 uniform steps.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_vcos.py --workdir=workdirs/checkerboard_vcos --mode=train

Measured: docs/few_step.md.
"""
from configs.toy.few_step import teacher


def get_config():
  return teacher("vcos")
