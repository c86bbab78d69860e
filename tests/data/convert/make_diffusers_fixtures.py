"""Writes tests/data/convert/diffusers/: small diffusers UNet2DModel checkpoints of the DDPM family
(Ho et al. 2020, arXiv:2006.11239) with reference outputs computed by diffusers itself.

Run ONLY in a scratch environment that has torch and diffusers (the project never needs either;
nothing imports this file, and pytest does not collect it):

    TORCH_ENV/bin/pip install diffusers safetensors      # keeps torch 2.13.0+cpu
    TORCH_ENV/bin/python tests/data/convert/make_diffusers_fixtures.py \
        --out=tests/data/convert/diffusers [--only=unet2d_train_example,unet2d_options]

The three ddpm_* fixtures were made with torch 2.13.0+cpu, diffusers 0.42.1, safetensors 0.8.0,
numpy 2.4.6; the two unet2d_* ones with torch 2.14.1, diffusers 0.42.1, safetensors 0.8.0,
numpy 2.5.5 (`--only=unet2d_train_example,unet2d_options`, leaving the others untouched). Models
are built from configs (nothing is downloaded) and EVERY parameter is overwritten with seeded
random values (`randomise_`), so that GroupNorm affines, biases and output convs all matter.

Fixtures (each folder: config.json + weights from `UNet2DModel.save_pretrained`,
scheduler_config.json from `DDPMScheduler.save_pretrained`, reference.npz; unet2d_train_example
is a saved DDPMPipeline instead, see below):

  ddpm_small         3 levels (8, 16, 16), 1 resnet per level, attention at the middle level
                     (down DownBlock2D, AttnDownBlock2D, DownBlock2D; up UpBlock2D,
                     AttnUpBlock2D, UpBlock2D), 16x16x3, google/ddpm-* settings otherwise;
                     safetensors; epsilon prediction.
  ddpm_bin_legacy    2 levels (8, 16), 2 resnets per level, attention everywhere, 8x8x1; a
                     torch.save zip `.bin` whose attention parameters carry the deprecated names
                     of the released google/ddpm-* checkpoints (query/key/value/proj_attn instead
                     of to_q/to_k/to_v/to_out.0; group_norm unchanged); diffusers is checked to
                     load it back to the same weights and output; epsilon prediction.
  ddpm_cifar_layout  the 4-level google/ddpm-cifar10-32 layout (1, 2, 2, 2 multipliers, 2 resnets
                     per level, attention at the second level down / third level up) at widths
                     (8, 16, 16, 16), 16x16x3; safetensors; scheduler says v_prediction.
  unet2d_train_example  the layout of diffusers' examples/unconditional_image_generation/
                     train_unconditional.py (its UNet2DModel: block_out_channels (128, 128, 256,
                     256, 512, 512), layers_per_block 2, AttnDownBlock2D at the fifth of six
                     levels, every other field the class default) at 4 levels (8, 8, 16, 16),
                     attention at the third (the second-to-last, as there), 16x16x3. Class
                     defaults: norm_eps 1e-5, downsample_padding 1, flip_sin_to_cos True,
                     freq_shift 0, attention_head_dim 8 (2 heads at 16 channels); only
                     norm_num_groups=4 is set, the default 32 not dividing 8 channels. Saved as
                     the example saves it, `DDPMPipeline(unet, DDPMScheduler()).save_pretrained`:
                     model_index.json, unet/ (config.json, safetensors), scheduler/
                     (scheduler_config.json, DDPMScheduler's defaults: 1000 linear betas, epsilon);
                     reference.npz at the top.
  unet2d_options     every other numeric field the converter maps, at non-default values: 3
                     levels (8, 16, 16), 1 resnet per level, attention at levels 0 and 1 with
                     attention_head_dim 4 (2, 4 and 4 heads: a different count per level),
                     norm_eps 1e-3, downsample_padding 1, flip_sin_to_cos False with freq_shift 0,
                     mid_block_scale_factor sqrt(2), time_embedding_dim 24, attn_norm_num_groups 2,
                     center_input_sample True, act_fn 'swish', the block-type alias
                     'UNetResDownBlock2D'; 8x8x1; safetensors; scheduler squaredcos_cap_v2,
                     prediction 'sample'.

Widths are half of the first plan ((16, 32, ...) with 8 groups) to keep the three ddpm_* folders
near 1.5 MB (the two unet2d_* add 0.95 MB); norm_num_groups=4 keeps 2 channels per group at the
first level.

reference.npz (float64 unless said): `x` (B, C, H, W) ~ N(0, 1); `timesteps` (B,) = 0, 1, 17.5,
500, 998.25, 999; `out` = model.double()(x, timesteps).sample, i.e. diffusers' own float64 forward,
whose sinusoidal timestep embedding is nevertheless computed in float32 (diffusers casts timesteps
and frequencies to float32 in get_timestep_embedding); `out_temb64` = the same float64 forward with
that embedding computed in float64 (the exact target for a float64 port); `out_f32` (float32) =
the float32 forward of x.astype(float32); `temb` (B, block_out_channels[0]) = the float64
embedding, `temb_diffusers` = diffusers' own (computed in float32).

`--full_cifar10=DIR` also builds UNet2DModel with exactly the released google/ddpm-cifar10-32 config
(35,746,307 parameters), randomised the same way, and writes DIR/ (safetensors), DIR/bin_legacy/
(deprecated-name .bin) and DIR/reference.npz (B=4). That one is too large to commit. Its up path
is (UpBlock2D, UpBlock2D, AttnUpBlock2D, UpBlock2D) as released: up block i runs at resolution
32 / 2^(3 - i), so attention sits at 16x16 in both paths (the count is the same either way).

`--full_train_example=DIR` builds train_unconditional.py's UNet2DModel exactly (TRAIN_EXAMPLE_CONFIG,
at its default 64x64 resolution: 113,673,219 parameters, the count of DDPM's 256x256 model, whose
structure it has) and writes it as that script does (DDPMPipeline: DIR/unet/, DIR/scheduler/),
with DIR/reference.npz (B=2: timesteps 0 and 999). Not committed either.
"""
import argparse
import collections
import math
import os

