"""experiments.convert: the command line on a diffusers fixture, and score SDE checkpoints
written into workdirs that restore exactly and sample."""
import os
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import networks
from diffusion.convert import score_sde
from diffusion.convert.common import ConversionError, flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data", "convert")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.convert", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # 45 s cold; the conversion itself: tests/test_convert_diffusers.py
def test_command_line_converts_once_and_refuses_a_used_workdir(tmp_path):
  w = str(tmp_path / "w")
  src = os.path.join(DATA, "diffusers", "ddpm_bin_legacy")
  r = _cli("--format=diffusers", f"--source={src}", f"--workdir={w}")
  assert r.returncode == 0, r.stderr
  assert "converted 65,713 parameters" in r.stdout and "vp_discrete" in r.stdout
  assert os.path.isdir(os.path.join(w, "checkpoints", "0"))
  # The printed sample command runs as printed: the workdir's config.py, 64 samples.
  (hint,) = [l for l in r.stdout.splitlines() if l.startswith("sample with: ")]
  argv = shlex.split(hint[len("sample with: "):])
  assert argv[:3] == ["python", "-m", "experiments.main"]
  assert "--config.sampling.num_samples=64" in argv and f"--config={w}/config.py" in argv
  sampled = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert "wrote 64 samples" in sampled.stdout
  r = _cli("--format=diffusers", f"--source={src}", f"--workdir={w}")
  assert r.returncode == 1 and "already holds" in r.stderr
  r = _cli("--format=diffusers", f"--source={tmp_path}", f"--workdir={tmp_path / 'x'}")
  assert r.returncode == 1 and "config.json" in r.stderr and "does not exist" in r.stderr
  assert not os.path.exists(tmp_path / "x")  # nothing written on a refusal


def test_sample_hint_uses_the_workdirs_config_and_a_small_count(tmp_path):
  from experiments import convert
  w = str(tmp_path / "my w")
  os.makedirs(w)
  with open(os.path.join(w, "config.py"), "w") as f:
    f.write("from configs.cifar10.ddpm import get_config\n")  # 50,000 samples by default
  line, more = convert.sample_hint(w).splitlines()
  assert line == (f"sample with: python -m experiments.main '--config={w}/config.py' "
                  f"'--workdir={w}' --mode=sample --config.sampling.num_samples=64")
  assert "--config.sampling.num_samples=50000 draws the config's full set" in more


@pytest.mark.parametrize("name,sde,sampling_t_min", [
    pytest.param("ncsnpp_ve", "ve", None, marks=pytest.mark.slow),  # 24 s cold
    pytest.param("ddpmpp_vp", "vp", 1e-3, marks=pytest.mark.slow)])
def test_score_sde_workdir_restores_and_samples(tmp_path, name, sde, sampling_t_min):
  from diffusion.samplers.registry import build_sampler
  from experiments import build, convert, setup
  from experiments.config_files import load_config_file
  folder = os.path.join(DATA, "score_sde", name)
  conv = score_sde.convert_checkpoint(os.path.join(folder, "checkpoint_1"),
                                      score_sde.load_config(os.path.join(folder, "config.json")))
  w = str(tmp_path / "w")
  with pytest.raises(ConversionError, match=r"shape \(8, 8, 3\) fit no single dataset"):
    convert.write_workdir(conv, w)
  convert.write_workdir(conv, w, dataset="cifar10")
  config = load_config_file(os.path.join(w, "config.py"))
  assert (config.sde.name, config.sde.fields.t_min, config.sampling.t_min) == (
      sde, 1e-5, sampling_t_min)
  s, params, _ = setup.restore_params(config, w)
  for path, v in flatten(jax.device_get(params)).items():
    np.testing.assert_array_equal(v, flatten(conv.params)[path])
  denoise = networks.eval_denoiser(s.net, params, s.schedule, s.param)
  fn = build_sampler("heun", s.schedule, num_steps=3, t_min=config.sampling.t_min)
  x0, info = fn(denoise, jax.random.PRNGKey(0),
                s.schedule.prior_sample(jax.random.PRNGKey(1), (2, 8, 8, 3)))
  assert x0.shape == (2, 8, 8, 3) and bool(jnp.all(jnp.isfinite(x0))) and int(info["nfe"]) > 0
