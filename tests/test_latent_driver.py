"""Latent diffusion through the real driver (docs/latent.md). Fast: the start-up refusals. Slow
(``pytest -m slow``; the autoencoder's first compile alone takes ~40 s on 2 cores): an
autoencoder trained on digits, its latents written by experiments.encode (resumed after an
interruption, another folder refused), a DiT trained on them and its samples decoded to digits,
the decoder at the manifest's step, a converted diffusers VAE end to end. The latent math is
checked fast in tests/test_latent.py and tests/test_latent_data.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

AE_CONFIG = os.path.join(REPO, "configs/digits/autoencoder.py")
LATENT_CONFIG = os.path.join(REPO, "configs/digits/latent_dit.py")
AE = {"training.num_steps": 4, "training.ckpt_every": 4, "training.log_every": 2,
      "training.sample_every": 0, "data.batch_size": 16, "optim.warmup_steps": 1,
      "training.ema_warmup": True}
LDM = {"training.num_steps": 2, "training.ckpt_every": 2, "training.log_every": 1,
       "training.sample_every": 0, "data.batch_size": 8, "optim.warmup_steps": 1, "model.net.depth": 1,
       "model.net.hidden_size": 32, "model.net.num_heads": 2, "sampling.num_steps": 2,
       "sampling.num_samples": 6, "sampling.batch_size": 6}


def run_main(workdir, mode, overrides, config):
  """``python -m experiments.main`` on an image config with ``overrides`` (no toy defaults)."""
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
         f"--mode={mode}", "--config.training.async_checkpoints=False",
         *[f"--config.{k}={v}" for k, v in overrides.items()]]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_autoencoder(tmp_path_factory):
  w = str(tmp_path_factory.mktemp("latent") / "ae")
  r = run_main(w, "train", AE, config=AE_CONFIG)
  assert r.returncode == 0, r.stderr[-3000:]
  return w


def _encode(ae_workdir, out, **kw):
  from experiments import encode, latents
  ae = latents.load_autoencoder(AE_CONFIG, ae_workdir)
  return encode.encode_dataset(ae, AE_CONFIG, ae_workdir, "digits", "train", out,
                               batch_size=128, shard_size=512, **kw)


@pytest.mark.slow
def test_encode_is_resumable_and_fingerprinted(trained_autoencoder, tmp_path):
  from diffusion.data import latents as latent_data
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  m = _encode(trained_autoencoder, full)
  assert m["complete"] and m["num_examples"] == 1500 and m["num_shards"] == 3
  assert m["latent_shape"] == [4, 4, 2] and m["image_shape"] == [8, 8, 1]
  # an interrupted encode: its manifest lists the first shard only
  _encode(trained_autoencoder, part)
  manifest = latent_data.read_manifest(part)
  manifest.update(shards=manifest["shards"][:1], complete=False)
  manifest.pop("channel_stats")
  os.remove(os.path.join(part, latent_data.shard_name(2)))
  with open(os.path.join(part, latent_data.MANIFEST), "w") as f:
    json.dump(manifest, f)
  resumed = _encode(trained_autoencoder, part)
  assert [e["sha256"] for e in resumed["shards"]] == [e["sha256"] for e in m["shards"]]
  assert resumed["channel_stats"] == m["channel_stats"]
  a, b = latent_data.LatentDataset(full), latent_data.LatentDataset(part)
  np.testing.assert_array_equal(a.mean, b.mean)
  # another split into the same folder is refused, and the folder is left as it is
  from experiments import encode, latents
  ae = latents.load_autoencoder(AE_CONFIG, trained_autoencoder)
  with pytest.raises(ValueError, match="made otherwise.*data.split: 'train' there, 'test' now"):
    encode.encode_dataset(ae, AE_CONFIG, trained_autoencoder, "digits", "test", full,
                          batch_size=128, shard_size=512)
  assert latent_data.read_manifest(full) == m


@pytest.mark.slow
def test_latent_dit_trains_and_samples_decoded_digits(trained_autoencoder, tmp_path):
  folder, w = str(tmp_path / "latents"), str(tmp_path / "ldit")
  _encode(trained_autoencoder, folder)
  ldm = {**LDM, "latent.dataset": folder}
  r = run_main(w, "train", ldm, config=LATENT_CONFIG)
  assert r.returncode == 0, r.stderr[-3000:]
  saved = json.load(open(os.path.join(w, "config.json")))
  assert saved["resolved"]["data_shape"] == [4, 4, 2]  # the network saw latents
  assert saved["resolved"]["latent_fingerprint"]
  r = run_main(w, "sample", ldm, config=LATENT_CONFIG)
  assert r.returncode == 0, r.stderr[-3000:]
  (name,) = os.listdir(os.path.join(w, "samples"))
  x = np.load(os.path.join(w, "samples", name, "samples.npz"))["x"]
  assert x.shape == (6, 8, 8, 1) and np.all(np.isfinite(x))  # decoded: digits, not latents


@pytest.mark.slow
def test_the_decoder_is_the_encoders_checkpoint(trained_autoencoder, tmp_path):
  """The autoencoder trained on after encoding: sampling decodes with the checkpoint the
  manifest names (step 4), not the newest."""
  import shutil
  ae = str(tmp_path / "ae")
  shutil.copytree(trained_autoencoder, ae)
  folder, w = str(tmp_path / "latents"), str(tmp_path / "ldit")
  _encode(ae, folder)
  ldm = {**LDM, "latent.dataset": folder}
  assert run_main(w, "train", ldm, config=LATENT_CONFIG).returncode == 0
  r = run_main(ae, "train", {**AE, "training.num_steps": 6, "training.ckpt_every": 2},
               config=AE_CONFIG)
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_main(w, "sample", ldm, config=LATENT_CONFIG)
  assert r.returncode == 0, r.stderr[-3000:]


def test_a_latent_run_is_refused_at_start_up_with_reasons(tmp_path):
  from diffusion.config_checks import ConfigError
  from experiments.config_files import load_config_file
  from experiments.validate import validate_config
  from tests.conftest import stand_in_latents
  c = load_config_file(LATENT_CONFIG)
  ae_net = load_config_file(AE_CONFIG).model.net.to_dict()
  stand_in_latents(str(tmp_path), c, ae_net)  # an autoencoder workdir with its config.json
  trained_autoencoder = str(tmp_path / "ae")
  c.latent.dataset = str(tmp_path / "none")
  with pytest.raises(ConfigError, match="holds no latents.json; write it with"):
    validate_config(c, "train")
  c.latent.dataset = None
  c.latent.autoencoder, c.latent.autoencoder_config = trained_autoencoder, AE_CONFIG
  with pytest.raises(ConfigError, match="--mode=train reads latents"):
    validate_config(c, "train")
  with pytest.raises(ConfigError, match="'channel' without latent.dataset needs"):
    validate_config(c, "sample")
  c.latent.normalization = "scale"
  validate_config(c, "sample")  # an autoencoder alone serves sampling
  c.latent.autoencoder_config = None
  with pytest.raises(ConfigError, match="needs config.latent.autoencoder_config"):
    validate_config(c, "sample")
  c.latent.autoencoder_config, c.inverse.task = AE_CONFIG, "inpaint"
  with pytest.raises(ConfigError, match="inverse problems observe pixels"):
    validate_config(c, "sample")


@pytest.mark.slow
def test_a_converted_vae_encodes_and_decodes_a_latent_run(tmp_path):
  """A diffusers AutoencoderKL (the legacy-named 1-channel fixture, f = 2) converted into a
  workdir is an autoencoder like a trained one: encode reads it, a latent config names it, and
  its decoder is the converted network."""
  import jax.numpy as jnp
  from diffusion.convert import diffusers_vae
  from experiments import build, convert, encode, latents
  from experiments.config_files import load_config_file
  src = os.path.join(REPO, "tests/data/convert/diffusers_vae/vae_bin_legacy")
  w = str(tmp_path / "vae")
  conv = diffusers_vae.convert(src)
  summary = convert.write_autoencoder_workdir(conv, w, "digits")
  assert summary["scaling_factor"] == conv.scaling_factor and summary["num_params"] > 0
  with pytest.raises(Exception, match="already holds a converted model"):
    convert.write_autoencoder_workdir(conv, w, "digits")
  cfg_file = os.path.join(w, "config.py")
  ae = latents.load_autoencoder(cfg_file, w)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
  want = ae.net.apply({"params": jax_tree(conv.params)}, x, method="encode")[0]
  np.testing.assert_allclose(ae.encode(x)[0], want, rtol=1e-6, atol=1e-6)
  m = encode.encode_dataset(ae, cfg_file, w, "digits", "test", str(tmp_path / "lat"),
                            batch_size=128, shard_size=128)
  assert m["latent_shape"] == [4, 4, 2] and m["num_examples"] == 297
  c = load_config_file(LATENT_CONFIG)
  c.latent.dataset, c.latent.autoencoder, c.latent.autoencoder_config = None, w, cfg_file
  c.latent.normalization, c.latent.scale_factor = "scale", conv.scaling_factor
  assert build.data_shape(c) == (4, 4, 2)
  dec = latents.decoder(c)
  z = jnp.ones((2, 4, 4, 2), jnp.float32)
  np.testing.assert_allclose(dec.images(dec.ae.params, z), ae.decode(z / conv.scaling_factor),
                             rtol=1e-6, atol=1e-6)


def jax_tree(params):
  import jax
  return jax.tree_util.tree_map(np.asarray, params)
