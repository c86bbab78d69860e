"""Builds the pieces of a run from its config: schedule, network, denoiser, data, sampler.

Wiring only: every function maps config fields onto a ``diffusion`` constructor and checks names
early, so a typo fails before anything is compiled or written.
"""
from __future__ import annotations

import functools
import importlib
import json
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.sampling import RUN_FIELDS as _SAMPLING_RUN_FIELDS, builder_fields
from diffusion import checkpoint, guidance, latent as latent_lib, objectives, training
from diffusion.data import latents as latent_data, toy2d
from diffusion.models import get_model
from diffusion.parameterization import Parameterization
from diffusion.samplers import build_sampler
from diffusion.schedules import Schedule, get_schedule
from diffusion.vdm import WithLearnedSchedule
from experiments import shards
from diffusion.config_checks import ConfigError

Config = ml_collections.ConfigDict

# Fields that define an experiment: a workdir whose checkpoints differ in any of these is refused.
# training.objective is left out for the default objective ('dsm', ``identity_dict``), so workdirs
# written before the field existed still resume.
IDENTITY_FIELDS = ("model", "sde", "data.name", "data.image_size", "optim.name",
                   "training.objective", "training.ema_profiles", "distill", "scm", "latent",
                   "resolved.data_shape", "resolved.param_count", "resolved.latent_fingerprint",
                   "resolved.lpips_sha256")
# Config sections only some objectives read (``Objective.identity_fields``): the others' identity
# leaves them out (workdirs written before a section existed still resume).
OBJECTIVE_SECTIONS = ("distill", "scm")


# -- the math objects -----------------------------------------------------------------------------


def schedule(config: Config) -> Schedule:
  return get_schedule(config.sde.name, **config.sde.fields.to_dict())


def parameterization(config: Config) -> Parameterization:
  m = config.model
  return Parameterization(kind=m.parameterization, time_input=m.time_input,
                          sigma_data=m.sigma_data, scale_input=m.scale_input)


def model(config: Config):
  """The network of config.model; with a learned schedule (sde 'vdm_learned') wrapped so that
  the schedule's parameters are in its parameter tree ({'net': ..., 'schedule': ...})."""
  if is_learned_schedule(config):
    get_model(config.model.name, **config.model.net.to_dict())  # validates the arguments
    return WithLearnedSchedule(config.model.name, config.model.net.to_dict(), schedule(config))
  return get_model(config.model.name, **config.model.net.to_dict())


def is_learned_schedule(config: Config) -> bool:
  """Whether the schedule's parameters are trained with the network (VDM, diffusion.vdm)."""
  return schedule(config).learned


def bind_schedule(sched: Schedule, params) -> Schedule:
  """A learned schedule bound to the 'schedule' parameters of ``params`` (host arrays: a frozen
  schedule for samplers and the likelihood); any other schedule unchanged."""
  if sched.learned:
    return sched.bind(jax.tree_util.tree_map(np.asarray, jax.device_get(params["schedule"])))
  return sched


def optim_config(config: Config) -> training.OptimConfig:
  o = config.optim
  return training.OptimConfig(
      name=o.name, lr=o.lr, warmup_steps=o.warmup_steps, grad_clip=o.grad_clip,
      weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, decay=o.decay,
      decay_steps=objectives.of_config(config).lr_schedule_steps(config),
      end_lr_factor=o.end_lr_factor, rsqrt_ref_steps=o.rsqrt_ref_steps)


def loss_options(config: Config) -> Dict[str, Any]:
  """The dsm_loss keywords of config.training: loss_opts, plus t_min = training.t_min when set
  (None: the loss samples t from the schedule's own t_min)."""
  t = config.training
  opts = t.loss_opts.to_dict()
  if t.t_min is not None:
    opts["t_min"] = float(t.t_min)
  if is_learned_schedule(config) and config.sde.fields.get("learn_endpoints", False):
    opts["num_levels"] = int(_images_module().num_levels(config.data.name))  # the decoder's
  return opts


def step_config(config: Config) -> training.StepConfig:
  t = config.training
  return training.StepConfig(
      weighting=t.weighting, time_sampling=t.time_sampling,
      loss_opts=tuple(sorted(loss_options(config).items())), ema_decay=t.ema_decay,
      ema_warmup=t.ema_warmup, ema_profiles=tuple(t.ema_profiles), nonfinite=t.nonfinite,
      grad_accum_steps=t.grad_accum_steps,
      compute_dtype=t.compute_dtype, conditional=config.model.conditional,
      objective=t.objective, target_ema=objective(config).target_ema(config))


