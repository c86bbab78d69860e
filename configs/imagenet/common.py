"""Shared constructors of the ImageNet latent-diffusion configs (DiT, SiT, EDM2; paper settings
for accelerators, nothing here has been trained).

Data: class-conditional ImageNet (ILSVRC 2012, ``data.name='imagenet2012'``, 1,281,167 training
images, 1000 classes), ADM's centre crop (the dataset's default ``data.crop``, as all three
releases prepare it), as the latents of Stable Diffusion's VAE, a fresh draw from the encoder's
posterior every batch (``latent.posterior='sample'``), as the releases do. Encode once with
``python -m experiments.encode`` and set ``latent.dataset`` to the folder it writes
(docs/latent.md; the default is ``workdirs/imagenet<size>_latents``); the run trains on latents,
samples and evaluates in pixels through the decoder. The releases random-flip the images before
encoding each batch (EDM2: no flips); here the latents are encoded once, so flips are whatever
the encoding did (``data.random_flip`` stays False: a flipped latent is not the latent of the
flipped image).

DiT / SiT (``latent_imagenet_config``): a 256x256 image gives 32x32x4 latents of
stabilityai/sd-vae-ft-ema (-mse decodes the reported FIDs of DiT), scaled by 0.18215
(``latent.normalization='scale'``). The network (both papers): DiT-XL/2
(diffusion.models.dit.preset('XL/2'): depth 28, width 1152, 16 heads, patch 2: 256 tokens),
class-conditional with 1000 classes + the NULL label (label dropout 0.1, for classifier-free
guidance), ``learn_sigma`` (8 output channels, so that the parameter count is the papers':
674,834,720 here, 675,129,632 with the release's frozen pos_embed), and the released code's
conventions (``embedding_convention='adm'``, ``pos_embed_axes='wh'``, ``reference_init``), so that
a converted release (``python -m experiments.convert --format=dit``) and a run of these configs
are the same network. This codebase's losses never read the variance channels
(diffusion.models.dit): DiT trains them with the VLB term of Nichol & Dhariwal 2021 (L_simple +
L_vlb), here only L_simple is trained and the samplers use fixed variances. Training (both
papers; DiT Sec. 4, its train.py): AdamW, lr 1e-4 constant, no weight decay, no warm-up, no
gradient clipping, batch 256, EMA 0.9999, 400K steps (the papers' model-comparison budget; the
headline numbers are at 7M steps).

EDM2 (``edm2_img512_config``; Karras et al. 2024, "Analyzing and Improving the Training Dynamics
of Diffusion Models", CVPR 2024; the release NVlabs/edm2, its train_edm2.py presets
edm2-img512-{xs,s,m,l,xl,xxl}): 512x512 images to 64x64x4 latents of stabilityai/sd-vae-ft-mse
(its encoder is sd-vae-ft-ema's; the release decodes with -mse), per-channel normalised to
mean 0, std 0.5 (``latent.normalization='channel'``, ``final_std=0.5``; the statistics: below);
the magnitude-preserving U-Net ``edm2_unet`` (diffusion.models.edm2.PRESETS['img512_*']) with
EDM's preconditioning, sigma_data 0.5, the learned uncertainty weighting ('edm2'), ln sigma ~
N(-0.4, 1.0^2), Adam (0.9, 0.99, eps 1e-8) without weight decay or clipping, batch 2048,
lr_ref / sqrt(max(step / 70,000, 1)) after a 10 Mimg linear warm-up, training lengths in Mi
(2^20) images as the release's presets, the post-hoc EMA (power EMAs sigma_rel 0.05 and 0.10,
snapshots every 8 Mi images), Heun with 32 noise levels (63 NFE). Per size (EDM2_IMG512 below):
model_channels, dropout, lr_ref and length. The normalisation's statistics: the release
normalises with fixed per-channel statistics (raw_mean (5.81, 3.25, 0.12, -2.15), raw_std (4.17,
4.62, 3.71, 3.28), diffusion.latent.EDM2_CHANNEL_MEAN / _STD) of latents it makes by feeding the
VAE pixels in [0, 1] (training/encoders.py: x / 255; NVlabs/edm2 issue #9), where the VAE was
trained on, and experiments.encode feeds, [-1, 1]: those statistics do not describe this
codebase's latents, so these configs use the folder's own statistics of its posterior samples
(``latent.channel_mean = channel_std = ()``), which gives what the release's constants aim at
(mean 0, std 0.5 per channel).
"""
import ml_collections

from configs.images import image_config, set_edm, set_edm2

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


def set_imagenet_latents(c: ml_collections.ConfigDict,
                         image_size: int) -> ml_collections.ConfigDict:
  """The data of every ImageNet latent config (module docstring): class-conditional
  imagenet2012 at ``image_size`` (ADM's crop, the dataset's default), no flips, the validation
  split held out, the latents of ``workdirs/imagenet<image_size>_latents`` sampled from their
  posterior; 50,000 class-balanced samples for FID. The normalisation is the caller's."""
  c.data.image_size = image_size
  c.data.random_flip = False  # see the module docstring
  c.data.eval_split = "validation"
  c.latent.dataset = f"workdirs/imagenet{image_size}_latents"  # experiments.encode --out
  c.latent.posterior = "sample"
  c.model.conditional = True
  c.sampling.num_samples = 50_000
  c.eval.fid_num_samples = 50_000
  c.guidance.label = -1  # sample i gets class i mod 1000 (a class-balanced FID set)
  return c


