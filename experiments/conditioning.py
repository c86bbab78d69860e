"""What a sampling run conditions on: class labels, guidance, and an inverse problem's observations.

Wiring only (the math is diffusion.guidance and diffusion.inverse). ``plan(config, s)`` reads
config.guidance and config.inverse once, before anything is compiled, and returns a ``Plan``:

  * ``aux``: arrays the jitted sampler takes as arguments next to the network's parameters (a
    classifier's parameters, the observation set), replicated over the mesh;
  * ``cond(aux, idx)``: the conditioning of samples ``idx`` (B,), computed inside the jitted
    function from the sample indices, so sample i's labels and observation depend on i only
    (labels: i mod num_classes when cycling; observation: i mod num_observations);
  * ``transform(denoise, aux)``: the network's denoiser wrapped by the configured transformers
    (classifier-free or classifier guidance, then the inverse problem's method);
  * ``tag``: the readable name of the conditioning ('' for plain sampling), part of the name of
    the run's results (``experiments.results.output``);
  * ``guide_step``: the restored checkpoint step of the second network, classifier guidance's
    classifier or autoguidance's guiding model.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional

import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import guidance, inverse, objectives, smc
from diffusion.data import toy2d
from diffusion.metrics import class_accuracy as ca
from experiments import build, config_files
from diffusion.config_checks import ConfigError
from experiments.setup import restore_params, saved_config

Config = ml_collections.ConfigDict
INVERSE_TASKS = ("none", "inpaint", "colorize", "super_resolution")
INVERSE_METHODS = ("replacement", "pigdm", "dps", "daps", "ddrm", "tds")
# Methods that are samplers of their own (on the configured grid) rather than transformers.
SAMPLER_METHODS = ("dps", "daps", "ddrm", "tds")
# Classifier-free guidance and its variants: transformers of the conditional model and its NULL
# label ('cfgpp' is a DDIM loop of its own); the weight in the 'scale' convention (1: the plain
# conditional), 'cfg' also in 'ho_salimans'.
CFG_KINDS = ("cfg", "apg", "cfg_rescale", "cfg_zero_star", "cfgpp")
GUIDANCE_KINDS = ("none", "classifier", "autoguidance") + CFG_KINDS


def num_classes(config: Config) -> int:
  """Classes of a conditional model (its NULL label); 0 for an unconditional one."""
  if not config.model.conditional:
    return 0
  return int(config.model.net.get("num_classes", 0) or 0)


@dataclasses.dataclass(frozen=True)
class Plan:
  """See the module docstring. ``num_classes`` is the label range of ``cond`` (0: no labels);
  ``label`` -1 cycles through the classes."""
  num_classes: int = 0
  label: int = -1
  tag: str = ""
  aux: Any = None
  transforms: tuple = ()
  observations: Optional[Dict[str, np.ndarray]] = None
  guide_step: Optional[int] = None
  observation_labels: bool = False
  # A sampler replacing the configured one (CFG++'s DDIM loop, DPS / DAPS / DDRM): fn(denoise,
  # key, x_T, cond=None, sample_offset=0) -> (x0, info), and what a denoiser call of it costs.
  sampler: Optional[Callable] = None
  sampler_cost: Optional[Dict[str, Any]] = None

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0

  def labels(self, idx):
    """Class labels (B,) int32 of the samples ``idx`` (B,)."""
    if self.label >= 0:
      return jnp.full(idx.shape, self.label, jnp.int32)
    return (idx % self.num_classes).astype(jnp.int32)

  def cond(self, aux, idx):
    """The sampler's ``cond`` for samples ``idx`` (B,): None, labels (B,), or a dict. With
    ``observation_labels`` sample i gets the class of its observation i mod N."""
    labels = self.labels(idx) if self.conditional else None
    if self.observations is None:
      return labels
    obs = aux["observations"]
    n = next(iter(obs.values())).shape[0]
    out = {k: jnp.take(v, idx % n, axis=0) for k, v in obs.items()}
    if self.observation_labels:
      labels = jnp.take(aux["observation_labels"], idx % n).astype(jnp.int32)
    if labels is not None:
      out["label"] = labels
    return out

  def transform(self, denoise: Callable, aux) -> Callable:
    for fn in self.transforms:
      denoise = fn(denoise, aux)
    return denoise

  def cost_info(self) -> Dict[str, Any]:
    """What one denoiser call of the sampler costs (``guidance.denoiser_info``): the network batch
    per sample ('batch_multiplier') and whether it back-propagates through the network."""
    info = guidance.denoiser_info(self.transform(lambda x, t, cond=None: x, self.aux))
    if self.sampler_cost:  # a sampler of its own: its guidance / back-propagation on top
      c = self.sampler_cost
      info = dict(info, batch_multiplier=info["batch_multiplier"] * c.get("batch_multiplier", 1),
                  network_vjp=bool(info["network_vjp"] or c.get("network_vjp", False)),
                  transforms=tuple(info["transforms"]) + tuple(c.get("transforms", ())))
    return dict(info, transforms=list(info["transforms"]))


def labels_plan(config: Config) -> Plan:
  """Plain sampling: class labels of a conditional model (every class in turn, or
  config.guidance.label), no guidance."""
  return Plan(num_classes=num_classes(config), label=int(config.guidance.label))


def _classifier(config: Config, schedule):
  """(transform, aux params) of classifier guidance with the restored classifier of
  config.guidance.classifier_config / classifier_workdir."""
  g = config.guidance
  clf_config = saved_config(config_files.load_config_file(g.classifier_config),
                            g.classifier_workdir)
  check_classifier_config(config, clf_config)
  _, params, step = restore_params(clf_config, g.classifier_workdir)
  scale = float(g.classifier_scale)
  interval = _interval(config, schedule)
  # The classifier guides the unconditional model: a conditional network gets the NULL label.
  null = num_classes(config) or None

  def transform(denoise, aux):
    log_prob = build.classifier_log_prob(clf_config, aux["classifier"])
    return guidance.classifier_guidance(denoise, log_prob, schedule, scale=scale,
                                        interval=interval, null_label=null)

  return transform, params, int(clf_config.model.net.num_classes), step


def guide_config(config: Config) -> Config:
  """The config of autoguidance's guiding model: config.guidance.guide_config (with the overrides
  its workdir saved), or this run's config when None (an earlier checkpoint of this run)."""
  g = config.guidance
  if g.guide_config is None:
    return saved_config(config, g.guide_workdir)
  return saved_config(config_files.load_config_file(g.guide_config), g.guide_workdir)


