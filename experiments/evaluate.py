"""The eval driver: a checkpoint's EMA params -> likelihoods, sample metrics, NFE.

Which checkpoints: ``eval.step`` (None: the newest that passes its integrity check), or every one
with ``eval.all_checkpoints`` (a corrupt one is passed over in one line). A step evaluated
already with the same settings (its ``eval/step_<step>/<name>/metrics.json``) is skipped (one
line); other settings (another sampler, steps, guidance, eval fields...) are evaluated anew into
their own folder. A step without a checkpoint is one error line listing the available steps;
nothing is written then.

For each evaluated step and its settings, ``<name>`` being ``experiments.results.output``'s
(e.g. heun_n18_karras_1f0c3a9e: the sampler, its steps and grid, the conditioning's tag, and a
hash of every setting that changes the metrics), in <workdir>/eval/:
  step_<step>/<name>/settings.json  the settings of that hash (written first)
  step_<step>/<name>/samples/       the eval.num_samples samples, shard_<k>.npz
                                    (experiments/shards.py): resumed from the finished shards
                                    after an interruption
  step_<step>/<name>/samples.png    a plot of the samples (density.png: the model density, 2-D)
  step_<step>/<name>/metrics.json   the metrics below (written atomically, last: it marks the
                                    step evaluated with these settings)
  metrics.json                      a copy of the most recent evaluation's metrics (any step,
                                    any settings: "the latest", for a quick look)
  samples.png, density.png          copies of the most recent evaluation's plots
and a TensorBoard scalar ``eval/<metric>`` at that step for every number (<workdir>/tb/eval).
Samples that are not finite are an error (``results.NonFiniteSamplesError``, one line): no
metrics are written for them, and their shards are not written.

Metrics, toy 2-D data:
  nll_nats            -mean log p(x) over held-out points (PF-ODE, config.eval.divergence)
  true_entropy_nats   the data's differential entropy, where known
  excess_nll_nats     nll_nats - true_entropy_nats (the KL to the data, >= 0 up to noise)
Images (integer data with L levels, D dimensions; config.data):
  bpd_pf_ode          bits/dim by the PF-ODE as score SDE computes it (Song et al. 2021, App.
                      D.2; released code's run_lib / likelihood.py): each test image k dequantized
                      x = 2 (k + u) / L - 1, u ~ U[0, 1) (eval.dequantization_draws draws, u of
                      draw d and image i from (seed, d, i)), log p(x) by the PF-ODE from eval.t_min
                      with Hutchinson's estimator (one fixed eval.probe per solve) or the exact
                      divergence, an adaptive diffrax solve (eval.solver, eval.rtol / eval.atol),
                      bpd = -(log p(x) / D + log(2 / L)) / ln 2; averaged over the draws of each
                      image, then over images (``_stderr``: over images), ``_nfe`` the mean NFE
                      (diffusion.metrics.bits_per_dim.bpd_pf_ode).
  bpd_elbo            VDM's continuous-time ELBO (diffusion.elbo; Kingma et al. 2021) in bits/dim,
                      with its terms bpd_elbo_prior / _diffusion / _recon, from eval.t_min
                      (eval.elbo_time_samples Monte Carlo draws per image, eval.elbo_time_sampling)
  bits_per_dim        = bpd_pf_ode (the name of earlier versions)
  fid, kid, kid_std   with eval.fid_stats: FID and KID (diffusion.metrics.fid) of the first
                      eval.fid_num_samples samples against those reference statistics
                      (python -m experiments.reference_stats), pixels by ``fid_pixels``
Both: sliced_wasserstein (SW_2) and mmd (unbiased MMD^2, first eval.mmd_points) between the
samples and held-out data, nfe of the sampler, the settings used.
Classifiers (training.objective='classifier'; no samples, no plots): on the first
data.num_heldout held-out points (toy: toy2d.heldout; images: the test split), at
CLASSIFIER_EVAL_LEVELS times evenly spaced in logSNR from the training range's t_min to t_max
(diffusion.metrics.classifier_eval), one draw x_t = alpha x0 + sigma eps per point (fixed seed):
  accuracy_at_t=<t>       held-out accuracy of the EMA classifier (argmax of its logits)
  cross_entropy_at_t=<t>  its mean cross-entropy in nats (the Bayes classifier's is H(Y | X_t))
  accuracy_mean, cross_entropy_mean   their means over the levels
  eval_times, eval_logsnrs, heldout_points, num_classes   the settings
Autoencoders (training.objective='autoencoder'; no samples): the first data.num_heldout test
images reconstructed from their posterior means (``autoencoder_metrics``):
  mse, psnr               in [-1, 1]; dB on the pixel levels (peak L - 1: 8-bit PSNR for 256)
  mse_levels              the squared error on the levels
  mse_mean_image, psnr_mean_image   the trivial reconstruction's (the held-out mean image)
  kl, kl_per_latent_dim   KL(q(z | x) || N(0, I)) in nats per image and per latent dimension
  latent_std, posterior_std_mean    the posterior means' std, the posterior std's mean
  latent_shape, heldout_images, num_levels   the settings
and reconstructions.png (originals above their reconstructions) beside metrics.json.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import autoencoding, checkpoint, elbo, networks, parallel
from diffusion.data import images
from diffusion.likelihood import log_likelihood as pf_ode_loglik
from diffusion.metrics import fid, inception
from diffusion.metrics.bits_per_dim import bpd_elbo, bpd_pf_ode, dequantize
from diffusion.metrics.class_accuracy import class_accuracy
from diffusion.metrics.classifier_eval import classifier_accuracy, classifier_eval_times
from experiments import (build, conditioning, eval_common, generate, plots, reconstructions,
                         results, shards, signals, writers)
from experiments.setup import Setup, restore_params, setup
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict

METRICS_FILE = "metrics.json"
NLL_FIELDS = "eval.nll_points, eval.nll_batch_size"  # what sizes a likelihood pass


_JIT_CACHE: Dict[Any, Any] = {}


def _cached(key, make: Callable[[], Any]):
  """One jitted function per key (diffrax takes seconds to trace); the newest few are kept."""
  if key not in _JIT_CACHE:
    if len(_JIT_CACHE) >= 4:
      _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
    _JIT_CACHE[key] = make()
  return _JIT_CACHE[key]


def _sharded(s, fn):
  """jit of fn(params, x (B, ...) batch-sharded, key) -> (per-example (B,) tree, replicated)."""
  rep, bsh = parallel.replicated(s.mesh), parallel.batch_sharding(s.mesh)
  return jax.jit(fn, in_shardings=(rep, bsh, rep), out_shardings=(bsh, rep))


def _loglik_fn(s, rtol: float, atol: float, divergence: str, probe: str = "rademacher",
               t_min: Optional[float] = None, solver: str = "tsit5"):
  """The jitted (params, x, key) -> (log p(x) (B,), nfe), cached per config and settings."""

  def fn(params, x, key):
    out = pf_ode_loglik(networks.eval_denoiser(s.net, params, s.schedule, s.param), s.schedule, x, key,
                        divergence=divergence, probe=probe, solver=solver, rtol=rtol, atol=atol,
                        t_min=t_min)
    return out["logp"], out["nfe"]

  key = ("loglik", s.config.to_json(), float(rtol), float(atol), divergence, probe, t_min,
         solver, s.mesh)
  return _cached(key, lambda: _sharded(s, fn))


def _elbo_fn(s, num_levels: int, t_min: Optional[float], num_time_samples: int,
             time_sampling: str):
  """The jitted (params, x_int, key) -> (dict of (B,) ELBO terms in nats, 0), cached."""

  def fn(params, x_int, key):
    out = elbo.elbo(networks.eval_denoiser(s.net, params, s.schedule, s.param), s.schedule, x_int, key,
                    num_levels=num_levels, t_min=t_min, num_time_samples=num_time_samples,
                    time_sampling=time_sampling)
    return out, jnp.zeros(())

  key = ("elbo", s.config.to_json(), num_levels, t_min, num_time_samples, time_sampling, s.mesh)
  return _cached(key, lambda: _sharded(s, fn))


def _batched(s, fn, params, x: np.ndarray, batch_size: int, key: jax.Array,
             progress: Optional[Callable[[int], None]] = None):
  """fn over x in batches padded to one shape (one compile), batch j with fold_in(key, j).
  Returns (per-example outputs concatenated (n, ...), the per-batch scalars (num_batches,))."""
  ndev = s.mesh.devices.size
  bs = max(ndev, (batch_size // ndev) * ndev)
  outs, scalars = [], []
  for j, start in enumerate(range(0, len(x), bs)):
    chunk = x[start:start + bs]
    pad = bs - len(chunk)
    xb = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
    per, scalar = fn(params, jax.device_put(xb, parallel.batch_sharding(s.mesh)),
                     jax.device_put(np.asarray(jax.random.fold_in(key, j)),
                                    parallel.replicated(s.mesh)))
    outs.append(jax.tree_util.tree_map(lambda a: parallel.to_host(a)[:len(chunk)], per))
    scalars.append(float(np.mean(parallel.to_host(scalar))))
    if progress is not None:
      progress(start + len(chunk))
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outs), np.asarray(scalars)


def log_likelihood(s, params, x: np.ndarray, batch_size: int, key: jax.Array, *,
                   rtol: float, atol: float, divergence: str, probe: str = "rademacher",
                   t_min: Optional[float] = None, solver: str = "tsit5",
                   progress: Optional[Callable[[int], None]] = None) -> Tuple[np.ndarray, float]:
  """log p(x) (n,) in nats and the mean NFE, in batches padded to one shape (one compile); the
  Hutchinson probe of batch j is drawn from fold_in(key, j), fixed along its solve.
  ``progress(done)`` is called after each batch with the number of points done."""
  fn = _loglik_fn(s, rtol, atol, divergence, probe, t_min, solver)
  logp, nfes = _batched(s, fn, params, x, batch_size, key, progress)
  return logp, float(np.mean(nfes))


# -- classifiers: held-out accuracy per noise level ---------------------------------------------


def _classifier_logits_of(s, params, batch_size: int):
  """(x_t (n, ...), t (n,)) -> logits (n, C) numpy of the classifier with ``params``, jitted over
  the mesh in batches padded to one shape (one compile)."""
  rep, bsh = parallel.replicated(s.mesh), parallel.batch_sharding(s.mesh)

  def fn(p, x, t):
    return networks.eval_logits(s.net, p, s.schedule, s.param)(x, t)

  key = ("classifier_logits", s.config.to_json(), s.mesh)
  jitted = _cached(key, lambda: jax.jit(fn, in_shardings=(rep, bsh, bsh), out_shardings=bsh))
  ndev = s.mesh.devices.size
  bs = max(ndev, (batch_size // ndev) * ndev)

  def logits_of(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(x), bs):
      xb, tb = x[start:start + bs], t[start:start + bs]
      pad = bs - len(xb)
      if pad:
        xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
        tb = np.concatenate([tb, np.repeat(tb[-1:], pad, axis=0)])
      y = jitted(params, jax.device_put(xb, bsh), jax.device_put(tb, bsh))
      out.append(parallel.to_host(y)[:bs - pad])
    return np.concatenate(out)

  return logits_of


def classifier_metrics(s, params) -> Dict[str, Any]:
  """The held-out metrics of a classifier (module docstring) with ``params``."""
  cfg = s.config
  x0, labels = build.heldout_labelled(cfg, int(cfg.data.num_heldout))
  t_min = build.loss_options(cfg).get("t_min", s.schedule.t_min)
  t_max = cfg.training.loss_opts.get("t_max", None) or s.schedule.t_max
  times = classifier_eval_times(s.schedule, float(t_min), float(t_max))
  out = classifier_accuracy(_classifier_logits_of(s, params, int(cfg.eval.nll_batch_size)),
                            np.asarray(x0, np.float64), labels, s.schedule, times,
                            jax.random.PRNGKey(cfg.seed + 3))
  metrics: Dict[str, Any] = {}
  for t, a, c in zip(times, out["accuracy"], out["cross_entropy"]):
    metrics[f"accuracy_at_t={t:.4g}"] = float(a)
    metrics[f"cross_entropy_at_t={t:.4g}"] = float(c)
  metrics.update({
      "accuracy_mean": float(np.mean(out["accuracy"])),
      "cross_entropy_mean": float(np.mean(out["cross_entropy"])),
      "eval_times": [float(t) for t in times],
      "eval_logsnrs": [float(s.schedule.logsnr(np.float64(t))) for t in times],
      "heldout_points": int(len(labels)), "num_classes": int(build.dataset_num_classes(cfg))})
  return metrics


# -- autoencoders: held-out reconstructions ------------------------------------------------------


def _reconstruct_fn(s):
  """The jitted (params, x (B, H, W, C), key) -> (``reconstructions.reconstruct``, 0), cached."""

  def fn(params, x, key):
    del key  # decodes the posterior mean: no draw
    return reconstructions.reconstruct(s.net, params, x), jnp.zeros(())

  key = ("reconstruct", s.config.to_json(), s.mesh)
  return _cached(key, lambda: _sharded(s, fn))


def autoencoder_metrics(s, params, here: str, title: str) -> Tuple[Dict[str, Any], List[str]]:
  """(the held-out metrics of an autoencoder with ``params``, the figures written in ``here``).

  The first data.num_heldout test images, read and reconstructed in batches of
  eval.nll_batch_size (never all in memory), each fed as the centre of its dequantization bin
  (``reconstructions.bin_centres``) and reconstructed from its posterior mean, x_rec =
  decode(mean(x)); the reconstruction's levels are the bins that hold it (``images.quantize``,
  as eval's FID pixels). Metrics: ``autoencoding.ReconstructionStats`` (mse in [-1, 1]; psnr in
  dB on the pixel levels, peak L - 1; those of the trivial mean-image reconstruction;
  heldout_images), kl (nats per image, the mean), kl_per_latent_dim, latent_std (the std of the
  posterior means over every image and latent dimension: LDM's scale factor is its inverse),
  posterior_std_mean, latent_shape, num_levels. reconstructions.png: the first
  reconstructions.GRID_IMAGES originals above their reconstructions.
  """
  cfg = s.config
  num_levels = images.num_levels(cfg.data.name)
  n, bs = int(cfg.data.num_heldout), int(cfg.eval.nll_batch_size)
  stats, fn = autoencoding.ReconstructionStats(), _reconstruct_fn(s)
  kl = post_std = latent_sum = latent_sq = 0.0
  latent_shape, grid = None, ([], [])
  progress = batch_progress("reconstruction", n, "images", bs,
                            "data.num_heldout, eval.nll_batch_size")
  for levels in build.heldout_batches(cfg, n, bs, levels=True):
    x = reconstructions.bin_centres(levels, num_levels)
    out, _ = _batched(s, fn, params, x, bs, jax.random.PRNGKey(0))
    x_rec = out["x_rec"]
    bad = results.count_non_finite(x_rec)
    if bad:
      raise results.NonFiniteSamplesError(
          f"{bad} of {len(x_rec)} reconstructions of {title} (images {stats.count}..) are not "
          f"finite, so no metrics were written to {here}; check the checkpoint (its training "
          f"loss in metrics.jsonl)")
    stats.update(levels, x, x_rec, images.quantize(x_rec, num_levels))
    mean = out["mean"].astype(np.float64)
    kl += float(np.sum(out["kl"]))
    post_std += float(np.sum(out["posterior_std"]))
    latent_sum, latent_sq = latent_sum + float(np.sum(mean)), latent_sq + float(np.sum(mean ** 2))
    latent_shape = [int(d) for d in mean.shape[1:]]
    room = reconstructions.GRID_IMAGES - sum(len(g) for g in grid[0])
    if room > 0:
      grid[0].append(x[:room])
      grid[1].append(x_rec[:room])
    progress(stats.count)
  if stats.count < n:
    say(f"reconstruction: done; the {cfg.data.eval_split!r} split holds {stats.count:,} images "
        f"(fewer than data.num_heldout={n:,})")
  metrics: Dict[str, Any] = stats.result(num_levels)
  count, dims = stats.count, int(np.prod(latent_shape))
  latent_mean = latent_sum / (count * dims)
  metrics.update({
      "kl": kl / count, "kl_per_latent_dim": kl / count / dims,
      "latent_std": float(np.sqrt(max(latent_sq / (count * dims) - latent_mean ** 2, 0.0))),
      "posterior_std_mean": post_std / count, "latent_shape": latent_shape,
      "num_levels": int(num_levels)})
  figures = []
  if writers.is_main():
    path = os.path.join(here, "reconstructions.png")
    plots.close(reconstructions.grid(np.concatenate(grid[0]), np.concatenate(grid[1]), path))
    figures.append("reconstructions.png")
  return metrics, figures


# -- TensorBoard ---------------------------------------------------------------------------------


def scalar_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
  """The finite numbers of ``metrics`` (not the step, not strings), for TensorBoard."""
  return {k: float(v) for k, v in metrics.items()
          if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(float(v))}


# -- the driver ----------------------------------------------------------------------------------


def density_plot(s, params, path: str) -> Optional[Any]:
  """Heat map of the model density exp(log p) on a grid (2-D data only). Returns the figure."""
  cfg = s.config
  g, ext = int(cfg.eval.density_grid), float(cfg.eval.density_extent)
  if g <= 0 or tuple(s.example["x"].shape[1:]) != (2,):
    return None
  u = np.linspace(-ext, ext, g, dtype=np.float32)
  xx, yy = np.meshgrid(u, u)
  grid = np.stack([xx.ravel(), yy.ravel()], axis=-1)
  e = cfg.eval
  logp, _ = log_likelihood(s, params, grid, int(e.nll_batch_size), jax.random.PRNGKey(0),
                           rtol=e.density_rtol, atol=e.density_atol, divergence="exact",
                           t_min=e.t_min)
  if not writers.is_main():
    return None
  return plots.density(logp.reshape(g, g), ext, path)


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Evaluates the chosen checkpoint(s) of ``workdir`` (module docstring). Returns the metrics
  of the last step in the list (evaluated now, or read back when already evaluated).

  SIGTERM/SIGINT: one line, exit 128 + signum; a file being written is finished first.
  """
  validate(config, "eval", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    return _run(config, workdir, sig)


def _run(config: Config, workdir: str, sig: signals.RunSignals) -> Dict[str, Any]:
  where = os.path.join(workdir, checkpoint.CKPT_DIR)
  s = setup(config)
  if not checkpoint.has_checkpoints(workdir):
    raise FileNotFoundError(f"no checkpoints in {where}; train first (--mode=train)")
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS, ignore=("optim",))
  steps = eval_common.steps_to_evaluate(config.eval, eval_common.checkpoint_steps(workdir), where)
  fid_stats = eval_common.load_fid_stats(config) if config.eval.fid_stats is not None else None
  result: Dict[str, Any] = {}
  # The name of a step's results needs the classifier's restored step with classifier guidance:
  # then the check waits for evaluate_step's restore.
  early = config.guidance.kind != "classifier"
  for step in steps:
    done = (evaluated(workdir, results.output(config, "eval", step))
            if step is not None and early else None)
    if done is not None:
      result = done
      continue
    try:
      result = evaluate_step(config, workdir, step, sig, fid_stats)
    except checkpoint.NoUsableCheckpointError as e:
      if not config.eval.all_checkpoints:
        raise
      say(f"eval: skipping step {step}: {e}")  # proven corrupt; the others are still evaluated
  return result


def evaluated(workdir: str, res: results.Output) -> Optional[Dict[str, Any]]:
  """The metrics of the step and settings of ``res`` if they were evaluated already (said in
  one line), else None. A folder of that name holding other settings is refused
  (``results.OutputConflictError``)."""
  here = results.eval_dir(workdir, res)
  results.check_same(results.read_settings(here), res, here)
  path = os.path.join(here, METRICS_FILE)
  if not os.path.exists(path):
    return None
  say(f"eval: step {res.step} already evaluated with these settings ({path}); skipping it "
      f"(other settings are evaluated anew; move that folder aside to evaluate these again)")
  with open(path) as f:
    return json.load(f)


def _sample_set(s, params, here: str, sig, n: int,
                plan: conditioning.Plan) -> Tuple[np.ndarray, int]:
  """The first n samples of the checkpoint, from / into <here>/samples/."""
  cfg, e = s.config, s.config.eval
  shape = build.image_shape(cfg)  # a latent run's samples are decoded to images
  bs, draw = generate.batch_generator(s, params, jax.random.PRNGKey(cfg.seed + 2),
                                      min(int(cfg.sampling.batch_size), int(e.shard_size)), plan)
  fprint = shards.fingerprint({"seed": int(cfg.seed), "key": "seed+2", "shape": list(shape),
                               "shard_size": int(e.shard_size),
                               "sampling": build.sampler_kwargs(cfg),
                               "guidance": cfg.guidance.to_dict()})
  return shards.generate(os.path.join(here, "samples"), n,
                         int(e.shard_size), shape, draw, bs, fprint, write=writers.is_main(),
                         progress=lambda todo: writers.Progress("sampling", todo, "samples"),
                         guard=sig.deferred, say=say)


def evaluate_step(config: Config, workdir: str, step: Optional[int], sig: signals.RunSignals,
                  fid_stats: Optional[fid.Stats] = None) -> Dict[str, Any]:
  """Evaluates the checkpoint at ``step`` (None: the newest intact one) and writes its metrics
  (module docstring); FID / KID against ``fid_stats`` when given."""
  sig.phase, sig.nothing_saved = "set-up", "nothing written for this step"
  s, params, restored = restore_params(config, workdir, step=step)
  plan = conditioning.plan(config, s, "eval")
  res = results.output(config, "eval", restored, plan.guide_step)
  # _run checked this already, unless the step (the newest) or the classifier's step (in the
  # name) was known only after the restore.
  done = evaluated(workdir, res)
  if done is not None:
    return done
  step, here = restored, results.eval_dir(workdir, res)
  metrics: Dict[str, Any] = {"step": int(step), "name": res.name}
  sig.phase = f"evaluation of step {step}"
  if s.objective.predicts_labels:
    metrics.update(classifier_metrics(s, params))
    return _write_metrics(workdir, step, metrics, [], sig, res)
  if s.objective.reconstructs:
    out, figures = autoencoder_metrics(s, params, here, f"step {step}")
    metrics.update(out)
    return _write_metrics(workdir, step, metrics, figures, sig, res)
  # Only a denoiser has a PF-ODE (a consistency function has none), so a likelihood; a latent
  # run's would be of its latents, not of the images (docs/latent.md): not reported.
  likelihood = s.objective.has_likelihood and not build.is_latent(config)
  held, test, num_levels = _heldout(config)
  key = jax.random.PRNGKey(config.seed + 3)
  if likelihood and test is None:  # toy data: nats
    metrics.update(_nll_metrics(s, params, held, key))
  if likelihood and test is not None:  # images: bits/dim
    metrics.update(_bpd_metrics(s, params, test, num_levels, key))
  sig.phase = f"sampling for step {step}"
  sig.nothing_saved = (f"the finished sample shards are kept in {here}/samples and --mode=eval "
                       f"resumes from them")
  if writers.is_main():
    with sig.deferred():
      results.claim(here, res)  # settings.json first: the shards belong to these settings
  x, sample_metrics = _sample_metrics(s, params, step, here, sig, plan, fid_stats, held)
  metrics.update(sample_metrics)
  sig.phase = "the plots"
  figures = _plots(s, params, x, here, f"step {step}", plan, density=likelihood and test is None)
  return _write_metrics(workdir, step, metrics, figures, sig, res)


def _heldout(config: Config) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[int]]:
  """(held-out data for the sample metrics; the integer test images of bits/dim; their number
  of levels L): toy data: held-out points, None, None; images: the first test images
  dequantized (draw 0 of data.heldout_seed), the first eval.nll_points of them as levels k in
  0..L-1, L."""
  e = config.eval
  n_held = max(int(e.nll_points), int(e.num_samples), int(e.mmd_points))
  if build.is_toy(config):
    return build.heldout(config, max(n_held, int(config.data.num_heldout))), None, None
  levels_count = images.num_levels(config.data.name)  # 256; 17 for digits
  levels = build.heldout(config, n_held, levels=True)
  held = dequantize(levels, levels_count, jax.random.PRNGKey(config.data.heldout_seed), 0)
  return held, levels[:int(e.nll_points)], levels_count