import diffusers
import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

# google/ddpm-* settings that are not about size (released google/ddpm-cifar10-32 config.json).
DDPM_SETTINGS = dict(
    time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    act_fn="silu", attention_head_dim=None, resnet_time_scale_shift="default",
    center_input_sample=False, mid_block_scale_factor=1, add_attention=True, norm_eps=1e-6)

# The released google/ddpm-cifar10-32 config.json (as saved by diffusers 0.16), minus metadata.
CIFAR10_CONFIG = dict(
    DDPM_SETTINGS, sample_size=32, in_channels=3, out_channels=3,
    block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), class_embed_type=None,
    num_class_embeds=None)
CIFAR10_PARAMS = 35_746_307

# What diffusers' examples/unconditional_image_generation/train_unconditional.py builds, at full
# size (its `UNet2DModel(...)` call; everything else the class default).
TRAIN_EXAMPLE_CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                      "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                    "UpBlock2D"))

# The class defaults the unet2d_train_example fixture must carry (UNet2DModel, diffusers 0.42).
CLASS_DEFAULTS = dict(norm_eps=1e-5, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                      attention_head_dim=8, mid_block_scale_factor=1, time_embedding_dim=None,
                      attn_norm_num_groups=None, center_input_sample=False, act_fn="silu")

FIXTURES = {
    "ddpm_small": dict(
        seed=1, prediction_type="epsilon", safe=True, legacy_names=False,
        config=dict(DDPM_SETTINGS, sample_size=16, in_channels=3, out_channels=3,
                    block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))),
    "ddpm_bin_legacy": dict(
        seed=2, prediction_type="epsilon", safe=False, legacy_names=True,
        config=dict(DDPM_SETTINGS, sample_size=8, in_channels=1, out_channels=1,
                    block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4,
                    down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"))),
    "ddpm_cifar_layout": dict(
        seed=3, prediction_type="v_prediction", safe=True, legacy_names=False,
        config=dict(DDPM_SETTINGS, sample_size=16, in_channels=3, out_channels=3,
                    block_out_channels=(8, 16, 16, 16), layers_per_block=2, norm_num_groups=4,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                      "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))),
    "unet2d_train_example": dict(
        seed=4, prediction_type="epsilon", safe=True, legacy_names=False, pipeline=True,
        config=dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
                    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                      "DownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))),
    "unet2d_options": dict(
        seed=5, prediction_type="sample", beta_schedule="squaredcos_cap_v2", safe=True,
        legacy_names=False,
        config=dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                    block_out_channels=(8, 16, 16), norm_num_groups=4,
                    down_block_types=("AttnDownBlock2D", "AttnDownBlock2D", "UNetResDownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"),
                    attention_head_dim=4, norm_eps=1e-3, downsample_padding=1,
                    flip_sin_to_cos=False, freq_shift=0, mid_block_scale_factor=math.sqrt(2),
                    time_embedding_dim=24, attn_norm_num_groups=2, center_input_sample=True,
                    act_fn="swish")),
}

TIMESTEPS = np.array([0.0, 1.0, 17.5, 500.0, 998.25, 999.0])

# current name -> name in the released google/ddpm-* checkpoints (diffusers < 0.14 AttentionBlock);
# diffusers maps them back in ModelMixin._fix_state_dict_keys_on_load. group_norm kept its name.
LEGACY_ATTENTION_NAMES = (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."),
                          ("to_out.0.", "proj_attn."))


def randomise_(model: torch.nn.Module, seed: int) -> None:
  """Overwrites every parameter: weights N(0, 1/fan_in) (fan_in = numel / out_channels),
  biases N(0, 0.1^2), GroupNorm weight 1 + N(0, 0.1^2), GroupNorm bias N(0, 0.1^2)."""
  gen = torch.Generator().manual_seed(seed)
  norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}
  with torch.no_grad():
    for name, p in model.named_parameters():
      module, leaf = name.rsplit(".", 1)
      z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
      if module in norms:
        value = 1 + 0.1 * z if leaf == "weight" else 0.1 * z
      elif leaf == "bias":
        value = 0.1 * z
      elif leaf == "weight" and p.ndim >= 2:
        value = z / math.sqrt(p.numel() / p.shape[0])
      else:
        raise ValueError(f"no randomisation rule for parameter {name} of shape {tuple(p.shape)}")
      p.copy_(value.to(p.dtype))


def legacy_attention_paths(model: UNet2DModel) -> list:
  """Module paths of the attention blocks diffusers would rename on load."""
  return [n for n, m in model.named_modules() if getattr(m, "_from_deprecated_attn_block", False)]


def to_legacy_name(key: str, paths: list) -> str:
  for path in paths:
    for new, old in LEGACY_ATTENTION_NAMES:
      if key.startswith(f"{path}.{new}") or key == f"{path}.{new[:-1]}":
        return key.replace(f"{path}.{new[:-1]}", f"{path}.{old[:-1]}", 1)
  return key


def legacy_state_dict(model: UNet2DModel) -> collections.OrderedDict:
  """model.state_dict() with deprecated attention names, `_metadata` (module versions) renamed too,
  as `torch.save(model.state_dict())` of an old diffusers model would have written it."""
  paths = legacy_attention_paths(model)
  sd = model.state_dict()
  out = collections.OrderedDict((to_legacy_name(k, paths), v.contiguous()) for k, v in sd.items())
  drop = {f"{p}.to_out{s}" for p in paths for s in ("", ".1")}  # ModuleList, Dropout: gone
  out._metadata = collections.OrderedDict(
      (to_legacy_name(k, paths), v) for k, v in sd._metadata.items() if k not in drop)
  return out


def exact_timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool,
                             freq_shift: float) -> torch.Tensor:
  """float64 DDPM sinusoidal embedding (Ho et al. 2020, App. B; Vaswani et al. 2017, Sec. 3.5):
  f_i = exp(-ln(10000) i / (dim/2 - freq_shift)), emb = [sin(t f), cos(t f)] (cos first if
  flip_sin_to_cos), zero-padded when dim is odd."""
  half = dim // 2
  freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64)
                    / (half - freq_shift))
  arg = t.to(torch.float64)[:, None] * freqs[None]
  emb = torch.cat([torch.sin(arg), torch.cos(arg)], -1)
  if flip_sin_to_cos:
    emb = torch.cat([emb[:, half:], emb[:, :half]], -1)
  if dim % 2:
    emb = torch.nn.functional.pad(emb, (0, 1))
  return emb