def check_guide_config(config: Config, guide: Config) -> None:
  """Autoguidance's guide must model the same data under the same forward process, with labels
  when this model takes them, and predict denoised samples (not labels, not a flow map)."""
  g = config.guidance
  obj = objectives.of_config(guide)
  if obj.predicts_labels or obj.reconstructs or obj.network == "flow_map":
    raise ConfigError(f"config.guidance.guide_config={g.guide_config!r} is not a denoiser "
                      f"(training.objective={guide.training.objective!r}); autoguidance needs a "
                      f"(weaker) diffusion model of the same data")
  for field in ("sde", "data"):
    mine, theirs = config[field].to_dict(), guide[field].to_dict()
    if field == "data":
      mine, theirs = ({k: d.get(k) for k in ("name", "image_size")} for d in (mine, theirs))
    if mine != theirs:
      raise ConfigError(f"autoguidance's guide (config.guidance.guide_workdir="
                        f"{g.guide_workdir!r}) has another {field}: {theirs} there, {mine} here")
  if num_classes(config) and num_classes(guide) != num_classes(config):
    raise ConfigError(f"autoguidance's guide (config.guidance.guide_workdir={g.guide_workdir!r}) "
                      f"has {num_classes(guide)} classes, this model {num_classes(config)}: a "
                      f"conditional model needs a guide with the same labels")


def _autoguidance(config: Config, schedule):
  """(transform, the guide's EMA params, its restored step) of autoguidance with the guiding
  model of config.guidance.guide_workdir."""
  from diffusion import networks
  g = config.guidance
  guide = guide_config(config)
  check_guide_config(config, guide)
  gs, params, step = restore_params(guide, g.guide_workdir, g.guide_step)
  weight, interval = float(g.weight), _interval(config, schedule)
  takes_labels = bool(guide.model.conditional)
  clip = bool(config.sampling.clip_denoised)
  dtype = str(config.sampling.compute_dtype)

  def transform(denoise, aux):
    base = networks.eval_denoiser(gs.net, aux["guide"], gs.schedule, gs.param,
                                  compute_dtype=dtype)

    def guide_denoise(x, t, cond=None):  # as the sampled model's: labels only, clipped alike
      x0 = base(x, t, guidance.label_of(cond) if takes_labels else None)
      return jnp.clip(x0, -1.0, 1.0) if clip else x0

    return guidance.autoguidance(denoise, guide_denoise, weight, interval=interval)

  return transform, params, step


