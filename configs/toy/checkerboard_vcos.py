"""checkerboard, v-prediction on the cosine VP schedule: progressive distillation's teacher.

Salimans & Ho 2022 distil a v-prediction model on the cosine schedule (alpha = cos(pi t / 2)
shifted, t in [0, 1]) sampled by DDIM on the uniform grid; this is that teacher for the toy MLP
(configs/toy/checkerboard_pd.py distils it). DDIM, 32 uniform steps.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_vcos.py --workdir=workdirs/checkerboard_vcos --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): sliced Wasserstein to held-out data
(floor 0.059) 2.218 / 0.338 / 0.186 / 0.105 with DDIM at 1 / 8 / 16 / 32 steps; training 149 s.
"""
from configs.toy.few_step import teacher


def get_config():
  return teacher("vcos")
