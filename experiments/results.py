"""Where a sample / eval / sweep run's results go: one name derived from every setting that
changes them, the settings saved beside them, and the refusal of non-finite samples.

``output(config, mode, step)`` is the one function that names a run's results. The name is a
readable part and an 8-hex-digit hash of the canonical JSON of the run's *key*, the settings
that change what the run writes:

  sample  samples/<sampler>_n<steps>_<grid>[_<tag>]_step<N>_<hash>/
          e.g. samples/heun_n18_karras_step5000_1f0c3a9e/
  eval    eval/step_<N>/<sampler>_n<steps>_<grid>[_<tag>]_<hash>/   (a classifier:
          eval/step_<N>/classifier_heldout_<hash>/; an autoencoder:
          eval/step_<N>/autoencoder_heldout_<hash>/)
  sweep   eval/sweep_step_<N>_<grid>[_<tag>]_<hash>.json and .md

``<tag>`` is ``conditioning.tag``: the guidance (cfg_scale_w3, classifier_s2, t0.1-max), the
class (class4, null), the network's compute dtype (bfloat16) and, in sample mode, the inverse
problem (inpaint_pigdm_<observation file stem>). Each folder holds ``settings.json`` ({'name',
'hash', 'key'}); the sweep's .json holds the same under 'settings'. Runs with settings that
differ anywhere in the key never share a folder; a run whose key is already there reuses
(sample: the samples, eval: the metrics) or resumes (eval's sample shards, the sweep's cells)
it; a folder whose settings.json holds another key (a hash collision, or a key written by
another version) is refused, never overwritten.

The key (``key``):

  all modes          mode; checkpoint_step (the restored step); seed (every draw's key).
  sample, eval       sampling: sampler, num_steps, grid, rho, t_min, t_max, logsnr_min,
                     logsnr_max (those set), the sampler's hyper-parameters resolved against its
                     defaults (so an unset field and its default value are the same key),
                     clip_denoised, compute_dtype.
  sweep              the same but sampler and num_steps (each cell has its own, and its cells
                     are keyed inside the file by (sampler, NFE budget)), and the
                     hyper-parameters as set (they apply to whichever cell's sampler takes
                     them).
  all modes          guidance: label and kind; cfg: weight, convention, t_lo, t_hi;
                     classifier: classifier_scale, t_lo, t_hi, the absolute paths of
                     classifier_config and classifier_workdir, and the classifier's restored
                     checkpoint step.
  sample             sampling.num_samples (the set the folder holds), or with an inverse
                     problem: task, method, the sha256 of the observation file's bytes,
                     samples_per_observation, noise_std, factor (super_resolution) and Pi-GDM's
                     pigdm_scale, sigma_data, pigdm_t_hi.
  eval               data: num_heldout, heldout_seed, eval_split (the held-out set); eval:
                     num_samples, shard_size (the layout of the folder's shards), mmd_points,
                     sw_projections; with a likelihood (a denoiser's): nll_points,
                     nll_batch_size (Hutchinson's probes and the ELBO's draws are per batch),
                     divergence, probe (Hutchinson only), rtol, atol, solver, t_min, and for
                     images dequantization_draws, elbo, elbo_time_samples, elbo_time_sampling;
                     with eval.fid_stats: the sha256 of the statistics file, fid_num_samples,
                     fid_rounding, kid_subsets, kid_subset_size. A classifier's or an
                     autoencoder's eval: data num_heldout, heldout_seed, eval_split and
                     eval.nll_batch_size.
  sweep              eval.sweep_num_samples, and what scores a cell: images: the sha256 of
                     eval.fid_stats, fid_rounding, kid_subsets, kid_subset_size; toy data:
                     data num_heldout, heldout_seed (the held-out points the cells are
                     compared with; eval_split names no toy set), eval.mmd_points and
                     sw_projections (SW's directions are drawn from the seed). A toy sweep
                     computes no likelihood (experiments/sweep.py says why), so no NLL field
                     is in its key.

Left out, because they do not change the values written: sampling.batch_size (sample i depends
on (key, i) only, not on the batch or the number of devices), eval.inception_batch_size,
parallel.*, the inverse problem in eval and sweep (they do not solve it), eval.step /
all_checkpoints (which checkpoint: its step is in the key), eval.sweep_samplers / sweep_nfe
(cells are keyed by (sampler, NFE budget) inside the sweep's file, and its table shows every
cell), and the plot settings (eval.plot_samples, density_*: pictures, not numbers). The model,
forward process and data are the workdir's identity (``build.IDENTITY_FIELDS``): one workdir,
one experiment.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, Optional

import ml_collections
import numpy as np

from configs.sampling import HYPERPARAMETER_TYPES
from diffusion import objectives
from diffusion.io_utils import read_json
from diffusion.samplers import sampler_info
from experiments import build, conditioning, writers

Config = ml_collections.ConfigDict

SETTINGS_FILE = "settings.json"
MODES = ("sample", "eval", "sweep")


class NonFiniteSamplesError(ValueError):
  """A run's samples hold NaN or Inf; nothing of it was written (one line: the count, what was
  not written, the fix)."""


class OutputConflictError(ValueError):
  """A results folder of this name holds another run's settings; nothing is overwritten."""


