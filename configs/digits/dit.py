"""8x8 digits under the VP SDE with a small DiT (Peebles & Xie 2023) instead of the U-Net.

Question: does the transformer pipeline (patchify, adaLN-Zero blocks, unpatchify) train through
the same driver on 2 CPU cores? The network: patch 2 (16 tokens), depth 6, hidden size 128,
4 heads (diffusion.models.dit.preset('digits'), 1,864,580 parameters); everything else is
configs/digits/vp.py (VP SDE, eps prediction, the "simple" loss, Adam 1e-3 with cosine decay,
EMA 0.995 with warm-up, batch 128, 1,500 steps, Heun on the Karras grid).

Run (train, then a sample grid, then bits/dim on the 297 test digits):
  python -m experiments.main --config=configs/digits/dit.py --workdir=workdirs/digits_dit --mode=train
  python -m experiments.main --config=configs/digits/dit.py --workdir=workdirs/digits_dit --mode=sample
  python -m experiments.main --config=configs/digits/dit.py --workdir=workdirs/digits_dit --mode=eval
"""
import ml_collections

from configs.digits.common import digits_config

# diffusion.models.dit.preset('digits'), literal: configs import no library code.
NET = dict(depth=6, hidden_size=128, num_heads=4, patch_size=2)


def get_config():
  c = digits_config("vp")
  c.experiment = "digits/dit"
  c.model.name = "dit"
  c.model.net = ml_collections.ConfigDict(dict(NET, embedding_scale=999.0))  # c = t -> 999 t
  return c
