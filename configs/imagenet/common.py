"""Shared constructors of the ImageNet latent-diffusion configs (DiT, SiT; paper settings for
accelerators, nothing here has been trained).

Data: class-conditional ImageNet (ILSVRC 2012, ``data.name='imagenet2012'``, 1,281,167 training
images, 1000 classes) as the latents of Stable Diffusion's VAE (stabilityai/sd-vae-ft-ema; -mse
decodes the reported FIDs of DiT): a 256x256 image gives 32x32x4 latents, scaled by 0.18215
(``latent.normalization='scale'``), a fresh draw from the encoder's posterior every batch
(``latent.posterior='sample'``), as both releases do. Encode once with
``python -m experiments.encode`` and set ``latent.dataset`` to the folder it writes
(docs/latent.md); the run trains on latents, samples and evaluates in pixels through the decoder.
The releases random-flip the images before encoding each batch; here the latents are encoded
once, so flips are whatever the encoding did (``data.random_flip`` stays False: a flipped latent
is not the latent of the flipped image).

The network (both papers): DiT-XL/2 (diffusion.models.dit.preset('XL/2'): depth 28, width 1152,
16 heads, patch 2: 256 tokens), class-conditional with 1000 classes + the NULL label (label
dropout 0.1, for classifier-free guidance), ``learn_sigma`` (8 output channels, so that the
parameter count is the papers': 674,834,720 here, 675,129,632 with the release's frozen
pos_embed), and the released code's conventions (``embedding_convention='adm'``,
``pos_embed_axes='wh'``, ``reference_init``), so that a converted release
(``python -m experiments.convert --format=dit``) and a run of these configs are the same network.
This codebase's losses never read the variance channels (diffusion.models.dit): DiT trains them
with the VLB term of Nichol & Dhariwal 2021 (L_simple + L_vlb), here only L_simple is
trained and the samplers use fixed variances.

Training (both papers; DiT Sec. 4, its train.py): AdamW, lr 1e-4 constant, no weight decay, no
warm-up, no gradient clipping, batch 256, EMA 0.9999, 400K steps (the papers' model-comparison
budget; the headline numbers are at 7M steps).
"""
import ml_collections

from configs.images import image_config

IMAGENET = "imagenet2012"
NUM_CLASSES = 1000
# Stable Diffusion's VAE: latents scaled by 0.18215 (LDM, DiT and SiT releases).
LATENT_SCALE_FACTOR = 0.18215
# DiT-XL/2 (diffusion.models.dit.preset('XL/2')), literal: configs import no library code.
DIT_XL2 = dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
# The released DiT / SiT code's conventions (diffusion.models.dit's docstring).
RELEASED_CONVENTIONS = dict(embedding_convention="adm", pos_embed_axes="wh",
                            reference_init=True)


def dit_net(size: dict, **overrides) -> dict:
  """Constructor kwargs of a class-conditional DiT of ``size`` with learned variance channels
  and the released conventions."""
  return dict(size, learn_sigma=True, num_classes=NUM_CLASSES, label_dropout=0.1,
              **RELEASED_CONVENTIONS, **overrides)


def latent_imagenet_config(image_size: int, sde: str, *,
                           net: dict) -> ml_collections.ConfigDict:
  """A class-conditional ImageNet latent config of ``dit(**net)`` with DiT's training recipe
  (module docstring); the experiment file sets the forward process, loss and sampler."""
  c = image_config(IMAGENET, sde, model="dit", net=net)
  c.data.image_size = image_size
  c.data.batch_size = 256
  c.data.random_flip = False  # see the module docstring
  c.data.eval_split = "validation"
  c.latent.dataset = f"workdirs/imagenet{image_size}_latents"  # experiments.encode --out
  c.latent.normalization = "scale"
  c.latent.scale_factor = LATENT_SCALE_FACTOR
  c.latent.posterior = "sample"
  c.model.conditional = True
  c.training.num_steps = 400_000
  c.training.ckpt_every = 50_000
  c.training.ema_decay = 0.9999
  c.training.ema_warmup = False
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0
  c.optim.decay = "none"
  c.training.compute_dtype = "float32"  # the releases train in float32 (TF32 matmuls on A100)
  c.sampling.num_samples = 50_000
  c.eval.fid_num_samples = 50_000
  c.guidance.label = -1  # sample i gets class i mod 1000 (a class-balanced FID set)
  return c
