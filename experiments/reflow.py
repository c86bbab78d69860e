"""Reflow's data: (noise, sample) pairs of a trained flow on disk, and training batches of them.

Reflow (Liu et al. 2023, sec. 2.3, "rectified flow") trains a new flow on the coupling (X_T, X_0)
that the previous flow's ODE defines: X_0 = ODE(X_T). ``--mode=pairs`` runs a trained run's
config sampler (it must be deterministic: a PF-ODE solver, so X_0 is a function of X_T) on the
EMA parameters of its newest checkpoint and writes the pairs to <workdir>/pairs/ as sample shards
(``experiments.shards``: atomic, resumable, checked by a fingerprint of what defines them), each
pair one sample of shape (2, *data_shape): [noise x_T, sample x_0]. Pair i depends on (seed, i)
only: its noise is the prior draw of sample i (``parallel.per_sample_prior``), the one the
sampler starts from.

A run with training.objective='reflow' and distill.pairs=<that folder> draws its batch i from
the pairs uniformly with replacement, from (seed, i) alone (``pair_batches``), and trains with
the pair's noise as eps: x_t = alpha_t x_0 + sigma_t x_T (``losses.dsm_loss(noise=...)``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator

import jax
import ml_collections
import numpy as np

from diffusion import parallel
from experiments import build, shards, signals, writers
from experiments.errors import ConfigError
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict
PAIRS_DIR = "pairs"
INFO_FILE = "pairs.json"


def pairs_dir(workdir: str) -> str:
  return os.path.join(workdir, PAIRS_DIR)


def check_deterministic(config: Config) -> None:
  from diffusion.samplers import registry
  info = registry.sampler_info(config.sampling.sampler)
  if info.kind != "deterministic":
    raise ConfigError(f"--mode=pairs: config.sampling.sampler={config.sampling.sampler!r} is "
                      f"{info.kind}; reflow's pairs need a deterministic sampler (a PF-ODE "
                      f"solver such as 'euler', 'heun', 'dpmpp_2m'), so that each sample is a "
                      f"function of its noise")


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """--mode=pairs: writes distill.num_pairs pairs to <workdir>/pairs/ (resuming finished shards)
  and pairs.json (the checkpoint step, sampler, NFE). SIGTERM/SIGINT: the shard being written is
  finished, then one line and exit 128 + signum."""
  validate(config, "pairs", workdir)
  check_deterministic(config)
  from experiments import sample
  with signals.RunSignals("set-up", "nothing written") as sig:
    s, params, step = sample.restore_params(config, workdir)
    d = config.distill
    n, shard = int(d.num_pairs), int(d.pairs_shard_size)
    shape = tuple(s.example["x"].shape[1:])
    key = jax.random.PRNGKey(config.seed + 4)
    bs, draw = sample.batch_generator(s, params, key, min(int(config.sampling.batch_size),
                                                          shard))
    prior_key, _ = parallel.sampling_streams(key)
    noise_of = jax.jit(lambda start: parallel.per_sample_prior(s.schedule, prior_key, start, bs,
                                                               shape))

    def draw_pairs(start: int):
      x0, info = draw(start)
      noise = np.asarray(noise_of(np.int32(start)))
      return np.stack([noise, np.asarray(x0)], axis=1), info

    fields = {"seed": int(config.seed), "key": "seed+4", "step": int(step),
              "shape": list(shape), "shard_size": shard,
              "sampling": build.sampler_kwargs(config)}
    out = pairs_dir(workdir)
    sig.phase = "writing pairs"
    sig.nothing_saved = f"the finished shards are kept in {out} and --mode=pairs resumes"
    x, nfe = shards.generate(out, n, shard, (2,) + shape, draw_pairs, bs,
                             shards.fingerprint(fields), write=writers.is_main(),
                             progress=lambda todo: writers.Progress("pairs", todo, "pairs"),
                             guard=sig.deferred, say=say)
    bad = int(np.sum(~np.all(np.isfinite(x.reshape(n, -1)), axis=1)))
    if bad:
      raise ValueError(f"{bad} of {n} pairs hold non-finite samples; the flow in {workdir} is "
                       f"not usable for reflow (the shards are kept in {out})")
    summary = dict(fields, num_pairs=n, nfe=int(nfe), experiment=config.experiment,
                   workdir=os.path.abspath(workdir))
    if writers.is_main():
      with sig.deferred():
        writers.write_json(os.path.join(out, INFO_FILE), summary)
  say(f"wrote {n:,} (noise, sample) pairs ({config.sampling.sampler}, NFE {nfe}) of the "
      f"checkpoint at step {step} to {out}")
  return summary


def load_pairs(config: Config) -> np.ndarray:
  """(N, 2, *data_shape) float32: the pairs of distill.pairs; an error naming the folder when it
  has none or their shape is not the config's data shape."""
  d = config.distill.pairs
  if not shards.finished_shards(d):
    raise FileNotFoundError(f"config.distill.pairs={d!r} holds no pair shards; write them with "
                            f"--mode=pairs on the previous flow's config and workdir")
  pairs = shards.read_samples(d)
  example = build.data_shape(config)
  if pairs.ndim < 2 or pairs.shape[1] != 2 or tuple(pairs.shape[2:]) != example:
    raise ValueError(f"the pairs in {d} have shape {pairs.shape[1:]}, expected (2, *data "
                     f"shape) = {(2,) + example} for config.data.name={config.data.name!r}")
  return pairs.astype(np.float32)


def pair_batches(config: Config, start_step: int, process_index: int,
                 process_count: int) -> Iterator[Dict[str, np.ndarray]]:
  """This process's rows of reflow batches start_step, start_step + 1, ...: {'x': samples,
  'noise': their noise} (B / process_count, ...), batch i drawn uniformly with replacement from
  (seed, i) alone."""
  pairs = load_pairs(config)
  b = int(config.data.batch_size)
  if b % process_count:
    raise ValueError(f"data.batch_size={b} must be divisible by the number of processes "
                     f"{process_count}")
  per = b // process_count
  step = int(start_step)
  while True:
    rng = np.random.default_rng([int(config.seed), step, 0x5EF10])
    idx = rng.integers(0, len(pairs), b)[process_index * per:(process_index + 1) * per]
    yield {"x": pairs[idx, 1], "noise": pairs[idx, 0]}
    step += 1