def temb_exact(model: UNet2DModel, t: torch.Tensor) -> torch.Tensor:
  c = model.config
  return exact_timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)


@torch.no_grad()
def forward(model: UNet2DModel, x: np.ndarray, t: np.ndarray, dtype: torch.dtype,
            temb64: bool = False) -> np.ndarray:
  """model(x, t).sample in `dtype` (model copied to that dtype); temb64 replaces diffusers'
  float32 timestep embedding with the float64 one."""
  m = UNet2DModel.from_config(model.config).to(dtype)
  m.load_state_dict(model.state_dict())
  m.eval()
  if temb64:
    m.time_proj.forward = lambda ts: temb_exact(m, ts)
  out = m(torch.from_numpy(x).to(dtype), torch.from_numpy(t).to(dtype)).sample
  return out.double().numpy()


def reference(model: UNet2DModel, seed: int, batch: int) -> dict:
  """The arrays of reference.npz (see the module docstring)."""
  c = model.config
  gen = torch.Generator().manual_seed(1000 + seed)
  x = torch.randn((batch, c.in_channels, c.sample_size, c.sample_size), generator=gen,
                  dtype=torch.float64).numpy()
  t = TIMESTEPS[np.linspace(0, len(TIMESTEPS) - 1, batch).round().astype(int)]
  tt = torch.from_numpy(t)
  ref = dict(x=x, timesteps=t, out=forward(model, x, t, torch.float64),
             out_temb64=forward(model, x, t, torch.float64, temb64=True),
             out_f32=forward(model, x, t, torch.float32).astype(np.float32),
             temb=temb_exact(model, tt).numpy(),
             temb_diffusers=model.time_proj(tt).double().numpy())
  return ref


