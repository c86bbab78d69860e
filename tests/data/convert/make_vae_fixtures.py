"""Writes tests/data/convert/diffusers_vae/: tiny diffusers AutoencoderKL checkpoints (the KL VAE
of latent diffusion / Stable Diffusion, Rombach et al. 2022, arXiv:2112.10752) with reference
encoder / decoder outputs computed by diffusers itself.

Run ONLY in a scratch environment that has torch and diffusers (the project never needs either;
nothing imports this file, and pytest does not collect it):

    TORCH_ENV/bin/pip install diffusers safetensors
    TORCH_ENV/bin/python tests/data/convert/make_vae_fixtures.py \
        --out=tests/data/convert/diffusers_vae

Made with torch 2.14, diffusers 0.42.1, safetensors, numpy (exact versions printed by the run and
recorded in tests/data/convert/README.md). Models are built from configs (nothing is downloaded)
and EVERY parameter is overwritten with seeded random values (make_diffusers_fixtures.randomise_:
weights N(0, 1/fan_in), biases N(0, 0.1^2), GroupNorm affines 1 + N(0, 0.1^2) / N(0, 0.1^2)).

Fixtures (each folder: config.json + weights from `AutoencoderKL.save_pretrained`,
reference.npz):

  vae_small         2 levels (8, 16), layers_per_block 1, norm_num_groups 4, 4 latent channels,
                    16x16x3 -> 8x8x4; safetensors; SD's settings otherwise.
  vae_three_levels  3 levels (8, 16, 16), layers_per_block 2 (SD's), 4 latent channels,
                    16x16x3 -> 4x4x4; safetensors; SDXL's scaling_factor 0.13025 and
                    force_upcast, plus latents_mean / latents_std (to be carried).
  vae_bin_legacy    2 levels (8, 16), layers_per_block 1, 1 image channel, 2 latent channels,
                    8x8x1 -> 4x4x2, no quant_conv / post_quant_conv, shift_factor 0.1159,
                    scaling_factor 0.3611 (the SD3 / FLUX VAE settings); a torch.save zip `.bin`
                    whose mid-block attention tensors carry diffusers' deprecated names
                    (query / key / value / proj_attn); diffusers is checked to load it back
                    to the same weights and outputs.
  vae_no_attention  2 levels (8, 16), layers_per_block 1, 3 latent channels,
                    mid_block_add_attention=False, 8x8x3 -> 4x4x3; safetensors.

reference.npz, with x (B, C, H, W) float64 ~ U(-1, 1), z and noise (B, c, h, w) float64 ~ N(0, 1),
diffusers' float64 forward (model.double()) of:
  mean, std, logvar  encode(x).latent_dist.mean / .std / .logvar (logvar clamped to [-30, 20])
  dec                decode(z).sample
  rec                forward(x).sample (decode of the posterior mode, the mean)
  rec_noise          decode(mean + std * noise).sample (a reparameterised posterior sample)
and the float32 forward (model.float() on the float32 inputs) of the same: mean_f32, std_f32,
dec_f32, rec_f32 (float32).

`--full_sd=DIR` also builds AutoencoderKL with exactly Stable Diffusion's VAE config
(stabilityai/sd-vae-ft-mse: 83,653,863 parameters), randomised the same way, and writes DIR/
(safetensors), DIR/bin_legacy/ (deprecated attention names, .bin) and DIR/reference.npz
(B=2, 64x64x3). That one is too large to commit (335 MB).
"""
import argparse
import os
import sys

import diffusers
import numpy as np
import safetensors
import torch
from diffusers import AutoencoderKL

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_diffusers_fixtures import legacy_state_dict, print_sizes, randomise_  # noqa: E402

SD_SETTINGS = dict(act_fn="silu", force_upcast=True, use_quant_conv=True,
                   use_post_quant_conv=True, mid_block_add_attention=True)


def _blocks(n):
  return dict(down_block_types=("DownEncoderBlock2D",) * n,
              up_block_types=("UpDecoderBlock2D",) * n)


