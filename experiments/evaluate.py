"""The eval driver: EMA params -> PF-ODE NLL on held-out data, SW and MMD of samples, NFE.

Writes <workdir>/eval/metrics.json:
  nll_nats            -mean log p(x) over held-out points (PF-ODE, config.eval.divergence)
  true_entropy_nats   the data's differential entropy, where known
  excess_nll_nats     nll_nats - true_entropy_nats (the KL to the data, >= 0 up to noise)
  sliced_wasserstein  SW_2 between samples and held-out data
  mmd                 unbiased MMD^2 between samples and held-out data (first mmd_points)
  nfe                 network evaluations per sample of the sampler used
  nll_nfe             mean ODE right-hand-side evaluations of the likelihood solve
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import parallel
from experiments import build, plots, sample, signals, writers
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict


_JIT_CACHE: Dict[Any, Any] = {}


def _loglik_fn(s, rtol: float, atol: float, divergence: str):
  """The jitted likelihood, cached per (config, tolerances): diffrax takes seconds to trace."""
  cache_key = (s.config.to_json(), float(rtol), float(atol), divergence, s.mesh)
  if cache_key not in _JIT_CACHE:
    _JIT_CACHE.clear()
    _JIT_CACHE[cache_key] = _make_loglik_fn(s, rtol, atol, divergence)
  return _JIT_CACHE[cache_key]


def _make_loglik_fn(s, rtol: float, atol: float, divergence: str):
  from diffusion.likelihood import log_likelihood

  def fn(params, x, key):
    out = log_likelihood(build.denoiser(s.net, params, s.schedule, s.param), s.schedule, x, key,
                         divergence=divergence, rtol=rtol, atol=atol)
    return out["logp"], out["nfe"]

  rep, bsh = parallel.replicated(s.mesh), parallel.batch_sharding(s.mesh)
  return jax.jit(fn, in_shardings=(rep, bsh, rep), out_shardings=(bsh, rep))


def log_likelihood(s, params, x: np.ndarray, batch_size: int, key: jax.Array, *,
                   rtol: float, atol: float, divergence: str,
                   progress: Optional[Callable[[int], None]] = None):
  """log p(x) (n,) in nats and the mean NFE, in batches padded to one shape (one compile).
  ``progress(done)`` is called after each batch with the number of points done."""
  fn = _loglik_fn(s, rtol, atol, divergence)
  ndev = s.mesh.devices.size
  bs = max(ndev, (batch_size // ndev) * ndev)
  out, nfes = [], []
  for i, start in enumerate(range(0, len(x), bs)):
    chunk = x[start:start + bs]
    pad = bs - len(chunk)
    xb = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
    logp, nfe = fn(params, jax.device_put(xb, parallel.batch_sharding(s.mesh)),
                   jax.device_put(np.asarray(jax.random.fold_in(key, i)),
                                  parallel.replicated(s.mesh)))
    out.append(parallel.to_host(logp)[:len(chunk)])
    nfes.append(float(np.mean(parallel.to_host(nfe))))
    if progress is not None:
      progress(start + len(chunk))
  return np.concatenate(out), float(np.mean(nfes))


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
                           rtol=e.density_rtol, atol=e.density_atol, divergence="exact")
  if not writers.is_main():
    return None
  return plots.density(logp.reshape(g, g), ext, path)


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Evaluates the newest checkpoint of ``workdir``; writes eval/metrics.json and plots.

  SIGTERM/SIGINT: one line, exit 128 + signum; a file being written is finished first.
  """
  validate(config, "eval", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    return _run(config, workdir, sig)


def _run(config: Config, workdir: str, sig: signals.RunSignals) -> Dict[str, Any]:
  s, params, step = sample.restore_params(config, workdir)
  e = config.eval
  key = jax.random.PRNGKey(config.seed + 3)
  n_held = max(int(e.nll_points), int(e.num_samples), int(e.mmd_points))
  if build.is_toy(config):
    n_held = max(n_held, int(config.data.num_heldout))
  held = build.heldout(config, n_held)

  sig.phase = "evaluation"
  n_nll = int(e.nll_points)
  logp, nll_nfe = log_likelihood(s, params, held[:n_nll], int(e.nll_batch_size), key,
                                 rtol=e.rtol, atol=e.atol, divergence=e.divergence,
                                 progress=writers.Progress("likelihood", len(held[:n_nll]),
                                                           "points"))
  x, info = sample.generate(s, params, int(e.num_samples), jax.random.PRNGKey(config.seed + 2),
                            progress=writers.Progress("sampling", int(e.num_samples), "samples"))

  from diffusion.metrics import mmd, sliced_wasserstein
  flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)
  m = int(e.mmd_points)
  metrics: Dict[str, Any] = {
      "step": int(step),
      "nll_nats": float(-np.mean(logp)),
      "nll_nats_stderr": float(np.std(logp) / np.sqrt(len(logp))),
      "nll_points": int(len(logp)),
      "nll_nfe": nll_nfe,
      "divergence": e.divergence,
      "sliced_wasserstein": float(sliced_wasserstein(flat(x), flat(held), config.seed,
                                                     num_projections=int(e.sw_projections))),
      "mmd": float(mmd(flat(x[:m]), flat(held[:m]))),
      "num_samples": int(len(x)),
      "nfe": int(np.asarray(info.get("nfe", -1))),
      "sampler": config.sampling.sampler,
      "sampler_steps": int(config.sampling.num_steps),
  }
  if not build.is_toy(config):
    from diffusion.likelihood import bits_per_dim
    from diffusion.data.images import num_levels
    dim = int(np.prod(s.example["x"].shape[1:]))
    levels = num_levels(config.data.name)  # 256; 17 for digits
    metrics["bits_per_dim"] = float(np.mean(bits_per_dim(jnp.asarray(logp), dim,
                                                         num_levels=levels)))
    metrics["num_levels"] = levels
  h = build.true_entropy(config)
  if h is not None:
    metrics["true_entropy_nats"] = float(h)
    metrics["excess_nll_nats"] = metrics["nll_nats"] - float(h)
  out = os.path.join(workdir, "eval")
  if writers.is_main():
    sig.phase, sig.nothing_saved = "writing the metrics", f"the metrics are in {out}"
    with sig.deferred():  # no half-written metrics.json
      os.makedirs(out, exist_ok=True)
      tmp = os.path.join(out, ".metrics.json.tmp")
      with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
      os.replace(tmp, os.path.join(out, "metrics.json"))
      plots.close(sample.plot(s, x, os.path.join(out, "samples.png"), f"step {step}"))
    sig.phase = "the density plot"
  if build.is_toy(config):  # collective: every process computes, process 0 draws
    fig = density_plot(s, params, os.path.join(out, "density.png"))
    if fig is not None:
      plots.close(fig)
  say("eval: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in sorted(metrics.items())))
  return metrics
