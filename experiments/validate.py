"""Start-up validation of a run's config and workdir: every bad input is refused in one line.

``validate(config, mode, workdir)`` runs at the top of every mode (train, sample, eval) before
anything is built, compiled or written. Each failure is a ``ConfigError`` (a ValueError) whose
message is one line naming the field, the bad value and what is accepted. Names are checked
against the libraries' own registries and constants (schedules, samplers, models, datasets,
losses, optimizers), never against copies of them; the sampler, its hyper-parameters and its time
grid are resolved on the host (numpy) without compiling anything.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from diffusion import latent as latent_lib
from diffusion import (elbo, guidance, likelihood, losses, networks, objectives, parameterization,
                       posthoc_ema, training)
from diffusion.config_checks import (ConfigError, from_library, int_at_least, is_bool, number_in,
                                     one_of, positive)
from diffusion.data import folder as folder_lib
from diffusion.data import images
from diffusion.metrics import inception
from diffusion.models import capabilities, get_model, model_outputs, registered_models
from diffusion.samplers import engine, grids, registry
from diffusion.schedules import SCHEDULES, get_schedule
from experiments import build, config_files, distill, sweep_grid
from experiments import conditioning as cond_lib
from experiments.cli import MODES

Config = ml_collections.ConfigDict

# Output folder of each mode inside the workdir (train writes to the workdir itself).
OUTPUT_SUBDIR = {"train": "", "sample": "samples", "eval": "eval", "sweep": "eval",
                 "pairs": "pairs"}
# How eval turns samples in [-1, 1] into pixels for Inception (experiments.eval_common.fid_pixels).
FID_ROUNDINGS = ("levels", "nearest", "floor")
# config.sampling fields that build the time grid rather than the sampler's hyper-parameters.
GRID_FIELDS = ("sampler", "num_steps", "grid", "rho", "t_min", "t_max", "logsnr_min",
               "logsnr_max", "time_grid")
# Modes that draw samples from the trained network (a classifier has none to draw).
SAMPLING_MODES = ("sample", "sweep", "pairs")
# Networks that draw no samples (``Objective.draws_samples``): what they are, what eval reports,
# what they are for (the refusal of SAMPLING_MODES says so).
NO_SAMPLES = {
    "classifier": ("a noise-conditional classifier", "held-out accuracy",
                   "give its workdir to a score model's sampler for classifier guidance"),
    "autoencoder": ("an autoencoder", "held-out reconstructions",
                    "encode a dataset with it to train a diffusion model on its latents"),
}


# -- the sections of the config ------------------------------------------------------------------


def check_data(config: Config) -> None:
  """data.*: a known dataset, a positive batch, an image size the dataset supports, a crop it
  accepts, prefetch workers >= 0, batches ahead >= 1, worker_type 'thread' | 'process',
  cache_decoded 'auto' | True | False; data.folder for (and only for) data.name='folder', its
  training split a folder of class folders of images."""
  d = config.data
  build.check_dataset(config)
  int_at_least("data.batch_size", d.batch_size, 1)
  int_at_least("data.num_heldout", d.num_heldout, 1)
  int_at_least("data.heldout_seed", d.heldout_seed, 0)
  is_bool("data.random_flip", d.random_flip)
  int_at_least("data.workers", d.workers, 0)  # 0: no background prefetch
  int_at_least("data.prefetch", d.prefetch, 1)
  from_library("data.worker_type", images.check_worker_type, d.worker_type)
  from_library("data.cache_decoded", images.check_cache_decoded, d.cache_decoded)
  if d.name != "folder" and d.folder is not None:
    raise ConfigError(f"config.data.folder={d.folder!r} is read only with data.name='folder' "
                      f"(this config reads {d.name!r}): unset it")
  if d.crop is not None and build.is_toy(config):
    raise ConfigError(f"config.data.crop={d.crop!r} applies to image datasets; "
                      f"{d.name!r} is 2-D toy data: unset it")
  if not build.is_toy(config):
    from_library("data.image_size", images.image_shape, d.name, d.image_size)
    from_library("data.crop", images.resolve_crop, d.name, d.crop)
    for field in ("split", "eval_split"):
      if not isinstance(d[field], str) or not d[field]:
        raise ConfigError(f"config.data.{field}={d[field]!r} must be a split name, e.g. "
                          f"'train' or 'test'")
  if d.name == "folder":
    check_folder_split(config, "split")


def check_folder_split(config: Config, field: str) -> tuple:
  """data.name='folder': data.folder/<data.``field``> must be a folder of class folders, each
  holding an image (diffusion.data.folder.check_split). Returns its class names."""
  d = config.data
  if not isinstance(d.folder, str) or not d.folder:
    raise ConfigError(f"config.data.name='folder' needs config.data.folder, the folder holding "
                      f"one sub-folder per split ({d.split!r}, {d.eval_split!r}), each holding "
                      f"one sub-folder of images per class; got {d.folder!r}")
  if not os.path.isdir(d.folder):
    raise ConfigError(f"config.data.folder={d.folder!r} does not exist (or is not a folder)")
  split_dir = from_library(f"data.{field}", images.folder_split_dir, d.folder, d[field])
  try:
    return folder_lib.check_split(split_dir)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config.data.{field}={d[field]!r} (data.folder={d.folder!r}): {e}") from None


def check_folder_eval_split(config: Config, mode: str) -> None:
  """--mode=eval on data.name='folder' reads held-out images (bits/dim, the sample metrics) from
  data.folder/<data.eval_split>: it must exist, with the training split's classes (labels are
  positions in the sorted class list)."""
  d = config.data
  if d.name != "folder" or mode != "eval":
    return
  if not os.path.isdir(os.path.join(d.folder, d.eval_split)):
    raise ConfigError(f"config.data.eval_split={d.eval_split!r}: {d.folder!r} has no folder "
                      f"{d.eval_split!r}; --mode=eval reads its held-out images (bits/dim, the "
                      f"sample metrics) from there: add that split (class folders, as the "
                      f"training split's) or set data.eval_split to a split folder that exists")
  train, held = check_folder_split(config, "split"), check_folder_split(config, "eval_split")
  if train != held:
    only = sorted(set(train) ^ set(held))
    raise ConfigError(f"config.data.eval_split={d.eval_split!r} has other classes than "
                      f"config.data.split={d.split!r} ({len(held)} vs {len(train)}; e.g. "
                      f"{only[:3]} in one only): labels would not match")


def _check_latent_folder(config: Config) -> None:
  """latent.dataset: its images are config.data's (name, size, crop), and its autoencoder is
  latent.autoencoder when that is set."""
  lat = config.latent
  facts = build.latent_facts(config)
  data = facts["made_by"]["data"]
  size = images.image_shape(config.data.name, config.data.image_size)
  if data["name"] != config.data.name or tuple(facts["image_shape"]) != tuple(size):
    raise ConfigError(f"config.latent.dataset={lat.dataset!r} holds latents of "
                      f"{data['name']!r} images {tuple(facts['image_shape'])}; config.data.name"
                      f"={config.data.name!r} at data.image_size={config.data.image_size!r} is "
                      f"{tuple(size)}: set data.* to the encoded images (FID compares with "
                      f"them)")
  crop = images.resolve_crop(config.data.name, config.data.get("crop"))
  if data.get("crop", crop) != crop:
    raise ConfigError(f"config.latent.dataset={lat.dataset!r} holds latents of images cropped "
                      f"{data['crop']!r}; config.data.crop gives {crop!r} (FID compares with "
                      f"the images so cropped): set data.crop={data['crop']!r}")
  by = facts["made_by"]["autoencoder"]
  if lat.autoencoder is not None and os.path.abspath(lat.autoencoder) != by["workdir"]:
    raise ConfigError(f"config.latent.autoencoder={lat.autoencoder!r}, but latent.dataset="
                      f"{lat.dataset!r} was encoded by {by['workdir']!r}: leave "
                      f"latent.autoencoder unset (the folder names its autoencoder)")


def check_latent(config: Config, mode: str) -> None:
  """latent.*: the normalisation and posterior by name, their numbers; with latent.dataset a
  complete folder of experiments.encode whose images are config.data's, its channels matching
  any channel statistics given, and no pixel-space task (toy data, inverse problems)."""
  lat = config.get("latent")
  if lat is None:
    return
  one_of("latent.normalization", lat.normalization, latent_lib.NORMALIZATIONS)
  one_of("latent.posterior", lat.posterior, latent_lib.POSTERIORS)
  for field in ("scale_factor", "final_std"):
    v = lat[field]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
      raise ConfigError(f"config.latent.{field}={v!r} must be a finite number > 0")
  means, stds = tuple(lat.channel_mean), tuple(lat.channel_std)
  if len(means) != len(stds) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in means + stds):
    raise ConfigError(f"config.latent.channel_mean={means!r} and channel_std={stds!r} must be "
                      f"two lists of numbers of one length (one per latent channel), or both "
                      f"empty (the encoded dataset's own statistics)")
  if any(v <= 0 for v in stds):
    raise ConfigError(f"config.latent.channel_std={stds!r} must be > 0")
  if not build.is_latent(config):
    return
  if objectives.of_config(config).reconstructs:
    raise ConfigError(f"config.training.objective={config.training.objective!r} trains an "
                      f"autoencoder of images: leave config.latent.dataset and "
                      f"latent.autoencoder unset")
  if build.is_toy(config):
    raise ConfigError(f"config.latent: latents are of image datasets; config.data.name="
                      f"{config.data.name!r} is a toy 2-D density")
  if lat.dataset is not None:
    _check_latent_folder(config)
  elif mode == "train":
    raise ConfigError(f"--mode=train reads latents: set config.latent.dataset to a folder "
                      f"written by `python -m experiments.encode` (config.latent.autoencoder="
                      f"{lat.autoencoder!r} alone serves sample / eval / sweep)")
  elif lat.normalization == "channel" and not tuple(lat.channel_mean):
    raise ConfigError("config.latent.normalization='channel' without latent.dataset needs "
                      "latent.channel_mean and latent.channel_std (there is no folder to take "
                      "them from)")
  from_library("latent.autoencoder", build.autoencoder_latent_shape, config)
  from_library("latent", build.latent_norm, config)
  if config.inverse.task != "none":
    raise ConfigError(f"config.inverse.task={config.inverse.task!r}: inverse problems observe "
                      f"pixels; a latent run samples latents")


def check_sde(config: Config):
  """sde.*: a registered schedule and its fields. Returns the schedule (host-side object); a
  learned one bound to its initial parameters, on which the time grids are checked."""
  one_of("sde.name", config.sde.name, sorted(SCHEDULES))
  if "params" in config.sde.fields:
    raise ConfigError("config.sde.fields.params: a learned schedule's parameters are trained, "
                      "not configured")
  sched = from_library("sde.fields", get_schedule, config.sde.name,
                       **config.sde.fields.to_dict())
  if sched.learned:
    sched = sched.bind(jax.tree_util.tree_map(np.asarray,
                                              sched.init_params(jax.random.PRNGKey(0))))
  return sched


def _needs_labelled_data(config: Config, what: str) -> int:
  """The number of classes of config.data.name; a ConfigError naming ``what`` (the field that
  asks for labels) and the labelled datasets when it has none."""
  classes = build.dataset_num_classes(config)
  if classes <= 0:
    raise ConfigError(f"{what} needs labelled data; the dataset {config.data.name!r} has no "
                      f"labels; datasets with labels: {list(build.labelled_datasets())}")
  return classes


def _num_classes_match(config: Config, net: Any, classes: int, what: str) -> None:
  got = getattr(net, "num_classes", None)
  if got != classes:
    raise ConfigError(f"config.model.net.num_classes={got!r} must equal the number of classes "
                      f"of config.data.name={config.data.name!r}, {classes} ({what})")


def check_model(config: Config) -> None:
  """model.*: a registered network whose constructor accepts model.net, a parameterization and
  a time input the library knows; labels only for labelled data, with net.num_classes = the
  data's classes and model.net.label_dropout in [0, 1)."""
  m = config.model
  one_of("model.name", m.name, registered_models())
  if "label_dropout" in m.net:
    number_in("model.net.label_dropout", m.net.label_dropout, 0.0, 1.0, hi_open=True)
  net = from_library("model.net", get_model, m.name, **m.net.to_dict())
  one_of("model.parameterization", m.parameterization, parameterization.PARAMETERIZATIONS)
  one_of("model.time_input", m.time_input, parameterization.TIME_INPUTS)
  positive("model.sigma_data", m.sigma_data)
  sched = build.schedule(config)
  if m.parameterization == "trigflow" or getattr(sched, "zero_terminal_snr", False):
    from_library("model.parameterization", parameterization.Parameterization(
        m.parameterization, sigma_data=m.sigma_data).check_schedule, sched)
  is_bool("model.scale_input", m.scale_input)
  is_bool("model.conditional", m.conditional)
  if not m.conditional:
    return
  if model_outputs(m.name) == "logits":
    raise ConfigError(f"config.model.conditional=True: the classifier config.model.name="
                      f"{m.name!r} takes no labels as input (it predicts them); set "
                      f"config.model.conditional=False")
  if model_outputs(m.name) != "denoiser":
    raise ConfigError(f"config.model.conditional=True: config.model.name={m.name!r} (a network "
                      f"registered with outputs={model_outputs(m.name)!r}) takes no labels as "
                      f"input; set config.model.conditional=False")
  classes = _needs_labelled_data(config, "config.model.conditional=True")
  if not capabilities(net).num_classes > 0:
    raise ConfigError(f"config.model.conditional=True needs config.model.net.num_classes > 0 "
                      f"(got {getattr(net, 'num_classes', None)!r}): the network has no class "
                      f"embedding")
  _num_classes_match(config, net, classes, "config.model.conditional=True")


