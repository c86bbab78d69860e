"""The sample driver: EMA params of the latest checkpoint -> N samples -> samples.npz + PNG.

Checkpoints are opened read-only here (and by eval): one that fails its integrity check is
skipped with a warning line, never moved; nothing under checkpoints/ is written.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import checkpoint, guidance, parallel
from diffusion.io_utils import atomic_write
from diffusion.metrics.class_accuracy import class_accuracy
from experiments import build, conditioning, plots, signals, writers
from experiments.errors import ConfigError
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict
close = plots.close


def _sample_fn(s, plan: conditioning.Plan) -> Callable:
  """((params, aux), key, x_T, offset) -> (x0, info): the config's sampler on the network's
  denoiser (computing in sampling.compute_dtype, ``build.denoiser``) wrapped by the plan's
  transformers, conditioned on the plan's cond of the batch's samples offset .. offset + B - 1.
  The one place sample, eval, sweep and pairs build their sampling denoiser."""
  sampler = build.sampler(s.config, s.schedule)
  net_takes_labels = bool(s.config.model.conditional)
  clip = bool(s.config.sampling.clip_denoised)
  dtype = str(s.config.sampling.compute_dtype)  # the network's; the sampler's stays float32

  def run(p, k, x_t, offset):
    params, aux = p
    base = build.denoiser(s.net, params, s.schedule, s.param, compute_dtype=dtype)

    def net_denoise(x, t, cond=None):  # the network sees only labels, and only if conditional
      x0 = base(x, t, guidance.label_of(cond) if net_takes_labels else None)
      return jnp.clip(x0, -1.0, 1.0) if clip else x0

    idx = offset + jnp.arange(x_t.shape[0])
    return sampler(plan.transform(net_denoise, aux), k, x_t, cond=plan.cond(aux, idx),
                   sample_offset=offset)

  return run


def with_schedule_of(s, params):
  """The set-up ``s`` with its learned schedule (sde 'vdm_learned') bound to ``params``' (host
  copy: samplers build their coefficients from it in float64); ``s`` itself otherwise."""
  if getattr(s.schedule, "learned", False) and s.schedule.params is None:
    return dataclasses.replace(s, schedule=build.bind_schedule(s.schedule, params))
  return s


def generate(s, params, n: int, key: jax.Array,
             progress: Optional[Callable[[int], None]] = None, start: int = 0,
             plan: Optional[conditioning.Plan] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
  """Samples start .. start + n - 1 (n, *data_shape) of the sequence of ``key`` from the
  config's sampler with ``params``, over the mesh; sample i depends on (key, i) only.
  ``plan`` (default: class labels only, ``conditioning.labels_plan``) says what they are
  conditioned on. ``progress(done)`` is called after each batch (e.g. a ``writers.Progress``)."""
  s = with_schedule_of(s, params)
  plan = plan or conditioning.labels_plan(s.config)
  shape = tuple(s.example["x"].shape[1:])
  bs = int(s.config.sampling.batch_size or n)
  x, info = parallel.sample_sharded(_sample_fn(s, plan), (params, plan.aux), key, s.schedule, n,
                                    shape, bs, s.mesh, progress=progress, start=start)
  return x, dict(jax.device_get(info), **plan.cost_info())


def generate_as(s, params, config: Config, n: int):
  """(x (n, ...), labels (n,) or None, info, seconds): n samples with the conditioning of
  ``config`` (``conditioning.plan`` in 'sample' mode: labels, guidance, inverse problem) from the
  set-up ``s`` of the same experiment, e.g. to compare guidance settings of one checkpoint."""
  import time
  st = dataclasses.replace(s, config=config)
  plan = conditioning.plan(config, st, "sample")
  t0 = time.time()
  x, info = generate(st, params, n, jax.random.PRNGKey(config.seed + 2), plan=plan)
  secs = time.time() - t0
  labels = np.asarray(plan.labels(jnp.arange(n))) if plan.conditional else None
  return np.asarray(x), labels, info, secs


def batch_generator(s, params, key: jax.Array, batch_size: int,
                    plan: Optional[conditioning.Plan] = None):
  """(bs, draw): ``draw(start) -> (x (bs, *data_shape) numpy, info)``, samples start ..
  start + bs - 1 of the sequence of ``key`` (as ``generate``), compiled once for many calls."""
  s = with_schedule_of(s, params)
  plan = plan or conditioning.labels_plan(s.config)
  shape = tuple(s.example["x"].shape[1:])
  return parallel.batch_sampler(_sample_fn(s, plan), (params, plan.aux), key, s.schedule, shape,
                                batch_size, s.mesh)


def plot(s, x: np.ndarray, path: str, title: str = "", labels: Optional[np.ndarray] = None):
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


def plot_inverse(s, x: np.ndarray, obs_images: np.ndarray, truth: Optional[np.ndarray],
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


def restore_params(config: Config, workdir: str, step: Optional[int] = None):
  """(Setup, EMA params, step) from the newest intact checkpoint of ``workdir``, or the one at
  ``step`` (then an error if it cannot be restored).

  Refuses a workdir of another experiment and one without checkpoints. Read-only: checkpoints
  proven corrupt are skipped with a warning line, never moved; nothing in the workdir changes.
  """
  from experiments import train
  s = train.setup(config)
  if not checkpoint.has_checkpoints(workdir):
    raise FileNotFoundError(f"no checkpoints in {os.path.join(workdir, checkpoint.CKPT_DIR)}; "
                            f"train first (--mode=train)")
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)
  ckpt = checkpoint.Checkpointer(workdir, config=s.identity, read_only=True)
  try:
    state, _, step = ckpt.restore(s.abstract_state, step=step)
  finally:
    ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no readable checkpoint in {ckpt.directory}")
  # A learned schedule is the restored one: samplers and the likelihood use it unchanged.
  return with_schedule_of(s, state.ema_params), state.ema_params, step


def _write_npz(path: str, **arrays) -> None:
  with atomic_write(path, "wb", tmp=os.path.join(os.path.dirname(path), ".samples.tmp.npz")) as f:
    np.savez(f, **arrays)


def saved_config(file_config: Config, workdir: str) -> Config:
  """The config a run in ``workdir`` used: ``file_config`` (its config file, which gives the
  fields and their types) with every value saved in <workdir>/config.json set on it, so command-
  line overrides of that run (a smaller network, other steps) are reproduced. A field the file no
  longer has is an error naming it; a workdir without config.json gives ``file_config``."""
  saved = checkpoint.read_config(workdir)
  if saved is None:
    return file_config
  saved = {k: v for k, v in saved.items() if k != "resolved"}
  out = file_config.copy_and_resolve_references()

  def overlay(node, values, prefix):
    for k, v in values.items():
      if k not in node:
        raise ConfigError(f"{workdir}/config.json has the field {prefix}{k}, which its config "
                          f"file no longer has; pass the config file the run was trained with")
      if isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
        overlay(node[k], v, f"{prefix}{k}.")
      else:
        node[k] = tuple(v) if isinstance(v, list) else v

  overlay(out, saved, "")
  return out


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Writes <workdir>/samples[/<tag>]/samples.npz and samples.png.

  Plain sampling writes to samples/; conditional, guided or inverse-problem sampling to
  samples/<tag>/ (``conditioning.Plan.tag``, e.g. cfg_scale_w3 or inpaint_replacement_obs), so
  runs with other settings do not overwrite each other. samples.npz holds x, nfe, step, the
  labels of a conditional run, the observation index of each completion, and the cost of a
  denoiser call (batch_multiplier, network_vjp). SIGTERM/SIGINT: one line, exit 128 + signum; a
  file being written is finished first.
  """
  validate(config, "sample", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    s, params, step = restore_params(config, workdir)
    plan = conditioning.plan(config, s, "sample")
    n = int(config.sampling.num_samples)
    if plan.observations is not None:
      n_obs = len(plan.observations["y"])
      n = n_obs * int(config.inverse.samples_per_observation)
    sig.phase = "sampling"
    x, info = generate(s, params, n, jax.random.PRNGKey(config.seed + 2),
                       progress=writers.Progress("sampling", n, "samples"), plan=plan)
    nfe = int(np.asarray(info.get("nfe", -1)))
    bad = int(np.sum(~np.all(np.isfinite(np.asarray(x).reshape(n, -1)), axis=1)))
    if bad:
      hint = (" (Pi-GDM near alpha = 0 amplifies the network's error: set "
              "config.inverse.pigdm_t_hi, e.g. to 0.9 t_max)" if config.inverse.task != "none"
              and config.inverse.method == "pigdm" else "")
      say(f"warning: {bad} of {n} samples are not finite{hint}")
    idx = jnp.arange(n)
    extra: Dict[str, Any] = {"batch_multiplier": info["batch_multiplier"],
                             "network_vjp": info["network_vjp"],
                             "transforms": np.asarray(info["transforms"], dtype=str)}
    labels = np.asarray(plan.labels(idx)) if plan.conditional else None
    accuracy = ""
    if labels is not None:
      extra["labels"] = labels
      ref = conditioning.reference_classifier(config)
      if ref is not None and plan.observations is None:
        extra["class_accuracy"] = class_accuracy(ref[0], x, labels)
        accuracy = f"; class accuracy {extra['class_accuracy']:.3f} by {ref[1]}"
    out = os.path.join(workdir, "samples", plan.tag) if plan.tag else os.path.join(workdir,
                                                                                    "samples")
    cost = (f"NFE {nfe}" + (f", network batch x{info['batch_multiplier']}"
                            if info["batch_multiplier"] != 1 else "")
            + (", each call back-propagates through the network" if info["network_vjp"] else ""))
    if writers.is_main():
      sig.phase, sig.nothing_saved = "writing the samples", f"the samples are in {out}"
      with sig.deferred():  # no half-written samples.npz
        os.makedirs(out, exist_ok=True)
        png = os.path.join(out, "samples.png")
        if plan.observations is not None:
          obs = plan.observations
          extra["observation_index"] = np.arange(n) % n_obs
          op = conditioning.inverse_operator(config)
          obs_images = np.asarray(op.pinv(jnp.asarray(obs["y"]),
                                          {k: jnp.asarray(v) for k, v in obs.items()}))
          _write_npz(os.path.join(out, "samples.npz"), x=x, nfe=nfe, step=step, **extra)
          close(plot_inverse(s, x, obs_images, conditioning.observation_truth(config),
                             int(config.inverse.samples_per_observation), png,
                             f"{config.inverse.task} ({config.inverse.method}), step {step}, "
                             f"{cost}"))
        else:
          _write_npz(os.path.join(out, "samples.npz"), x=x, nfe=nfe, step=step, **extra)
          close(plot(s, x, png, f"{n} samples, step {step}, {cost}", labels=labels))
    say(f"wrote {n} samples ({cost}) from the checkpoint at step {step} to {out}{accuracy}")
  return {"num_samples": n, "nfe": nfe, "step": step, "out": out,
          "batch_multiplier": info["batch_multiplier"], "network_vjp": info["network_vjp"],
          **({"class_accuracy": extra["class_accuracy"]} if "class_accuracy" in extra else {})}
