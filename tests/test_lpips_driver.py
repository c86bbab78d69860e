"""Consistency training with distill.metric='lpips' through the driver: the loss is LPIPS of the
trunk file the config names (a seeded random trunk here: no ImageNet weights exist offline), the
files join the run's identity by SHA-256 (a moved file resumes, another trunk is refused), and
the start-up refusals."""
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import checkpoint, consistency
from diffusion.config_checks import ConfigError
from diffusion.metrics import lpips
from diffusion import objectives
from experiments import train
from experiments.validate import validate
from tests.golden import DDPM_UNET_TINY, digits, toy
from tests.test_convert_diffusers import _write_safetensors


def _trunk(path, seed):
  state = lpips.random_trunk("alex", seed)
  _write_safetensors(str(path), state, {k: "F32" for k in state})
  return str(path)


def _ct(trunk, **overrides):
  return digits("ct.py", DDPM_UNET_TINY, **{
      "distill.metric": "lpips", "distill.lpips.trunk": trunk, "distill.lpips.resize": 32,
      "distill.curriculum": "none", "distill.num_scales": 8, "training.num_steps": 4,
      "training.ckpt_every": 2, **overrides})


def _refused(config) -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, "train", device_count=1, process_count=1)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_the_objectives_metric_is_lpips_of_the_named_trunk(tmp_path):
  cfg = _ct(_trunk(tmp_path / "t.safetensors", 0))
  metric = objectives.get("consistency_training").metric(cfg)
  params = lpips.load_params("alex", cfg.distill.lpips.trunk)
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 1)), jnp.float32) for _ in range(2))
  want = lpips.distance(params, a, b, "alex", 32)
  np.testing.assert_allclose(np.asarray(consistency.distance(a, b, metric)), np.asarray(want),
                             rtol=1e-6)
  assert float(jnp.min(want)) > 0


@pytest.mark.slow  # ~25 s: two tiny digits runs (the metric's math: test_lpips.py, above)
def test_a_run_resumes_with_a_moved_trunk_and_refuses_another(tmp_path):
  wd = str(tmp_path / "run")
  trunk = _trunk(tmp_path / "t.safetensors", 0)
  out = train.train(_ct(trunk, **{"training.num_steps": 2, "optim.warmup_steps": 1}), wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  moved = str(tmp_path / "elsewhere.safetensors")
  shutil.move(trunk, moved)  # the same bytes at another path: the same run, it resumes
  out = train.train(_ct(moved, **{"optim.warmup_steps": 1}), wd)
  assert out["status"] == "done" and out["step"] == 4
  other = _trunk(tmp_path / "other.safetensors", 1)
  with pytest.raises(checkpoint.WorkdirMismatchError, match="lpips_sha256"):
    train.train(_ct(other, **{"training.num_steps": 6, "optim.warmup_steps": 1}), wd)


def test_lpips_settings_are_checked_at_start_up(tmp_path):
  trunk = _trunk(tmp_path / "t.safetensors", 0)
  validate(_ct(trunk), "train", device_count=1, process_count=1)  # accepted
  assert "alexnet-owt-7be5be79.pth" in _refused(_ct(None))
  assert "alexnet-owt-7be5be79.pth" in _refused(_ct(str(tmp_path / "missing.pth")))
  assert "distill.lpips.net='squeeze'" in _refused(_ct(trunk, **{"distill.lpips.net": "squeeze"}))
  assert "resize=8 must be None or an int >= 31" in _refused(
      _ct(trunk, **{"distill.lpips.resize": 8}))
  assert "channel_weights" in _refused(
      _ct(trunk, **{"distill.lpips.channel_weights": str(tmp_path / "nope.pth")}))
  assert "does not read it" in _refused(_ct(trunk, **{"distill.metric": "l2"}))
  assert "2-d points" in _refused(toy("checkerboard_ct.py", **{
      "distill.metric": "lpips", "distill.lpips.trunk": trunk}))
  assert "'lpips'" in _refused(_ct(trunk, **{"distill.metric": "lpipz"}))