def check_time_input(config: Config, schedule) -> None:
  """model.time_input='index' (a DDPM network's step index) needs a discrete-time schedule."""
  if config.model.time_input == "index" and not hasattr(schedule, "discrete_index"):
    raise ConfigError(f"config.model.time_input='index' feeds the network a discrete step "
                      f"index; config.sde.name={config.sde.name!r} has none (accepted: "
                      f"'vp_discrete')")


def check_learned_schedule(config: Config) -> None:
  """sde 'vdm_learned' (VDM's learned schedule, diffusion.vdm): the network is conditioned on
  the logSNR (so the loss does not depend on gamma's shape in expectation), the loss is VDM's
  (training.weighting='likelihood', the ELBO's), objective 'dsm'; learned endpoints train on
  the whole bound, whose decoder needs an image dataset's levels."""
  if not build.is_learned_schedule(config):
    return
  if config.model.time_input != "logsnr":
    raise ConfigError(f"config.sde.name='vdm_learned' needs config.model.time_input='logsnr' "
                      f"(got {config.model.time_input!r}): VDM conditions the network on the "
                      f"logSNR, which makes its loss independent of the learned schedule's shape")
  if config.training.weighting != "likelihood":
    raise ConfigError(f"config.sde.name='vdm_learned' trains VDM's continuous-time ELBO: set "
                      f"config.training.weighting='likelihood' (got "
                      f"{config.training.weighting!r})")
  if not objectives.of_config(config).supports_learned_schedule:
    accepted = [n for n in objectives.names() if objectives.get(n).supports_learned_schedule]
    raise ConfigError(f"config.sde.name={config.sde.name!r} (a learned schedule) is trained by "
                      f"config.training.objective in {accepted} only, got "
                      f"{config.training.objective!r}")
  if config.sde.fields.get("learn_endpoints", False) and build.is_toy(config):
    raise ConfigError("config.sde.fields.learn_endpoints=True trains the bound's discrete "
                      "decoder, which needs image data (levels); config.data.name="
                      f"{config.data.name!r} is a 2-D toy density")


