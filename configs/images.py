"""Shared base of the image experiments (digits, MNIST, CIFAR-10, CelebA), on configs/base.py.

``image_config(dataset, sde)`` gives the base config set up for an image dataset and a forward
process; ``set_edm(c)`` switches a config to EDM's preconditioning, loss and sampler (Karras et
al. 2022). Experiment files (``configs/<dataset>/<name>.py``) pick the network and change what
their paper changes. No key is added here that configs/base.py does not define (the drivers read
exactly those), except the network's constructor arguments under ``model.net``.

Conventions of the image configs:
  * pixels in [-1, 1] after uniform dequantization (diffusion.data.images);
  * evaluation: PF-ODE NLL with the Hutchinson divergence (one Rademacher probe per image,
    Song et al. 2021, App. D.2) reported in bits/dim by the eval driver, VDM's ELBO in bits/dim
    next to it, and sample grids;
  * time ranges: ``sde.fields.t_min`` is the schedule's domain; ``training.t_min``,
    ``sampling.t_min`` and ``eval.t_min`` (None: the schedule's) are the loss's, the sampler's
    and the likelihood's lower ends. VP_FIELDS keeps t_min = 1e-3 for all three (the digits
    runs trained so); the score SDE configs use ``set_score_sde_times`` (1e-5 / 1e-3 / 1e-5);
  * the paper's sampler by default (ancestral / reverse-diffusion / PC for DDPM and score SDE
    runs would need 1000-2000 NFE; here Heun on the Karras grid, overridable).
"""
import ml_collections

from configs.base import get_base_config

# Forward processes as in the papers. VP / sub-VP: Song et al. 2021 (score SDE), App. C, the
# continuous limit of DDPM's linear betas 1e-4..0.02 over 1000 steps (beta_min = 0.1,
# beta_max = 20). VE: sigma_min = 0.01, sigma_max = the largest pairwise distance of the training
# data (Song & Ermon 2020, technique 1): 50 for CIFAR-10, 90 for CelebA 64x64; smaller for the
# small datasets. EDM: sigma in [0.002, 80] (Karras et al. 2022, Table 1).
VP_FIELDS = dict(beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0)
VE_SIGMA_MAX = {"digits": 20.0, "mnist": 50.0, "cifar10": 50.0, "celeb_a": 90.0}
EDM_FIELDS = dict(t_min=0.002, t_max=80.0)

# Time ranges of score SDE's continuous VP / sub-VP models (Song et al. 2021; the released code,
# yang-song/score_sde: losses.get_sde_loss_fn eps=1e-5, run_lib sampling_eps=1e-3 for VP and
# sub-VP (1e-5 for VE), likelihood.get_likelihood_fn eps=1e-5, rtol = atol = 1e-5). The schedule
# (sde.fields.t_min) spans the smallest of them; training and the likelihood use it, the
# sampler stops at sampling.t_min.
SCORE_SDE_VP_T_MIN = 1e-5  # sde.fields.t_min = training t_min = likelihood t_min
SCORE_SDE_VP_SAMPLING_T_MIN = 1e-3  # sampling.t_min