def objective(config: Config) -> objectives.Objective:
  """The registered objective of config.training.objective (``diffusion.objectives``)."""
  return objectives.of_config(config)


def classifier_log_prob(config: Config, params: Any) -> Callable:
  """``log_prob(x_t (B, ...), t scalar or (B,), labels (B,) int) -> (B,)``: log p(y | x_t, t) of
  the classifier of ``config`` (training.objective='classifier') with ``params`` (e.g. the EMA
  params of ``setup.restore_params``): ``diffusion.guidance.network_log_prob`` of its network on
  its own ``param.net_inputs(x_t, t, schedule)``, 0 for the NULL label. Differentiable in x_t."""
  if not objective(config).predicts_labels:
    raise ValueError(f"classifier_log_prob needs a classifier config (training.objective="
                     f"'classifier'), got training.objective={config.training.objective!r}")
  net = model(config)

  def apply_fn(x_in, c):
    return net.apply({"params": params}, x_in, c, labels=None, train=False).astype(jnp.float32)

  return guidance.network_log_prob(apply_fn, schedule(config), parameterization(config))


# -- data -----------------------------------------------------------------------------------------


def _images_module():
  try:
    return importlib.import_module("diffusion.data.images")
  except ImportError:
    return None


def _image_names() -> Tuple[str, ...]:
  mod = _images_module()
  return tuple(mod.dataset_names()) if mod is not None else ()


def is_toy(config: Config) -> bool:
  return config.data.name in toy2d.available()


def check_dataset(config: Config) -> None:
  """Raises ConfigError naming the dataset and listing the known ones, before any work."""
  name = config.data.name
  if name in toy2d.available():
    return
  images = _image_names()
  if name in images or (images and isinstance(name, str) and name.startswith("lsun/")):
    return
  raise ConfigError(f"config.data.name: unknown dataset {name!r}; toy 2-D datasets: "
                    f"{list(toy2d.available())}; image datasets: {list(images)} or "
                    f"'lsun/<category>'")


def dataset_num_classes(config: Config) -> int:
  """Number of label classes of config.data.name (0: unlabelled): toy2d's or images' (for
  'folder' the class folders of data.folder/data.split)."""
  if is_toy(config):
    return toy2d.num_classes(config.data.name)
  d = config.data
  return _images_module().num_classes(d.name, **_folder_kwargs(config, d.split))


def labelled_datasets() -> Tuple[str, ...]:
  """Names of the datasets with class labels (toy and image)."""
  mod = _images_module()
  images = tuple(n for n in _image_names() if mod.has_labels(n))
  return toy2d.labelled() + images


def _folder_kwargs(config: Config, split: str) -> Dict[str, Any]:
  """``data_dir`` and ``split`` for the 'folder' dataset (data.folder holds the split folders);
  nothing for the others (tfds reads its default data_dir)."""
  if config.data.name != "folder":
    return {}
  return {"data_dir": config.data.folder, "split": split}


def image_source_kwargs(config: Config) -> Dict[str, Any]:
  """The make_image_dataset arguments of config.data's source and geometry: ``crop`` and, for
  'folder', ``data_dir`` = data.folder."""
  out: Dict[str, Any] = {"crop": config.data.crop}
  if config.data.name == "folder":
    out["data_dir"] = config.data.folder
  return out


def needs_labels(config: Config) -> bool:
  """Whether the train step reads batch['label'] (a class-conditional network, a classifier):
  the objective's ``reads_labels``."""
  return objective(config).reads_labels(config)


def _per_process(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f"data.batch_size={batch_size} must be divisible by the number of "
                     f"processes {process_count}")
  return batch_size // process_count


