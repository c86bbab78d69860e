"""Shared constructors of the CIFAR-10 configs (paper settings; GPU/TPU scale, not for this CPU).

Each config file in this folder is one row of a paper's results table, with the paper's network,
forward process, loss, optimizer, EMA and sampler. Their docstrings give the paper's numbers,
marked as the paper's: none of them has been trained here (the DDPM network alone runs at a few
images/s on 2 CPU cores: benchmarks/results/cifar_throughput_cpu.md).

Data: tfds ``cifar10`` (train 50,000 / test 10,000), prepared once with TensorFlow installed
(``pip install -e .[tf]``, then ``tfds build cifar10 --file_format=array_record``); read without
TensorFlow. Random horizontal flips, as in all three papers.

Evaluation as the papers report it: FID of 50,000 samples (``eval.fid_num_samples``) against
the statistics of the 50,000 training images, and (score SDE) bits/dim on the test set:

  python -m experiments.reference_stats --dataset=cifar10 --split=train --out=stats
  python -m experiments.main --config=configs/cifar10/<config>.py --workdir=W --mode=eval \
      --config.eval.fid_stats=stats/cifar10_train_32px_50000.npz
"""
import ml_collections

from configs.images import image_config, set_edm, set_score_sde_times

# The published networks' constructor arguments, as literal values (configs import no library
# code; tests/test_config_files.py checks them against diffusion.models' presets).
# DDPM U-Net, Ho et al. 2020, CIFAR-10 (diffusion.models.unet.CIFAR10): 35,746,307 parameters.
DDPM_UNET = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.1)
# NCSN++ / DDPM++ cont., Song et al. 2021, CIFAR-10 (diffusion.models.ncsnpp.CIFAR10_NCSNPP and,
# deep, CIFAR10_NCSNPP_DEEP).
NCSNPP = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,))
NCSNPP_DEEP = dict(NCSNPP, num_res_blocks=8)


def ddpm() -> ml_collections.ConfigDict:
  """Ho et al. 2020, CIFAR-10 (App. B): the 35.7M U-Net, T = 1000 linear betas 1e-4..0.02 (the
  VP SDE with beta in [0.1, 20]), eps prediction with L_simple, Adam 2e-4, batch 128, 800k steps,
  warm-up 5000, grad clip 1, EMA 0.9999, dropout 0.1, random flips; ancestral sampling with
  T = 1000 steps.

  Time ranges: DDPM's discrete times t_i = i / 1000, i = 1..1000, in continuous time: training,
  sampling and the likelihood all start at t_min = 1e-3 (the first step, beta_1 = 1e-4). DDPM
  reports its variational bound (<= 3.75 bits/dim), comparable with ``bpd_elbo``; score SDE's
  PF-ODE numbers for continuous VP models (t_min = 1e-5) are those of the ddpmpp_cont configs.
  For score SDE's likelihood convention here: --config.eval.t_min is bounded by the schedule's
  1e-3; train with --config.sde.fields.t_min=1e-5 instead (a different experiment)."""
  net = dict(DDPM_UNET, embedding_type="positional", embedding_scale=999.0)
  c = image_config("cifar10", "vp", model="ddpm_unet", net=net)
  c.experiment = "cifar10/ddpm"
  c.data.random_flip = True
  c.training.num_steps = 800_000
  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 1_000
  c.sampling.grid = "uniform"
  return c


