"""SiT-XL/2 on class-conditional ImageNet 256x256 latents (Ma et al. 2024, "SiT: Exploring Flow
and Diffusion-based Generative Models with Scalable Interpolant Transformers", ECCV 2024;
willisma/SiT).

SiT keeps DiT's network, data and optimizer (configs/imagenet/common.py: DiT-XL/2 on the 32x32x4
SD-VAE latents x 0.18215, AdamW 1e-4, batch 256, EMA 0.9999, 400K steps) and changes the
objective to the linear interpolant with velocity prediction: here ``rectified_flow``
(x_t = (1 - t) x0 + t eps) with the 'flow' parameterization and loss (E ||u_hat - (eps - x0)||^2,
t uniform). SiT writes x_t = t x_data + (1 - t) eps with t = 1 the data, so its t is 1 - t here
and its velocity (x_data - eps) is minus ours: the same model up to those two signs, which a
converted SiT checkpoint would need (not offered: this codebase has no reversed-time input).
The network sees t in [0, 1] unscaled (``embedding_scale=1``), as SiT's (which embeds its own t
in [0, 1] with DiT's GLIDE / ADM features); the time range is [1e-3, 0.999] here, [0, 1] there.
``learn_sigma`` keeps the 8 output channels of the release (SiT's forward drops the variance
half, here the losses ignore it): the parameter count is DiT-XL/2's.

Sampling: the release's default ODE sampler, dopri5 at rtol 1e-3 / atol 1e-6 (here
``ode_adaptive`` with dopri5, integrating in log(sigma/alpha) rather than in t, so its NFE
differ). The paper's best FID uses its SDE sampler (Euler-Maruyama, 250 steps, diffusion
coefficient w_t = sigma_t, a "Mean" last step); this codebase's euler_maruyama uses the SDE
whose diffusion matches the forward process (g^2 = 2t / (1 - t) here), a different w_t.
Guidance off by default; the paper's guided setting: --config.guidance.kind=cfg
--config.guidance.weight=1.5.

THE PAPER'S RESULTS (not reproduced here; nothing has been trained): SiT-XL/2 at 400K steps,
no guidance: FID-50K 17.2 (paper Table 1; DiT-XL/2 19.5 there); FID-50K 2.06 with
classifier-free guidance 1.5 and the SDE sampler, 250 steps, after 7M steps (paper; the
release's README lists 2.06 for its SiT-XL-2-256 weights).

Run (needs ImageNet encoded to latents and an accelerator; docs/latent.md):
  python -m experiments.main --config=configs/imagenet/sit_xl2_256.py --workdir=workdirs/imagenet_sit_xl2 --mode=train --config.latent.dataset=LATENTS
  python -m experiments.main --config=configs/imagenet/sit_xl2_256.py --workdir=workdirs/imagenet_sit_xl2 --mode=sample --config.latent.dataset=LATENTS
  python -m experiments.main --config=configs/imagenet/sit_xl2_256.py --workdir=workdirs/imagenet_sit_xl2 --mode=eval --config.latent.dataset=LATENTS
"""
import ml_collections

from configs.imagenet.common import DIT_XL2, dit_net, latent_imagenet_config


def get_config():
  c = latent_imagenet_config(256, "vp", net=dit_net(DIT_XL2, embedding_scale=1.0))
  c.experiment = "imagenet/sit_xl2_256"
  c.sde.name = "rectified_flow"
  c.sde.fields = ml_collections.ConfigDict(dict(t_min=1e-3, t_max=0.999))
  c.training.t_min = None
  c.sampling.t_min = None
  c.eval.t_min = None
  c.model.parameterization = "flow"
  c.model.time_input = "t"
  c.training.weighting = "flow"
  c.training.time_sampling = "uniform"
  c.sampling.sampler = "ode_adaptive"
  c.sampling.solver = "dopri5"
  c.sampling.rtol = 1e-3
  c.sampling.atol = 1e-6
  c.sampling.num_steps = 18  # the first step of the adaptive solver: the whole range / 18
  c.sampling.grid = "uniform"
  c.sampling.clip_denoised = False
  return c