def check_objective(config: Config, mode: str) -> None:
  """training.objective: a registered objective (``diffusion.objectives``) whose requirements
  the config meets: the network's outputs (a classifier objective needs a network registered
  with outputs='logits', e.g. 'mlp_classifier', labelled data and net.num_classes = the data's
  classes; an autoencoder one with outputs='autoencoder'; neither draws samples: --mode=sample /
  sweep / pairs refuse them), the
  parameterization it trains (consistency functions) and class labels only where it takes
  them."""
  objective = objectives.of_config(config)
  name, obj = config.model.name, config.training.objective
  outputs, param = model_outputs(name), config.model.parameterization
  if outputs != objective.required_outputs:
    if outputs == "logits":
      raise ConfigError(f"config.model.name={name!r} is a classifier; config.training.objective="
                        f"{obj!r} trains a score network: set config.training.objective="
                        f"'classifier', or a score network (a model registered with "
                        f"outputs='denoiser')")
    if outputs != "denoiser":
      trained_by = [n for n in objectives.names()
                    if objectives.get(n).required_outputs == outputs]
      raise ConfigError(f"config.model.name={name!r} is a network registered with outputs="
                        f"{outputs!r}, trained by config.training.objective in {trained_by}; "
                        f"got config.training.objective={obj!r}")
    fitting = [n for n in registered_models() if model_outputs(n) == objective.required_outputs]
    raise ConfigError(f"config.training.objective={obj!r} trains a network registered with "
                      f"outputs={objective.required_outputs!r} (registered: {fitting}), got "
                      f"config.model.name={name!r}")
  required = objective.required_parameterization
  if required is not None and param != required:
    raise ConfigError(f"config.training.objective={obj!r} trains a {objective.network} "
                      f"function: set config.model.parameterization={required!r} (got "
                      f"{param!r})")
  trained_by = [n for n in objectives.names() if objectives.get(n).required_parameterization
                == param and objectives.get(n).exclusive_parameterization]
  if trained_by and required != param:
    raise ConfigError(f"config.model.parameterization={param!r} is trained by the objectives "
                      f"{' or '.join(repr(n) for n in trained_by)}, not "
                      f"config.training.objective={obj!r}")
  if config.model.conditional and not objective.supports_conditional:
    raise ConfigError(f"config.training.objective={obj!r} trains unconditional networks; set "
                      f"config.model.conditional=False")
  if mode in SAMPLING_MODES and not objective.draws_samples:
    what, evaluated, use = NO_SAMPLES.get(objective.network, (
        f"a {objective.network} network", "held-out metrics", "see its objective's docs"))
    raise ConfigError(f"--mode={mode}: config.training.objective={obj!r} trains {what}, which "
                      f"draws no samples; use --mode=train or --mode=eval ({evaluated}), and "
                      f"{use}")
  if not objective.predicts_labels:
    return
  classes = _needs_labelled_data(config, f"config.training.objective={obj!r}")
  net = from_library("model.net", get_model, name, **config.model.net.to_dict())
  _num_classes_match(config, net, classes, f"config.training.objective={obj!r}")