def train_batches(config: Config, start_step: int, process_index: int,
                  process_count: int) -> Iterator[Dict[str, np.ndarray]]:
  """This process's rows of training batches start_step, start_step + 1, ...: dicts with 'x'
  (B / process_count, ...) and, when the step reads labels (``needs_labels``), 'label' (B /
  process_count,) int32. Batch i depends on (seed, i) only; a toy batch's 'x' is the same with
  or without labels. Image batches are prefetched on config.data.workers threads; ``close()``
  the returned generator to stop them."""
  d = config.data
  nan_at, nan_n = int(config.debug.nan_at_step), int(config.debug.nan_num_steps)
  labels = needs_labels(config)
  closer: Optional[Callable[[], None]] = None
  if objective(config).batch_source == "pairs":  # (noise, sample) pairs instead of the data
    it = pair_batches(config, start_step, process_index, process_count)
  elif is_latent(config):
    it = latent_batches(config, start_step, process_index, process_count)
  elif is_toy(config) and labels:
    it = ({"x": x, "label": y} for x, y in toy2d.iterator(
        d.name, d.batch_size, config.seed, start_step, process_index=process_index,
        process_count=process_count, with_labels=True))
  elif is_toy(config):
    it = ({"x": x} for x in toy2d.iterator(d.name, d.batch_size, config.seed, start_step,
                                           process_index=process_index,
                                           process_count=process_count))
  else:
    kwargs = dict(batch_size=_per_process(d.batch_size, process_count), seed=config.seed,
                  process_index=process_index, process_count=process_count,
                  start_step=start_step, image_size=d.image_size, random_flip=d.random_flip,
                  workers=d.workers, prefetch=d.prefetch, worker_type=d.worker_type,
                  cache_decoded=d.cache_decoded, **image_source_kwargs(config))
    raw = _images_module().make_image_dataset(d.name, d.split, **kwargs)
    closer = raw.close  # stops the prefetch threads / processes
    if raw.cached:
      seconds = raw.decode_cache()
      print(f"data: decoded {d.name} {d.split!r} into memory ({raw.num_examples} images, "
            f"{raw.cache_bytes / 1e6:.0f} MB) in {seconds:.1f} s", flush=True)
    it = ({"x": b["image"], "label": b["label"]} for b in raw)

  def gen():
    try:
      for step, b in enumerate(it, start=start_step):
        if nan_at >= 0 and nan_at <= step < nan_at + nan_n:  # fault injection (config.debug)
          b = dict(b, x=np.full_like(np.asarray(b["x"]), np.nan))
        if not labels:
          b.pop("label", None)
        yield b
    finally:
      if closer is not None:
        closer()

  return gen()


is_latent = latent_lib.is_latent  # whether the run is in an autoencoder's latent space


def latent_facts(config: Config) -> Dict[str, Any]:
  """The manifest of config.latent.dataset (complete), ConfigError otherwise; {} without a
  dataset (an autoencoder named alone)."""
  if config.latent.dataset is None:
    return {}
  try:
    return latent_data.manifest_facts(config.latent.dataset)
  except latent_data.LatentDatasetError as e:
    raise ConfigError(str(e)) from None


def autoencoder_source(config: Config) -> Dict[str, Any]:
  """{'config', 'workdir', 'step'} of a latent run's autoencoder: config.latent.autoencoder*
  when set, else the one that encoded config.latent.dataset (its manifest)."""
  lat = config.latent
  if lat.autoencoder is not None:
    if lat.autoencoder_config is None:
      raise ConfigError(f"config.latent.autoencoder={lat.autoencoder!r} needs "
                        f"config.latent.autoencoder_config: the config file it was trained or "
                        f"converted with")
    return {"config": lat.autoencoder_config, "workdir": lat.autoencoder,
            "step": lat.autoencoder_step}
  by = latent_facts(config)["made_by"]["autoencoder"]
  return {"config": by["config"], "workdir": by["workdir"], "step": int(by["step"])}


def autoencoder_latent_shape(config: Config) -> Tuple[int, ...]:
  """(h, w, c): what the run's autoencoder (its workdir's config.json: model.name, model.net)
  encodes an image of config.data to, by ``jax.eval_shape`` (nothing computed or read)."""
  src = autoencoder_source(config)
  saved = checkpoint.read_config(src["workdir"])
  if saved is None:
    raise ConfigError(f"the autoencoder workdir {src['workdir']!r} holds no config.json: train "
                      f"or convert it first")
  image = tuple(_images_module().image_shape(config.data.name, config.data.image_size))
  return encoded_shape(saved["model"]["name"], json.dumps(saved["model"]["net"],
                                                           sort_keys=True), image)


@functools.lru_cache(maxsize=16)
def encoded_shape(model_name: str, net_json: str, image: Tuple[int, ...]) -> Tuple[int, ...]:
  """(h, w, c) that ``model_name(**net)`` encodes an (H, W, C) image to (``jax.eval_shape``)."""
  net = get_model(model_name, **json.loads(net_json))
  out = jax.eval_shape(lambda x: net.init_with_output(jax.random.PRNGKey(0), x,
                                                      method="encode")[0][0],
                       jax.ShapeDtypeStruct((1,) + image, jnp.float32))
  return tuple(int(v) for v in out.shape[1:])