FIXTURES = {
    "vae_small": dict(
        seed=1, size=16, legacy_names=False,
        config=dict(SD_SETTINGS, **_blocks(2), in_channels=3, out_channels=3,
                    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    latent_channels=4, sample_size=16, scaling_factor=0.18215)),
    "vae_three_levels": dict(
        seed=2, size=16, legacy_names=False,
        config=dict(SD_SETTINGS, **_blocks(3), in_channels=3, out_channels=3,
                    block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                    latent_channels=4, sample_size=16, scaling_factor=0.13025,
                    latents_mean=(0.1, -0.2, 0.3, -0.4), latents_std=(1.5, 0.5, 2.0, 1.0))),
    "vae_bin_legacy": dict(
        seed=3, size=8, legacy_names=True,
        config=dict(SD_SETTINGS, **_blocks(2), in_channels=1, out_channels=1,
                    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    latent_channels=2, sample_size=8, scaling_factor=0.3611,
                    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)),
    "vae_no_attention": dict(
        seed=4, size=8, legacy_names=False,
        config=dict(SD_SETTINGS, **_blocks(2), in_channels=3, out_channels=3,
                    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    latent_channels=3, sample_size=8, mid_block_add_attention=False)),
}
BATCH = 3

# stabilityai/sd-vae-ft-mse's config.json (SDXL's VAE: the same but scaling_factor 0.13025,
# sample_size 1024), minus metadata.
SD_CONFIG = dict(SD_SETTINGS, **_blocks(4), in_channels=3, out_channels=3,
                 block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                 latent_channels=4, sample_size=256, scaling_factor=0.18215)
SD_PARAMS = 83_653_863


def build(config: dict, seed: int) -> AutoencoderKL:
  torch.manual_seed(seed)
  model = AutoencoderKL(**config).eval()
  randomise_(model, seed)
  return model


def copy_as(model: AutoencoderKL, dtype: torch.dtype) -> AutoencoderKL:
  m = AutoencoderKL.from_config(model.config).to(dtype)
  m.load_state_dict(model.state_dict())
  return m.eval()


@torch.no_grad()
def outputs(model: AutoencoderKL, x: np.ndarray, z: np.ndarray, noise: np.ndarray,
            dtype: torch.dtype) -> dict:
  """mean / std / logvar of encode(x), decode(z), forward(x) (mode), decode(mean + std noise),
  all computed in ``dtype``, returned as float64 numpy."""
  m = copy_as(model, dtype)
  t = lambda a: torch.from_numpy(a).to(dtype)  # noqa: E731
  post = m.encode(t(x)).latent_dist
  return dict(mean=post.mean, std=post.std, logvar=post.logvar, dec=m.decode(t(z)).sample,
              rec=m(t(x)).sample, rec_noise=m.decode(post.mean + post.std * t(noise)).sample)


