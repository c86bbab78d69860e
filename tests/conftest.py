"""Shared test set-up: the persistent compilation cache, tiny configs for driver tests, and
helpers for subprocess runs and workdir fingerprints."""
import hashlib
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE)  # inherited by subprocesses
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
if REPO not in sys.path:
  sys.path.insert(0, REPO)

TOY_CONFIG = os.path.join(REPO, "configs", "toy", "checkerboard_vp.py")

# Overrides that make the toy config run in seconds on a CPU.
TINY: Dict[str, object] = {
    "model.net.width": 32, "model.net.num_blocks": 1, "model.net.embed_dim": 16,
    "data.batch_size": 64, "data.num_heldout": 256,
    "training.num_steps": 30, "training.log_every": 10, "training.ckpt_every": 10,
    "training.sample_every": 0, "optim.warmup_steps": 5, "optim.decay": "none",
    "training.async_checkpoints": False,
    "sampling.num_steps": 8, "sampling.num_samples": 128, "sampling.batch_size": 128,
    "eval.num_samples": 128, "eval.nll_points": 64, "eval.nll_batch_size": 64,
    "eval.mmd_points": 128, "eval.plot_samples": 128, "eval.density_grid": 6,
    "eval.rtol": 1e-3, "eval.atol": 1e-3,
    "eval.density_rtol": 1e-3, "eval.density_atol": 1e-3, "eval.sw_projections": 32,
}


def with_overrides(c: ml_collections.ConfigDict, overrides: Dict[str, object]):
  """``c`` with dotted-key ``overrides`` ({'training.num_steps': 10}) set in place; returns c."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """The checkerboard VP config with TINY (and ``overrides``, dotted keys) applied."""
  from configs.toy.checkerboard_vp import get_config
  return with_overrides(get_config(), {**TINY, **overrides})


DIT_CONFIG = os.path.join(REPO, "configs", "digits", "dit.py")
# Overrides that make configs/digits/dit.py a tiny DiT (1 block, width 16) run in seconds.
DIT_TINY: Dict[str, object] = {
    "model.net.depth": 1, "model.net.hidden_size": 16, "model.net.num_heads": 2,
    "data.batch_size": 16, "training.num_steps": 20, "training.log_every": 5,
    "training.ckpt_every": 10, "training.sample_every": 0, "optim.warmup_steps": 2,
    "optim.decay": "none",
    "training.async_checkpoints": False, "sampling.num_steps": 4, "sampling.num_samples": 16,
    "sampling.batch_size": 16, "eval.plot_samples": 16,
}


def dit_config(**overrides) -> ml_collections.ConfigDict:
  """The digits DiT config with DIT_TINY (and ``overrides``, dotted keys) applied."""
  from configs.digits.dit import get_config
  return with_overrides(get_config(), {**DIT_TINY, **overrides})


def cli_args(overrides: Optional[Dict[str, object]] = None) -> List[str]:
  return [f"--config.{k}={v}" for k, v in {**TINY, **(overrides or {})}.items()]


def run_main(workdir: str, mode: str, overrides: Optional[Dict[str, object]] = None,
             extra: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
             timeout: float = 300, config: str = TOY_CONFIG) -> subprocess.CompletedProcess:
  """Runs ``python -m experiments.main`` in a subprocess from the repository root."""
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
         f"--mode={mode}", *cli_args(overrides), *extra]
  full_env = dict(os.environ, **(env or {}))
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


def popen_main(workdir: str, mode: str, overrides=None, extra=(), env=None,
               config: str = TOY_CONFIG) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
         f"--mode={mode}", *cli_args(overrides), *extra]
  full_env = dict(os.environ, **(env or {}))
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 180) -> List[str]:
  """Reads proc's stdout until a line containing ``text``; returns the lines read."""
  lines, t0 = [], time.time()
  while time.time() - t0 < timeout:
    line = proc.stdout.readline()
    if not line:
      if proc.poll() is not None:
        break
      continue
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f"{text!r} not seen; output:\n{''.join(lines)}")


