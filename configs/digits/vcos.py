"""8x8 digits, v-prediction on the cosine VP schedule: progressive distillation's teacher.

The U-Net, optimizer and 1,500 steps of configs/digits/vp.py with Salimans & Ho 2022's choices:
the cosine schedule (Nichol & Dhariwal 2021) on t in [1e-3, 0.9946], v-prediction and the v loss
(weight (alpha^2 + sigma^2)^2 / sigma^2 in x0 units, = 1 + SNR on a VP schedule); DDIM, 32
uniform steps. configs/digits/pd.py distils it.

Run:
  python -m experiments.main --config=configs/digits/vcos.py --workdir=workdirs/digits_vcos --mode=train

Measured (2026-12-02, 2 shared CPU cores; docs/few_step.md): FID of 500 samples against the
training split (500 training images: 8.38) 13.94 with DDIM at 16 steps, 109.9 at 1; 1,108 s.
"""
from configs.digits.few_step import vcos


def get_config():
  return vcos()