def latent_imagenet_config(image_size: int, sde: str, *,
                           net: dict) -> ml_collections.ConfigDict:
  """A class-conditional ImageNet latent config of ``dit(**net)`` with DiT's training recipe
  (module docstring); the experiment file sets the forward process, loss and sampler."""
  c = set_imagenet_latents(image_config(IMAGENET, sde, model="dit", net=net), image_size)
  c.data.batch_size = 256
  c.latent.normalization = "scale"
  c.latent.scale_factor = LATENT_SCALE_FACTOR
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
  return c


# ----------------------------------------------------------------------------- EDM2, ImageNet-512

# The network shared by the sizes (edm2.PRESETS['img512_*'] less model_channels and dropout;
# literal: configs import no library code; tests/test_imagenet_configs.py checks it).
EDM2_UNET = dict(channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(16, 8),
                 num_classes=NUM_CLASSES)
# Per size, the release's presets (NVlabs/edm2 train_edm2.py, edm2-img512-<size>; the paper's
# Tables 2 and 5): model_channels, dropout, lr_ref (alpha_ref), training length in Mi = 2^20
# images (2048 Mi = 2147.5 Mimg).
EDM2_IMG512 = {
    "xs": dict(model_channels=128, dropout=0.0, lr=0.0120, mi_images=2048),
    "s": dict(model_channels=192, dropout=0.0, lr=0.0100, mi_images=2048),
    "m": dict(model_channels=256, dropout=0.1, lr=0.0090, mi_images=2048),
    "l": dict(model_channels=320, dropout=0.1, lr=0.0080, mi_images=1792),
    "xl": dict(model_channels=384, dropout=0.1, lr=0.0070, mi_images=1280),
    "xxl": dict(model_channels=448, dropout=0.1, lr=0.0065, mi_images=896),
}
EDM2_BATCH = 2048
EDM2_T_REF = 70_000  # steps: the decay's t_ref at ImageNet-512 (35,000 at ImageNet-64)
EDM2_WARMUP_STEPS = 4_883  # the release's 10 Mimg (10^7 images) linear ramp at batch 2048
EDM2_P_MEAN, EDM2_P_STD = -0.4, 1.0  # ImageNet-512 (ImageNet-64: -0.8, 1.6)
EDM2_EMA_PROFILES = (0.05, 0.10)  # the power EMAs the release tracks (training/phema.py)
EDM2_SNAPSHOT_STEPS = 4_096  # 8 Mi images: the paper's snapshot interval
EDM2_CHECKPOINT_STEPS = 65_536  # 128 Mi images: the release's training-state interval


def edm2_net(size: str, **overrides) -> dict:
  """Constructor kwargs of EDM2's ImageNet-512 U-Net of ``size`` ('xs' ... 'xxl'): class-
  conditional, no label dropout (the paper guides with a separate unconditional network)."""
  if size not in EDM2_IMG512:
    raise ValueError(f"unknown EDM2 size {size!r}; accepted: {sorted(EDM2_IMG512)}")
  s = EDM2_IMG512[size]
  return dict(EDM2_UNET, model_channels=s["model_channels"], dropout=s["dropout"],
              label_dropout=0.0, **overrides)


def edm2_img512_config(size: str) -> ml_collections.ConfigDict:
  """EDM2 of ``size`` on class-conditional ImageNet-512 latents with the paper's recipe
  (module docstring; the per-size files list what differs from the release)."""
  net = edm2_net(size)  # a ValueError naming the sizes for another
  s = EDM2_IMG512[size]
  c = set_edm(image_config(IMAGENET, "edm", model="edm2_unet", net=net))
  c = set_imagenet_latents(c, 512)
  c.experiment = f"imagenet/edm2_img512_{size}"
  c.data.batch_size = EDM2_BATCH
  c.latent.normalization = "channel"
  c.latent.channel_mean = ()  # the folder's own statistics (module docstring)
  c.latent.channel_std = ()
  c.latent.final_std = 0.5
  set_edm2(c, lr=s["lr"], rsqrt_ref_steps=EDM2_T_REF, warmup_steps=EDM2_WARMUP_STEPS,
           p_mean=EDM2_P_MEAN, p_std=EDM2_P_STD)
  c.optim.eps = 1e-8
  c.training.num_steps = s["mi_images"] * 2**20 // EDM2_BATCH
  c.training.ckpt_every = EDM2_CHECKPOINT_STEPS
  c.training.ema_profiles = EDM2_EMA_PROFILES
  c.training.ema_snapshot_every = EDM2_SNAPSHOT_STEPS
  # The run's own plain EMA (sample grids, --mode=sample on the run's workdir): mean age 10K
  # steps; the paper's numbers are of post-hoc EMAs (experiments.posthoc_ema).
  c.training.ema_decay = 0.9999
  c.training.ema_warmup = False
  # The release trains in float16 (float32 parameters); bfloat16 is this codebase's reduced
  # precision (--config.training.compute_dtype=float32 for full precision).
  c.training.compute_dtype = "bfloat16"
  c.sampling.num_steps = 31  # 32 noise levels: 31 Heun intervals + the step to 0, 63 NFE
  return c