def check_classifier_config(config: Config, clf_config: Config) -> None:
  """The classifier must be trained on the score model's forward process and data."""
  g = config.guidance
  if not objectives.of_config(clf_config).predicts_labels:
    accepted = [n for n in objectives.names() if objectives.get(n).predicts_labels]
    raise ConfigError(f"config.guidance.classifier_config={g.classifier_config!r} is not a "
                      f"classifier config (training.objective="
                      f"{clf_config.training.get('objective', objectives.DEFAULT)!r}; accepted: "
                      f"{', '.join(repr(n) for n in accepted)})")
  mine, theirs = config.sde.to_dict(), clf_config.sde.to_dict()
  if mine != theirs:
    raise ConfigError(f"config.guidance.classifier_config={g.classifier_config!r} was trained on "
                      f"another forward process: sde {theirs} there, {mine} here")
  if clf_config.data.name != config.data.name:
    raise ConfigError(f"config.guidance.classifier_config={g.classifier_config!r} classifies "
                      f"{clf_config.data.name!r}, not this model's data {config.data.name!r}")


def _interval(config: Config, sched):
  """(t_lo, t_hi) of config.guidance (None ends: the schedule's), or None for no interval."""
  g = config.guidance
  if g.t_lo is None and g.t_hi is None:
    return None
  lo = float(sched.t_min) if g.t_lo is None else float(g.t_lo)
  hi = float(sched.t_max) if g.t_hi is None else float(g.t_hi)
  return (lo, hi)


def _cfg_builder(config: Config, schedule) -> Callable:
  """``build(denoise) -> guided denoiser`` of config.guidance.kind in CFG_KINDS but 'cfgpp',
  with its hyper-parameters (library functions of diffusion.guidance; the library checks them)."""
  g = config.guidance
  opts = dict(null_label=num_classes(config), interval=_interval(config, schedule))
  if g.kind == "cfg":
    fn, opts = guidance.classifier_free, dict(opts, convention=g.convention)
  elif g.kind == "apg":
    fn, opts = guidance.adaptive_projected_guidance, dict(
        opts, eta=float(g.apg_eta), norm_threshold=float(g.apg_norm_threshold))
  elif g.kind == "cfg_rescale":
    fn, opts = guidance.rescaled_classifier_free, dict(
        opts, phi=float(g.rescale_phi), space=g.rescale_space, schedule=schedule)
  elif g.kind == "cfg_zero_star":
    fn, opts = guidance.classifier_free_zero_star, dict(
        opts, optimized=g.zero_star_optimized, space=g.zero_star_space, schedule=schedule,
        zero_init_t=None if g.zero_star_init_t is None else float(g.zero_star_init_t))
  else:
    raise ConfigError(f"config.guidance.kind={g.kind!r} is not a guidance transformer")
  weight = float(g.weight)
  return lambda denoise: fn(denoise, weight, **opts)


def _cfg(config: Config, schedule):
  build_guided = _cfg_builder(config, schedule)
  build_guided(lambda x, t, cond=None: x)  # the library's argument checks, before any compile
  return lambda denoise, aux: build_guided(denoise)


def sampling_grid(config: Config, schedule) -> np.ndarray:
  """The time grid (N+1,) the configured sampler samples on (config.sampling: num_steps, grid,
  rho, t_min, t_max, logSNR clipping, or an explicit time_grid), for samplers of their own."""
  from diffusion.samplers import sampling_grid as grid_of
  kw = build.sampler_kwargs(config)
  fields = ("num_steps", "grid", "rho", "t_min", "t_max", "logsnr_min", "logsnr_max",
            "time_grid")
  return grid_of(kw["sampler"], schedule, **{k: kw[k] for k in fields if k in kw})


def _bind(method_sampler: Callable, schedule, time_grid) -> Callable:
  """A sampler of the registry's signature bound to (schedule, time_grid), as build.sampler's."""
  def run(denoise, key, x_T, cond=None, sample_offset=0):
    return method_sampler(denoise, schedule, key, x_T, time_grid, cond=cond,
                          sample_offset=sample_offset)
  return run


