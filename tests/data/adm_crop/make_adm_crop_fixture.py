"""Writes tests/data/adm_crop/reference.json: ADM's own center crop of fixed images, hashed.

The reference is ``center_crop_arr`` of guided-diffusion (Dhariwal & Nichol 2021, MIT licence),
``guided_diffusion/image_datasets.py``, run unmodified: its function definition is read from that
file with ``ast`` and executed with only PIL and numpy in its namespace (the file's own imports,
blobfile, mpi4py and torch, are not needed). As ADM's ``ImageDataset`` does, every image is
first converted to RGB (``pil_image.convert("RGB")``), then cropped.

Inputs (:func:`fixture_images`): scikit-learn's two sample photos (``china.jpg``,
``flower.jpg``, 427x640, from ``sklearn/datasets/images``, decoded by PIL), and synthetic images
of odd sizes and PIL modes made from integer formulas (no random numbers): RGB 300x1000,
513x600, 512x700 (short side exactly 2 x 256: one BOX halving), 1100x700, 2048x1536 (two BOX
halvings at 256), 100x150 (upscaled), 256x256 (no resize at 256); grey ('L') 333x517, 'RGBA' 450x380, palette ('P') 600x257, 'CMYK' 260x1030.
(H x W.) Crops at 256 and 512.

For each (image, size) the JSON holds the sha256 of the RGB input's uint8 bytes and shape (so a
different JPEG decoder is told apart from a different crop), and of the output: shape, sha256
of its C-contiguous uint8 bytes, the per-channel sums and its top-left 4x4 pixels.

Run with any Python that has numpy and Pillow (the project's tests check against this file with
the project's own crop, ``diffusion.data.images.adm_center_crop``)::

    git clone https://github.com/openai/guided-diffusion    # or any checkout of it
    PYTHON tests/data/adm_crop/make_adm_crop_fixture.py \\
        --image_datasets=guided-diffusion/guided_diffusion/image_datasets.py \\
        --sklearn_images=$(python -c "import sklearn.datasets, os; print(os.path.join(os.path.dirname(sklearn.datasets.__file__), 'images'))")

Made with Pillow 13.0.0, numpy 2.5.5, guided-diffusion 22e0df8183507e13a7813f8d38d51b072ca1e67c.
Deterministic: a second run writes the same file. Pytest does not collect this script (its name
does not start with test_); tests/test_imagenet_data.py imports :func:`fixture_images` from it.
"""
import argparse
import ast
import hashlib
import json
import os
from typing import Callable, Dict

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "reference.json")
SIZES = (256, 512)
PHOTOS = ("china.jpg", "flower.jpg")
# name -> (H, W, PIL mode) of the synthetic inputs
SYNTHETIC = {
    "rgb_300x1000": (300, 1000, "RGB"),
    "rgb_513x600": (513, 600, "RGB"),
    "rgb_512x700": (512, 700, "RGB"),
    "rgb_1100x700": (1100, 700, "RGB"),
    "rgb_2048x1536": (2048, 1536, "RGB"),
    "rgb_100x150": (100, 150, "RGB"),
    "rgb_256x256": (256, 256, "RGB"),
    "grey_333x517": (333, 517, "L"),
    "rgba_450x380": (450, 380, "RGBA"),
    "palette_600x257": (600, 257, "P"),
    "cmyk_260x1030": (260, 1030, "CMYK"),
}