def check_reference(name: str, ref: dict) -> None:
  """Activations O(1) and the float32 / float64 / embedding discrepancies printed."""
  std = float(ref["out"].std())
  if not 0.1 < std < 10:
    raise ValueError(f"{name}: output std {std} is not O(1); change the randomisation")
  d_temb = np.abs(ref["temb"] - ref["temb_diffusers"]).max()
  d_out = np.abs(ref["out"] - ref["out_temb64"]).max()
  d_f32 = np.abs(ref["out"] - ref["out_f32"]).max()
  if d_temb > 1e-3:
    raise ValueError(f"{name}: float64 embedding differs from diffusers' by {d_temb}")
  print(f"  {name}: out std {std:.4f}, max|out| {np.abs(ref['out']).max():.3f}; "
        f"max|temb64 - temb_diffusers| {d_temb:.3g}, max|out - out_temb64| {d_out:.3g}, "
        f"max|out - out_f32| {d_f32:.3g}")


def save_legacy_bin(model: UNet2DModel, folder: str) -> None:
  """config.json + diffusion_pytorch_model.bin with deprecated attention names; checks that
  diffusers loads it back to the same weights and the same output."""
  model.save_pretrained(folder, safe_serialization=False)
  path = os.path.join(folder, "diffusion_pytorch_model.bin")
  legacy = legacy_state_dict(model)
  renamed = sorted(set(legacy) - set(model.state_dict()))
  if not renamed or any(".to_" in k for k in legacy):
    raise ValueError(f"renaming to deprecated attention names failed: {renamed}")
  torch.save(legacy, path)
  loaded = UNet2DModel.from_pretrained(folder)
  sd, sd2 = model.state_dict(), loaded.state_dict()
  if sorted(sd) != sorted(sd2) or any(not torch.equal(sd[k], sd2[k]) for k in sd):
    raise ValueError("diffusers did not load the deprecated-name .bin back to the same weights")
  x = np.random.default_rng(0).standard_normal((2, model.config.in_channels,
                                                model.config.sample_size,
                                                model.config.sample_size))
  t = np.array([3.0, 700.5])
  if not np.array_equal(forward(model, x, t, torch.float64), forward(loaded, x, t, torch.float64)):
    raise ValueError("the reloaded deprecated-name .bin gives a different output")
  print(f"  deprecated names verified by from_pretrained: {len(renamed)} keys, e.g. {renamed[:4]}")


def scheduler(prediction_type: str, beta_schedule: str = "linear") -> DDPMScheduler:
  return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                       beta_schedule=beta_schedule, prediction_type=prediction_type)


def save_scheduler(folder: str, prediction_type: str, beta_schedule: str = "linear") -> None:
  scheduler(prediction_type, beta_schedule).save_pretrained(folder)


def check_class_defaults(model: UNet2DModel) -> None:
  """The train-example fixture carries UNet2DModel's own defaults (CLASS_DEFAULTS)."""
  got = {k: model.config[k] for k in CLASS_DEFAULTS}
  if got != CLASS_DEFAULTS:
    raise ValueError(f"UNet2DModel's defaults changed: {got} != {CLASS_DEFAULTS}")


