"""Encodes an image dataset with an autoencoder into a latent dataset (docs/latent.md).

  python -m experiments.encode --autoencoder_config=FILE --autoencoder=WORKDIR \\
      --dataset=digits [--split=train] [--image_size=N] --out=DIR [--batch_size=64]
      [--shard_size=4096] [--step=N] [--data_dir=DIR] [--crop=center|adm]

Writes DIR/latents.json and DIR/shard_<k>.npz (``diffusion.data.latents``): per image the
encoder's posterior mean and std (float32) and the label, in the split's file order (no
dequantization, no flips: the images x / (L - 1) * 2 - 1 in [-1, 1]). Training samples the
posterior and applies the normalisation (config.latent), so one folder serves both 'scale' and
'channel' runs.

Resumable: each shard is written atomically and listed in the manifest with its sha256; a run
interrupted and started again with the same arguments encodes only the missing shards. The
manifest's fingerprint is the sha256 of what made the latents (the autoencoder's config file,
workdir, step and parameter sha256; the dataset, split, image size); a folder made otherwise is
refused, never overwritten. Progress: a line with the rate and an ETA. One process encodes
(the step is the autoencoder's forward pass on every local device's batch, jitted once).
"""
from __future__ import annotations

import hashlib
import os
import sys
from typing import Any, Dict, Optional

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from diffusion import latent as latent_lib
from diffusion.data import images as images_lib
from diffusion.data import latents as latent_data
from diffusion.io_utils import atomic_write
from experiments import runtime, writers
from experiments.latents import Autoencoder, load_autoencoder


def made_by(ae: Autoencoder, config_file: str, workdir: str, dataset: str, split: str,
            image_size: Optional[int], data_dir: Optional[str],
            crop: Optional[str] = None) -> Dict[str, Any]:
  """What the latents are a function of (their fingerprint's content)."""
  return {"autoencoder": {"config": os.path.abspath(config_file),
                          "workdir": os.path.abspath(workdir), "step": int(ae.step),
                          "params_sha256": ae.sha256, "model": ae.config.model.name},
          "data": {"name": dataset, "split": split, "image_size": image_size,
                   "data_dir": os.path.abspath(data_dir) if data_dir else None,
                   "crop": images_lib.resolve_crop(dataset, crop),
                   "pixels": "x / (L - 1) * 2 - 1, no dequantization, no flips"}}


def _start_manifest(out: str, by: Dict[str, Any], n: int, shard_size: int, image_shape,
                    latent_shape, num_classes: int) -> Dict[str, Any]:
  """The folder's manifest: the existing one when made the same way (resume), a new one in an
  empty folder; a ValueError for a folder of other latents (it is left as it is)."""
  fp = latent_data.fingerprint(by)
  old = latent_data.read_manifest(out)
  if old is not None:
    if old.get("fingerprint") != fp or int(old["shard_size"]) != shard_size:
      theirs, ours = old.get("made_by", {}), by
      diff = [f"{s}.{k}: {theirs.get(s, {}).get(k)!r} there, {v!r} now"
              for s in ours for k, v in ours[s].items() if theirs.get(s, {}).get(k) != v]
      if int(old["shard_size"]) != shard_size:
        diff.append(f"shard_size: {old['shard_size']} there, {shard_size} now")
      raise ValueError(f"{out} holds latents made otherwise ({'; '.join(diff)}); it is left "
                       f"as it is: give another --out")
    return old
  if os.path.isdir(out) and os.listdir(out):
    raise ValueError(f"{out} is not empty and holds no {latent_data.MANIFEST}; give an empty "
                     f"or new --out")
  return {"format": latent_data.FORMAT, "fingerprint": fp, "made_by": by, "num_examples": n,
          "shard_size": shard_size, "num_shards": len(latent_data.shard_plan(n, shard_size)),
          "image_shape": list(image_shape), "latent_shape": list(latent_shape),
          "num_classes": num_classes, "shards": [], "complete": False}


def _write_manifest(out: str, manifest: Dict[str, Any]) -> None:
  writers.write_json(os.path.join(out, latent_data.MANIFEST), manifest)


def _stats(out: str, manifest: Dict[str, Any]) -> Dict[str, Any]:
  """Per-channel mean and std of the posterior samples over every shard."""
  c = int(manifest["latent_shape"][-1])
  s1, s2, count = np.zeros(c), np.zeros(c), 0
  for entry in manifest["shards"]:
    with np.load(os.path.join(out, latent_data.shard_name(entry["index"]))) as z:
      m, s = z["mean"].astype(np.float64), z["std"].astype(np.float64)
    s1 += m.reshape(-1, c).sum(0)
    s2 += (m ** 2 + s ** 2).reshape(-1, c).sum(0)
    count += m.size // c
  mean, std = latent_lib.channel_stats(s1, s2, count)
  return {"mean": mean.tolist(), "std": std.tolist()}