def tree_hashes(root, rel_to=None) -> Dict[str, str]:
  """{path relative to ``rel_to`` (default ``root``): sha256} of every file under ``root`` (a
  file itself if ``root`` is one; empty if it does not exist)."""
  root = str(root)
  rel_to = root if rel_to is None else str(rel_to)
  paths = [root] if os.path.isfile(root) else [
      os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  out = {}
  for p in paths:
    with open(p, "rb") as fh:
      out[os.path.relpath(p, rel_to)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def one_result(parent) -> str:
  """The one results folder (holding a settings.json, experiments/results.py) under ``parent``,
  e.g. <workdir>/samples or <workdir>/eval/step_30 of a workdir with one such run."""
  parent = str(parent)
  found = sorted(d for d in os.listdir(parent)
                 if os.path.isfile(os.path.join(parent, d, "settings.json")))
  assert len(found) == 1, f"{parent}: expected one results folder, found {found}"
  return os.path.join(parent, found[0])


def workdir_fingerprint(wd) -> Dict[str, str]:
  """{path: sha256} of what a refused or read-only run must not change: checkpoints/,
  corrupt_checkpoints/ and config.json."""
  out = {}
  for sub in ("checkpoints", "corrupt_checkpoints", "config.json"):
    out.update(tree_hashes(os.path.join(str(wd), sub), rel_to=wd))
  return out


@pytest.fixture
def tiny():
  """Factory: tiny_config(**overrides) with dotted-key overrides."""
  return tiny_config


@pytest.fixture
def main_cli():
  """Factory: run_main(workdir, mode, overrides, extra, env) -> CompletedProcess."""
  return run_main


def counting_denoiser(den):
  """(denoise with an io_callback counter of executed calls, counter list)."""
  count = [0]

  def bump():
    count[0] += 1

  def wrapped(x, t, cond=None):
    jax.experimental.io_callback(bump, None, ordered=True)
    return den(x, t, cond)

  return wrapped, count


def stand_in_latents(root: str, config, ae_net: Dict[str, object],
                     ae_model: str = "autoencoder_kl") -> str:
  """A complete latent folder under ``root`` for ``config``'s images (data.name, image_size),
  'encoded' by a stand-in autoencoder workdir holding only a config.json of ``ae_model(**ae_net)``
  (no checkpoint: enough for the start-up checks and the data shape, not for decoding). Its one
  shard holds 4 zero posteriors. Returns the folder."""
  import json
  from diffusion.data import images
  from diffusion.data import latents as latent_data
  ae_dir, folder = os.path.join(root, "ae"), os.path.join(root, "latents")
  os.makedirs(ae_dir, exist_ok=True)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(ae_dir, "config.json"), "w") as f:
    json.dump({"model": {"name": ae_model, "net": ae_net}}, f)
  from experiments.build import encoded_shape
  image = tuple(images.image_shape(config.data.name, config.data.image_size))
  shape = encoded_shape(ae_model, json.dumps(ae_net, sort_keys=True), image)
  zeros = np.zeros((4,) + tuple(shape), np.float32)
  data = latent_data.encode_shard(zeros, zeros + 1, np.zeros(4, np.int32))
  with open(os.path.join(folder, latent_data.shard_name(0)), "wb") as f:
    f.write(data)
  made_by = {"autoencoder": {"config": "none", "workdir": ae_dir, "step": 0,
                             "params_sha256": "0" * 64, "model": ae_model},
             "data": {"name": config.data.name, "split": "train",
                      "image_size": config.data.image_size}}
  c = int(shape[-1])
  manifest = {"format": latent_data.FORMAT, "fingerprint": latent_data.fingerprint(made_by),
              "made_by": made_by, "num_examples": 4, "shard_size": 4, "num_shards": 1,
              "image_shape": list(image), "latent_shape": list(shape), "num_classes":
              images.num_classes(config.data.name), "complete": True,
              "shards": [{"index": 0, "start": 0, "count": 4,
                          "sha256": hashlib.sha256(data).hexdigest()}],
              "channel_stats": {"mean": [0.0] * c, "std": [1.0] * c}}
  with open(os.path.join(folder, latent_data.MANIFEST), "w") as f:
    json.dump(manifest, f)
  return folder
