"""1-Rectified Flow on CIFAR-10 (Liu, Gong & Liu 2023, "Flow Straight and Fast: Learning to
Generate and Transfer Data with Rectified Flow", ICLR 2023, sec. 5.1).

Settings: the linear interpolation x_t = (1 - t) x0 + t eps (rectified_flow; the paper's
X_t = t X_1 + (1 - t) X_0 with X_1 the data, so its t is 1 - t here) on t in [1e-3, 0.999]; the
network outputs the velocity (the 'flow' parameterization) trained by the paper's eq. 1, the
squared error to X_1 - X_0 (the 'flow' weighting: E ||u_hat - u||^2, averaged over pixels), t
uniform; the DDPM++ network of score SDE (Song et al. 2021; configs/cifar10/common.py NCSNPP:
128 channels, multipliers (1, 2, 2, 2), 4 blocks per resolution, attention at 16x16, BigGAN
blocks, positional embedding of 999 t), as the paper states. Hyper-parameters the paper leaves
to its released code (gnobitab/RectifiedFlow, configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py
on score SDE's CIFAR-10 defaults): dropout 0.15, EMA 0.999999 with the warm-up of score SDE's
PyTorch ExponentialMovingAverage, which its run_lib.py keeps (use_num_updates=True: decay
min(0.999999, (1 + n) / (10 + n)), n counted from 1 there and from 0 by training.ema_warmup
here; without a warm-up 27% of the EMA's weight would still be on the initialization after
1.3M steps), Adam 2e-4, batch 128, warm-up 5000, grad clip 1, 1.3M iterations, random flips;
samples by RK45 at rtol = atol = 1e-5
(here ode_adaptive with dopri5, scipy's RK45 pair; note it integrates in log(sigma/alpha), not in
t as the paper's code does, so its NFE will differ).

THE PAPER'S RESULT (not reproduced here; Liu et al. 2023, Table 1, 1-Rectified Flow, RK45): FID
2.58 at 127 NFE (adaptive). Not trained or evaluated here; the digits and toy rectified-flow
configs are the measured ones (docs/flow_matching.md).

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/rectified_flow.py --workdir=workdirs/cifar10_rf --mode=train
  python -m experiments.main --config=configs/cifar10/rectified_flow.py --workdir=workdirs/cifar10_rf --mode=sample
  python -m experiments.main --config=configs/cifar10/rectified_flow.py --workdir=workdirs/cifar10_rf --mode=eval
One-step samples of the same model (the paper's 1-RF with N = 1):
--config.sampling.sampler=euler --config.sampling.grid=uniform --config.sampling.num_steps=1
"""
import ml_collections

from configs.cifar10.common import NCSNPP
from configs.images import image_config


def get_config():
  net = dict(NCSNPP, dropout=0.15, embedding_type="positional", embedding_scale=999.0)
  c = image_config("cifar10", "vp", model="ddpmpp", net=net)
  c.experiment = "cifar10/rectified_flow"
  c.sde.name = "rectified_flow"
  c.sde.fields = ml_collections.ConfigDict(dict(t_min=1e-3, t_max=0.999))
  c.model.parameterization = "flow"
  c.model.time_input = "t"
  c.data.random_flip = True
  c.training.weighting = "flow"
  c.training.time_sampling = "uniform"
  c.training.num_steps = 1_300_000
  c.training.ckpt_every = 50_000
  c.training.ema_decay = 0.999999
  c.training.ema_warmup = True  # the released code's EMA (see above)
  c.sampling.sampler = "ode_adaptive"
  c.sampling.solver = "dopri5"
  c.sampling.rtol = 1e-5
  c.sampling.atol = 1e-5
  c.sampling.num_steps = 18  # the first step of the adaptive solver: the whole range / 18
  c.sampling.grid = "uniform"
  c.eval.solver = "dopri5"
  return c
