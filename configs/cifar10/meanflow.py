"""MeanFlow on CIFAR-10 (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative
Modeling", arXiv 2505.13447, unconditional CIFAR-10, 1-NFE).

What is set, and where it comes from. The method: u(z_t, r, t) on the rectified-flow path
z_t = (1 - t) x0 + t eps over t in [0, 1] (sde.fields t_min = 0, t_max = 1), conditioned on
(t, t - r), trained on the MeanFlow target sg(v - (t - r) du/dt) by one jvp with adaptive loss
weighting (diffusion.mean_flow; the paper's eq. 9-10, Sec. 4), sampled in one step
z_0 = z_1 - u(z_1, 0, 1) (the 'flow_map' sampler). The paper's CIFAR-10 settings, checked
(2026-12-07) against the authors' PyTorch re-implementation of their CIFAR-10 runs (py-meanflow,
``scripts/cifar10_v0.sh``, which its README names as the paper's configuration; read, not
copied): a U-Net, t and r each from lognorm(-2.0, 2.0) ('v0' sampler), 75% of the batch with
r != t, adaptive weight p = 0.75 with c = 1e-3, Adam (0.9, 0.999) lr 6e-4, batch 128 x 8 GPUs =
1024, 16,000 epochs (~800k iterations), warm-up 200 epochs (9,766 iterations here), dropout 0.2,
EDM's augmentation with its augment labels as conditions. Where this config differs: the network
is the 35.7M DDPM U-Net of configs/cifar10/ddpm.py (a two-time network here: a second positional
embedding for t - r) — the paper's U-Net is its own (about 55M parameters); no EDM augmentation
(random flips, as the other CIFAR-10 configs); one EMA, 0.99995 (that code keeps 0.9999, 0.99995
and 0.9996 and the text does not say which gave 2.92); no CFG (unconditional). The repository's
improved 'v1' sampler (t and r drawn apart, reaching ~2.8) is not offered.

THE PAPER'S RESULT (not reproduced here; Geng et al. 2025, CIFAR-10 table, 1-NFE, unconditional):
FID 2.92. Not trained or evaluated here; the toy and digits flow-map configs are the runnable ones
(docs/mean_flow.md).

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/meanflow.py --workdir=workdirs/cifar10_meanflow --mode=train
  python -m experiments.main --config=configs/cifar10/meanflow.py --workdir=workdirs/cifar10_meanflow --mode=eval
Two steps: --config.sampling.num_steps=2.
"""
import ml_collections

from configs.cifar10.common import DDPM_UNET
from configs.images import image_config


def get_config():
  net = dict(DDPM_UNET, dropout=0.2, embedding_type="positional", embedding_scale=999.0)
  c = image_config("cifar10", "vp", model="ddpm_unet", net=net)
  c.experiment = "cifar10/meanflow"
  c.sde.name = "rectified_flow"
  c.sde.fields = ml_collections.ConfigDict(dict(t_min=0.0, t_max=1.0))
  c.training.objective = "mean_flow"
  c.model.parameterization = "mean_flow"
  c.model.time_input = "t"
  c.training.weighting = "flow"  # not read by the flow-map objectives
  c.training.time_sampling = "uniform"  # not read either: (r, t) come from loss_opts
  c.training.loss_opts = ml_collections.ConfigDict(dict(
      time_distribution="logit_normal", time_mean=-2.0, time_std=2.0, ratio_r_neq_t=0.75,
      adaptive_p=0.75, adaptive_c=1e-3))
  c.data.random_flip = True
  c.data.batch_size = 1024
  c.optim.lr = 6e-4
  c.optim.warmup_steps = 9_766  # 200 epochs of 50,000 images at batch 1024
  c.training.num_steps = 800_000
  c.training.ckpt_every = 50_000
  c.training.ema_decay = 0.99995
  c.sampling.sampler = "flow_map"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 1
  c.eval.elbo = False
  return c