def latent_norm(config: Config) -> latent_lib.LatentNorm:
  """The normalisation of config.latent ('channel' with empty statistics: the folder's)."""
  lat, stats = config.latent, latent_facts(config).get("channel_stats")
  return latent_lib.latent_norm(
      lat.normalization, int(data_shape(config)[-1]), scale_factor=float(lat.scale_factor),
      channel_mean=tuple(lat.channel_mean), channel_std=tuple(lat.channel_std),
      final_std=float(lat.final_std),
      dataset_stats=None if stats is None else (stats["mean"], stats["std"]))


def latent_batches(config: Config, start_step: int, process_index: int,
                   process_count: int) -> Iterator[Dict[str, np.ndarray]]:
  """This process's rows of latent batches start_step, ...: {'x': normalised latents,
  'label'} (``diffusion.data.latents.LatentIterator``)."""
  ds = latent_data.LatentDataset(config.latent.dataset)
  return latent_data.LatentIterator(
      ds, latent_norm(config), posterior=config.latent.posterior,
      batch_size=_per_process(int(config.data.batch_size), process_count), seed=config.seed,
      process_index=process_index, process_count=process_count, start_step=start_step)


def load_pairs(config: Config) -> np.ndarray:
  """(N, 2, *data_shape) float32: the pairs of distill.pairs; an error naming the folder when it
  has none or their shape is not the config's data shape."""
  d = config.distill.pairs
  if not shards.finished_shards(d):
    raise FileNotFoundError(f"config.distill.pairs={d!r} holds no pair shards; write them with "
                            f"--mode=pairs on the previous flow's config and workdir")
  pairs = shards.read_samples(d)
  example = data_shape(config)
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


def data_shape(config: Config) -> Tuple[int, ...]:
  """The shape of one example of config.data: (2,) for the toy densities, (H, W, C) for images."""
  if is_toy(config):
    return (2,)
  if is_latent(config) and config.latent.dataset is not None:
    return tuple(int(v) for v in latent_facts(config)["latent_shape"])
  if is_latent(config):
    return autoencoder_latent_shape(config)
  return tuple(_images_module().image_shape(config.data.name, config.data.image_size))


def image_shape(config: Config) -> Tuple[int, ...]:
  """The shape of one example of config.data in pixels: (H, W, C) for images (a latent run's
  decoded samples'), (2,) for the toy densities."""
  if is_toy(config):
    return (2,)
  return tuple(_images_module().image_shape(config.data.name, config.data.image_size))


def example_batch(config: Config) -> Dict[str, np.ndarray]:
  """One batch of zeros with the data's shapes and dtypes (for initialization): 'x' (1, ...)
  float32 and, when the step reads labels, 'label' (1,) int32. Reads no data, so a model can
  be built, sampled and converted without its dataset prepared."""
  b = {"x": np.zeros((1,) + data_shape(config), np.float32)}
  if needs_labels(config):
    b["label"] = np.zeros((1,), np.int32)
  return b


def heldout(config: Config, n: int, levels: bool = False) -> np.ndarray:
  """Held-out data (n, ...) disjoint from training: toy2d.heldout, or the first n images of the
  image test split (file order), uniformly dequantized to [-1, 1] float32, or with
  ``levels=True`` their integer grey levels k in 0..L-1 (int32), undequantized."""
  d = config.data
  if is_toy(config):
    if levels:
      raise ValueError(f"the toy dataset {d.name!r} has no integer levels")
    return toy2d.heldout(d.name, n, d.heldout_seed)
  return np.concatenate(list(heldout_batches(config, n, min(n, 256), levels)))


def heldout_batches(config: Config, n: int, batch_size: int,
                    levels: bool = False) -> Iterator[np.ndarray]:
  """The held-out images of ``heldout`` (an image dataset's) in batches of ``batch_size`` (the
  last one smaller), read as they are used: n images, or fewer when the test split is smaller.
  The dequantization noise depends on the batch size; ``levels=True`` does not."""
  d = config.data
  mod = _images_module()
  kwargs = dict(batch_size=batch_size, seed=d.heldout_seed, image_size=d.image_size,
                shuffle=False, num_epochs=1, drop_remainder=False,  # the whole split
                dequantize=not levels, **image_source_kwargs(config))
  total = 0
  for b in mod.make_image_dataset(d.name, d.eval_split, **kwargs):
    x = np.asarray(b["image"])[:n - total]
    total += len(x)
    yield mod.to_levels(x, mod.num_levels(d.name)) if levels else x
    if total >= n:
      break


