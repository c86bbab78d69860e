"""Shared settings of the MNIST configs (28x28x1, tfds ``mnist``: 60,000 train / 10,000 test).

None of DDPM, score SDE or EDM reports MNIST results: these configs transfer their recipes to
28x28 (three resolutions 28 -> 14 -> 7, attention at 7x7) and nothing here is a paper's number.
Prepare the data once with TensorFlow installed: ``pip install -e .[tf]`` then
``tfds build mnist --file_format=array_record``.
"""
import ml_collections

from configs.images import image_config, set_edm, set_score_sde_times

# A DDPM U-Net for 28x28: 64 / 128 / 128 channels, two blocks per level, attention at 7x7.
NET = dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1)


def mnist_config(kind: str) -> ml_collections.ConfigDict:
  """'ddpm' (VP, eps, DDPM's optimizer; score SDE's continuous-time ranges: schedule, training
  and likelihood from 1e-5, sampler to 1e-3) or 'edm' (EDM's preconditioning, loss and
  sampler)."""
  net = dict(NET)
  if kind == "edm":
    net.update(embedding_type="fourier", fourier_scale=16.0)
    c = set_edm(image_config("mnist", "vp", model="ddpm_unet", net=net))
  elif kind == "ddpm":
    net.update(embedding_type="positional", embedding_scale=999.0)
    c = image_config("mnist", "vp", model="ddpm_unet", net=net)
    set_score_sde_times(c)  # continuous VP: score SDE's 1e-5 (schedule, loss, likelihood), 1e-3
  else:
    raise ValueError(f"unknown MNIST config kind {kind!r}; accepted: ddpm, edm")
  c.experiment = f"mnist/{kind}"
  c.training.num_steps = 100_000
  c.training.ckpt_every = 5_000
  c.training.sample_every = 10_000
  c.training.ema_decay = 0.9995
  c.optim.warmup_steps = 1_000
  return c