def _cfgpp(config: Config, schedule) -> Callable:
  """CFG++ (``guidance.cfgpp_ddim``) bound to the configured DDIM grid."""
  g = config.guidance
  kw = build.sampler_kwargs(config)
  hp = {k: kw[k] for k in ("eta", "final_denoise") if k in kw}
  try:
    final = guidance.check_cfgpp_sampler(kw["sampler"], hp)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.guidance.kind='cfgpp' (config.sampling): {e}") from None
  weight = guidance.cfgpp.check_weight(g.weight)
  null, interval = num_classes(config), _interval(config, schedule)

  def cfgpp(denoise, sched, key, x_T, time_grid, *, cond=None, sample_offset=0):
    return guidance.cfgpp_ddim(denoise, sched, key, x_T, time_grid, weight=weight,
                               null_label=null, cond=cond, sample_offset=sample_offset,
                               final_denoise=final, interval=interval)

  return _bind(cfgpp, schedule, sampling_grid(config, schedule))


def inverse_operator(config: Config):
  """The diffusion.inverse operator of config.inverse.task."""
  task = config.inverse.task
  if task == "inpaint":
    return inverse.Inpainting()
  if task == "colorize":
    return inverse.Colorization()
  if task == "super_resolution":
    return inverse.SuperResolution(int(config.inverse.factor))
  raise ConfigError(f"config.inverse.task={task!r}; accepted: {list(INVERSE_TASKS)}")


def load_observations(config: Config, data_shape) -> Dict[str, np.ndarray]:
  """The observation set of config.inverse.observations as float32 arrays with a leading
  observation axis: 'y' (N, *y_shape), and 'mask' (N, *data_shape) for inpainting; 'images' (the
  truth, if the file has it) is returned separately by ``observation_truth``.

  The file holds 'y' (and 'mask'), or 'images' (N, *data_shape) in [-1, 1] from which y is
  computed with the task's operator. Shapes are checked here, one error line naming the array.
  """
  path = config.inverse.observations
  if path is None:
    raise ConfigError(f"config.inverse.task={config.inverse.task!r} needs "
                      f"config.inverse.observations (an .npz; see experiments/observations.py)")
  if not os.path.isfile(path):
    raise ConfigError(f"config.inverse.observations={path!r} is not a file")
  with np.load(path) as f:
    arrays = {k: np.asarray(f[k]) for k in f.files}
  op = inverse_operator(config)
  shape = tuple(data_shape)
  out: Dict[str, np.ndarray] = {}
  if "mask" in arrays:
    mask = arrays["mask"].astype(np.float32)
    if mask.shape[1:] != shape:
      raise ConfigError(f"config.inverse.observations={path!r}: 'mask' has shape {mask.shape}; "
                        f"expected (N, {', '.join(map(str, shape))}) like the data")
    if not np.all((mask == 0) | (mask == 1)):
      raise ConfigError(f"config.inverse.observations={path!r}: 'mask' must hold 0 and 1 only")
    out["mask"] = mask
  elif config.inverse.task == "inpaint":
    raise ConfigError(f"config.inverse.observations={path!r} has no 'mask' (inpaint needs one; "
                      f"arrays there: {sorted(arrays)})")
  if "y" in arrays:
    out["y"] = arrays["y"].astype(np.float32)
  elif "images" in arrays:
    images = arrays["images"].astype(np.float32)
    if images.shape[1:] != shape:
      raise ConfigError(f"config.inverse.observations={path!r}: 'images' has shape "
                        f"{images.shape}; expected (N, {', '.join(map(str, shape))})")
    out["y"] = np.asarray(op.apply(jnp.asarray(images), _batch_cond(out)))
  else:
    raise ConfigError(f"config.inverse.observations={path!r} holds neither 'y' nor 'images' "
                      f"(arrays there: {sorted(arrays)})")
  n = out["y"].shape[0]
  if any(v.shape[0] != n for v in out.values()) or n == 0:
    raise ConfigError(f"config.inverse.observations={path!r}: the arrays disagree on the number "
                      f"of observations: { {k: v.shape for k, v in out.items()} }")
  try:
    op.check((n,) + shape, _batch_cond(out))
  except ValueError as e:
    raise ConfigError(f"config.inverse.observations={path!r}: {e}") from None
  return out


