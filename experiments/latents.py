"""The latent path of a run: its autoencoder, the normalisation of its latents, and the decoder
that sample, eval and sweep apply to latent samples (docs/latent.md).

A latent run names a folder written by ``experiments.encode`` (config.latent.dataset); the
folder's manifest names the autoencoder (config file, workdir, checkpoint step, sha256 of the
parameters). The decoder is that autoencoder, checked to be the one that encoded the latents:
an autoencoder trained further or replaced since is refused, not silently used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import latent as latent_lib
from diffusion.config_checks import ConfigError
from diffusion.models import model_outputs
from experiments import build
from experiments.config_files import load_config_file
from experiments.setup import restore_params, saved_config

Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Autoencoder:
  """A restored autoencoder: its config, network (``outputs='autoencoder'``), EMA parameters,
  checkpoint step and the sha256 of its parameters (:func:`params_sha256`)."""
  config: Config
  net: Any
  params: Any
  step: int
  sha256: str

  def encode(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(B, H, W, C) in [-1, 1] -> (mean, std), each (B, h, w, c)."""
    mean, logvar = self.net.apply({"params": self.params}, x, method="encode")
    return mean, jnp.exp(0.5 * logvar)

  def decode(self, z: jax.Array) -> jax.Array:
    """(B, h, w, c) raw latents -> (B, H, W, C) images."""
    return self.net.apply({"params": self.params}, z, method="decode")


def params_sha256(params) -> str:
  """sha256 over the parameter tree: each leaf's path, dtype, shape and bytes, in path order."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def load_autoencoder(config_file: str, workdir: str, step: Optional[int] = None) -> Autoencoder:
  """The autoencoder trained (or converted) in ``workdir`` with ``config_file``: its saved
  config, EMA parameters at ``step`` (None: the newest intact checkpoint)."""
  config = saved_config(load_config_file(config_file), workdir)
  if model_outputs(config.model.name) != "autoencoder":
    raise ConfigError(f"{config_file}: config.model.name={config.model.name!r} is not an "
                      f"autoencoder (a network registered with outputs='autoencoder', e.g. "
                      f"'autoencoder_kl')")
  s, params, restored = restore_params(config, workdir, step=step)
  return Autoencoder(config, s.net, params, int(restored), params_sha256(params))


@dataclasses.dataclass(frozen=True)
class Decoder:
  """What turns a latent run's samples into images: ``images(params, z_n)`` =
  decode(denormalize(z_n)) with the autoencoder's ``params`` (passed as an argument, so that a
  jitted sampler does not hold them as constants)."""
  ae: Autoencoder
  norm: latent_lib.LatentNorm

  def images(self, params, z_n: jax.Array) -> jax.Array:
    z = self.norm.denormalize(z_n.astype(jnp.float32))
    return self.ae.net.apply({"params": params}, z, method="decode")


_DECODERS: Dict[str, Decoder] = {}  # one restore per process and latent section


def decoder(config: Config) -> Decoder:
  """The decoder of a latent run: config.latent.autoencoder, or the autoencoder named by its
  latent folder, then refused when its parameters are not the ones the latents were encoded
  with. Restored once per process for the same latent section and data."""
  key = json.dumps([config.latent.to_dict(), config.data.name, config.data.image_size],
                   sort_keys=True)
  if key not in _DECODERS:
    _DECODERS[key] = _restore_decoder(config)
  return _DECODERS[key]


def _restore_decoder(config: Config) -> Decoder:
  src = build.autoencoder_source(config)
  if not os.path.isdir(src["workdir"]):
    raise ConfigError(f"the autoencoder workdir {src['workdir']!r} of this latent run is gone: "
                      f"sample and eval decode with it")
  ae = load_autoencoder(src["config"], src["workdir"], step=src["step"])
  if config.latent.dataset is not None:
    want = build.latent_facts(config)["made_by"]["autoencoder"]["params_sha256"]
    if ae.sha256 != want:
      raise ConfigError(f"the autoencoder in {src['workdir']} (step {ae.step}) has parameters "
                        f"{ae.sha256[:12]}..., but latent.dataset={config.latent.dataset!r} was "
                        f"encoded with {want[:12]}...: decoding with it would give other images")
  return Decoder(ae, build.latent_norm(config))