def check_training(config: Config) -> None:
  """training.*: step counts and intervals, loss, EMA, non-finite policy, dtype."""
  t = config.training
  int_at_least("training.num_steps", t.num_steps, 1)
  int_at_least("training.log_every", t.log_every, 1)
  int_at_least("training.ckpt_every", t.ckpt_every, 0)
  int_at_least("training.sample_every", t.sample_every, 0)
  int_at_least("training.max_to_keep", t.max_to_keep, 1)
  is_bool("training.async_checkpoints", t.async_checkpoints)
  one_of("training.weighting", t.weighting, losses.WEIGHTINGS)
  if t.weighting in losses.UNCERTAINTY_WEIGHTINGS:
    net = get_model(config.model.name, **config.model.net.to_dict())
    if not capabilities(net).return_logvar:
      raise ConfigError(f"config.training.weighting={t.weighting!r} learns the uncertainty "
                        f"u(sigma) with the network; config.model.name={config.model.name!r} "
                        f"has no such output (accepted: 'edm2_unet')")
  one_of("training.time_sampling", t.time_sampling, losses.TIME_SAMPLINGS)
  accepted = objectives.of_config(config).loss_option_names()
  bad = sorted(set(t.loss_opts.keys()) - set(accepted))
  if bad:
    raise ConfigError(f"config.training.loss_opts has unknown option(s) {bad}; accepted "
                      f"(training.objective={t.objective!r}): {list(accepted)}")
  number_in("training.ema_decay", t.ema_decay, 0.0, 1.0, hi_open=True)
  is_bool("training.ema_warmup", t.ema_warmup)
  one_of("training.nonfinite", t.nonfinite, training.NONFINITE_POLICIES)
  int_at_least("training.max_consecutive_skips", t.max_consecutive_skips, 0)
  int_at_least("training.grad_accum_steps", t.grad_accum_steps, 1)
  int_at_least("training.steps_per_call", t.steps_per_call, 1)
  one_of("training.compute_dtype", t.compute_dtype, networks.COMPUTE_DTYPES)
  check_ema_profiles(config)


def check_ema_profiles(config: Config) -> None:
  """training.ema_profiles: () or increasing sigma_rel values in (0, SIGMA_REL_MAX] (EDM2's
  power-function EMAs); training.ema_snapshot_every: steps between their snapshots, >= 1 when
  profiles are set. Progressive distillation (whose rounds restart the student) keeps none."""
  t = config.training
  profiles = t.ema_profiles
  int_at_least("training.ema_snapshot_every", t.ema_snapshot_every, 0)
  numbers = isinstance(profiles, (tuple, list)) and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in profiles)
  if not numbers:
    raise ConfigError(f"config.training.ema_profiles={profiles!r} must be a tuple of sigma_rel "
                      f"values, e.g. (0.05, 0.1), or () for none")
  if not profiles:
    return
  try:
    posthoc_ema.check_sigma_rel(profiles, "config.training.ema_profiles")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if any(b <= a for a, b in zip(profiles, profiles[1:])):
    raise ConfigError(f"config.training.ema_profiles={tuple(profiles)!r} must be increasing "
                      f"(distinct sigma_rel values, in a fixed order: the state keeps one EMA "
                      f"per position)")
  if t.ema_snapshot_every < 1:
    raise ConfigError(f"config.training.ema_snapshot_every={t.ema_snapshot_every!r} must be >= 1 "
                      f"when config.training.ema_profiles={tuple(profiles)!r} is set (snapshots "
                      f"are what experiments.posthoc_ema reconstructs from)")
  if not objectives.of_config(config).supports_ema_profiles:
    raise ConfigError(f"config.training.ema_profiles is not supported with "
                      f"config.training.objective={t.objective!r} (each round restarts the "
                      f"student from the previous one's EMA); set it to ()")


def ema_warning(config: Config) -> Optional[str]:
  """One line when the run's EMA (training.ema_decay, ema_warmup) cannot average over the run
  (``training.ema_fits``: its mean age at the end over a fifth of the run; with rounds, the last
  round, which restarts it), naming the decay, the run length and a fix; None when it fits."""
  t = config.training
  start = max([0, *objectives.of_config(config).round_boundaries(config)])
  n, decay, warmup = int(t.num_steps) - start, float(t.ema_decay), bool(t.ema_warmup)
  if n < 1 or training.ema_fits(n, decay, warmup, start):
    return None
  weight, age = training.ema_reach(n, decay, warmup, start)
  fixes = ([] if warmup or not training.ema_fits(n, decay, True, start)
           else ["--config.training.ema_warmup=True"])
  fixes.append(f"--config.training.ema_decay={training.fitting_ema_decay(n)}")
  run = (f"config.training.num_steps={t.num_steps}" if not start else
         f"the last round's {n} steps (of config.training.num_steps={t.num_steps})")
  return (f"warning: config.training.ema_decay={decay:g} ({'with' if warmup else 'no'} "
          f"warm-up) is too long for {run}: at the end the EMA lags {age:,.0f} steps "
          f"({age / n:.0%} of the run; fits at <= {training.EMA_MAX_LAG_FRACTION:.0%}) with "
          f"{weight:.1%} of its weight on the initial parameters; set "
          f"{' or '.join(fixes)}")


def check_optim(config: Config) -> None:
  """optim.*: a known optimizer and decay, a positive lr, a warm-up shorter than the run."""
  o, num_steps = config.optim, config.training.num_steps
  one_of("optim.name", o.name, training.OPTIMIZERS)
  one_of("optim.decay", o.decay, training.DECAYS)
  positive("optim.lr", o.lr)
  int_at_least("optim.warmup_steps", o.warmup_steps, 0)
  if o.warmup_steps >= num_steps:
    raise ConfigError(f"config.optim.warmup_steps={o.warmup_steps} must be smaller than "
                      f"config.training.num_steps={num_steps} (the warm-up would not end "
                      f"within the run)")
  number_in("optim.grad_clip", o.grad_clip, 0.0)
  number_in("optim.weight_decay", o.weight_decay, 0.0)
  number_in("optim.b1", o.b1, 0.0, 1.0, hi_open=True)
  number_in("optim.b2", o.b2, 0.0, 1.0, hi_open=True)
  positive("optim.eps", o.eps)
  number_in("optim.end_lr_factor", o.end_lr_factor, 0.0, 1.0)
  if o.decay == "rsqrt":
    int_at_least("optim.rsqrt_ref_steps", o.rsqrt_ref_steps, 1)


def sampler_hparams(config: Config) -> dict:
  """The config.sampling fields that are the sampler's hyper-parameters (set ones only)."""
  kw = build.sampler_kwargs(config)
  return {k: v for k, v in kw.items() if k not in GRID_FIELDS}


