"""--mode=pairs: reflow's data, (noise, sample) pairs of a trained flow, written to disk.

Reflow (Liu et al. 2023, sec. 2.3, "rectified flow") trains a new flow on the coupling (X_T, X_0)
that the previous flow's ODE defines: X_0 = ODE(X_T). ``--mode=pairs`` runs a trained run's
config sampler (it must be deterministic: a PF-ODE solver, so X_0 is a function of X_T) on the
EMA parameters of its newest checkpoint and writes the pairs to <workdir>/pairs/ as sample shards
(``experiments.shards``: atomic, resumable, checked by a fingerprint of what defines them), each
pair one sample of shape (2, *data_shape): [noise x_T, sample x_0]. Pair i depends on (seed, i)
only: its noise is the prior draw of sample i (``parallel.per_sample_prior``), the one the
sampler starts from.

A run with training.objective='reflow' and distill.pairs=<that folder> draws its batch i from
the pairs uniformly with replacement, from (seed, i) alone (``build.pair_batches`` of
``build.load_pairs``), and trains with the pair's noise as eps: x_t = alpha_t x_0 + sigma_t x_T
(``losses.dsm_loss(noise=...)``).
"""
from __future__ import annotations

import os
from typing import Any, Dict

import jax
import ml_collections
import numpy as np

from diffusion import parallel
from diffusion.samplers import registry
from experiments import build, generate, results, shards, signals, writers
from diffusion.config_checks import ConfigError
from experiments.setup import restore_params
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict
PAIRS_DIR = "pairs"
INFO_FILE = "pairs.json"


def pairs_dir(workdir: str) -> str:
  return os.path.join(workdir, PAIRS_DIR)


def check_deterministic(config: Config) -> None:
  info = registry.sampler_info(config.sampling.sampler)
  if info.kind != "deterministic":
    raise ConfigError(f"--mode=pairs: config.sampling.sampler={config.sampling.sampler!r} is "
                      f"{info.kind}; reflow's pairs need a deterministic sampler (a PF-ODE "
                      f"solver such as 'euler', 'heun', 'dpmpp_2m'), so that each sample is a "
                      f"function of its noise")


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """--mode=pairs: writes distill.num_pairs pairs to <workdir>/pairs/ (resuming finished shards)
  and pairs.json (the checkpoint step, sampler, NFE). Pairs holding a NaN or Inf are an error
  (``results.NonFiniteSamplesError``): their shards and pairs.json are not written. SIGTERM /
  SIGINT: the shard being written is finished, then one line and exit 128 + signum."""
  validate(config, "pairs", workdir)
  check_deterministic(config)
  with signals.RunSignals("set-up", "nothing written") as sig:
    s, params, step = restore_params(config, workdir)
    d = config.distill
    n, shard = int(d.num_pairs), int(d.pairs_shard_size)
    shape = tuple(s.example["x"].shape[1:])
    key = jax.random.PRNGKey(config.seed + 4)
    bs, draw = generate.batch_generator(s, params, key, min(int(config.sampling.batch_size),
                                                            shard), decode=False)
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
    results.check_finite(config, x, "pairs",
                         f"their shards were not written to {out} (the finite shards are kept, "
                         f"{INFO_FILE} is not written): the flow in {workdir} is not usable for "
                         f"reflow as it is")
    summary = dict(fields, num_pairs=n, nfe=int(nfe), experiment=config.experiment,
                   workdir=os.path.abspath(workdir))
    if writers.is_main():
      with sig.deferred():
        writers.write_json(os.path.join(out, INFO_FILE), summary)
  say(f"wrote {n:,} (noise, sample) pairs ({config.sampling.sampler}, NFE {nfe}) of the "
      f"checkpoint at step {step} to {out}")
  return summary