def heldout_labelled(config: Config, n: int) -> Tuple[np.ndarray, np.ndarray]:
  """(x (n', ...), labels (n',) int32): the held-out data of ``heldout`` with their labels; n'
  = n, or fewer when an image test split is smaller."""
  d = config.data
  if is_toy(config):
    return toy2d.heldout(d.name, n, d.heldout_seed, with_labels=True)
  mod = _images_module()
  kwargs = dict(batch_size=min(n, 256), seed=d.heldout_seed, image_size=d.image_size,
                shuffle=False, num_epochs=1, drop_remainder=False, **image_source_kwargs(config))
  xs, ys, total = [], [], 0
  for b in mod.make_image_dataset(d.name, d.eval_split, **kwargs):
    xs.append(np.asarray(b["image"]))
    ys.append(np.asarray(b["label"], np.int32))
    total += len(xs[-1])
    if total >= n:
      break
  return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def true_entropy(config: Config) -> Optional[float]:
  return toy2d.true_entropy(config.data.name) if is_toy(config) else None


# -- sampling -------------------------------------------------------------------------------------



def sampler_kwargs(config: Config) -> Dict[str, Any]:
  """The config.sampling fields passed to build_sampler: all but the run-size ones and the
  denoiser's clipping, and only hyper-parameters that are set (None means the sampler's
  default); with sampling.time_grid set, that grid instead of the fields that build one."""
  s = config.sampling.to_dict()
  return builder_fields({k: v for k, v in s.items()
                         if k not in _SAMPLING_RUN_FIELDS and v is not None})


def sampler(config: Config, sched: Schedule) -> Callable:
  """fn(denoise, key, x_T, cond=None, sample_offset=0) -> (x0, info with 'nfe'), not jitted."""
  kw = sampler_kwargs(config)
  name = kw.pop("sampler")
  return build_sampler(name, sched, jit=False, **kw)


def resolved(config: Config, example: Dict[str, np.ndarray], params: Any) -> Dict[str, Any]:
  """Facts derived from the config that also define the experiment (saved in config.json)."""
  out = {"data_shape": list(np.shape(example["x"])[1:]),
         "param_count": training.count_params(params),
         "jax_version": jax.__version__}
  if is_latent(config) and config.latent.dataset is not None:  # wherever their folder is
    out["latent_fingerprint"] = latent_facts(config)["fingerprint"]
  out.update(objective(config).resolved_facts(config))
  return out


def identity_dict(config: Config, res: Dict[str, Any]) -> Dict[str, Any]:
  """The full config as a dict, with the resolved facts under 'resolved'.

  training.objective is left out for the default objective ('dsm', ``identity_omits_name``):
  workdirs written before the field existed hold no such key, and must still match a 'dsm' run
  (a 'classifier' run's is kept, so the two refuse each other's workdirs: check_identity
  compares IDENTITY_FIELDS). The OBJECTIVE_SECTIONS the objective does not read are left out, and
  so are training.ema_profiles when empty (its power EMAs are in the state: a workdir of other
  profiles is refused), config.imports when empty, the latent section of a pixel-space run,
  data.crop / data.folder, sampling.time_grid and distill.target_ema when unset (target_ema
  0 is unset too: the same run) (the fields came later: older workdirs hold none), and
  distill.lpips but with metric 'lpips' (then its net and resize; the files are in 'resolved'
  by SHA-256, so a moved weight file is the same run)."""
  d = config.to_dict()
  obj = objective(config)
  for section in OBJECTIVE_SECTIONS:
    if section not in obj.identity_fields:
      d.pop(section, None)
  if not d.get("imports", ()):
    d.pop("imports", None)
  if not is_latent(config):  # pixel space (and runs before the section)
    d.pop("latent", None)
  for field in ("crop", "folder"):  # unset: the dataset's own (runs before the fields)
    if d["data"].get(field) is None:
      d["data"].pop(field, None)
  if d.get("sampling", {}).get("time_grid", 0) is None:
    d["sampling"].pop("time_grid")
  if "distill" in d and not d["distill"].get("target_ema", 1):  # None or 0: no EMA target
    d["distill"].pop("target_ema")
  if "distill" in d:  # LPIPS's net and resize with metric 'lpips' (its files: by SHA-256)
    lp = d["distill"].pop("lpips", None)
    if lp is not None and d["distill"].get("metric") == "lpips":
      d["distill"]["lpips"] = {"net": lp["net"], "resize": lp["resize"]}
  if obj.identity_omits_name:
    del d["training"]["objective"]
  if not d["training"].get("ema_profiles"):  # as objective: absent from older workdirs
    d["training"].pop("ema_profiles", None)
  d["resolved"] = dict(res)
  return d