def check_sampling(config: Config, schedule, mode: str = "sample") -> None:
  """sampling.*: a registered sampler accepting the set hyper-parameters, and a time grid that
  builds on the host for this schedule."""
  s = config.sampling
  info = from_library("sampling.sampler", registry.sampler_info, s.sampler)
  check_sampler_kind("sampling.sampler", s.sampler, info.kind, config)
  from_library("sampling", info.validate, sampler_hparams(config))  # names, types and values
  int_at_least("sampling.num_steps", s.num_steps, 1)
  is_bool("sampling.clip_denoised", s.clip_denoised)
  one_of("sampling.compute_dtype", s.compute_dtype, networks.COMPUTE_DTYPES)
  if s.compute_dtype != "float32":  # the network must take a compute dtype (a 'dtype' field)
    from_library("sampling.compute_dtype", networks.compute_model,
                 get_model(config.model.name, **config.model.net.to_dict()), s.compute_dtype)
  if s.clip_denoised and build.is_toy(config):
    raise ConfigError(f"config.sampling.clip_denoised=True clips x0_hat to the image range "
                      f"[-1, 1]; config.data.name={config.data.name!r} is a 2-D toy density")
  int_at_least("sampling.num_samples", s.num_samples, 1)
  int_at_least("sampling.batch_size", s.batch_size, 1)
  positive("sampling.rho", s.rho)
  if s.time_grid is not None:
    check_time_grid(config, schedule)
    return
  t_min, t_max = from_library("sampling.t_min/t_max/logsnr_min/logsnr_max",
                              registry.logsnr_clip, schedule, s.t_min, s.t_max, s.logsnr_min,
                              s.logsnr_max)
  if mode == "sweep" and str(s.grid).startswith("fitted:"):
    return  # a fitted grid per (sampler, steps): check_sweep checks each cell's
  grid = from_library("sampling.grid", grids.time_grid, schedule, s.num_steps, s.grid,
                      t_min=t_min, t_max=t_max, rho=s.rho, sampler=str(s.sampler))
  if not (np.all(np.isfinite(grid)) and np.all(np.diff(grid) < 0)):
    raise ConfigError(f"config.sampling.grid={s.grid!r} with num_steps={s.num_steps}, "
                      f"rho={s.rho} gives times that are not finite and strictly decreasing "
                      f"on [{t_min}, {t_max}]")


def check_time_grid(config: Config, schedule) -> None:
  """sampling.time_grid (when set): num_steps + 1 finite, strictly decreasing times inside the
  schedule's [t_min, t_max] (``engine.check_grid``). The fields that build a grid
  (sampling.grid, rho, t_min, t_max, logsnr_min, logsnr_max) are then not used."""
  s = config.sampling
  tg = s.time_grid
  if not isinstance(tg, (tuple, list)) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in tg):
    raise ConfigError(f"config.sampling.time_grid={tg!r} must be a tuple of floats, e.g. "
                      f"--config.sampling.time_grid='(80.0, 0.8, 0.002)'")
  if len(tg) != int(s.num_steps) + 1:
    raise ConfigError(f"config.sampling.time_grid has {len(tg)} times, so {len(tg) - 1} steps; "
                      f"config.sampling.num_steps={s.num_steps} needs {int(s.num_steps) + 1} "
                      f"(set both)")
  from_library("sampling.time_grid", engine.check_grid, tuple(float(v) for v in tg), schedule)


def _network_sampler_kinds(config: Config):
  """(the sampler kinds that run this config's network, what the network is), from its
  objective's network: a consistency function (CM, sCM) the kind 'consistency', a flow map
  (MeanFlow, shortcut) the kind 'flow_map', a denoiser every other kind (a 'trigflow' network
  trained by 'dsm' is a denoiser)."""
  objective = objectives.of_config(config)
  if objective.network == "consistency":
    return ("consistency",), (f"a consistency function (config.training.objective="
                              f"{objective.name!r})")
  if objective.network == "flow_map":
    return ("flow_map",), f"a flow map (config.training.objective={objective.name!r})"
  return (tuple(k for k in registry.KINDS if k not in ("consistency", "flow_map")),
          f"a denoiser (model.parameterization={config.model.parameterization!r})")


def check_sampler_kind(field: str, name: str, kind: str, config: Config) -> None:
  """A consistency model is sampled by the samplers of kind 'consistency' only, a flow map by
  the kind 'flow_map' only, and a denoiser by every other kind (``_network_sampler_kinds``)."""
  kinds, what = _network_sampler_kinds(config)
  if kind not in kinds:
    ours = sorted(n for n in registry.registered_samplers()
                  if registry.sampler_info(n).kind in kinds)
    raise ConfigError(f"config.{field}={name!r} is a sampler of kind {kind!r}; this config's "
                      f"network is {what}, sampled by: {ours}")


def check_eval(config: Config) -> None:
  """eval.*: positive sizes and tolerances, known estimators, which checkpoint(s)."""
  e = config.eval
  for field in ("num_samples", "nll_points", "nll_batch_size", "sw_projections",
                "plot_samples", "shard_size", "dequantization_draws", "elbo_time_samples"):
    int_at_least(f"eval.{field}", e[field], 1)
  int_at_least("eval.mmd_points", e.mmd_points, 2)  # the unbiased MMD needs two points
  int_at_least("eval.density_grid", e.density_grid, 0)
  one_of("eval.divergence", e.divergence, likelihood.DIVERGENCES)
  one_of("eval.probe", e.probe, likelihood.PROBES)
  one_of("eval.solver", e.solver, likelihood.SOLVERS)
  one_of("eval.elbo_time_sampling", e.elbo_time_sampling, elbo.TIME_SAMPLINGS)
  is_bool("eval.elbo", e.elbo)
  is_bool("eval.all_checkpoints", e.all_checkpoints)
  if e.step is not None:
    int_at_least("eval.step", e.step, 0)
    if e.all_checkpoints:
      raise ConfigError(f"config.eval.step={e.step} and config.eval.all_checkpoints=True "
                        f"contradict each other; set one of them")
  for field in ("rtol", "atol", "density_rtol", "density_atol", "density_extent"):
    positive(f"eval.{field}", e[field])
  for field in ("fid_num_samples", "kid_subsets", "kid_subset_size", "inception_batch_size",
                "sweep_num_samples"):
    int_at_least(f"eval.{field}", e[field], 1)
  one_of("eval.fid_rounding", e.fid_rounding, FID_ROUNDINGS)
  if e.fid_stats is not None and not isinstance(e.fid_stats, str):
    raise ConfigError(f"config.eval.fid_stats={e.fid_stats!r} must be the path of a statistics "
                      f"file (python -m experiments.reference_stats writes one)")


