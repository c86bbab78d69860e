"""benchmarks/vae_reconstruction.py without torch: its inputs are fixed and deterministic, and
stage 2 on the tiny diffusers fixture vae_small reports MSE / PSNR / differences that a direct
numpy computation on its reconstructions reproduces (diffusers' column from a stand-in stage-1
file)."""
import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import vae_reconstruction as vr  # noqa: E402

VAE_SMALL = os.path.join(REPO, "tests", "data", "convert", "diffusers_vae", "vae_small")
SIZE = 16


def test_inputs_are_fixed_and_deterministic():
  names, pixels = vr.build_inputs(SIZE)
  names2, pixels2 = vr.build_inputs(SIZE)
  assert names == names2 and np.array_equal(pixels, pixels2)
  assert pixels.dtype == np.uint8 and pixels.shape == (6, SIZE, SIZE, 3)
  assert names[:2] == ["china", "flower"] and names[2].startswith("digit 0 ")
  # digits: levels x 255 / 16, each pixel a (SIZE / 8)^2 block (NEAREST), grey repeated to RGB
  from diffusion.data import digits
  raw = digits.load_digits("all")[0][list(vr.DIGIT_INDICES), :, :, 0].astype(np.float64)
  block = np.ones((SIZE // 8, SIZE // 8))
  want = np.stack([np.kron(np.rint(d * 255 / 16), block) for d in raw]).astype(np.uint8)
  for c in range(3):
    np.testing.assert_array_equal(pixels[2:, :, :, c], want)
  # photos: real images (not constant), different from each other
  assert pixels[0].std() > 10 and not np.array_equal(pixels[0], pixels[1])
  grey = vr.build_inputs(SIZE, channels=1, digit_resize="bicubic")[1]
  assert grey.shape == (6, SIZE, SIZE, 1)
  np.testing.assert_array_equal(grey, vr.build_inputs(SIZE, 1, "bicubic")[1])
  assert not np.array_equal(grey[2:, ..., 0], want)  # bicubic is not the blocks
  with pytest.raises(ValueError, match="channels must be 1 or 3"):
    vr.build_inputs(SIZE, channels=2)
  with pytest.raises(ValueError, match="digit_resize"):
    vr.build_inputs(SIZE, digit_resize="bilinear")


def test_pixel_maps_invert_each_other():
  k = np.arange(256, dtype=np.uint8)
  x = vr.to_model_range(k)
  assert x.dtype == np.float32 and x[0] == -1 and x[-1] == 1
  np.testing.assert_array_equal(vr.to_pixels(x), k)
  np.testing.assert_array_equal(vr.to_pixels(np.array([-3.0, 5.0, 1 / 255 - 1])), [0, 255, 0])


def _psnr(k, k_rec):
  mse = np.mean((k.astype(np.float64) - k_rec.astype(np.float64)) ** 2)
  return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def test_stage_two_on_vae_small_matches_numpy(tmp_path):
  names, pixels = vr.build_inputs(SIZE)
  x = pixels.astype(np.float64) / 127.5 - 1
  from diffusion.checkpoint import sha256_file
  sha = sha256_file(os.path.join(VAE_SMALL, "diffusion_pytorch_model.safetensors"))
  # a stand-in for diffusers' stage-1 file: x_rec = x + 0.1 (MSE 0.01), z = 0
  ref_rec = (x + 0.1).astype(np.float32)
  npz = str(tmp_path / "ref.npz")
  vr.write_reference(npz, names, pixels, np.zeros((6, 8, 8, 4), np.float32), ref_rec,
                     dict(sha256=sha, versions={}, seconds=0.0, size=SIZE))
  args = vr.parse_args(["--source", VAE_SMALL, "--size", str(SIZE), "--diffusers_npz", npz,
                        "--note", "random weights"])
  out = vr.ours_stage(args)
  mean, rec = out["outputs"]["float32"]
  assert mean.shape == (6, 8, 8, 4) and rec.shape == (6, SIZE, SIZE, 3)
  assert len(out["rows"]) == 6
  for i, row in enumerate(out["rows"]):
    assert row["image"] == names[i] and row["dtype"] == "float32"
    assert row["mse"] == pytest.approx(np.mean((rec[i] - x[i]) ** 2), rel=1e-6)
    k_rec = np.clip(np.floor((rec[i].astype(np.float64) + 1) * 127.5 + 0.5), 0, 255)
    assert row["psnr"] == pytest.approx(_psnr(pixels[i], k_rec), rel=1e-9)
    assert row["z_mean"] == pytest.approx(mean[i].mean(), rel=1e-5)
    assert row["z_std"] == pytest.approx(mean[i].std(), rel=1e-5)
    assert row["ref_mse"] == pytest.approx(0.01, rel=1e-4)
    assert row["ref_psnr"] == pytest.approx(_psnr(pixels[i], vr.to_pixels(ref_rec[i])))
    assert row["dz"] == pytest.approx(np.abs(mean[i]).max())
    assert row["drec"] == pytest.approx(np.abs(rec[i] - ref_rec[i]).max(), rel=1e-6)
    assert 0 < row["dpix"] <= 1
  assert "**random weights**" in out["markdown"] and "| digit 8 (#8, nearest) |" in \
      out["markdown"]


def test_stage_one_file_is_checked(tmp_path):
  names, pixels = vr.build_inputs(SIZE)
  zeros = np.zeros(pixels.shape, np.float32)
  npz = str(tmp_path / "ref.npz")
  vr.write_reference(npz, names, pixels, zeros, zeros, dict(sha256="abc", versions={}))
  assert vr.read_reference(npz, names, pixels, "abc")["meta"]["sha256"] == "abc"
  with pytest.raises(ValueError, match="sha256 abc"):
    vr.read_reference(npz, names, pixels, "def")
  other = pixels.copy()
  other[0, 0, 0, 0] ^= 1
  with pytest.raises(ValueError, match=r"inputs differ from this run's \(1\)"):
    vr.read_reference(npz, names, other, "abc")
  with pytest.raises(ValueError, match="images"):
    vr.read_reference(npz, names[::-1], pixels, "abc")
  with pytest.raises(ValueError, match="multiple of the VAE's downsampling factor 2"):
    vr.check_size(15, vr.folder_config(VAE_SMALL))