def set_score_sde_times(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A VP / sub-VP config with score SDE's three time ranges (above): the schedule, training and
  the likelihood from 1e-5, the sampler down to 1e-3. VE already has t_min = 1e-5 everywhere."""
  if c.sde.name not in ("vp", "subvp"):
    raise ValueError(f"score SDE's VP time ranges apply to 'vp' / 'subvp', not {c.sde.name!r}")
  c.sde.fields.t_min = SCORE_SDE_VP_T_MIN
  c.training.t_min = None  # the schedule's, 1e-5
  c.eval.t_min = None  # the schedule's, 1e-5
  c.sampling.t_min = SCORE_SDE_VP_SAMPLING_T_MIN
  return c


def sde_fields(dataset: str, sde: str) -> dict:
  """The forward-process fields of ``sde`` ('vp', 'subvp', 've', 'edm') for ``dataset``."""
  if sde in ("vp", "subvp"):
    return dict(VP_FIELDS)
  if sde == "ve":
    return dict(sigma_min=0.01, sigma_max=VE_SIGMA_MAX[dataset], t_min=1e-5, t_max=1.0)
  if sde == "edm":
    return dict(EDM_FIELDS)
  raise ValueError(f"unknown image sde {sde!r}; accepted: vp, subvp, ve, edm")


def image_config(dataset: str, sde: str, *, model: str,
                 net: dict) -> ml_collections.ConfigDict:
  """The base config for ``dataset`` under ``sde`` with network ``model(**net)``.

  Defaults are DDPM's training recipe (Ho et al. 2020, App. B: Adam lr 2e-4, batch 128,
  warm-up 5000, grad clip 1, EMA 0.9999, eps prediction with the "simple" loss, i.e. the 'eps'
  weighting with uniform t); experiment files override what their paper changes.
  """
  c = get_base_config()
  c.experiment = f"{dataset}/{sde}"
  c.data.name = dataset
  c.data.batch_size = 128
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.random_flip = False
  c.sde.name = sde
  c.sde.fields = ml_collections.ConfigDict(sde_fields(dataset, sde))

  c.model.name = model
  c.model.net = ml_collections.ConfigDict(net)
  c.model.parameterization = "eps"
  c.model.time_input = "t"
  c.model.scale_input = False
  c.model.sigma_data = 0.5

  c.training.num_steps = 800_000
  c.training.log_every = 1_000
  c.training.ckpt_every = 10_000
  c.training.sample_every = 50_000  # a grid of eval.plot_samples EMA samples in plots/
  c.training.max_to_keep = 3
  c.training.weighting = "eps"
  c.training.time_sampling = "uniform"
  c.training.ema_decay = 0.9999
  c.training.ema_warmup = False

  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5_000
  c.optim.grad_clip = 1.0
  c.optim.decay = "none"

  c.sampling.sampler = "heun"
  c.sampling.num_steps = 17  # 17 Heun intervals over 18 noise levels + the step to 0: 35 NFE
  c.sampling.grid = "karras"
  c.sampling.num_samples = 50_000
  c.sampling.batch_size = 500

  c.eval.num_samples = 1_000
  c.eval.nll_points = 10_000  # the whole CIFAR-10 test split
  c.eval.nll_batch_size = 250
  c.eval.divergence = "hutchinson"
  c.eval.rtol = 1e-5
  c.eval.atol = 1e-5
  c.eval.mmd_points = 1_000
  c.eval.plot_samples = 64  # images in each sample grid (8 x 8)
  c.eval.density_grid = 0  # no density heat map for images
  return c


def set_edm(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """EDM (Karras et al. 2022, Table 1, "Ours"): sigma(t) = t in [0.002, 80]; the F-prediction
  with c_skip / c_out / c_in / c_noise = ln(sigma)/4 and sigma_data = 0.5; the loss weight
  lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 with ln(sigma) ~ N(P_mean=-1.2, P_std=1.2);
  Heun's 2nd-order ODE solver on the rho = 7 grid with 18 noise levels (num_steps = 17, 35 NFE)."""
  c.sde.name = "edm"
  c.sde.fields = ml_collections.ConfigDict(dict(EDM_FIELDS))
  c.model.parameterization = "edm"
  c.model.time_input = "c_noise"
  c.model.sigma_data = 0.5
  c.training.weighting = "edm"
  c.training.time_sampling = "lognormal"
  c.training.loss_opts = ml_collections.ConfigDict(dict(p_mean=-1.2, p_std=1.2,
                                                        sigma_data=0.5))
  c.sampling.sampler = "heun"
  c.sampling.num_steps = 17  # 17 Heun intervals over 18 noise levels + the step to 0: 35 NFE
  c.sampling.grid = "karras"
  c.sampling.rho = 7.0
  return c


def set_edm2(c: ml_collections.ConfigDict, *, lr: float, rsqrt_ref_steps: int,
             warmup_steps: int, p_mean: float = -0.8,
             p_std: float = 1.6) -> ml_collections.ConfigDict:
  """EDM2's loss and optimizer on an EDM config (Karras et al. 2024): the learned uncertainty
  weighting u(sigma) ('edm2'), ln sigma ~ N(p_mean, p_std^2) (ImageNet-64: -0.8, 1.6, the
  default; ImageNet-512 latents: -0.4, 1.0), Adam with b2 = 0.99, no gradient clipping or weight
  decay, and the inverse square-root decay lr / sqrt(max(step / rsqrt_ref_steps, 1)) after a
  linear warm-up. The network (``edm2_unet``) is the experiment's."""
  c.training.weighting = "edm2"
  c.training.loss_opts.p_mean = p_mean
  c.training.loss_opts.p_std = p_std
  c.optim.name = "adam"
  c.optim.lr = lr
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0
  c.optim.decay = "rsqrt"
  c.optim.rsqrt_ref_steps = rsqrt_ref_steps
  c.optim.warmup_steps = warmup_steps
  return c