def check_fid(config: Config, mode: str) -> None:
  """FID inputs, for eval when eval.fid_stats is set and for a sweep on images (always): image
  data, an existing statistics file, the Inception weights installed. (A sweep on toy data
  scores its cells by sliced Wasserstein and MMD, experiments/sweep.py.)"""
  e = config.eval
  image_sweep = mode == "sweep" and not build.is_toy(config)
  if mode not in ("eval", "sweep") or (e.fid_stats is None and not image_sweep):
    return
  if build.is_toy(config):
    raise ConfigError(f"config.eval.fid_stats={e.fid_stats!r} / --mode={mode}: FID scores "
                      f"images, and config.data.name={config.data.name!r} is 2-D toy data "
                      f"(scored by sliced Wasserstein and MMD): unset config.eval.fid_stats")
  if e.fid_stats is None:
    raise ConfigError(f"--mode={mode} needs config.eval.fid_stats, the path of reference "
                      f"statistics (python -m experiments.reference_stats --dataset="
                      f"{config.data.name} --split=train --out=DIR writes them)")
  if not os.path.isfile(e.fid_stats):
    raise ConfigError(f"config.eval.fid_stats={e.fid_stats!r} does not exist; write it with "
                      f"python -m experiments.reference_stats --dataset={config.data.name} "
                      f"--split=train --out=DIR")
  try:
    inception.weights_path()
  except FileNotFoundError as e:
    raise ConfigError(f"config.eval.fid_stats is set, but {e}") from None


def check_sweep(config: Config, mode: str) -> None:
  """--mode=sweep: the sampler and NFE lists (registered fixed-step samplers of this model's
  kind, each budget within reach of each sampler); on toy data at least 2 samples per cell and
  2 held-out points (the unbiased MMD needs two of each)."""
  if mode != "sweep":
    return
  if config.sampling.time_grid is not None:
    raise ConfigError("config.sampling.time_grid fixes the number of steps; --mode=sweep chooses "
                      "the steps of each NFE budget on the grid of sampling.grid: unset "
                      "time_grid")
  e = config.eval
  try:
    samplers = sweep_grid.parse_list("eval.sweep_samplers", e.sweep_samplers, str)
    budgets = sweep_grid.parse_list("eval.sweep_nfe", e.sweep_nfe, int)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  for name in samplers:
    kind = from_library("eval.sweep_samplers", registry.sampler_info, name).kind
    check_sampler_kind("eval.sweep_samplers", name, kind, config)
    for b in budgets:
      steps, _ = from_library(f"eval.sweep_samplers / eval.sweep_nfe ({name!r} at NFE {b})",
                              sweep_grid.steps_for_nfe, name, b,
                              sweep_grid.sampler_hparams_for(config, name))
      if str(config.sampling.grid).startswith("fitted:"):  # the file must hold every cell's
        s = config.sampling
        from_library(f"sampling.grid ({name!r} at NFE {b}: {steps} steps)", grids.time_grid,
                     build.schedule(config), steps, s.grid, t_min=s.t_min, t_max=s.t_max,
                     sampler=name)
  if build.is_toy(config):
    int_at_least("eval.sweep_num_samples", e.sweep_num_samples, 2)
    int_at_least("data.num_heldout", config.data.num_heldout, 2)


def check_guidance(config: Config, schedule, mode: str) -> None:
  """guidance.* and inverse.*: labels in the model's range, guidance only for a model that can be
  guided (cfg: a conditional model; classifier: a classifier config of the same forward process
  and data, and a workdir), an interval inside the schedule, an inverse problem only in
  --mode=sample with an observation file and a method that fits its noise."""
  g = config.guidance
  one_of("guidance.kind", g.kind, cond_lib.GUIDANCE_KINDS)
  ncls = cond_lib.num_classes(config)
  if g.kind in cond_lib.CFG_KINDS and not ncls:
    raise ConfigError(f"config.guidance.kind={g.kind!r} needs a conditional model (model."
                      f"conditional=True and model.net.num_classes > 0); this one is unconditional")
  if g.kind in cond_lib.CFG_KINDS:
    number_in("guidance.weight", g.weight, -math.inf)
    one_of("guidance.convention", g.convention, guidance.CONVENTIONS)
    if g.kind != "cfg" and g.convention != "scale":
      raise ConfigError(f"config.guidance.convention={g.convention!r} is read by kind 'cfg' only; "
                        f"guidance.kind={g.kind!r} takes its weight in the 'scale' convention")
  if g.kind == "classifier":
    ncls = _check_classifier(config)
    number_in("guidance.classifier_scale", g.classifier_scale, -math.inf)
  if g.kind == "autoguidance":
    number_in("guidance.weight", g.weight, -math.inf)
    _check_guide(config)
  elif any(g[f] is not None for f in ("guide_config", "guide_workdir", "guide_step")):
    raise ConfigError(f"config.guidance.guide_config / guide_workdir / guide_step are read only by "
                      f"guidance.kind='autoguidance', and guidance.kind={g.kind!r}")
  for name in ("t_lo", "t_hi"):
    v = g[name]
    if v is not None:
      number_in(f"guidance.{name}", v, float(schedule.t_min), float(schedule.t_max))
  if g.t_lo is not None and g.t_hi is not None and not g.t_lo < g.t_hi:
    raise ConfigError(f"config.guidance.t_lo={g.t_lo} must be < config.guidance.t_hi={g.t_hi}")
  if (g.t_lo is not None or g.t_hi is not None) and g.kind == "none":
    raise ConfigError(f"config.guidance.t_lo / t_hi ({g.t_lo}, {g.t_hi}) set a guidance interval "
                      f"but config.guidance.kind='none'")
  if isinstance(g.label, bool) or not isinstance(g.label, int):
    raise ConfigError(f"config.guidance.label={g.label!r} must be an integer")
  if not ncls and g.label != -1:
    raise ConfigError(f"config.guidance.label={g.label} but the model is unconditional and no "
                      f"classifier guides it; accepted: -1")
  if ncls and not -1 <= g.label <= ncls:
    raise ConfigError(f"config.guidance.label={g.label} is out of range; accepted: -1 (every "
                      f"class in turn), 0..{ncls - 1} (one class) or {ncls} (the NULL label)")
  if g.kind not in ("none", "autoguidance") and g.label == ncls and ncls:
    raise ConfigError(f"config.guidance.label={g.label} is the NULL label: there is no class to "
                      f"guide towards with guidance.kind={g.kind!r}")
  if g.kind == "cfgpp" and mode == "sweep":
    raise ConfigError("config.guidance.kind='cfgpp' is a DDIM loop of its own, so a sweep over "
                      "samplers would sample every cell with it; sweep another kind, or sample / "
                      "eval with sampling.sampler='ddim'")
  if g.kind in cond_lib.CFG_KINDS:  # its own fields, once the shared ones are known good
    _check_cfg_family(config, schedule)
  _check_inverse(config, schedule, mode)