def score_sde(arch: str, sde: str, deep: bool) -> ml_collections.ConfigDict:
  """Song et al. 2021 (score SDE), CIFAR-10, the continuous-time models of Tables 2 and 3.

  NCSN++ cont. (VE): Fourier features of log sigma; the network output divided by sigma is the
  score, i.e. the eps parameterization with c = log sigma here; EMA 0.999. DDPM++ cont. (VP,
  sub-VP): the positional embedding of 999 t, eps prediction, EMA 0.9999. Both: the
  sigma^2-weighted ("simple") DSM loss, t ~ U[t_min, 1], Adam 2e-4, batch 128, warm-up 5000,
  grad clip 1, dropout 0.1, random flips, 1.3M (deep: 950k) steps (App. H).
  Samplers (Table 3): VE: predictor-corrector, reverse diffusion + Langevin (snr 0.16), 1000
  steps (2000 NFE); VP / sub-VP: Euler-Maruyama, 1000 steps.
  Time ranges (the released code: losses eps = 1e-5, sampling_eps = 1e-3 for VP / sub-VP and
  1e-5 for VE, likelihood eps = 1e-5; configs.images.set_score_sde_times): VP / sub-VP: schedule,
  training and likelihood from 1e-5, sampler to 1e-3; VE: 1e-5 for all.
  Bits/dim (Table 2): the PF-ODE with one Rademacher probe per solve, RK45 at rtol = atol =
  1e-5, on the uniformly dequantized test set, 5 passes (eval.dequantization_draws = 5).
  """
  name = f"{arch}_cont{'_deep' if deep else ''}_{sde}"
  kw = dict(NCSNPP_DEEP if deep else NCSNPP, dropout=0.1)
  if arch == "ncsnpp":
    kw.update(embedding_type="fourier", fourier_scale=16.0)
  else:
    kw.update(embedding_type="positional", embedding_scale=999.0)
  c = image_config("cifar10", sde, model=arch, net=kw)
  c.experiment = f"cifar10/{name}"
  c.data.random_flip = True
  c.training.num_steps = 950_000 if deep else 1_300_000
  c.training.ckpt_every = 50_000
  if sde == "ve":
    c.model.time_input = "log_sigma"
    c.training.ema_decay = 0.999
    c.sampling.sampler = "pc"
    c.sampling.predictor = "reverse_diffusion"
    c.sampling.snr = 0.16
    c.sampling.n_corrector = 1
  else:
    c.training.ema_decay = 0.9999
    c.sampling.sampler = "euler_maruyama"
    set_score_sde_times(c)
  c.sampling.num_steps = 1_000
  c.sampling.grid = "uniform"
  c.eval.dequantization_draws = 5
  c.eval.probe = "rademacher"
  c.eval.solver = "dopri5"  # the released code's scipy RK45 (Dormand-Prince 5(4))
  return c


def edm(arch: str) -> ml_collections.ConfigDict:
  """Karras et al. 2022 (EDM), CIFAR-10 32x32, config F of Table 2 with the VP (DDPM++) or
  VE (NCSN++) architecture, as in Table 7: 128 channels, multipliers (2, 2, 2), 4 blocks per
  resolution, attention at 16x16, dropout 0.13; Adam lr 1e-3 (ramped up over 10 Mimg), batch
  512, 200 Mimg (390,625 steps), EMA half-life 0.5 Mimg (decay 0.5^(512/5e5) = 0.99929 per
  step), no gradient clipping; EDM preconditioning, loss and Heun sampler (configs.images.set_edm).
  Not reproduced: the non-leaking augmentation (p = 0.12) of the paper.
  Class-conditional (FID 1.79): --config.model.conditional=True --config.model.net.num_classes=10.
  """
  kw = dict(NCSNPP, ch_mult=(2, 2, 2), dropout=0.13)
  if arch == "ncsnpp":
    kw.update(embedding_type="fourier", fourier_scale=16.0)
  else:
    kw.update(embedding_type="positional", embedding_scale=1.0)
  c = set_edm(image_config("cifar10", "edm", model=arch, net=kw))
  c.experiment = f"cifar10/edm_{'ve' if arch == 'ncsnpp' else 'vp'}"
  c.data.random_flip = True
  c.data.batch_size = 512
  c.training.num_steps = 390_625
  c.training.ckpt_every = 10_000
  c.training.ema_decay = 0.99929
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 19_531  # 10 Mimg at batch 512
  c.optim.grad_clip = 0.0
  return c
