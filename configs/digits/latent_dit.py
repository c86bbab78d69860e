"""8x8 digits in the latent space of the small autoencoder: configs/digits/dit.py's transformer on
4x4 latents (docs/latent.md).

Question: at the same compute as the pixel-space DiT (configs/digits/dit.py: 16 tokens of
2x2 pixel patches, depth 6, width 128, 1,500 steps of batch 128), does a DiT on the latents of
configs/digits/autoencoder.py (16 tokens of 1x1 latent patches, the same transformer) sample
digits as well, once decoded? The latents are normalised per channel with their own statistics
to std 0.5 (EDM2's 'channel' normalisation) and read as posterior samples (fresh noise each
step); everything else is configs/digits/dit.py.

Run (the autoencoder, the latents, the latent model; then samples and FID on decoded images):
  python -m experiments.main --config=configs/digits/autoencoder.py --workdir=workdirs/digits_ae --mode=train
  python -m experiments.encode --autoencoder_config=configs/digits/autoencoder.py \\
      --autoencoder=workdirs/digits_ae --dataset=digits --out=workdirs/digits_latents
  python -m experiments.main --config=configs/digits/latent_dit.py --workdir=workdirs/digits_ldit --mode=train
  python -m experiments.main --config=configs/digits/latent_dit.py --workdir=workdirs/digits_ldit --mode=eval \\
      --config.eval.fid_stats=stats/digits_train_8px_1500.npz
"""
import ml_collections

from configs.digits.common import digits_config

# configs/digits/dit.py's transformer with 1x1 patches: 16 tokens of the 4x4 latents.
NET = dict(depth=6, hidden_size=128, num_heads=4, patch_size=1)


def get_config():
  c = digits_config("vp")
  c.experiment = "digits/latent_dit"
  c.model.name = "dit"
  c.model.net = ml_collections.ConfigDict(dict(NET, embedding_scale=999.0))  # c = t -> 999 t
  c.latent.dataset = "workdirs/digits_latents"  # experiments.encode --out (above)
  c.latent.normalization = "channel"  # the folder's own per-channel statistics
  c.latent.final_std = 0.5
  c.latent.posterior = "sample"
  return c