def _check_inverse(config: Config, schedule, mode: str) -> None:
  """inverse.*: a known task; an inverse problem only in --mode=sample, with an observation
  file and a method that fits its noise."""
  inv = config.inverse
  one_of("inverse.task", inv.task, cond_lib.INVERSE_TASKS)
  if inv.task == "none":
    return
  if mode in ("eval", "sweep"):
    raise ConfigError(f"config.inverse.task={inv.task!r}: inverse problems are solved by "
                      f"--mode=sample, not --mode={mode} (set inverse.task='none')")
  one_of("inverse.method", inv.method, cond_lib.INVERSE_METHODS)
  number_in("inverse.noise_std", inv.noise_std, 0.0)
  if inv.method == "replacement" and inv.noise_std != 0:
    raise ConfigError(f"config.inverse.noise_std={inv.noise_std}: the replacement method assumes "
                      f"noiseless observations; use inverse.method='pigdm' for noisy ones")
  positive("inverse.pigdm_scale", inv.pigdm_scale)
  positive("inverse.sigma_data", inv.sigma_data)
  if inv.pigdm_t_hi is not None:
    number_in("inverse.pigdm_t_hi", inv.pigdm_t_hi, float(schedule.t_min), float(schedule.t_max),
              lo_open=True)
  int_at_least("inverse.factor", inv.factor, 1)
  int_at_least("inverse.samples_per_observation", inv.samples_per_observation, 1)
  if not isinstance(inv.observation_labels, bool):
    raise ConfigError(f"config.inverse.observation_labels={inv.observation_labels!r}; accepted: "
                      f"True, False")
  if inv.observation_labels and not cond_lib.num_classes(config):
    raise ConfigError("config.inverse.observation_labels=True conditions on the observations' "
                      "classes, but the model is unconditional (model.conditional=False)")
  if inv.observation_labels and config.guidance.label != -1:
    raise ConfigError(f"config.inverse.observation_labels=True gives each completion its "
                      f"observation's class, and config.guidance.label={config.guidance.label} "
                      f"another one; set one of them (guidance.label=-1 with observation labels)")
  if inv.method in cond_lib.SAMPLER_METHODS:
    if config.guidance.kind == "cfgpp":
      raise ConfigError(f"config.inverse.method={inv.method!r} is a sampler of its own, and so is "
                        f"config.guidance.kind='cfgpp': choose one")
    try:
      cond_lib.posterior_sampler(config, schedule)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.inverse.method={inv.method!r} (fields inverse."
                        f"{_METHOD_FIELDS[inv.method]}): {e}") from None
  if mode == "sample":
    if inv.observations is None:
      raise ConfigError(f"config.inverse.task={inv.task!r} needs config.inverse.observations "
                        f"(an .npz written by python -m experiments.observations)")
    if not os.path.isfile(inv.observations):
      raise ConfigError(f"config.inverse.observations={inv.observations!r} is not a file")


# The config fields of each kind / method's library arguments (named in refusals).
_CFG_FIELDS = {"apg": "apg_eta, apg_norm_threshold", "cfg_rescale": "rescale_phi, rescale_space",
               "cfg_zero_star": "zero_star_optimized, zero_star_space, zero_star_init_t",
               "cfgpp": "weight (lambda in [0, 1]) and sampling.sampler", "cfg": "weight"}
_METHOD_FIELDS = {"dps": "dps_zeta", "ddrm": "noise_std, ddrm_eta, ddrm_eta_b",
                  "tds": "noise_std, sigma_data, tds_particles, tds_proposal, tds_variance, "
                         "tds_transition, tds_resample, tds_ess_threshold",
                  "daps": "noise_std, daps_tau, daps_ode_steps, daps_ode_solver, "
                          "daps_langevin_steps, daps_lr, daps_lr_min_ratio, daps_r_schedule, "
                          "sigma_data"}


def _check_cfg_family(config: Config, schedule) -> None:
  """The guidance kind's hyper-parameters, checked by building it (the library's checks, before
  any compile), refusals naming the config fields."""
  g = config.guidance
  try:
    if g.kind == "cfgpp":
      cond_lib._cfgpp(config, schedule)
    else:
      cond_lib._cfg(config, schedule)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.guidance.kind={g.kind!r} (fields guidance.{_CFG_FIELDS[g.kind]}): "
                      f"{e}") from None


def _check_guide(config: Config) -> None:
  """Autoguidance's guide: a workdir, an optional checkpoint step >= 0 and a config that loads and
  models this data under this forward process (conditioning.check_guide_config)."""
  g = config.guidance
  if not g.guide_workdir:
    raise ConfigError("config.guidance.kind='autoguidance' needs config.guidance.guide_workdir "
                      "(the guiding model's run: this workdir with an earlier guide_step, or "
                      "a weaker run's)")
  if not os.path.isdir(g.guide_workdir):
    raise ConfigError(f"config.guidance.guide_workdir={g.guide_workdir!r} is not a directory")
  if g.guide_step is not None:
    int_at_least("guidance.guide_step", g.guide_step, 0)
  try:
    guide = cond_lib.guide_config(config)
  except FileNotFoundError as e:
    raise ConfigError(f"config.guidance.guide_config: {e}") from None
  cond_lib.check_guide_config(config, guide)


def _check_classifier(config: Config) -> int:
  """The classifier of config.guidance: its config loads, is a classifier of this forward process
  and data, and its workdir is a directory. Returns its number of classes."""
  g = config.guidance
  for name in ("classifier_config", "classifier_workdir"):
    if not g[name]:
      raise ConfigError(f"config.guidance.kind='classifier' needs config.guidance.{name}")
  try:
    clf = config_files.load_config_file(g.classifier_config)
  except FileNotFoundError as e:
    raise ConfigError(f"config.guidance.classifier_config: {e}") from None
  cond_lib.check_classifier_config(config, clf)
  if not os.path.isdir(g.classifier_workdir):
    raise ConfigError(f"config.guidance.classifier_workdir={g.classifier_workdir!r} is not a "
                      f"directory (train the classifier there first)")
  return int(clf.model.net.get("num_classes", 0) or 0)