def encode_dataset(ae: Autoencoder, config_file: str, workdir: str, dataset: str, split: str,
                   out: str, *, image_size: Optional[int] = None, batch_size: int = 64,
                   shard_size: int = 4096, data_dir: Optional[str] = None,
                   crop: Optional[str] = None) -> Dict[str, Any]:
  """Encodes (or finishes encoding) ``dataset``/``split`` into ``out``; returns the manifest.
  ``data_dir``: tfds' data directory, or the 'folder' dataset's root (its split folders);
  ``crop``: the geometry (None: the dataset's default, ADM's for imagenet2012 and folder)."""
  if batch_size < 1 or shard_size < 1 or shard_size % batch_size:
    raise ValueError(f"--shard_size={shard_size} must be a positive multiple of --batch_size="
                     f"{batch_size}")
  it = images_lib.make_image_dataset(dataset, split, batch_size=batch_size, seed=0,
                                     image_size=image_size, dequantize=False, shuffle=False,
                                     num_epochs=1, drop_remainder=False, data_dir=data_dir,
                                     crop=crop, cache_decoded=False)
  n, image_shape = it.num_examples, tuple(it.image_shape)
  encode = jax.jit(lambda p, x: ae.net.apply({"params": p}, x, method="encode"))
  mean_shape = jax.eval_shape(encode, ae.params, jnp.zeros((1,) + image_shape))[0].shape
  by = made_by(ae, config_file, workdir, dataset, split, image_size, data_dir, crop)
  classes = images_lib.num_classes(dataset, **({"data_dir": data_dir, "split": split}
                                               if dataset == "folder" else {}))
  manifest = _start_manifest(out, by, n, shard_size, image_shape, mean_shape[1:], classes)
  if manifest.get("complete"):
    print(f"{out} already holds these {n:,} latents: nothing to do", flush=True)
    return manifest
  os.makedirs(out, exist_ok=True)
  done = {int(e["index"]) for e in manifest["shards"]}
  todo = [r for r in latent_data.shard_plan(n, shard_size) if r[0] not in done]
  total = sum(b - a for _, a, b in todo)
  if done:
    print(f"resuming: {len(done)} of {manifest['num_shards']} shards already written",
          flush=True)
  progress = writers.Progress(f"encoding {dataset}/{split}", total, "images")
  encoded = 0
  for k, a, b in todo:
    means, stds, labels = [], [], []
    for step in range(a // batch_size, -(-b // batch_size)):
      batch = it.batch(step)
      x = np.asarray(batch["image"], np.float32)
      pad = batch_size - len(x)  # the last batch, padded to one compiled shape
      mean, logvar = encode(ae.params, jnp.asarray(np.pad(x, [(0, pad)] + [(0, 0)] * 3)))
      means.append(np.asarray(mean)[:len(x)])
      stds.append(np.exp(0.5 * np.asarray(logvar, np.float64))[:len(x)])
      labels.append(np.asarray(batch["label"], np.int32))
      encoded += len(x)
      progress(encoded)
    data = latent_data.encode_shard(np.concatenate(means), np.concatenate(stds),
                                    np.concatenate(labels))
    with atomic_write(os.path.join(out, latent_data.shard_name(k)), "wb") as f:
      f.write(data)
    manifest["shards"].append({"index": k, "start": a, "count": b - a,
                               "sha256": hashlib.sha256(data).hexdigest()})
    _write_manifest(out, manifest)  # after the shard: a listed shard is always complete
  manifest["channel_stats"] = _stats(out, manifest)
  manifest["complete"] = True
  _write_manifest(out, manifest)
  return manifest


def main(argv=None):
  flags.DEFINE_string("autoencoder_config", None, "Config file the autoencoder was trained "
                      "(or converted) with.")
  flags.DEFINE_string("autoencoder", None, "The autoencoder's workdir.")
  flags.DEFINE_integer("step", None, "Its checkpoint (None: the newest intact one).")
  flags.DEFINE_string("dataset", None, "Image dataset (digits, mnist, cifar10, ...).")
  flags.DEFINE_string("split", "train", "Split to encode.")
  flags.DEFINE_integer("image_size", None, "Image size (None: the dataset's default).")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_integer("batch_size", 64, "Images per encoder call.")
  flags.DEFINE_integer("shard_size", 4096, "Images per shard file (a multiple of batch_size).")
  flags.DEFINE_string("data_dir", None, "tfds data directory; for --dataset=folder the folder "
                      "holding the split folders (<data_dir>/<split>/<class>/<image>).")
  flags.DEFINE_enum("crop", None, ["center", "adm"], "Geometry (None: the dataset's default, "
                    "ADM's centre crop for imagenet2012 and folder: docs/images.md).")
  flags.mark_flags_as_required(["autoencoder_config", "autoencoder", "dataset", "out"])
  F = flags.FLAGS

  def run(_):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax's restore lines
    runtime.announce()
    try:
      ae = load_autoencoder(F.autoencoder_config, F.autoencoder, F.step)
      m = encode_dataset(ae, F.autoencoder_config, F.autoencoder, F.dataset, F.split, F.out,
                         image_size=F.image_size, batch_size=F.batch_size,
                         shard_size=F.shard_size, data_dir=F.data_dir, crop=F.crop)
    except (FileNotFoundError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    st = m["channel_stats"]
    print(f"wrote {F.out}: {m['num_examples']:,} latents {tuple(m['latent_shape'])} of "
          f"{F.dataset}/{F.split} {tuple(m['image_shape'])}; per-channel mean "
          f"{np.round(st['mean'], 4).tolist()}, std {np.round(st['std'], 4).tolist()}",
          flush=True)
    return 0

  app.run(lambda a: sys.exit(run(a)), argv=argv)


if __name__ == "__main__":
  main()