def reference(model: AutoencoderKL, seed: int, size: int, batch: int = BATCH) -> dict:
  """The arrays of reference.npz (see the module docstring)."""
  c = model.config
  gen = torch.Generator().manual_seed(1000 + seed)
  f = 2 ** (len(c.block_out_channels) - 1)
  x = (2 * torch.rand((batch, c.in_channels, size, size), generator=gen,
                      dtype=torch.float64) - 1).numpy()
  lat = (batch, c.latent_channels, size // f, size // f)
  z = torch.randn(lat, generator=gen, dtype=torch.float64).numpy()
  noise = torch.randn(lat, generator=gen, dtype=torch.float64).numpy()
  o64 = {k: v.double().numpy() for k, v in outputs(model, x, z, noise, torch.float64).items()}
  o32 = outputs(model, x.astype(np.float32), z.astype(np.float32), noise.astype(np.float32),
                torch.float32)
  ref = dict(x=x, z=z, noise=noise, **o64)
  for k in ("mean", "std", "dec", "rec"):
    ref[f"{k}_f32"] = o32[k].numpy().astype(np.float32)
  return ref


def check_reference(name: str, ref: dict) -> None:
  """Outputs O(1), logvar inside the clamp, and the float32 / float64 gaps printed."""
  for k in ("mean", "dec", "rec"):
    s = float(ref[k].std())
    if not 0.05 < s < 20:
      raise ValueError(f"{name}: {k} std {s} is not O(1); change the randomisation")
  lv = ref["logvar"]
  if lv.min() <= -30 or lv.max() >= 20:
    raise ValueError(f"{name}: logvar reaches the clamp ({lv.min()}, {lv.max()})")
  gaps = ", ".join(f"{k} {np.abs(ref[k] - ref[k + '_f32']).max() / np.abs(ref[k]).max():.2g}"
                   for k in ("mean", "std", "dec", "rec"))
  print(f"  {name}: std of mean {ref['mean'].std():.3f}, logvar in [{lv.min():.2f}, "
        f"{lv.max():.2f}], dec std {ref['dec'].std():.3f}; float32 vs float64 (max rel): {gaps}")


def save_legacy_bin(model: AutoencoderKL, folder: str) -> None:
  """config.json + diffusion_pytorch_model.bin with deprecated attention names; checks that
  diffusers loads it back to the same weights and the same outputs."""
  model.save_pretrained(folder, safe_serialization=False)
  legacy = legacy_state_dict(model)
  renamed = sorted(set(legacy) - set(model.state_dict()))
  if not renamed or any(".to_q." in k or ".to_out." in k for k in legacy):
    raise ValueError(f"renaming to deprecated attention names failed: {renamed}")
  torch.save(legacy, os.path.join(folder, "diffusion_pytorch_model.bin"))
  loaded = AutoencoderKL.from_pretrained(folder)
  sd, sd2 = model.state_dict(), loaded.state_dict()
  if sorted(sd) != sorted(sd2) or any(not torch.equal(sd[k], sd2[k]) for k in sd):
    raise ValueError("diffusers did not load the deprecated-name .bin back to the same weights")
  size = model.config.sample_size
  x = np.random.default_rng(0).uniform(-1, 1, (2, model.config.in_channels, size, size))
  with torch.no_grad():
    a = copy_as(model, torch.float64)(torch.from_numpy(x)).sample
    b = copy_as(loaded, torch.float64)(torch.from_numpy(x)).sample
  if not torch.equal(a, b):
    raise ValueError("the reloaded deprecated-name .bin gives a different output")
  print(f"  deprecated names verified by from_pretrained: {len(renamed)} keys, e.g. {renamed[:4]}")


def make_fixture(out: str, name: str, spec: dict) -> None:
  folder = os.path.join(out, name)
  os.makedirs(folder, exist_ok=True)
  model = build(spec["config"], spec["seed"])
  print(f"{name}: {sum(p.numel() for p in model.parameters()):,d} parameters")
  if spec["legacy_names"]:
    save_legacy_bin(model, folder)
  else:
    model.save_pretrained(folder, safe_serialization=True)
  ref = reference(model, spec["seed"], spec["size"])
  check_reference(name, ref)
  np.savez(os.path.join(folder, "reference.npz"), **ref)


def make_full_sd(folder: str) -> None:
  """Stable Diffusion's VAE architecture, random weights; not committed."""
  model = build(SD_CONFIG, seed=10)
  n = sum(p.numel() for p in model.parameters())
  print(f"full SD VAE architecture: {n:,d} parameters")
  if n != SD_PARAMS:
    raise ValueError(f"expected {SD_PARAMS:,d} parameters, got {n:,d}")
  os.makedirs(folder, exist_ok=True)
  model.save_pretrained(folder, safe_serialization=True)
  save_legacy_bin(model, os.path.join(folder, "bin_legacy"))
  ref = reference(model, seed=10, size=64, batch=2)
  check_reference("sd_vae_full", ref)
  np.savez(os.path.join(folder, "reference.npz"), **ref)
  print_sizes(folder)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "diffusers_vae"))
  ap.add_argument("--full_sd", default=None,
                  help="also write the full-size Stable Diffusion VAE check here")
  args = ap.parse_args()
  print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, safetensors "
        f"{safetensors.__version__}, numpy {np.__version__}")
  torch.use_deterministic_algorithms(True)
  for name, spec in FIXTURES.items():
    make_fixture(args.out, name, spec)
  print_sizes(args.out)
  if args.full_sd:
    make_full_sd(args.full_sd)


if __name__ == "__main__":
  main()
