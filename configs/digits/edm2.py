"""8x8 digits with EDM2 (Karras et al. 2024): the magnitude-preserving U-Net (``edm2_unet``) and
the uncertainty-weighted loss, on EDM's preconditioning (CPU scale).

What transfers from EDM2's recipe: the MP network with forced weight normalisation (the train
step projects the weights after every update), the learned u(sigma) loss weighting (training.
weighting 'edm2'), EDM2's pixel-space noise distribution ln sigma ~ N(-0.8, 1.6^2) (its
ImageNet-64 setting), Adam with b2 = 0.99, no gradient clipping, no weight decay, and the
inverse square-root lr decay lr / sqrt(max(step / ref, 1)) after a linear warm-up. The reference
step (500), lr (1e-2, EDM2 uses 1e-2..1.2e-2 at batch 2048) and the network size (levels 8/4,
one block per level, 32/64 channels, attention at 4x4 with 32-channel heads: 721,899 parameters)
are this codebase's choices for 1,500 CPU steps, not the paper's. Sampler: EDM's Heun, 35 NFE,
as configs/digits/edm.py. EDM2's post-hoc EMA is not used here (a plain EMA, as the other
digits configs).

Run:
  python -m experiments.main --config=configs/digits/edm2.py --workdir=workdirs/digits_edm2 --mode=train
  python -m experiments.main --config=configs/digits/edm2.py --workdir=workdirs/digits_edm2 --mode=sample
"""
import ml_collections

from configs.digits.common import digits_config
from configs.images import set_edm2

# edm2_unet's 'digits' preset with one block per level (diffusion.models.edm2.PRESETS).
NET = dict(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
           channels_per_head=32, dropout=0.0)


def get_config():
  c = digits_config("edm")
  c.experiment = "digits/edm2"
  c.model.name = "edm2_unet"
  c.model.net = ml_collections.ConfigDict(NET)
  return set_edm2(c, lr=1e-2, rsqrt_ref_steps=500, warmup_steps=100)
