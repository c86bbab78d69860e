"""Latent folders and their training batches (diffusion/data/latents.py)."""
import hashlib
import json
import os

import numpy as np
import pytest

from diffusion import latent as latent_lib
from diffusion.data import latents

SHAPE = (2, 2, 3)


def write_folder(folder, n=10, shard_size=4, seed=0, complete=True):
  """A latent folder of n random posteriors as experiments.encode writes it."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(n,) + SHAPE).astype(np.float32)
  std = rng.uniform(0.1, 0.5, size=(n,) + SHAPE).astype(np.float32)
  label = np.arange(n, dtype=np.int32) % 3
  entries = []
  for k, a, b in latents.shard_plan(n, shard_size):
    data = latents.encode_shard(mean[a:b], std[a:b], label[a:b])
    with open(os.path.join(folder, latents.shard_name(k)), "wb") as f:
      f.write(data)
    entries.append({"index": k, "start": a, "count": b - a,
                    "sha256": hashlib.sha256(data).hexdigest()})
  m = latent_lib.channel_stats(mean.reshape(-1, 3).sum(0),
                               (mean ** 2 + std ** 2).reshape(-1, 3).sum(0), n * 4)
  made_by = {"autoencoder": {"workdir": "/nowhere"}, "data": {"name": "digits"}}
  manifest = {"format": latents.FORMAT, "fingerprint": latents.fingerprint(made_by),
              "made_by": made_by, "num_examples": n, "shard_size": shard_size,
              "num_shards": len(entries), "image_shape": [8, 8, 1], "latent_shape": list(SHAPE),
              "num_classes": 3, "shards": entries, "complete": complete,
              "channel_stats": {"mean": m[0].tolist(), "std": m[1].tolist()}}
  with open(os.path.join(folder, latents.MANIFEST), "w") as f:
    json.dump(manifest, f)
  return mean, std, label


def test_folder_reads_back_in_order(tmp_path):
  mean, std, label = write_folder(str(tmp_path))
  ds = latents.LatentDataset(str(tmp_path))
  np.testing.assert_array_equal(ds.mean, mean)
  np.testing.assert_array_equal(ds.std, std)
  np.testing.assert_array_equal(ds.labels, label)
  assert ds.latent_shape == SHAPE and ds.image_shape == (8, 8, 1) and len(ds) == 10


def test_batches_are_a_function_of_seed_step_process(tmp_path):
  mean, std, _ = write_folder(str(tmp_path), n=12)
  ds = latents.LatentDataset(str(tmp_path))
  norm = latent_lib.scale_norm(0.5, 3)
  it = latents.LatentIterator(ds, norm, posterior="sample", batch_size=4, seed=3)
  first = [next(it) for _ in range(5)]
  resumed = latents.LatentIterator(ds, norm, posterior="sample", batch_size=4, seed=3,
                                   start_step=3)
  for want in first[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["x"], want["x"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # two processes of 2 read the global batch of 4 disjointly, each epoch exactly once
  seen = []
  for p in range(2):
    it_p = latents.LatentIterator(ds, norm, posterior="mean", batch_size=2, seed=3,
                                  process_index=p, process_count=2)
    for step in range(3):  # 3 steps x 4 = one epoch of 12
      seen.append(latents.stream_indices(step, num_examples=12, batch_size=2, seed=3,
                                         process_index=p, process_count=2))
      x = it_p.batch(step)["x"]
      np.testing.assert_allclose(x, mean[seen[-1]] * 0.5)  # 'mean': no noise
  assert sorted(np.concatenate(seen).tolist()) == list(range(12))


def test_posterior_noise_has_the_stored_std(tmp_path):
  write_folder(str(tmp_path), n=4)
  ds = latents.LatentDataset(str(tmp_path))
  it = latents.LatentIterator(ds, latent_lib.scale_norm(1.0, 3), posterior="sample",
                              batch_size=4, seed=0)
  z = np.stack([it.batch(i)["x"] for i in range(4000)])  # every image in every batch
  idx = np.stack([latents.stream_indices(i, num_examples=4, batch_size=4, seed=0,
                                         process_index=0, process_count=1) for i in range(4000)])
  eps = (z - ds.mean[idx]) / ds.std[idx]
  assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02


def test_refusals_name_the_problem(tmp_path):
  with pytest.raises(latents.LatentDatasetError, match="holds no latents.json"):
    latents.LatentDataset(str(tmp_path / "none"))
  write_folder(str(tmp_path / "part"), complete=False)
  with pytest.raises(latents.LatentDatasetError, match="incomplete"):
    latents.LatentDataset(str(tmp_path / "part"))
  write_folder(str(tmp_path / "bad"))
  path = tmp_path / "bad" / latents.shard_name(1)
  data = bytearray(path.read_bytes())
  data[-5] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(latents.LatentDatasetError, match="sha256"):
    latents.LatentDataset(str(tmp_path / "bad"))
  write_folder(str(tmp_path / "ok"))
  ds = latents.LatentDataset(str(tmp_path / "ok"))
  with pytest.raises(ValueError, match="accepted"):
    latents.LatentIterator(ds, latent_lib.scale_norm(1.0, 3), posterior="mode", batch_size=2,
                           seed=0)
