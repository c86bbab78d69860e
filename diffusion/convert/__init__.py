"""Converters of released checkpoints into this codebase's parameter trees.

* :mod:`diffusion.convert.common`: the name-by-name mapping with its completeness checks, and
  the readers of safetensors / PyTorch ``.bin`` / flax msgpack files (no torch needed).
* :mod:`diffusion.convert.diffusers_unet`: diffusers ``UNet2DModel`` (the DDPM family, Ho et al.
  2020) onto ``ddpm_unet``.
* :mod:`diffusion.convert.dit`: the released DiT checkpoints (Peebles & Xie 2023, torch state
  dicts) onto ``dit``, a latent diffusion model.
* :mod:`diffusion.convert.diffusers_vae`: diffusers ``AutoencoderKL`` (Stable Diffusion's /
  SDXL's KL VAE, Rombach et al. 2022) onto ``autoencoder_kl``; ``convert(folder)`` returns a
  ``ConvertedAutoencoder`` (params, net kwargs, scaling / shift factors), not a denoiser.
* :mod:`diffusion.convert.score_sde`: score SDE's flax checkpoints (Song et al. 2021) onto
  ``ncsnpp`` / ``ddpmpp``.

The command line is ``python -m experiments.convert`` (docs/convert.md).
"""