def load_observation_labels(config: Config, num_observations: int) -> np.ndarray:
  """(N,) int32: the 'labels' of the observation file, each in [0, num_classes) of the model
  (config.inverse.observation_labels)."""
  path, ncls = config.inverse.observations, num_classes(config)
  with np.load(path) as f:
    if "labels" not in f.files:
      raise ConfigError(f"config.inverse.observation_labels=True but {path!r} holds no 'labels' "
                        f"(arrays there: {sorted(f.files)}); experiments.observations writes them "
                        f"for labelled data")
    labels = np.asarray(f["labels"])
  if labels.shape != (num_observations,) or not np.issubdtype(labels.dtype, np.integer):
    raise ConfigError(f"config.inverse.observations={path!r}: 'labels' must be ({num_observations},) "
                      f"integers, one per observation; got {labels.dtype} {labels.shape}")
  bad = np.flatnonzero((labels < 0) | (labels >= ncls))
  if bad.size:
    raise ConfigError(f"config.inverse.observations={path!r}: 'labels' must be classes in "
                      f"[0, {ncls}) of the model; got {int(labels[bad[0]])} at index {int(bad[0])}")
  return labels.astype(np.int32)


def _batch_cond(obs: Dict[str, np.ndarray]) -> Dict[str, Any]:
  return {k: jnp.asarray(v) for k, v in obs.items()}


def observation_truth(config: Config) -> Optional[np.ndarray]:
  """The ground-truth 'images' of the observation file, if it has them."""
  with np.load(config.inverse.observations) as f:
    return np.asarray(f["images"], np.float32) if "images" in f.files else None


def _inverse(config: Config, schedule):
  inv = config.inverse
  op = inverse_operator(config)
  if inv.method == "replacement":
    return lambda denoise, aux: inverse.replacement(denoise, op)
  if inv.method == "pigdm":
    noise, sd, scale = float(inv.noise_std), float(inv.sigma_data), float(inv.pigdm_scale)
    interval = None if inv.pigdm_t_hi is None else (float(schedule.t_min), float(inv.pigdm_t_hi))
    return lambda denoise, aux: inverse.pigdm(denoise, schedule, op, noise_std=noise,
                                              sigma_data=sd, scale=scale, interval=interval)
  raise ConfigError(f"config.inverse.method={inv.method!r}; accepted: {list(INVERSE_METHODS)}")


def posterior_sampler(config: Config, schedule) -> Callable:
  """The diffusion.inverse sampler of config.inverse.method in SAMPLER_METHODS, with its
  config.inverse hyper-parameters, bound to the configured grid (the library checks them)."""
  inv = config.inverse
  op = inverse_operator(config)
  if inv.method == "dps":
    fn = inverse.dps_sampler(op, zeta=float(inv.dps_zeta))
  elif inv.method == "daps":
    fn = inverse.daps_sampler(
        op, noise_std=float(inv.noise_std),
        tau=None if inv.daps_tau is None else float(inv.daps_tau),
        ode_steps=inv.daps_ode_steps, ode_solver=inv.daps_ode_solver,
        langevin_steps=inv.daps_langevin_steps, lr=float(inv.daps_lr),
        lr_min_ratio=float(inv.daps_lr_min_ratio), r_schedule=inv.daps_r_schedule,
        sigma_data=float(inv.sigma_data))
  elif inv.method == "ddrm":
    fn = inverse.ddrm_sampler(op, noise_std=float(inv.noise_std), eta=float(inv.ddrm_eta),
                              eta_b=float(inv.ddrm_eta_b))
  elif inv.method == "tds":
    fn = smc.tds_sampler(op, num_particles=inv.tds_particles, noise_std=float(inv.noise_std),
                         variance=inv.tds_variance, sigma_data=float(inv.sigma_data),
                         proposal=inv.tds_proposal, transition=inv.tds_transition,
                         resample=inv.tds_resample, ess_threshold=inv.tds_ess_threshold)
  else:
    raise ConfigError(f"config.inverse.method={inv.method!r} is not a sampler of its own; "
                      f"those are {list(SAMPLER_METHODS)}")
  return _bind(fn, schedule, sampling_grid(config, schedule))


def sampler_name(config: Config, mode: str = "sample") -> str:
  """What samples a run: config.sampling.sampler, or the inverse problem's method where that is a
  sampler of its own (DPS / DAPS / DDRM, on the configured grid); CFG++ is DDIM's loop."""
  inv = config.inverse
  if mode == "sample" and inv.task != "none" and inv.method in SAMPLER_METHODS:
    return str(inv.method)
  return str(config.sampling.sampler)


def _fmt(v: float) -> str:
  return f"{v:g}"