def batch_progress(what: str, n: int, unit: str, batch_size: int,
                   fields: str) -> writers.Progress:
  """The progress of ``n`` items in batches of ``batch_size`` (a line, rate and ETA after each
  batch), after one line saying what starts and the config ``fields`` that size it: a batch
  (one adaptive ODE solve for the likelihoods) can take minutes."""
  batches = -(-n // max(1, batch_size))
  say(f"{what}: {n:,} {unit} in {batches} batch{'es' if batches > 1 else ''} of "
      f"{min(batch_size, n):,} ({fields})")
  return writers.Progress(what, n, unit)


def _nll_metrics(s: Setup, params, held: np.ndarray, key: jax.Array) -> Dict[str, Any]:
  """Toy data: the PF-ODE NLL in nats of the first eval.nll_points held-out points, and its
  excess over the data's entropy where known."""
  config, e = s.config, s.config.eval
  n_nll = int(e.nll_points)
  logp, nll_nfe = log_likelihood(s, params, held[:n_nll], int(e.nll_batch_size), key,
                                 rtol=e.rtol, atol=e.atol, divergence=e.divergence,
                                 probe=e.probe, t_min=e.t_min, solver=e.solver,
                                 progress=batch_progress("likelihood", n_nll, "points",
                                                         int(e.nll_batch_size), NLL_FIELDS))
  metrics = {"nll_nats": float(-np.mean(logp)),
             "nll_nats_stderr": float(np.std(logp) / np.sqrt(len(logp))),
             "nll_points": int(len(logp)), "nll_nfe": nll_nfe, "divergence": e.divergence}
  h = build.true_entropy(config)
  if h is not None:
    metrics["true_entropy_nats"] = float(h)
    metrics["excess_nll_nats"] = metrics["nll_nats"] - float(h)
  return metrics


def _bpd_metrics(s: Setup, params, test: np.ndarray, num_levels: int,
                 key: jax.Array) -> Dict[str, Any]:
  """Images: bits/dim of the integer test images by the PF-ODE and, with eval.elbo, VDM's ELBO
  (diffusion.metrics.bits_per_dim), with the settings used."""
  e = s.config.eval

  def loglik(x, k, d):
    return log_likelihood(
        s, params, x, int(e.nll_batch_size), k, rtol=e.rtol, atol=e.atol,
        divergence=e.divergence, probe=e.probe, t_min=e.t_min, solver=e.solver,
        progress=batch_progress(f"PF-ODE bits/dim, draw {d + 1}/{e.dequantization_draws}",
                                len(x), "images", int(e.nll_batch_size),
                                NLL_FIELDS + ", eval.dequantization_draws"))

  metrics = bpd_pf_ode(loglik, test, num_levels, key, int(e.dequantization_draws))
  metrics.update({"divergence": e.divergence, "probe": e.probe, "solver": e.solver,
                  "rtol": float(e.rtol), "atol": float(e.atol),
                  "likelihood_t_min": float(s.schedule.t_min if e.t_min is None else e.t_min)})
  if e.elbo:
    fn = _elbo_fn(s, num_levels, e.t_min, int(e.elbo_time_samples), e.elbo_time_sampling)

    def elbo_fn(x_int, k):
      return _batched(s, fn, params, x_int.astype(np.int32), int(e.nll_batch_size), k,
                      batch_progress("ELBO", len(x_int), "images", int(e.nll_batch_size),
                                     "eval.elbo_time_samples, " + NLL_FIELDS
                                     + "; eval.elbo=False skips it"))[0]

    metrics.update(bpd_elbo(elbo_fn, test, jax.random.fold_in(key, 1)))
    metrics.update({"elbo_time_samples": int(e.elbo_time_samples),
                    "elbo_time_sampling": e.elbo_time_sampling})
  return metrics


def _sample_metrics(s: Setup, params, step: int, here: str, sig: signals.RunSignals,
                    plan: conditioning.Plan, fid_stats: Optional[fid.Stats],
                    held: np.ndarray) -> Tuple[np.ndarray, Dict[str, Any]]:
  """(the first eval.num_samples samples; their metrics): FID / KID with ``fid_stats``, sliced
  Wasserstein and MMD against ``held``, NFE, the conditioning and the class accuracy. Samples
  that are not finite raise ``results.NonFiniteSamplesError`` before any metric is computed."""
  config, e = s.config, s.config.eval
  metrics: Dict[str, Any] = {}
  n_samples = max(int(e.num_samples), int(e.fid_num_samples) if fid_stats is not None else 0)
  x_all, nfe = _sample_set(s, params, here, sig, n_samples, plan)
  results.check_finite(config, x_all, f"samples of step {step}",
                       f"no metrics were written to {here} (its finite sample shards are kept)")
  if fid_stats is not None:
    sig.phase = f"FID of step {step}"
    metrics.update(eval_common.fid_metrics(config, x_all[:int(e.fid_num_samples)], fid_stats,
                                           inception.load_params()))
  x = x_all[:int(e.num_samples)]
  metrics.update({
      **eval_common.sample_distances(config, x, held),
      "num_samples": int(len(x)), "nfe": int(nfe), "sampler": config.sampling.sampler,
      "sampler_steps": int(config.sampling.num_steps)})
  if plan.tag:
    metrics.update({"conditioning": plan.tag, **plan.cost_info()})
  ref = conditioning.reference_classifier(config) if plan.conditional else None
  if ref is not None:
    metrics["class_accuracy"] = class_accuracy(ref[0], x, np.asarray(plan.labels(
        np.arange(len(x)))))
  return x, metrics


def _plots(s: Setup, params, x: np.ndarray, here: str, title: str, plan: conditioning.Plan,
           density: bool) -> List[str]:
  """samples.png (process 0) and, with ``density`` (toy data with a likelihood), density.png in
  ``here``; returns the names of the figures written."""
  figures = []
  if writers.is_main():
    figures.append("samples.png")
    labels = (np.asarray(plan.labels(np.arange(len(x)))) if plan.conditional else None)
    plots.close(generate.plot(s, x, os.path.join(here, "samples.png"), title, labels=labels))
  if density:  # collective: every process computes, process 0 draws
    fig = density_plot(s, params, os.path.join(here, "density.png"))
    if fig is not None:
      figures.append("density.png")
      plots.close(fig)
  return figures


def _write_metrics(workdir: str, step: int, metrics: Dict[str, Any], figures: List[str],
                   sig: signals.RunSignals, res: results.Output) -> Dict[str, Any]:
  """Copies the step's ``figures`` to eval/, writes its metrics.json (last: it marks the step as
  evaluated with these settings) and eval/metrics.json, the TensorBoard scalars, and says them
  in one line ending with the folder."""
  out, here = os.path.join(workdir, eval_common.EVAL_DIR), results.eval_dir(workdir, res)
  if writers.is_main():  # the metrics last: their file marks the step as evaluated
    sig.phase, sig.nothing_saved = "writing the metrics", f"the metrics are in {here}"
    with sig.deferred():  # no half-written metrics
      results.claim(here, res)  # a classifier's evaluation writes nothing before
      for name in figures:  # eval/<plot>: the most recent evaluation's (a copy)
        shutil.copyfile(os.path.join(here, name), os.path.join(out, name))
      writers.write_json(os.path.join(here, METRICS_FILE), metrics)
      writers.write_json(os.path.join(out, METRICS_FILE), metrics)
      tb = writers.TBEvents(os.path.join(workdir, "tb", eval_common.EVAL_DIR),
                            suffix=f".step_{step}_{res.name}")
      try:
        tb.scalars(step, {f"eval/{k}": v for k, v in scalar_metrics(metrics).items()})
      finally:
        tb.close()
  say(f"eval step {step}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in sorted(metrics.items()) if k != "name")
      + f"; written to {here}")
  return metrics
