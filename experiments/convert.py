"""Converts a released checkpoint into a workdir of this codebase, ready for --mode=sample,
eval, sweep and for fine-tuning (--mode=train continues from the converted weights).

  python -m experiments.convert --format=diffusers --source=DIR --workdir=W [--dataset=cifar10]
      [--schedule=discrete|continuous] [--weights=FILE] [--scheduler_config=FILE]
  python -m experiments.convert --format=score_sde --source=CHECKPOINT
      --score_sde_config=NAME_OR_JSON --workdir=W [--params=ema|raw] [--dataset=cifar10]
  python -m experiments.convert --format=dit --source=DiT-XL-2-256x256.pt --workdir=W
      --autoencoder=VAE_WORKDIR [--model=DiT-XL/2] [--num_heads=N]
      [--schedule=discrete|continuous] [--dataset=imagenet2012]
  python -m experiments.convert --format=diffusers_vae --source=DIR --workdir=W
      --dataset=imagenet2012 [--image_size=256]

W receives: config.py (the experiment config: pass it as --config=W/config.py), config.json
(the workdir's identity), checkpoints/0 (params = ema_params = the converted weights, a fresh
optimizer state), and conversion.json (the source file and its sha256, the notes of what the
conversion changed, the module table). Nothing is downloaded: the source must be on disk
(docs/convert.md). A workdir that already holds checkpoints or a config.py is refused.

A DiT checkpoint is a latent diffusion model: its config.py is a latent config on
configs/imagenet/common.py (the DiT-XL/2 recipe, for fine-tuning) with the conversion's
schedule, network and latent normalization, decoded by the VAE workdir of --autoencoder
(``latent.autoencoder``); ``latent.dataset`` stays None (sampling needs no data; training reads
the folder ``python -m experiments.encode`` writes). A diffusers AutoencoderKL becomes an
autoencoder workdir (training.objective='autoencoder'), the one --autoencoder names.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from diffusion import checkpoint, training
from diffusion.convert import diffusers_unet, score_sde
from diffusion.convert import dit as dit_convert
from diffusion.convert import diffusers_vae
from diffusion.convert.common import ConversionError, Converted, flatten
from experiments import build, runtime
from experiments.config_files import load_config_file
from experiments.setup import init_state, setup
from experiments.validate import validate_config

FORMATS = ("diffusers", "score_sde", "dit", "diffusers_vae")
HINT_SAMPLES = 64  # the printed sample command's count: minutes on a CPU, not hours
# Datasets inferred from the image shape when --dataset is not given (unique shapes only).
DATASET_BY_SHAPE = {(32, 32, 3): "cifar10", (8, 8, 1): "digits", (28, 28, 1): "mnist",
                    (64, 64, 3): "celeb_a"}
# The dataset of latent models (DiT) when --dataset is not given.
LATENT_DATASET = "imagenet2012"

def infer_dataset(image_shape: Sequence[int], dataset: Optional[str],
                  latent: bool = False) -> str:
  """``dataset``, or the one dataset of this image shape (a latent model's: LATENT_DATASET);
  ConversionError when ambiguous."""
  if dataset:
    return dataset
  if latent:
    return LATENT_DATASET
  shape = tuple(int(v) for v in image_shape)
  if shape in DATASET_BY_SHAPE:
    return DATASET_BY_SHAPE[shape]
  raise ConversionError(f"images of shape {shape} fit no single dataset; pass --dataset "
                        f"(e.g. 'lsun/church_outdoor', 'lsun/bedroom', 'celeb_a', 'cifar10'; "
                        f"the dataset is read only to train or evaluate, and image_size is "
                        f"set to {shape[0]})")


def _literal(d: Dict[str, Any]) -> str:
  return "{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in sorted(d.items())) + "}"


def _process_lines(conv: Converted) -> str:
  """The lines of a converted config's get_config() that set the release's forward process,
  time ranges and parameterization (both templates share them)."""
  return (f"  c.sde.name = {conv.sde[0]!r}\n"
          f"  c.sde.fields = ml_collections.ConfigDict(SDE_FIELDS)\n"
          f"  c.training.t_min = None\n"
          f"  c.sampling.t_min = {conv.sampling_t_min!r}\n"
          f"  c.sampling.clip_denoised = {conv.clip_denoised!r}\n"
          f"  c.eval.t_min = None\n"
          f"  c.model.parameterization = {conv.parameterization!r}\n"
          f"  c.model.time_input = {conv.time_input!r}\n"
          f"  c.model.scale_input = False\n")


def config_text(conv: Converted, dataset: str, experiment: str,
                autoencoder: Optional[str] = None) -> str:
  """A config file (``get_config()``) for the converted model, on configs/images.py (a latent
  model's on configs/imagenet/common.py: :func:`latent_config_text`)."""
  if conv.latent is not None:
    return latent_config_text(conv, dataset, experiment, autoencoder)
  literal = _literal
  size = int(conv.image_shape[0])
  notes = "\n".join(f"  * {n}" for n in conv.notes) or "  (none)"
  src = conv.source.get("weights") or conv.source.get("file") or "?"
  return f'''"""Converted by experiments.convert from {conv.source.get("format")}:
{src}
sha256 {conv.source.get("sha256")}

What the conversion changed:
{notes}

Sample:   python -m experiments.main --config=<this file> --workdir=<this folder> --mode=sample \\
    --config.sampling.num_samples={HINT_SAMPLES}  (a first look; without it: the full set)
Evaluate: python -m experiments.main --config=<this file> --workdir=<this folder> --mode=eval
Fine-tune (continues from the converted weights): --mode=train
"""
import ml_collections

from configs.images import image_config

NET = {literal(conv.net)}
SDE_FIELDS = {literal(dict(conv.sde[1]))}


def get_config():
  c = image_config({dataset!r}, "vp", model={conv.model!r}, net=NET)
  c.experiment = {experiment!r}
  c.data.image_size = {size}
{_process_lines(conv)}  return c
'''


def latent_config_text(conv: Converted, dataset: str, experiment: str,
                       autoencoder: Optional[str]) -> str:
  """The config file of a converted latent model (DiT): configs/imagenet/common.py's latent
  config (DiT's training recipe, for fine-tuning) with the conversion's network, schedule,
  parameterization and latent normalization; DDPM's 250 ancestral steps as the release samples.
  Its samples are decoded by the converted VAE in ``autoencoder``; ``latent.dataset`` is None
  (sampling needs no data; training: the folder of experiments.encode)."""
  lat = conv.latent
  notes = "\n".join(f"  * {n}" for n in conv.notes) or "  (none)"
  return f'''"""Converted by experiments.convert from {conv.source.get("format")} ({conv.source.get("model") or "a custom size"}):
{conv.source.get("file")}
sha256 {conv.source.get("sha256")}

What the conversion changed:
{notes}

A latent diffusion model, decoded by the VAE in {autoencoder} (docs/latent.md).
Sample:   python -m experiments.main --config=<this file> --workdir=<this folder> --mode=sample \\
    --config.sampling.num_samples={HINT_SAMPLES}
  The paper's guided setting: --config.guidance.kind=cfg --config.guidance.weight=1.5
Evaluate: --mode=eval; fine-tune (continues from the converted weights): --mode=train
"""
import ml_collections

from configs.imagenet.common import latent_imagenet_config

NET = {_literal(conv.net)}
SDE_FIELDS = {_literal(dict(conv.sde[1]))}


def get_config():
  c = latent_imagenet_config({int(lat["image_size"])}, "vp", net=NET)
  c.experiment = {experiment!r}
  c.data.name = {dataset!r}
  c.latent.dataset = None  # training: the folder `python -m experiments.encode` writes
  c.latent.autoencoder = {autoencoder!r}
  c.latent.autoencoder_config = {autoencoder and os.path.join(autoencoder, "config.py")!r}
  c.latent.normalization = {lat["normalization"]!r}
  c.latent.scale_factor = {lat["scale_factor"]!r}
{_process_lines(conv)}  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 250
  c.sampling.grid = "uniform"
  return c
'''


def _convert(fmt: str, source: str, **kw) -> Converted:
  if fmt == "diffusers":
    return diffusers_unet.convert(source, schedule=kw.get("schedule", "discrete"),
                                  weights=kw.get("weights"),
                                  scheduler_config=kw.get("scheduler_config"))
  if fmt == "score_sde":
    cfg_path = kw.get("score_sde_config")
    if not cfg_path:
      raise ConversionError("--format=score_sde needs --score_sde_config: a released config's "
                            "name such as 've/cifar10_ncsnpp_deep_continuous', or a JSON file "
                            "of its fields (docs/convert.md)")
    conv = score_sde.convert_checkpoint(source, score_sde.load_config(cfg_path),
                                        params=kw.get("params", "ema"))
    conv.source["score_sde_config"] = cfg_path
    return conv
  if fmt == "dit":
    return dit_convert.convert(source, model=kw.get("model"),
                               schedule=kw.get("schedule", "discrete"),
                               num_heads=kw.get("num_heads"))
  raise ConversionError(f"format={fmt!r}; accepted: {FORMATS}")


def write_workdir(conv: Converted, workdir: str, dataset: Optional[str] = None,
                  experiment: Optional[str] = None,
                  autoencoder: Optional[str] = None) -> Dict[str, Any]:
  """Writes the converted model into a new ``workdir`` (module docstring); returns the summary
  written to conversion.json. Everything is checked before the first file is written. A latent
  model (DiT) needs ``autoencoder``: the workdir of its converted VAE, which decodes its
  samples (config.latent.autoencoder)."""
  _refuse_used(workdir)
  dataset = infer_dataset(conv.image_shape, dataset, latent=conv.latent is not None)
  origin = (conv.source.get("score_sde_config")
             or os.path.basename(os.path.normpath(conv.source.get("folder") or "model"))
             if not conv.source.get("file") else
             os.path.splitext(os.path.basename(conv.source["file"]))[0])
  experiment = experiment or f"converted/{origin}"
  if conv.latent is not None:
    if not autoencoder:
      raise ConversionError("--format=dit writes a latent model: pass --autoencoder=W, the "
                            "workdir of its VAE converted with --format=diffusers_vae (DiT's: "
                            "stabilityai/sd-vae-ft-ema), which decodes its samples")
  text = config_text(conv, dataset, experiment,
                     autoencoder and os.path.abspath(autoencoder))
  config = _load_text(text)
  validate_config(config, "sample")
  shape = build.data_shape(config)
  if tuple(shape) != tuple(conv.image_shape):
    raise ConversionError(f"--dataset={dataset!r} gives {'latents' if conv.latent else 'images'}"
                          f" of shape {tuple(shape)}, the checkpoint's are "
                          f"{tuple(conv.image_shape)}")
  num_params = _write(config, text, workdir, conv.params, experiment, conv.source)
  summary = dict(source=conv.source, notes=conv.notes, dataset=dataset, experiment=experiment,
                 model=conv.model, net=conv.net, sde=dict(name=conv.sde[0], fields=conv.sde[1]),
                 parameterization=conv.parameterization, time_input=conv.time_input,
                 num_params=num_params, latent=conv.latent)
  with open(os.path.join(workdir, "conversion.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True, default=str)
  return summary


def write_autoencoder_workdir(conv: diffusers_vae.ConvertedAutoencoder, workdir: str,
                              dataset: Optional[str], image_size: Optional[int] = None,
                              experiment: Optional[str] = None) -> Dict[str, Any]:
  """Writes a converted AutoencoderKL into a new ``workdir``: an autoencoder experiment
  (training.objective='autoencoder') on ``dataset`` at ``image_size`` (what its eval
  reconstructs and a fine-tuning would read). Returns the conversion.json summary, which holds
  the latent normalisation its diffusion models use (scaling_factor, shift_factor)."""
  _refuse_used(workdir)
  if not dataset:
    raise ConversionError("--format=diffusers_vae needs --dataset: the images its config "
                          "reconstructs in --mode=eval and encodes (e.g. imagenet2012 with "
                          "--image_size=256; a VAE fits any size divisible by its factor)")
  origin = os.path.basename(os.path.normpath(conv.source.get("folder") or "vae"))
  experiment = experiment or f"converted/{origin}"
  text = autoencoder_config_text(conv, dataset, image_size, experiment)
  config = _load_text(text)
  validate_config(config, "train")
  num_params = _write(config, text, workdir, conv.params, experiment, conv.source)
  summary = dict(source=conv.source, notes=conv.notes, dataset=dataset, experiment=experiment,
                 model=conv.model, net=conv.net, num_params=num_params,
                 scaling_factor=conv.scaling_factor, shift_factor=conv.shift_factor,
                 latents_mean=conv.latents_mean, latents_std=conv.latents_std,
                 force_upcast=conv.force_upcast)
  with open(os.path.join(workdir, "conversion.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True, default=str)
  return summary


def autoencoder_config_text(conv: diffusers_vae.ConvertedAutoencoder, dataset: str,
                            image_size: Optional[int], experiment: str) -> str:
  """The config file of a converted AutoencoderKL, on configs/images.py."""
  notes = "\n".join(f"  * {n}" for n in conv.notes) or "  (none)"
  shift = "" if conv.shift_factor is None else f" - {conv.shift_factor}"
  return f'''"""Converted by experiments.convert from {conv.source.get("format")}:
{conv.source.get("weights")}
sha256 {conv.source.get("sha256")}

What the conversion changed:
{notes}

An autoencoder (docs/latent.md): its diffusion models train on
{conv.scaling_factor} * (z{shift}) (latent.normalization='scale', latent.scale_factor=
{conv.scaling_factor}). Encode a dataset with it:
  python -m experiments.encode --autoencoder_config=<this file> --autoencoder=<this folder> \\
      --dataset={dataset} --out=LATENTS
Reconstructions of held-out images: python -m experiments.main --config=<this file> \\
    --workdir=<this folder> --mode=eval
"""
import ml_collections

from configs.images import image_config

NET = {_literal(conv.net)}


def get_config():
  # data, optimizer and EMA of the image configs; the schedule is not used
  c = image_config({dataset!r}, "vp", model={conv.model!r}, net=NET)
  c.experiment = {experiment!r}
  c.data.image_size = {image_size!r}
  c.training.objective = "autoencoder"
  c.training.loss_opts = ml_collections.ConfigDict(dict(recon="l1", kl_weight=1e-6))
  return c
'''


def _refuse_used(workdir: str) -> None:
  if os.path.exists(os.path.join(workdir, "config.py")) or checkpoint.has_checkpoints(workdir):
    raise ConversionError(f"--workdir={workdir!r} already holds a converted model or "
                          f"checkpoints; choose a new workdir (nothing was changed)")


def _load_text(text: str):
  """The config of a config file's ``text``."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "config.py")
    with open(path, "w") as f:
      f.write(text)
    return load_config_file(path)


def _write(config, text: str, workdir: str, params, experiment: str,
           source: Dict[str, Any]) -> int:
  """Writes config.py, config.json and checkpoint 0 (params = ema_params = ``params``, a fresh
  optimizer state) of ``config``'s network; returns the parameter count."""
  s = setup(config)
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)
  state = init_state(s)
  want = {k: v.shape for k, v in flatten(jax.device_get(state.params)).items()}
  got = {k: v.shape for k, v in flatten(params).items()}
  if want != got:  # the converter checked against the same network; this guards the config
    raise ConversionError(f"the converted tree does not match the config's network: "
                          f"{sorted(set(want) ^ set(got))[:5]} differ")
  params = jax.device_put(jax.tree_util.tree_map(np.asarray, params), s.state_shardings.params)
  state = state.replace(params=params, ema_params=jax.tree_util.tree_map(jnp.copy, params),
                        opt_state=s.optimizer.init(params))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.py"), "w") as f:
    f.write(text)
  checkpoint.write_config(workdir, s.identity)
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=None, async_save=False,
                                 config=s.identity)
  try:
    ckpt.save(0, state, {"step": 0, "experiment": experiment, "converted_from": source})
  finally:
    ckpt.close()
  return training.count_params(state.params)


def define_flags() -> None:
  """The command line's flags; defined only when run as a program, so that importing this
  module (tests, notebooks) next to experiments.main defines no flag twice."""
  flags.DEFINE_enum("format", None, list(FORMATS), "The released checkpoint's format.")
  flags.DEFINE_string("source", None, "diffusers: the model folder (config.json + weights); "
                      "score_sde: the checkpoint file (checkpoint_N); dit: the .pt file.")
  flags.DEFINE_string("workdir", None, "New workdir for the converted model.")
  flags.DEFINE_string("dataset", None, "config.data.name of the converted experiment "
                      "(default: inferred from the image shape where unique).")
  flags.DEFINE_string("experiment", None, "config.experiment (default: "
                      "converted/<source name>).")
  flags.DEFINE_enum("schedule", "discrete", ["discrete", "continuous"],
                    "diffusers, dit: DDPM's discrete betas exactly (vp_discrete), or the "
                    "continuous VP limit with c = (N - 1) t (the reference convention).")
  flags.DEFINE_string("weights", None, "diffusers: the weights file (default: the folder's "
                      ".safetensors, else .bin).")
  flags.DEFINE_string("scheduler_config", None, "diffusers: scheduler_config.json (default: "
                      "next to the model or in ../scheduler/).")
  flags.DEFINE_string("score_sde_config", None, "score_sde: the released config's name, e.g. "
                      "'ve/cifar10_ncsnpp_deep_continuous', or a JSON file of its fields.")
  flags.DEFINE_enum("params", "ema", ["ema", "raw"], "score_sde: the EMA parameters (what the "
                    "paper sampled) or the raw ones.")
  flags.DEFINE_string("model", None, "dit: the released model's name, e.g. 'DiT-XL/2', checked "
                      "against the checkpoint's shapes (default: from the released file's name "
                      "or the paper's sizes).")
  flags.DEFINE_string("autoencoder", None, "dit: the workdir of its VAE converted with "
                      "--format=diffusers_vae, which decodes its samples.")
  flags.DEFINE_integer("image_size", None, "diffusers_vae: data.image_size of its config (the "
                       "images its eval reconstructs and encode reads; None: the dataset's).")
  flags.DEFINE_integer("num_heads", None, "dit: attention heads, when neither --model nor the "
                       "paper's sizes give them (not stored in a checkpoint).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  f = flags.FLAGS
  if not (f.format and f.source and f.workdir):
    raise app.UsageError("--format, --source and --workdir are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  runtime.announce()
  try:
    if f.format == "diffusers_vae":
      conv = diffusers_vae.convert(f.source, weights=f.weights)
      summary = write_autoencoder_workdir(conv, f.workdir, f.dataset, f.image_size,
                                          f.experiment)
    else:
      conv = _convert(f.format, f.source, schedule=f.schedule, weights=f.weights,
                      scheduler_config=f.scheduler_config,
                      score_sde_config=f.score_sde_config, params=f.params, model=f.model,
                      num_heads=f.num_heads)
      summary = write_workdir(conv, f.workdir, f.dataset, f.experiment, f.autoencoder)
  except (ConversionError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  lines: List[str] = [f"converted {summary['num_params']:,} parameters into {f.workdir}"]
  lines += [f"  {n}" for n in summary["notes"]]
  if f.format == "diffusers_vae":
    lines.append(f"encode a dataset with: python -m experiments.encode "
                 f"--autoencoder_config={shlex.quote(os.path.join(f.workdir, 'config.py'))} "
                 f"--autoencoder={shlex.quote(f.workdir)} --dataset={summary['dataset']} "
                 f"--out=LATENTS; its latent models use --config.latent.scale_factor="
                 f"{summary['scaling_factor']}")
  else:
    lines.append(sample_hint(f.workdir))
  print("\n".join(lines), flush=True)


def sample_hint(workdir: str) -> str:
  """The command that samples the converted ``workdir`` as printed: its own config.py and
  HINT_SAMPLES samples, and how to get more (a latent model's decoded by its VAE)."""
  config = os.path.join(workdir, "config.py")
  full = load_config_file(config).sampling.num_samples
  return (f"sample with: python -m experiments.main {shlex.quote('--config=' + config)} "
          f"{shlex.quote('--workdir=' + workdir)} --mode=sample "
          f"--config.sampling.num_samples={HINT_SAMPLES}\n"
          f"  ({HINT_SAMPLES} samples for a first look; --config.sampling.num_samples={full} "
          f"draws the config's full set, --mode=eval its metrics)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