def print_sizes(folder: str) -> int:
  total = 0
  for root, _, files in sorted(os.walk(folder)):
    for f in sorted(files):
      size = os.path.getsize(os.path.join(root, f))
      total += size
      print(f"  {size:>10,d}  {os.path.relpath(os.path.join(root, f), folder)}")
  print(f"  {total:>10,d}  total")
  return total


def build(config: dict, seed: int) -> UNet2DModel:
  torch.manual_seed(seed)
  model = UNet2DModel(**config).eval()
  randomise_(model, seed)
  return model


def make_fixture(out: str, name: str, spec: dict) -> None:
  folder = os.path.join(out, name)
  os.makedirs(folder, exist_ok=True)
  model = build(spec["config"], spec["seed"])
  print(f"{name}: {sum(p.numel() for p in model.parameters()):,d} parameters")
  if spec.get("pipeline"):
    # As train_unconditional.py saves its result: DDPMPipeline(unet, scheduler).save_pretrained.
    check_class_defaults(model)
    DDPMPipeline(unet=model, scheduler=DDPMScheduler()).save_pretrained(folder)
  elif spec["legacy_names"]:
    save_legacy_bin(model, folder)
  else:
    model.save_pretrained(folder, safe_serialization=spec["safe"])
  if not spec.get("pipeline"):
    save_scheduler(folder, spec["prediction_type"], spec.get("beta_schedule", "linear"))
  ref = reference(model, spec["seed"], batch=6)
  check_reference(name, ref)
  np.savez(os.path.join(folder, "reference.npz"), **ref)


def make_full_cifar10(folder: str) -> None:
  """Released google/ddpm-cifar10-32 architecture, random weights; not committed."""
  model = build(CIFAR10_CONFIG, seed=10)
  n = sum(p.numel() for p in model.parameters())
  print(f"full google/ddpm-cifar10-32 architecture: {n:,d} parameters")
  if n != CIFAR10_PARAMS:
    raise ValueError(f"expected {CIFAR10_PARAMS:,d} parameters, got {n:,d}")
  os.makedirs(folder, exist_ok=True)
  model.save_pretrained(folder, safe_serialization=True)
  save_legacy_bin(model, os.path.join(folder, "bin_legacy"))
  save_scheduler(folder, "epsilon")
  ref = reference(model, seed=10, batch=4)
  check_reference("ddpm_cifar10_full", ref)
  np.savez(os.path.join(folder, "reference.npz"), **ref)
  print_sizes(folder)


def make_full_train_example(folder: str) -> None:
  """train_unconditional.py's UNet2DModel at 64x64, random weights, saved as its pipeline;
  not committed."""
  model = build(TRAIN_EXAMPLE_CONFIG, seed=11)
  check_class_defaults(model)
  print(f"full train_unconditional.py architecture: "
        f"{sum(p.numel() for p in model.parameters()):,d} parameters")
  os.makedirs(folder, exist_ok=True)
  DDPMPipeline(unet=model, scheduler=DDPMScheduler()).save_pretrained(folder)
  ref = reference(model, seed=11, batch=2)
  check_reference("train_example_full", ref)
  np.savez(os.path.join(folder, "reference.npz"), **ref)
  print_sizes(folder)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "diffusers"))
  ap.add_argument("--full_cifar10", default=None,
                  help="also write the full-size google/ddpm-cifar10-32 check here")
  ap.add_argument("--full_train_example", default=None,
                  help="also write the full-size train_unconditional.py check here")
  ap.add_argument("--only", default=None,
                  help="comma-separated fixture names to write (default: all; empty: none, "
                       "e.g. with --full_cifar10)")
  args = ap.parse_args()
  print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, numpy {np.__version__}")
  torch.use_deterministic_algorithms(True)
  names = list(FIXTURES) if args.only is None else [n for n in args.only.split(",") if n]
  unknown = sorted(set(names) - set(FIXTURES))
  if unknown:
    raise ValueError(f"--only: unknown fixtures {unknown}; known: {list(FIXTURES)}")
  for name in names:
    make_fixture(args.out, name, FIXTURES[name])
  if names:
    print_sizes(args.out)
  if args.full_cifar10:
    make_full_cifar10(args.full_cifar10)
  if args.full_train_example:
    make_full_train_example(args.full_train_example)


if __name__ == "__main__":
  main()
