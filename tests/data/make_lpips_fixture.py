"""Writes tests/data/lpips_fixture.npz: the reference LPIPS (``lpips.LPIPS`` of lpips==0.1.4) on
fixed image pairs, with seeded random trunk weights and the wheel's real v0.1 channel weights.

Run ONCE, outside the project venv, in a scratch environment with a CPU torch and the lpips
wheel (the project itself never needs torch):

    python3.11 -m venv /tmp/scratch-torch
    /tmp/scratch-torch/bin/pip install torch==2.13.0 numpy
    /tmp/scratch-torch/bin/pip install --no-deps lpips==0.1.4
    /tmp/scratch-torch/bin/python tests/data/make_lpips_fixture.py

No ImageNet trunk weights can be had here, so the trunks (torchvision's AlexNet / VGG-16
``features`` layouts, written below from the torchvision architecture, not from
diffusion/metrics/lpips.py) get He-normal weights from numpy's PCG64(seed), the recipe
``diffusion.metrics.lpips.random_trunk`` repeats; their sums are stored so a test can tell a
weight mismatch from a network mismatch. torchvision itself is not installed: ``lpips`` asks it
for ``models.alexnet(pretrained=False).features`` / ``vgg16``, and a stand-in module returns
the seeded Sequential. lpips's trainer imports scipy and tqdm, unused by LPIPS: stubbed.
CM's resize (F.interpolate to 224, bilinear, align_corners=False) is applied before LPIPS for
the cases that name a resize.
"""
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lpips_fixture.npz")
SEED = {"alex": 0, "vgg": 1}


def seeded_features(net: str) -> nn.Sequential:
  """torchvision's AlexNet / VGG-16 ``features`` with PCG64(seed) He-normal weights."""
  if net == "alex":
    spec = [(64, 11, 4, 2), "R", "M3", (192, 5, 1, 2), "R", "M3", (384, 3, 1, 1), "R",
            (256, 3, 1, 1), "R", (256, 3, 1, 1), "R", "M3"]
  else:
    spec = []
    for block, (n, width) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))):
      spec += [(width, 3, 1, 1), "R"] * n + ["M2"]
  rng = np.random.default_rng(SEED[net])
  layers, in_ch = [], 3
  for s in spec:
    if s == "R":
      layers.append(nn.ReLU(inplace=True))
    elif s == "M3":
      layers.append(nn.MaxPool2d(3, 2))
    elif s == "M2":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      out_ch, k, stride, pad = s
      conv = nn.Conv2d(in_ch, out_ch, k, stride, pad)
      w = rng.standard_normal((out_ch, in_ch, k, k)) * np.sqrt(2.0 / (in_ch * k * k))
      b = 0.01 * rng.standard_normal(out_ch)
      conv.weight.data = torch.from_numpy(w.astype(np.float32))
      conv.bias.data = torch.from_numpy(b.astype(np.float32))
      layers.append(conv)
      in_ch = out_ch
  return nn.Sequential(*layers)


def install_stand_ins():
  tv = types.ModuleType("torchvision")
  models = types.ModuleType("torchvision.models")
  models.alexnet = lambda pretrained=False, **_: types.SimpleNamespace(
      features=seeded_features("alex"))
  models.vgg16 = lambda pretrained=False, **_: types.SimpleNamespace(
      features=seeded_features("vgg"))
  tv.models = models
  scipy, ndimage = types.ModuleType("scipy"), types.ModuleType("scipy.ndimage")
  ndimage.zoom = None
  scipy.ndimage = ndimage
  tqdm = types.ModuleType("tqdm")
  tqdm.tqdm = None
  sys.modules.update({"torchvision": tv, "torchvision.models": models, "scipy": scipy,
                      "scipy.ndimage": ndimage, "tqdm": tqdm})


def to_float(u: np.ndarray) -> np.ndarray:
  """uint8 levels -> float32 in [-1, 1], u / 127.5 - 1 (the test repeats it)."""
  return u.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def fixture_pairs():
  """name -> (net, resize or 0, x, y): NHWC uint8 levels (see ``to_float``). Seeded PCG64 and
  formulas."""
  rng = np.random.default_rng(20180111)
  i, j = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
  smooth = np.stack([np.sin(i / 5.0), np.cos(j / 7.0), np.sin((i + j) / 9.0)], -1)[None]
  smooth = np.round((smooth + 1) * 127.5)
  noisy = np.clip(smooth + rng.integers(-25, 26, smooth.shape), 0, 255)
  noise = lambda *s: rng.integers(0, 256, s)
  pairs = {
      "alex_rgb40": ("alex", 0, noise(3, 40, 40, 3), noise(3, 40, 40, 3)),
      "alex_smooth48_vs_noisy": ("alex", 0, smooth, noisy),
      "alex_rgb37x53": ("alex", 0, noise(2, 37, 53, 3), noise(2, 37, 53, 3)),
      "alex_grey8_resize224": ("alex", 224, noise(2, 8, 8, 1), noise(2, 8, 8, 1)),
      "vgg_rgb32": ("vgg", 0, noise(2, 32, 32, 3), noise(2, 32, 32, 3)),
      "vgg_rgb16_resize40": ("vgg", 40, noise(2, 16, 16, 3), noise(2, 16, 16, 3)),
  }
  return {k: (n, r, x.astype(np.uint8), y.astype(np.uint8)) for k, (n, r, x, y) in pairs.items()}


def main():
  install_stand_ins()
  import lpips  # noqa: E402 (after the stand-ins)
  out = {}
  models = {}
  for net in ("alex", "vgg"):
    models[net] = lpips.LPIPS(net=net, version="0.1", verbose=False)  # real v0.1 lin weights
    feats = seeded_features(net)
    for idx, layer in enumerate(feats):
      if isinstance(layer, nn.Conv2d):
        out[f"trunk_sum/{net}/features.{idx}.weight"] = np.float64(
            layer.weight.double().sum().item())
    for l in range(5):
      out[f"lin/{net}/lin{l}"] = getattr(models[net], f"lin{l}").model[1].weight.detach().numpy()
  for name, (net, resize, ux, uy) in fixture_pairs().items():
    tx = torch.from_numpy(to_float(ux)).permute(0, 3, 1, 2)
    ty = torch.from_numpy(to_float(uy)).permute(0, 3, 1, 2)
    if tx.shape[1] == 1:
      tx, ty = tx.repeat(1, 3, 1, 1), ty.repeat(1, 3, 1, 1)
    if resize:
      tx = F.interpolate(tx, size=resize, mode="bilinear", align_corners=False)
      ty = F.interpolate(ty, size=resize, mode="bilinear", align_corners=False)
    with torch.no_grad():
      total, per_layer = models[net](tx, ty, retPerLayer=True)
    out[f"x/{name}"], out[f"y/{name}"] = ux, uy
    out[f"net/{name}"], out[f"resize/{name}"] = np.array(net), np.int64(resize)
    out[f"d/{name}"] = total.reshape(-1).numpy().astype(np.float64)
    out[f"layers/{name}"] = np.stack([r.reshape(-1).numpy() for r in per_layer], 1)
    print(name, out[f"d/{name}"])
  np.savez_compressed(OUT, **out)
  print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
  main()
