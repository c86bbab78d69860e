"""TEMPORARY stand-in of diffusion/models/autoencoder.py (branch i24-vae) while it is written:
the same interface (``autoencoder_kl``, outputs='autoencoder', encode / decode / __call__), a
plain conv net. Removed when the real module is merged."""
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

import diffusion.models as models

if "autoencoder" not in models.OUTPUTS:
  models.OUTPUTS = models.OUTPUTS + ("autoencoder",)


@models.register_model("autoencoder_kl", outputs="autoencoder")
class AutoencoderKL(nn.Module):
  out_channels: int = 3
  latent_channels: int = 4
  channels: Tuple[int, ...] = (32, 64)
  num_res_blocks: int = 1
  norm_groups: int = 8
  norm_eps: float = 1e-6
  mid_attention: bool = False
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    ch = self.channels
    self.enc_in = nn.Conv(ch[0], (3, 3), dtype=self.dtype)
    self.enc_down = [nn.Conv(c, (3, 3), strides=(2, 2), dtype=self.dtype) for c in ch[1:]]
    self.enc_out = nn.Conv(2 * self.latent_channels, (3, 3), dtype=self.dtype)
    self.dec_in = nn.Conv(ch[-1], (3, 3), dtype=self.dtype)
    self.dec_up = [nn.ConvTranspose(c, (3, 3), strides=(2, 2), dtype=self.dtype)
                   for c in reversed(ch[:-1])]
    self.dec_out = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)

  def encode(self, x):
    h = nn.silu(self.enc_in(x))
    for conv in self.enc_down:
      h = nn.silu(conv(h))
    mean, logvar = jnp.split(self.enc_out(h), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    h = nn.silu(self.dec_in(z))
    for conv in self.dec_up:
      h = nn.silu(conv(h))
    return self.dec_out(h)

  def __call__(self, x, c=None, labels=None, train=False, noise=None):
    mean, logvar = self.encode(x)
    z = mean if noise is None else mean + jnp.exp(0.5 * logvar) * noise
    return self.decode(z), mean, logvar
