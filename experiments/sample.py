"""The sample driver: EMA params of the latest checkpoint -> N samples -> samples/<name>/.

Checkpoints are opened read-only here (and by eval): one that fails its integrity check is
skipped with a warning line, never moved; nothing under checkpoints/ is written.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import guidance
from diffusion.io_utils import atomic_write
from diffusion.metrics.class_accuracy import class_accuracy
from experiments import conditioning, generate, plots, results, signals, writers
from experiments.setup import Setup, restore_params
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Writes samples.npz, samples.png and settings.json to <workdir>/samples/<name>/.

  ``name`` (``results.output``) is the sampler, its steps and grid, the conditioning's tag (e.g.
  cfg_scale_w3, bfloat16, inpaint_pigdm_obs), the checkpoint step and a hash of every setting
  that changes the samples, so runs with other settings never share a folder; repeating the
  same settings reuses the folder's samples (one line, nothing written). samples.npz holds x,
  nfe, step, the labels of a conditional run, the observation index of each completion, and
  the cost of a denoiser call (batch_multiplier, network_vjp).

  Non-finite samples are an error (``results.NonFiniteSamplesError``: the count, the fix), raised
  before anything is written. SIGTERM/SIGINT: one line, exit 128 + signum; a file being written
  is finished first.
  """
  validate(config, "sample", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    s, params, step = restore_params(config, workdir)
    plan = conditioning.plan(config, s, "sample")
    res = results.output(config, "sample", step, plan.guide_step)
    out = results.sample_dir(workdir, res)
    done = _done(out, res)
    if done is not None:
      say(f"samples with these settings are already in {out} ({done['num_samples']} samples, "
          f"step {step}); reusing them (move that folder aside to sample again)")
      return done
    n = _num_samples(config, plan)
    sig.phase = "sampling"
    x, info = generate.generate(s, params, n, jax.random.PRNGKey(config.seed + 2),
                                progress=writers.Progress("sampling", n, "samples"), plan=plan)
    nfe = int(np.asarray(info.get("nfe", -1)))
    results.check_finite(config, x, "samples", f"nothing was written to {out}")
    extra, labels, accuracy = _extra(config, plan, x, info, n)
    cost = _cost(nfe, info)
    if writers.is_main():
      sig.phase, sig.nothing_saved = "writing the samples", f"the samples are in {out}"
      with sig.deferred():  # no half-written samples.npz
        results.claim(out, res)
        _write(s, plan, out, x, n, nfe, step, extra, labels, cost)
    say(f"wrote {n} samples ({cost}) from the checkpoint at step {step} to {out}{accuracy}")
  return {"num_samples": n, "nfe": nfe, "step": step, "out": out,
          "batch_multiplier": info["batch_multiplier"], "network_vjp": info["network_vjp"],
          **({"class_accuracy": extra["class_accuracy"]} if "class_accuracy" in extra else {})}


def _done(out: str, res: results.Output) -> Optional[Dict[str, Any]]:
  """What ``run`` returns, read back from ``out`` if it holds these settings' samples (its
  settings.json, samples.npz and samples.png); None if it holds none; OutputConflictError if
  its settings.json is another run's."""
  saved = results.read_settings(out)
  results.check_same(saved, res, out)
  npz = os.path.join(out, "samples.npz")
  if saved is None or not (os.path.exists(npz) and os.path.exists(os.path.join(out,
                                                                              "samples.png"))):
    return None
  with np.load(npz) as f:
    d = {k: f[k] for k in f.files}
  return {"num_samples": int(len(d["x"])), "nfe": int(d["nfe"]), "step": int(d["step"]),
          "out": out, "batch_multiplier": int(d["batch_multiplier"]),
          "network_vjp": bool(d["network_vjp"]),
          **({"class_accuracy": float(d["class_accuracy"])} if "class_accuracy" in d else {})}


def _num_samples(config: Config, plan: conditioning.Plan) -> int:
  """sampling.num_samples, or for an inverse problem inverse.samples_per_observation per
  observation."""
  if plan.observations is None:
    return int(config.sampling.num_samples)
  return len(plan.observations["y"]) * int(config.inverse.samples_per_observation)


def _extra(config: Config, plan: conditioning.Plan, x: np.ndarray, info: Dict[str, Any],
           n: int) -> Tuple[Dict[str, Any], Optional[np.ndarray], str]:
  """(the arrays samples.npz holds next to x, nfe and step; the labels or None; the class
  accuracy's part of the final line)."""
  idx = jnp.arange(n)
  extra: Dict[str, Any] = {"batch_multiplier": info["batch_multiplier"],
                           "network_vjp": info["network_vjp"],
                           "transforms": np.asarray(info["transforms"], dtype=str)}
  labels = (np.asarray(guidance.label_of(plan.cond(plan.aux, idx))) if plan.conditional
            else None)
  accuracy = ""
  if labels is not None:
    extra["labels"] = labels
    ref = conditioning.reference_classifier(config)
    # Completions are scored only against their observations' own classes.
    if ref is not None and (plan.observations is None or plan.observation_labels):
      extra["class_accuracy"] = class_accuracy(ref[0], x, labels)
      accuracy = f"; class accuracy {extra['class_accuracy']:.3f} by {ref[1]}"
  return extra, labels, accuracy


def _cost(nfe: int, info: Dict[str, Any]) -> str:
  """What one sample cost, for the plot title and the final line."""
  return (f"NFE {nfe}" + (f", network batch x{info['batch_multiplier']}"
                          if info["batch_multiplier"] != 1 else "")
          + (", each call back-propagates through the network" if info["network_vjp"] else ""))


def _write(s: Setup, plan: conditioning.Plan, out: str, x: np.ndarray, n: int, nfe: int,
           step: int, extra: Dict[str, Any], labels: Optional[np.ndarray], cost: str) -> None:
  """samples.npz and samples.png in ``out`` (an inverse problem's completions next to their
  observations; adds the observation index of each completion to ``extra``)."""
  config = s.config
  os.makedirs(out, exist_ok=True)
  png = os.path.join(out, "samples.png")
  if plan.observations is not None:
    obs = plan.observations
    extra["observation_index"] = np.arange(n) % len(obs["y"])
    op = conditioning.inverse_operator(config)
    obs_images = np.asarray(op.pinv(jnp.asarray(obs["y"]),
                                    {k: jnp.asarray(v) for k, v in obs.items()}))
    _write_npz(os.path.join(out, "samples.npz"), x=x, nfe=nfe, step=step, **extra)
    plots.close(generate.plot_inverse(s, x, obs_images, conditioning.observation_truth(config),
                                      int(config.inverse.samples_per_observation), png,
                                      f"{config.inverse.task} ({config.inverse.method}), step "
                                      f"{step}, {cost}"))
  else:
    _write_npz(os.path.join(out, "samples.npz"), x=x, nfe=nfe, step=step, **extra)
    plots.close(generate.plot(s, x, png, f"{n} samples, step {step}, {cost}", labels=labels))


def _write_npz(path: str, **arrays) -> None:
  with atomic_write(path, "wb", tmp=os.path.join(os.path.dirname(path), ".samples.tmp.npz")) as f:
    np.savez(f, **arrays)
