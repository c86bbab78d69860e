"""Shared settings of the 8x8 digits experiments (VP, VE, EDM): small enough for 2 CPU cores.

The data are scikit-learn's 8x8 digits embedded in the package (diffusion.data.digits: 1,500
train / 297 test images, 17 grey levels, dequantized to [-1, 1]). The network is the DDPM U-Net
of the ``digits`` preset with one residual block per resolution (8 -> 4 -> 2, attention at 4x4,
32/64/64 channels). The three configs share the network, optimizer and step budget and differ in
the forward process, parameterization, loss weighting and time sampling only.
"""
import ml_collections

from configs.images import image_config, set_edm

# The digits preset of the DDPM U-Net (diffusion.models.unet.DIGITS) with one block per
# resolution (about 2x faster per step than two). Literal values: configs import no library code.
NET = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)


def digits_config(sde: str) -> ml_collections.ConfigDict:
  """The digits config under 'vp', 've' or 'edm'."""
  net = dict(NET)
  if sde == "edm":
    # c_noise = ln(sigma)/4 spans about [-1.6, 1.1]: Fourier features resolve it (EDM's NCSN++
    # embedding), the positional embedding of DDPM would use only its fastest frequencies.
    net.update(embedding_type="fourier", fourier_scale=16.0)
    c = set_edm(image_config("digits", "vp", model="ddpm_unet", net=net))
  else:
    net.update(embedding_type="positional", embedding_scale=999.0)  # c = t in [0, 1]
    c = image_config("digits", sde, model="ddpm_unet", net=net)
  c.experiment = f"digits/{sde}"
  c.data.batch_size = 128
  c.training.num_steps = 1_500
  c.training.log_every = 100
  c.training.ckpt_every = 500
  c.training.sample_every = 500
  c.training.ema_decay = 0.995  # short runs: a window of about 200 steps
  c.training.ema_warmup = True  # min(decay, (1 + n) / (10 + n)): no weight left on the init
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"
  c.sampling.num_samples = 1_000
  c.sampling.batch_size = 500
  c.eval.num_samples = 297
  c.eval.nll_points = 297  # the whole test split
  # Three batches, each one adaptive ODE solve: a progress line with an ETA after each (one
  # batch of 297 gave none for 6 minutes, and took as long: 373 s against 388 s here).
  c.eval.nll_batch_size = 100
  c.eval.mmd_points = 297
  # FID / KID against the train split's statistics (python -m experiments.reference_stats
  # --dataset=digits --split=train --out=DIR, then
  # --config.eval.fid_stats=DIR/digits_train_8px_1500.npz):
  # relative numbers only (Inception on 8x8 grey digits is not a paper metric).
  c.eval.fid_num_samples = 1_000
  c.eval.elbo_time_samples = 16  # s.e. of bpd_elbo 0.25 with one draw per image (VP, step 1,500)
  c.eval.sweep_num_samples = 500
  c.eval.rtol = 1e-4
  c.eval.atol = 1e-4
  if sde == "ve":
    c.model.scale_input = True  # x_t reaches sigma_max = 20: feed x / sqrt(sd^2 + sigma^2)
    c.model.sigma_data = 0.75  # the digits' pixel std in [-1, 1]
  return c
