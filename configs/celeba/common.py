"""Shared settings of the CelebA 64x64 configs (tfds ``celeb_a``, center crop 140 -> 64x64).

The crop / resize is that of NCSN, NCSNv2 and score SDE (diffusion.data.images). The papers
whose recipes are used here report CelebA-HQ 256 (DDPM) and 1024 (score SDE) samples but no
CelebA 64x64 numbers: nothing here is a paper's number. Prepare the data once with TensorFlow
installed: ``pip install -e .[tf]`` then ``tfds build celeb_a --file_format=array_record``
(CelebA's files must be downloaded as tfds instructs).
"""
import ml_collections

from configs.cifar10.common import DDPM_UNET, NCSNPP
from configs.images import image_config, set_score_sde_times


def celeba_config(kind: str) -> ml_collections.ConfigDict:
  """'ddpm' (DDPM U-Net, VP, eps; score SDE's continuous-time ranges: schedule, training and
  likelihood from 1e-5, sampler to 1e-3) or 'ncsnpp_ve' (NCSN++ cont., VE with sigma_max = 90,
  t_min = 1e-5 throughout)."""
  if kind == "ddpm":
    # The CIFAR-10 U-Net one level deeper for 64x64 (64 -> 32 -> 16 -> 8 -> 4), attention at 16.
    net = dict(DDPM_UNET, ch_mult=(1, 2, 2, 2, 4), embedding_type="positional",
               embedding_scale=999.0)
    c = image_config("celeb_a", "vp", model="ddpm_unet", net=net)
    set_score_sde_times(c)  # continuous VP: score SDE's 1e-5 (schedule, loss, likelihood), 1e-3
  elif kind == "ncsnpp_ve":
    net = dict(NCSNPP, ch_mult=(1, 1, 2, 2, 2), dropout=0.1, embedding_type="fourier",
               fourier_scale=16.0)
    c = image_config("celeb_a", "ve", model="ncsnpp", net=net)
    c.model.time_input = "log_sigma"
    c.training.ema_decay = 0.999
    c.sampling.sampler = "pc"
    c.sampling.predictor = "reverse_diffusion"
    c.sampling.snr = 0.17
    c.sampling.num_steps = 1_000
    c.sampling.grid = "uniform"
  else:
    raise ValueError(f"unknown CelebA config kind {kind!r}; accepted: ddpm, ncsnpp_ve")
  c.experiment = f"celeba/{kind}"
  c.data.image_size = 64
  c.data.random_flip = True
  c.data.eval_split = "test"
  c.training.num_steps = 1_300_000 if kind == "ncsnpp_ve" else 800_000
  c.eval.nll_points = 10_000
  return c
