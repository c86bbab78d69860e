"""DiT-S/2 on CIFAR-10 in pixel space (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers").

The network is DiT-S/2 (depth 12, hidden size 384, 6 heads, patch 2): at 32x32x3 it sees 256
tokens, the token count of the paper's 256x256 ImageNet latents (32x32x4), so its cost per image
is the paper's S/2 (6.06 Gflops in Table 4, 4 input channels); with 32,471,436 parameters (no
learned variance) it is the size of DDPM's 35.7M CIFAR-10 U-Net. B/2 (130M, 4x the compute)
would be the larger choice. learn_sigma is off: this codebase's losses train the mean only.
The paper's settings that transfer: the linear DDPM schedule (betas 1e-4..0.02 over 1000 steps;
here the VP SDE with beta in [0.1, 20], the network sees c = 999 t), eps prediction with the
"simple" loss, AdamW with lr 1e-4 and no weight decay, no warm-up, no gradient clipping, batch
256, EMA 0.9999, horizontal flips only, 400k steps (Sec. 4's ablations); 250 DDPM sampling steps
(Sec. 4; with the fixed variance, since no variance is learned here). Class-conditional training
with label dropout 0.1, as the paper's: --config.model.conditional=True
--config.model.net.num_classes=10 --config.model.net.label_dropout=0.1.

THE PAPER'S RESULT: none for CIFAR-10. The paper's results are on class-conditional ImageNet
latents (256x256: DiT-XL/2 FID 2.27 with classifier-free guidance 1.5, Table 2), not pixel-space
CIFAR-10: there is no paper number to compare this run with.

Run (needs a prepared tfds cifar10 and an accelerator; see docs/images.md):
  python -m experiments.main --config=configs/cifar10/dit.py --workdir=workdirs/cifar10_dit --mode=train
  python -m experiments.main --config=configs/cifar10/dit.py --workdir=workdirs/cifar10_dit --mode=sample
  python -m experiments.main --config=configs/cifar10/dit.py --workdir=workdirs/cifar10_dit --mode=eval
"""
from configs.images import image_config

# DiT-S/2 (diffusion.models.dit.preset('S/2')), literal: configs import no library code.
NET = dict(depth=12, hidden_size=384, num_heads=6, patch_size=2)


def get_config():
  net = dict(NET, embedding_scale=999.0)  # c = t in [0, 1] -> the paper's step index 999 t
  c = image_config("cifar10", "vp", model="dit", net=net)
  c.experiment = "cifar10/dit"
  c.data.random_flip = True
  c.data.batch_size = 256
  c.training.num_steps = 400_000
  c.training.ckpt_every = 10_000
  c.training.ema_decay = 0.9999
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0
  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 250
  c.sampling.grid = "uniform"
  return c