def time_in_schedule(field: str, value: Any, schedule) -> None:
  """``value`` (None: the schedule's t_min) must lie in [schedule.t_min, schedule.t_max)."""
  if value is None:
    return
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and schedule.t_min <= value < schedule.t_max)
  if not ok:
    raise ConfigError(f"config.{field}={value!r} must be a finite number in "
                      f"[{schedule.t_min}, {schedule.t_max}), the schedule's time range "
                      f"(config.sde.fields.t_min / t_max); None means its t_min")


def check_time_ranges(config: Config, schedule) -> None:
  """training.t_min and eval.t_min within the schedule's [t_min, t_max) (config.sde.fields);
  the loss's t_min set once (training.t_min, not also training.loss_opts.t_min)."""
  t = config.training
  time_in_schedule("training.t_min", t.t_min, schedule)
  if t.t_min is not None and "t_min" in t.loss_opts:
    raise ConfigError(f"config.training.t_min={t.t_min} and config.training.loss_opts.t_min="
                      f"{t.loss_opts.t_min} both set the loss's t_min; set only training.t_min")
  time_in_schedule("eval.t_min", config.eval.t_min, schedule)
  if t.time_sampling == "logit_normal":  # its t = sigmoid(.) needs a schedule inside [0, 1]
    from_library("training.time_sampling", losses.sample_times, jax.random.PRNGKey(0), 1,
                 schedule, t.time_sampling, t_min=t.t_min)


def check_parallel(config: Config) -> None:
  """parallel.*: flags, a positive model axis, coordinates when distributed."""
  p = config.parallel
  is_bool("parallel.distributed", p.distributed)
  is_bool("parallel.fsdp", p.fsdp)
  int_at_least("parallel.model_axis", p.model_axis, 1)
  int_at_least("parallel.fsdp_min_size", p.fsdp_min_size, 0)
  if p.num_processes is not None:
    int_at_least("parallel.num_processes", p.num_processes, 1)
  if p.process_id is not None:
    int_at_least("parallel.process_id", p.process_id, 0)
    if p.num_processes is not None and p.process_id >= p.num_processes:
      raise ConfigError(f"config.parallel.process_id={p.process_id} must be smaller than "
                        f"config.parallel.num_processes={p.num_processes}")


def check_devices(config: Config, device_count: int, process_count: int) -> None:
  """The batch splits evenly over processes and devices (and micro-batches); the model axis
  divides the device count."""
  p, b = config.parallel, config.data.batch_size
  if device_count % p.model_axis:
    raise ConfigError(f"config.parallel.model_axis={p.model_axis} must divide the device count "
                      f"{device_count}")
  if b % process_count:
    raise ConfigError(f"config.data.batch_size={b} must be divisible by the process count "
                      f"{process_count}")
  if b % device_count:
    raise ConfigError(f"config.data.batch_size={b} must be divisible by the device count "
                      f"{device_count} (each step splits the batch over all devices)")
  k = config.training.grad_accum_steps
  if (b // device_count) % k:
    raise ConfigError(f"config.training.grad_accum_steps={k} must divide the per-device batch "
                      f"{b // device_count} (config.data.batch_size={b} over {device_count} "
                      f"device(s))")


def check_debug(config: Config) -> None:
  """debug.*: step indices (-1 disables), a step count, a delay."""
  d = config.debug
  int_at_least("debug.nan_at_step", d.nan_at_step, -1)
  int_at_least("debug.nan_num_steps", d.nan_num_steps, 1)
  int_at_least("debug.hang_at_step", d.hang_at_step, -1)
  number_in("debug.setup_delay_s", d.setup_delay_s, 0.0)


def check_writable(path: str, label: str) -> None:
  """Raises ConfigError (naming ``label``) unless a file can be created in ``path`` or, where it
  does not exist yet, in its nearest existing ancestor (where it would be created). Leaves
  nothing behind: the probe file is removed and the folder's times are restored."""
  target = os.path.abspath(path)
  while not os.path.lexists(target):
    target = os.path.dirname(target)
  if not os.path.isdir(target):
    raise ConfigError(f"{label} cannot be created: {target!r} is not a directory")
  before = os.stat(target)
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=target)
  except OSError as e:
    raise ConfigError(f"{label} is not writable: cannot create a file in {target!r} "
                      f"({e.strerror}); pass a writable --workdir") from None
  os.close(fd)
  os.remove(probe)
  os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- the entry point -----------------------------------------------------------------------------


def validate_config(config: Config, mode: str) -> None:
  """Every field a run of ``mode`` reads (all modes read the same experiment config)."""
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r} is not accepted; accepted: {list(MODES)}")
  config_files.import_user_modules(config)  # what they register is checked below
  if not isinstance(config.experiment, str):
    raise ConfigError(f"config.experiment={config.experiment!r} must be a string")
  int_at_least("seed", config.seed, 0)
  check_data(config)
  check_latent(config, mode)
  schedule = check_sde(config)
  check_model(config)
  check_time_input(config, schedule)
  check_learned_schedule(config)
  check_objective(config, mode)
  check_training(config)
  check_optim(config)
  check_sampling(config, schedule, mode)
  check_eval(config)
  check_time_ranges(config, schedule)
  check_guidance(config, schedule, mode)
  distill.check_distill(config, mode)
  check_parallel(config)
  check_debug(config)


def validate(config: Config, mode: str, workdir: Optional[str] = None, *,
             device_count: Optional[int] = None, process_count: Optional[int] = None) -> None:
  """Refuses a bad config or workdir for ``mode`` with a one-line ConfigError, before any work.

  ``device_count`` / ``process_count`` default to JAX's (after jax.distributed is initialized);
  ``workdir`` (if given) must be writable where ``mode`` writes: the workdir for train, its
  samples/ or eval/ folder for sample and eval.
  """
  validate_config(config, mode)
  check_folder_eval_split(config, mode)
  check_fid(config, mode)
  check_sweep(config, mode)
  if device_count is None or process_count is None:
    device_count = jax.device_count() if device_count is None else device_count
    process_count = jax.process_count() if process_count is None else process_count
  check_devices(config, device_count, process_count)
  if workdir is not None:
    if not workdir:
      raise ConfigError("--workdir is empty; pass a directory")
    sub = OUTPUT_SUBDIR[mode]
    label = f"--workdir={workdir!r}" + (f" (its {sub}/ folder, where --mode={mode} writes)"
                                        if sub else "")
    check_writable(os.path.join(workdir, sub), label)
