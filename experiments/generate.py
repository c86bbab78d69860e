"""Sample generation from a set-up and parameters, and the plots of samples: the one place
train, sample, eval, sweep and pairs build their sampling denoiser and draw from it.

Sample i of a sequence depends on (key, i) only (``diffusion.parallel``), so a set drawn in one
go, in batches, resumed, or on another number of devices is the same set.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import guidance, networks, parallel
from experiments import build, conditioning, latents, plots
from experiments.setup import Setup, with_schedule_of

Config = ml_collections.ConfigDict


def _sample_fn(s: Setup, plan: conditioning.Plan, decode: Callable) -> Callable:
  """((params, aux, decoder params), key, x_T, offset) -> (x0, info): the config's sampler on
  the network's denoiser (computing in sampling.compute_dtype, ``networks.eval_denoiser``)
  wrapped by the plan's transformers, conditioned on the plan's cond of the batch's samples
  offset .. offset + B - 1, its samples passed through ``decode(decoder params, x0)`` (a latent
  run's decoder to images, or the identity). The one place sample, eval, sweep and pairs build
  their sampling denoiser."""
  # the configured sampler, or one of the conditioning's own (CFG++, DPS / DAPS / DDRM)
  sampler = plan.sampler or build.sampler(s.config, s.schedule)
  net_takes_labels = bool(s.config.model.conditional)
  clip = bool(s.config.sampling.clip_denoised)
  dtype = str(s.config.sampling.compute_dtype)  # the network's; the sampler's stays float32

  if s.objective.network == "flow_map":  # a two-time network: its flow map in the slot
    return _flow_map_sample_fn(s, plan, decode, sampler, dtype)

  def run(p, k, x_t, offset):
    params, aux, dec_params = p
    base = networks.eval_denoiser(s.net, params, s.schedule, s.param, compute_dtype=dtype)

    def net_denoise(x, t, cond=None):  # the network sees only labels, and only if conditional
      x0 = base(x, t, guidance.label_of(cond) if net_takes_labels else None)
      return jnp.clip(x0, -1.0, 1.0) if clip else x0

    idx = offset + jnp.arange(x_t.shape[0])
    x0, info = sampler(plan.transform(net_denoise, aux), k, x_t, cond=plan.cond(aux, idx),
                       sample_offset=offset)
    if plan.sampler is not None:  # its cost info is static (plan.cost_info); the count is traced
      info = {"nfe": info["nfe"]}
    return decode(dec_params, x0), info

  return run


def _flow_map_sample_fn(s: Setup, plan: conditioning.Plan, decode: Callable, sampler,
                        dtype: str) -> Callable:
  """``_sample_fn`` of a flow-map network (objective network 'flow_map'): the sampler (of kind
  'flow_map', experiments/validate.py) receives ``networks.eval_flow_map`` of the params in its
  ``denoise`` slot; unconditional (the flow-map objectives train no labels) and unclipped (a map
  between noisy states: sampling.clip_denoised would clip x_s, not an x0 prediction)."""

  def run(p, k, x_t, offset):
    params, aux, dec_params = p
    phi = networks.eval_flow_map(s.net, params, s.schedule, s.param, compute_dtype=dtype)
    idx = offset + jnp.arange(x_t.shape[0])
    x0, info = sampler(phi, k, x_t, cond=plan.cond(aux, idx), sample_offset=offset)
    return decode(dec_params, x0), info

  return run


def _decoding(s: Setup, decode: bool) -> Tuple[Callable, Any]:
  """(decode fn, its params): a latent run's decoder to images when ``decode``
  (``experiments.latents``), else the identity."""
  if decode and build.is_latent(s.config):
    dec = latents.decoder(s.config)
    return dec.images, dec.ae.params
  return (lambda params, x: x), None


def generate(s: Setup, params, n: int, key: jax.Array,
             progress: Optional[Callable[[int], None]] = None, start: int = 0,
             plan: Optional[conditioning.Plan] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
  """Samples start .. start + n - 1 (n, *data_shape; a latent run's decoded to images) of the
  sequence of ``key`` from the config's sampler with ``params``, over the mesh; sample i
  depends on (key, i) only. ``plan`` (default: class labels only, ``conditioning.labels_plan``)
  says what they are conditioned on. ``progress(done)`` is called after each batch (e.g. a
  ``writers.Progress``)."""
  s = with_schedule_of(s, params)
  plan = plan or conditioning.labels_plan(s.config)
  shape = tuple(s.example["x"].shape[1:])
  bs = int(s.config.sampling.batch_size or n)
  decode, dec_params = _decoding(s, True)
  x, info = parallel.sample_sharded(_sample_fn(s, plan, decode), (params, plan.aux, dec_params),
                                    key, s.schedule, n, shape, bs, s.mesh, progress=progress,
                                    start=start)
  return x, dict(jax.device_get(info), **plan.cost_info())


def generate_as(s: Setup, params, config: Config, n: int):
  """(x (n, ...), labels (n,) or None, info, seconds): n samples with the conditioning of
  ``config`` (``conditioning.plan`` in 'sample' mode: labels, guidance, inverse problem) from the
  set-up ``s`` of the same experiment, e.g. to compare guidance settings of one checkpoint."""
  st = dataclasses.replace(s, config=config)
  plan = conditioning.plan(config, st, "sample")
  t0 = time.time()
  x, info = generate(st, params, n, jax.random.PRNGKey(config.seed + 2), plan=plan)
  secs = time.time() - t0
  labels = (np.asarray(guidance.label_of(plan.cond(plan.aux, jnp.arange(n))))
            if plan.conditional else None)
  return np.asarray(x), labels, info, secs


def batch_generator(s: Setup, params, key: jax.Array, batch_size: int,
                    plan: Optional[conditioning.Plan] = None, decode: bool = True):
  """(bs, draw): ``draw(start) -> (x (bs, ...) numpy, info)``, samples start .. start + bs - 1
  of the sequence of ``key`` (as ``generate``), compiled once for many calls; a latent run's
  decoded to images unless ``decode=False`` (reflow's pairs stay latents)."""
  s = with_schedule_of(s, params)
  plan = plan or conditioning.labels_plan(s.config)
  shape = tuple(s.example["x"].shape[1:])
  dec, dec_params = _decoding(s, decode)
  return parallel.batch_sampler(_sample_fn(s, plan, dec), (params, plan.aux, dec_params), key,
                                s.schedule, shape, batch_size, s.mesh)


def plot(s: Setup, x: np.ndarray, path: str, title: str = "",
         labels: Optional[np.ndarray] = None):
  """Scatter against data for 2-D data (coloured by class when ``labels`` are given), an image
  grid for images (one row per class when ``labels`` are given). Returns the figure."""
  cfg = s.config
  if build.is_toy(cfg) and x.ndim == 2 and x.shape[1] == 2:
    data = build.heldout(cfg, len(x))
    return plots.scatter(data, x, path, title, extent=cfg.eval.density_extent, labels=labels)
  if labels is None:
    return plots.image_grid(x[:64], path)
  rows = [x[labels == c][:10] for c in np.unique(labels)]
  ncols = max(len(r) for r in rows)
  grid = np.concatenate([np.concatenate([r, np.zeros((ncols - len(r),) + x.shape[1:], x.dtype)])
                         for r in rows])
  return plots.image_grid(grid, path, ncols=ncols)


def plot_inverse(s: Setup, x: np.ndarray, obs_images: np.ndarray, truth: Optional[np.ndarray],
                 per_obs: int, path: str, title: str = ""):
  """The completions next to their observations: for images one row per observation (at most
  8): the observation (its pseudo-inverse image), ``per_obs`` completions, the truth if known;
  for 2-D data a scatter of the completions coloured by observation."""
  n_obs = len(obs_images)
  if x.ndim == 2:
    labels = np.arange(len(x)) % n_obs
    return plots.scatter(obs_images, x, path, title, extent=s.config.eval.density_extent,
                         labels=labels, data_title="observations (pinv y)",
                         samples_title="completions (colour: observation)")
  rows = []
  for j in range(min(n_obs, 8)):
    row = [obs_images[j]] + [x[j + k * n_obs] for k in range(per_obs)]
    if truth is not None:
      row.append(truth[j])
    rows.append(np.stack(row))
  return plots.image_grid(np.concatenate(rows), path, ncols=len(rows[0]))