@dataclasses.dataclass(frozen=True)
class Output:
  """The name of a run's results (``output``): ``name`` = '<readable>_<hash>', ``key`` the
  settings hashed (``canonical(key)``)."""
  mode: str
  step: int
  readable: str
  hash: str
  key: Dict[str, Any]

  @property
  def name(self) -> str:
    return f"{self.readable}_{self.hash}"

  def settings(self) -> Dict[str, Any]:
    """What settings.json holds."""
    return {"name": self.name, "hash": self.hash, "key": self.key}


def canonical(key: Dict[str, Any]) -> str:
  """The canonical JSON of a key: sorted keys, no spaces."""
  return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def _hash(key: Dict[str, Any]) -> str:
  return hashlib.sha256(canonical(key).encode()).hexdigest()[:8]


_FILE_HASHES: Dict[Any, str] = {}


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes (cached per path, size and modification time)."""
  st = os.stat(path)
  cache_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
  if cache_key not in _FILE_HASHES:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 22), b""):
        h.update(chunk)
    _FILE_HASHES[cache_key] = h.hexdigest()
  return _FILE_HASHES[cache_key]


def _safe(text: str) -> str:
  """A folder-name-safe version of ``text`` (characters other than [A-Za-z0-9._-] -> '-')."""
  return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _sampling(config: Config, mode: str) -> Dict[str, Any]:
  kw = build.sampler_kwargs(config)  # sampler, grid fields, hyper-parameters set (not None)
  name = kw.pop("sampler")
  hparams = {k: kw.pop(k) for k in list(kw) if k in HYPERPARAMETER_TYPES}
  out: Dict[str, Any] = dict(kw)
  out["clip_denoised"] = bool(config.sampling.clip_denoised)
  out["compute_dtype"] = str(config.sampling.compute_dtype)
  if mode == "sweep":
    out.pop("num_steps", None)
    out["hyperparameters"] = hparams
  else:
    out["sampler"] = name
    out["hyperparameters"] = sampler_info(name).resolve(hparams)
  return out


def _guidance(config: Config, guide_step: Optional[int]) -> Dict[str, Any]:
  g = config.guidance
  out: Dict[str, Any] = {"label": int(g.label), "kind": str(g.kind)}
  if g.kind == "cfg":
    out.update(weight=float(g.weight), convention=str(g.convention), t_lo=g.t_lo, t_hi=g.t_hi)
  elif g.kind in ("apg", "cfg_rescale", "cfg_zero_star", "cfgpp"):
    out.update(weight=float(g.weight), t_lo=g.t_lo, t_hi=g.t_hi)
    if g.kind == "apg":
      out.update(apg_eta=float(g.apg_eta), apg_norm_threshold=float(g.apg_norm_threshold))
    elif g.kind == "cfg_rescale":
      out.update(rescale_phi=float(g.rescale_phi), rescale_space=str(g.rescale_space))
    elif g.kind == "cfg_zero_star":
      out.update(zero_star_optimized=bool(g.zero_star_optimized),
                 zero_star_space=str(g.zero_star_space), zero_star_init_t=g.zero_star_init_t)
  elif g.kind in ("classifier", "autoguidance") and guide_step is None:
    raise ValueError(f"results.output: guidance.kind={g.kind!r} needs the restored step of its "
                     f"second network (conditioning.Plan.guide_step)")
  if g.kind == "classifier":
    out.update(classifier_scale=float(g.classifier_scale), t_lo=g.t_lo, t_hi=g.t_hi,
               classifier_config=os.path.abspath(str(g.classifier_config)),
               classifier_workdir=os.path.abspath(str(g.classifier_workdir)),
               classifier_step=int(guide_step))
  elif g.kind == "autoguidance":
    guide_config = None if g.guide_config is None else os.path.abspath(str(g.guide_config))
    out.update(weight=float(g.weight), t_lo=g.t_lo, t_hi=g.t_hi, guide_config=guide_config,
               guide_workdir=os.path.abspath(str(g.guide_workdir)), guide_step=int(guide_step))
  return out


def _inverse(config: Config) -> Dict[str, Any]:
  inv = config.inverse
  out: Dict[str, Any] = {"task": str(inv.task), "method": str(inv.method),
                         "observations_sha256": file_sha256(str(inv.observations)),
                         "samples_per_observation": int(inv.samples_per_observation),
                         "noise_std": float(inv.noise_std)}
  if inv.task == "super_resolution":
    out["factor"] = int(inv.factor)
  if inv.method == "pigdm":
    out.update(pigdm_scale=float(inv.pigdm_scale), sigma_data=float(inv.sigma_data),
               pigdm_t_hi=inv.pigdm_t_hi)
  elif inv.method == "dps":
    out["dps_zeta"] = float(inv.dps_zeta)
  elif inv.method == "daps":
    out.update({f: inv[f] for f in ("daps_tau", "daps_ode_steps", "daps_ode_solver",
                                    "daps_langevin_steps", "daps_lr", "daps_lr_min_ratio",
                                    "daps_r_schedule", "sigma_data")})
  elif inv.method == "ddrm":
    out.update(ddrm_eta=float(inv.ddrm_eta), ddrm_eta_b=float(inv.ddrm_eta_b))
  elif inv.method == "tds":
    out.update({f: inv[f] for f in ("tds_particles", "tds_proposal", "tds_variance",
                                    "tds_transition", "tds_resample", "tds_ess_threshold",
                                    "sigma_data")})
  if inv.observation_labels:  # only when set: earlier results' keys stay as they were
    out["observation_labels"] = True
  return out


def _heldout(config: Config) -> Dict[str, Any]:
  d = config.data
  out = {"num_heldout": int(d.num_heldout), "heldout_seed": int(d.heldout_seed),
         "eval_split": str(d.eval_split)}
  # Only when set (the keys, hence the names, of earlier results stay as they were).
  if d.get("folder") is not None:
    out["folder"] = os.path.abspath(str(d.folder))
  if d.get("crop") is not None:
    out["crop"] = str(d.crop)
  return out


def _fid(config: Config) -> Dict[str, Any]:
  e = config.eval
  return {"fid_stats_sha256": file_sha256(str(e.fid_stats)), "fid_rounding": str(e.fid_rounding),
          "kid_subsets": int(e.kid_subsets), "kid_subset_size": int(e.kid_subset_size)}


def _eval(config: Config) -> Dict[str, Any]:
  e = config.eval
  out: Dict[str, Any] = {"num_samples": int(e.num_samples), "shard_size": int(e.shard_size),
                         "mmd_points": int(e.mmd_points),
                         "sw_projections": int(e.sw_projections)}
  if objectives.of_config(config).has_likelihood:
    out.update(nll_points=int(e.nll_points), nll_batch_size=int(e.nll_batch_size),
               divergence=str(e.divergence), rtol=float(e.rtol), atol=float(e.atol),
               solver=str(e.solver), t_min=e.t_min)
    if e.divergence == "hutchinson":
      out["probe"] = str(e.probe)
    if not build.is_toy(config):
      out.update(dequantization_draws=int(e.dequantization_draws), elbo=bool(e.elbo))
      if e.elbo:
        out.update(elbo_time_samples=int(e.elbo_time_samples),
                   elbo_time_sampling=str(e.elbo_time_sampling))
  if e.fid_stats is not None:
    out.update(_fid(config), fid_num_samples=int(e.fid_num_samples))
  return out


def key(config: Config, mode: str, step: int,
        guide_step: Optional[int] = None) -> Dict[str, Any]:
  """The settings that change the results of a ``mode`` run on the checkpoint at ``step``
  (module docstring). ``guide_step``: the restored step of the second network of
  guidance.kind 'classifier' (the classifier) or 'autoguidance' (the guiding model),
  ``conditioning.Plan.guide_step``, needed with those kinds."""
  if mode not in MODES:
    raise ValueError(f"results: mode {mode!r}; accepted: {list(MODES)}")
  k: Dict[str, Any] = {"mode": mode, "checkpoint_step": int(step), "seed": int(config.seed)}
  if mode == "eval" and not objectives.of_config(config).draws_samples:  # held-out data only
    k["data"] = _heldout(config)
    k["eval"] = {"nll_batch_size": int(config.eval.nll_batch_size)}
    return k
  k["sampling"] = _sampling(config, mode)
  k["guidance"] = _guidance(config, guide_step)
  if mode == "sample":
    if config.inverse.task != "none":
      k["inverse"] = _inverse(config)
    else:
      k["sampling"]["num_samples"] = int(config.sampling.num_samples)
  elif mode == "eval":
    k["data"] = _heldout(config)
    k["eval"] = _eval(config)
  elif build.is_toy(config):  # SW / MMD against held-out points (experiments/sweep.py)
    e = config.eval
    d = _heldout(config)
    k["data"] = {"num_heldout": d["num_heldout"], "heldout_seed": d["heldout_seed"]}
    k["sweep"] = {"sweep_num_samples": int(e.sweep_num_samples),
                  "mmd_points": int(e.mmd_points), "sw_projections": int(e.sw_projections)}
  else:  # images: FID / KID
    k["sweep"] = dict(_fid(config), sweep_num_samples=int(config.eval.sweep_num_samples))
  return k


def _readable(config: Config, mode: str, step: int) -> str:
  s = config.sampling
  tag = conditioning.tag(config, mode)
  if mode == "eval" and objectives.of_config(config).predicts_labels:
    return "classifier_heldout"
  if mode == "eval" and objectives.of_config(config).reconstructs:
    return "autoencoder_heldout"
  parts = [] if mode == "sweep" else [conditioning.sampler_name(config, mode),
                                      f"n{int(s.num_steps)}"]
  parts.append("explicit_grid" if s.get("time_grid") is not None else str(s.grid))
  if tag:
    parts.append(tag)
  if mode == "sample":  # samples/ is not per step (eval/ is, and the sweep's file names it)
    parts.append(f"step{int(step)}")
  return "_".join(_safe(p) for p in parts)


def output(config: Config, mode: str, step: int,
           guide_step: Optional[int] = None) -> Output:
  """The name of the results of a ``mode`` run ('sample', 'eval', 'sweep') of ``config`` on the
  checkpoint at ``step``: a readable part and the hash of ``key(...)`` (module docstring)."""
  k = key(config, mode, step, guide_step)
  return Output(mode=mode, step=int(step), readable=_readable(config, mode, step), hash=_hash(k),
                key=k)


# -- where they go ------------------------------------------------------------------------------


def sample_dir(workdir: str, out: Output) -> str:
  """<workdir>/samples/<name>."""
  return os.path.join(workdir, "samples", out.name)


def eval_dir(workdir: str, out: Output) -> str:
  """<workdir>/eval/step_<N>/<name>."""
  return os.path.join(workdir, "eval", f"step_{out.step}", out.name)


def sweep_path(workdir: str, out: Output, ext: str) -> str:
  """<workdir>/eval/sweep_step_<N>_<name>.<ext> (ext 'json', 'md' or 'png')."""
  return os.path.join(workdir, "eval", f"sweep_step_{out.step}_{out.name}.{ext}")


def read_settings(directory: str) -> Optional[Dict[str, Any]]:
  """The settings.json of ``directory``, or None if there is none."""
  return read_json(os.path.join(directory, SETTINGS_FILE))


def check_same(saved: Optional[Dict[str, Any]], out: Output, where: str) -> None:
  """Raises OutputConflictError unless ``saved`` (settings read back, or None) is ``out``'s."""
  if saved is not None and saved.get("key") != out.key:
    theirs = saved.get("key", {}) if isinstance(saved.get("key"), dict) else {}
    differ = sorted(k for k in set(theirs) | set(out.key) if theirs.get(k) != out.key.get(k))
    raise OutputConflictError(
        f"{where} holds the results of other settings (they differ in {', '.join(differ) or '?'}"
        f"); nothing was written: move it aside to run these settings")