def _pattern(h: int, w: int, channels: int) -> np.ndarray:
  """uint8 (h, w, channels): smooth ramps, sharp stripes and a hashed texture, from integers."""
  i, j = np.meshgrid(np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64), indexing="ij")
  out = []
  for c in range(channels):
    ramp = (i * 255) // max(h - 1, 1) if c % 2 == 0 else (j * 255) // max(w - 1, 1)
    stripes = ((i // (3 + c) + j // (5 + 2 * c)) % 2) * 60
    texture = (i * i * (7 + c) + j * (13 + 5 * c) + (i * j) % 97 * 3) % 61
    out.append((ramp // 2 + stripes + texture) % 256)
  return np.stack(out, -1).astype(np.uint8)


def synthetic_image(h: int, w: int, mode: str) -> Image.Image:
  """The synthetic input of size h x w in PIL ``mode`` ('RGB', 'L', 'RGBA', 'P', 'CMYK')."""
  if mode in ("RGB", "RGBA", "CMYK"):
    return Image.fromarray(_pattern(h, w, len(mode)), mode)
  if mode == "L":
    return Image.fromarray(_pattern(h, w, 1)[..., 0], "L")
  if mode == "P":
    img = Image.fromarray(_pattern(h, w, 1)[..., 0] % 64, "P")
    k = np.arange(256)
    img.putpalette(np.stack([k * 4 % 256, 255 - k * 3 % 256, k * 7 % 256], -1)
                   .astype(np.uint8).ravel().tolist())
    return img
  raise ValueError(f"unknown mode {mode!r}")


def fixture_images(sklearn_images: str) -> Dict[str, Image.Image]:
  """name -> PIL image (its own mode): the two photos read from ``sklearn_images`` (the folder
  of scikit-learn's sample images) and the synthetic images."""
  out = {}
  for name in PHOTOS:
    with Image.open(os.path.join(sklearn_images, name)) as im:
      im.load()
      out[name] = im.copy()
  for name, (h, w, mode) in SYNTHETIC.items():
    out[name] = synthetic_image(h, w, mode)
  return out


def sha256(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a, np.uint8).tobytes()).hexdigest()


def summary(a: np.ndarray) -> Dict[str, object]:
  """What the JSON keeps of a uint8 (H, W, C) array."""
  a = np.asarray(a)
  return {"shape": list(a.shape), "sha256": sha256(a),
          "channel_sums": [int(s) for s in a.reshape(-1, a.shape[-1]).sum(0, dtype=np.int64)],
          "top_left_4x4": a[:4, :4].tolist()}


def load_reference(image_datasets: str) -> Callable:
  """guided-diffusion's ``center_crop_arr``, its definition executed as written in the file."""
  with open(image_datasets) as f:
    tree = ast.parse(f.read(), image_datasets)
  defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "center_crop_arr"]
  if len(defs) != 1:
    raise ValueError(f"{image_datasets} defines center_crop_arr {len(defs)} times, expected once")
  namespace = {"Image": Image, "np": np}
  exec(compile(ast.Module(body=defs, type_ignores=[]), image_datasets, "exec"), namespace)
  return namespace["center_crop_arr"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_datasets", required=True,
                      help="guided-diffusion's guided_diffusion/image_datasets.py")
  parser.add_argument("--sklearn_images", required=True,
                      help="scikit-learn's sklearn/datasets/images folder (china.jpg, flower.jpg)")
  parser.add_argument("--commit", default="22e0df8183507e13a7813f8d38d51b072ca1e67c",
                      help="the guided-diffusion commit of --image_datasets (recorded)")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  center_crop_arr = load_reference(args.image_datasets)
  cases = {}
  for name, image in fixture_images(args.sklearn_images).items():
    rgb = image.convert("RGB")
    for size in SIZES:
      out = np.asarray(center_crop_arr(rgb, size))
      assert out.shape == (size, size, 3), (name, size, out.shape)
      cases[f"{name}@{size}"] = {"image": name, "size": size, "mode": image.mode,
                                 "input_rgb": {"shape": list(np.asarray(rgb).shape),
                                               "sha256": sha256(np.asarray(rgb))},
                                 "output": summary(out)}
  meta = {"reference": "guided-diffusion guided_diffusion/image_datasets.py center_crop_arr",
          "guided_diffusion_commit": args.commit, "pillow": Image.__version__,
          "numpy": np.__version__, "sizes": list(SIZES)}
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "cases": cases}, f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {args.out}: {len(cases)} crops")


if __name__ == "__main__":
  main()
