"""Noise-conditional classifier p(y | x_t, t) of the 8x8 digits under the VP SDE.

Question: how accurately does a small U-Net-encoder classifier of noisy digits x_t = alpha x0 +
sigma eps recover the digit at each noise level (Song et al. 2021, App. I; Dhariwal & Nichol
2021, whose classifier is the U-Net's downsampling trunk with a pooled head)? The process
(sde.*), the time input (model.time_input 't', the positional embedding of 999 t) and the
training times are exactly those of configs/digits/vp.py and configs/digits/cond.py, so its
gradient can guide their samplers. Network: unet_classifier, the digits U-Net's encoder (32/64/64
channels at 8 -> 4 -> 2, one block per resolution, no attention but the middle block's), global
average pooling, 10 logits; 1,000 steps of batch 128 (a few minutes on 2 CPU cores: 13 steps/s in a
60-step smoke run, about 75 s of training).

Run (train, then held-out accuracy on the 297 test digits at 5 noise levels):
  python -m experiments.main --config=configs/digits/classifier.py --workdir=workdirs/digits_classifier --mode=train
  python -m experiments.main --config=configs/digits/classifier.py --workdir=workdirs/digits_classifier --mode=eval

Measured (2026-12-02, 2 CPU cores shared with a sampling job; training 1,000 steps in 106 s wall,
evaluation 9 s): held-out accuracy / cross-entropy (nats) of the EMA classifier on the 297 test
digits, one x_t draw each,
  t = 0.001   0.956 / 0.160
  t = 0.0317  0.953 / 0.181
  t = 0.305   0.586 / 1.221
  t = 0.722   0.125 / 2.297
  t = 1       0.118 / 2.311
(an SVC of clean digits: 0.953 on the same split). Guiding configs/digits/cond.py's NULL-label
model with it: class accuracy 0.741 at scale 1, 0.993 at scale 3 (benchmarks/guidance_digits.py,
docs/guidance.md).
"""
import ml_collections

from configs.digits.common import NET, digits_config


def get_config():
  c = digits_config("vp")
  c.experiment = "digits/classifier"
  c.model.name = "unet_classifier"
  net = dict(NET, num_classes=10, attn_resolutions=())
  net.update(embedding_type="positional", embedding_scale=999.0)  # as digits_config's VP net
  c.model.net = ml_collections.ConfigDict(net)
  c.training.objective = "classifier"
  c.training.num_steps = 1_000
  c.training.ckpt_every = 500
  return c
