"""8x8 digits, v-prediction on the cosine VP schedule: progressive distillation's teacher.

The U-Net, optimizer and 1,500 steps of configs/digits/vp.py with Salimans & Ho 2022's choices:
the cosine schedule (Nichol & Dhariwal 2021) on t in [1e-3, 0.9946], v-prediction and the v loss
(weight (alpha^2 + sigma^2)^2 / sigma^2 in x0 units, = 1 + SNR on a VP schedule); DDIM, 32
uniform steps. configs/digits/pd.py distils it.

Run:
  python -m experiments.main --config=configs/digits/vcos.py --workdir=workdirs/digits_vcos --mode=train

Measured: docs/few_step.md.
"""
from configs.digits.few_step import vcos


def get_config():
  return vcos()