def tag(config: Config, mode: str = "sample") -> str:
  """The readable name of a run's conditioning, '' for plain (unconditional or label-cycling,
  unguided) sampling: e.g. 'cfg_scale_w3', 'classifier_s2_class4', 'bfloat16'
  (sampling.compute_dtype), 'inpaint_replacement_obs'. Part of the name of the run's results
  (``experiments.results.output``), next to the sampler's and the hash of every setting."""
  g, inv = config.guidance, config.inverse
  parts = []
  if g.kind == "cfg":
    parts.append(f"cfg_{g.convention}_w{_fmt(g.weight)}")
  elif g.kind in CFG_KINDS:
    parts.append(f"{g.kind}_w{_fmt(g.weight)}")
  elif g.kind == "autoguidance":
    parts.append(f"autoguidance_w{_fmt(g.weight)}")
  elif g.kind == "classifier":
    parts.append(f"classifier_s{_fmt(g.classifier_scale)}")
  if g.kind != "none" and (g.t_lo is not None or g.t_hi is not None):
    parts.append(f"t{_fmt(g.t_lo) if g.t_lo is not None else 'min'}-"
                 f"{_fmt(g.t_hi) if g.t_hi is not None else 'max'}")
  if g.label >= 0:
    parts.append("null" if num_classes(config) and g.label == num_classes(config)
                 else f"class{g.label}")
  if config.sampling.compute_dtype != "float32":  # bf16 samples go to their own folder
    parts.append(str(config.sampling.compute_dtype))
  if mode == "sample" and inv.task != "none":
    stem = os.path.splitext(os.path.basename(str(inv.observations)))[0]
    parts.append(f"{inv.task}_{inv.method}_{stem}")
    if inv.observation_labels:
      parts.append("obslabels")
  return "_".join(parts)


def plan(config: Config, s, mode: str = "sample") -> Plan:
  """The Plan of ``config`` for the set-up ``s`` (experiments.setup.Setup); loads a classifier
  and the observations if the config asks for them. Only ``mode`` 'sample' solves inverse
  problems."""
  g, inv = config.guidance, config.inverse
  ncls = num_classes(config)
  transforms, aux, guide_step = [], {}, None
  sampler = sampler_cost = None
  if g.kind == "cfgpp":
    sampler = _cfgpp(config, s.schedule)
    sampler_cost = {"batch_multiplier": 2, "transforms": ("cfgpp",)}
  elif g.kind in CFG_KINDS:
    transforms.append(_cfg(config, s.schedule))
  elif g.kind == "classifier":
    fn, params, ncls, guide_step = _classifier(config, s.schedule)  # its classes label
    transforms.append(fn)
    aux["classifier"] = params
  elif g.kind == "autoguidance":
    fn, params, guide_step = _autoguidance(config, s.schedule)
    transforms.append(fn)
    aux["guide"] = params
  observations = None
  if mode == "sample" and inv.task != "none":
    observations = load_observations(config, tuple(s.example["x"].shape[1:]))
    aux["observations"] = observations
    if inv.observation_labels:
      aux["observation_labels"] = load_observation_labels(config, observations["y"].shape[0])
    if inv.method in SAMPLER_METHODS:
      if sampler is not None:
        raise ConfigError(f"config.inverse.method={inv.method!r} is a sampler of its own, and so "
                          f"is config.guidance.kind={g.kind!r}: one of them")
      sampler = posterior_sampler(config, s.schedule)
      sampler_cost = {"network_vjp": inv.method == "dps" or (
          inv.method == "tds" and inv.tds_proposal == "tds"), "transforms": (inv.method,),
                      "batch_multiplier": int(inv.tds_particles) if inv.method == "tds" else 1}
    else:
      transforms.append(_inverse(config, s.schedule))
  return Plan(num_classes=ncls, label=int(g.label), tag=tag(config, mode), aux=aux or None,
              transforms=tuple(transforms), observations=observations,
              guide_step=guide_step, sampler=sampler, sampler_cost=sampler_cost,
              observation_labels=bool(observations is not None and inv.observation_labels))


def reference_classifier(config: Config):
  """(predict, what) of the reference classifier of the config's data, or None: the exact Bayes
  classifier of a labelled Gaussian-mixture toy density, the SVC of the digits
  (diffusion.metrics.class_accuracy); ``what`` names it with its own accuracy on held-out data."""
  name = config.data.name
  if name in toy2d.available():
    try:
      w, means, covs = toy2d.gaussian_mixture_params(name)
    except ValueError:
      return None
    return ca.mixture_classifier(w, means, covs, range(len(w))), "the mixture's Bayes classifier"
  if name == "digits":
    predict, acc = ca.digits_classifier()
    return predict, f"an SVC of the digits' train split ({acc:.1%} on the test split)"
  return None