def claim(directory: str, out: Output) -> bool:
  """Makes ``directory`` ``out``'s: writes its settings.json (process 0) if it has none, refuses
  it (OutputConflictError) if it holds other settings. Returns whether it was already
  ``out``'s."""
  saved = read_settings(directory)
  check_same(saved, out, directory)
  if saved is None and writers.is_main():
    writers.write_json(os.path.join(directory, SETTINGS_FILE), out.settings())
  return saved is not None


# -- non-finite samples -------------------------------------------------------------------------


def count_non_finite(x: np.ndarray) -> int:
  """The number of samples (first axis) holding a NaN or Inf."""
  x = np.asarray(x)
  return int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))


def non_finite_fix(config: Config) -> str:
  """What to try when a run's samples are not finite."""
  inv = config.inverse
  if inv.task != "none" and inv.method == "pigdm":
    return ("Pi-GDM near alpha = 0 amplifies the network's error: " + (
        "set config.inverse.pigdm_t_hi, e.g. to 0.9 t_max" if inv.pigdm_t_hi is None else
        f"lower config.inverse.pigdm_t_hi (now {inv.pigdm_t_hi:g})"))
  tips = ["fewer or more steps (config.sampling.num_steps)", "another sampler "
          "(config.sampling.sampler)"]
  if config.sampling.compute_dtype != "float32":
    tips.append("config.sampling.compute_dtype=float32")
  if config.guidance.kind != "none":
    tips.append("a smaller guidance weight or scale")
  return "try " + ", ".join(tips) + "; or check the checkpoint (--mode=eval, its training loss)"


def check_finite(config: Config, x: np.ndarray, what: str, not_written: str) -> None:
  """Raises NonFiniteSamplesError (one line: how many of the N ``what`` are not finite, the
  output ``not_written``, the fix) if any sample of ``x`` holds NaN or Inf."""
  bad = count_non_finite(x)
  if bad:
    raise NonFiniteSamplesError(f"{bad} of {len(x)} {what} are not finite, so {not_written}; "
                                f"{non_finite_fix(config)}")
