"""What a training objective is, and the registry of them by name.

An objective is one object that carries everything the driver would otherwise learn by
comparing its name (DESIGN: "the driver asks the object"):

  loss          ``make_loss(ctx) -> loss(net, batch, key, context) -> (scalar, aux)``, built
                once per compile from a ``LossContext``; ``net`` is the train step's
                ``diffusion.networks.TrainNetwork``, ``context`` {'step', 'teacher'}
  aux_metrics   scalars of ``aux`` the train step reports (the classifier's accuracy)
  network       what the trained network is: 'denoiser' (sampled by every sampler, has a
                PF-ODE likelihood), 'consistency' (a consistency function: the consistency
                samplers, no likelihood), 'flow_map' (a two-time network u(x_t, r, t): the
                samplers of kind 'flow_map' on its ``networks.eval_flow_map``, no likelihood),
                'classifier' (logits p(y | x_t): no samples) or 'autoencoder' (encode / decode:
                no samples; eval reports reconstructions)
  teacher       ``needs_teacher(config)``, ``starts_from_teacher(config)``; carried in the
                state (``teacher_in_state``: progressive distillation's rounds) or passed to
                every step (``teacher_per_step``: consistency distillation); ``can_teach``: a
                run of this objective may be another's teacher
  batches       ``batch_source``: 'data' (the dataset) or 'pairs' (reflow's (noise, sample)
                pairs, config.distill.pairs)
  target        ``target_ema(config)``: mu of a target network (an EMA of the parameters in
                the state, ``training.TargetState``, the loss's context['target']); 0: none
  schedule      ``lr_schedule_steps(config)``; rounds (``round_boundaries``, ``round_of``,
                ``begin_round``, ``keep_period``) for objectives that restart the optimizer
  config        ``check(config, mode)``: the start-up checks of the fields it reads (raising
                ``diffusion.config_checks.ConfigError``), ``loss_option_names()``: what
                config.training.loss_opts may set; ``identity_fields``: what else of the
                config defines the run; ``resolved_facts(config)``: facts of files the
                config names that define it too (a weight file's SHA-256)
  requirements  ``supports_conditional``, ``supports_ema_profiles``,
                ``supports_learned_schedule``, ``required_parameterization``,
                ``required_outputs`` (the network's ``diffusion.models`` outputs)

A new objective is one file: a subclass of ``Objective`` registered with ``register`` (see
docs/architecture.md). Nothing else compares objective names.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax

from diffusion import losses
from diffusion.config_checks import ConfigError
from diffusion.parameterization import Parameterization
from diffusion.schedules import Schedule

PyTree = Any
Batch = Dict[str, jax.Array]
LossFn = Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]
NETWORKS = ("denoiser", "consistency", "classifier", "autoencoder", "flow_map")
# The networks that draw samples (a sampler runs them); the others are evaluated on held-out data.
SAMPLING_NETWORKS = ("denoiser", "consistency", "flow_map")
BATCH_SOURCES = ("data", "pairs")
DEFAULT = "dsm"  # the objective of a config that names none (and of runs before the field)


@dataclasses.dataclass(frozen=True)
class TeacherModel:
  """A teacher's network, parameterization and schedule (its parameters travel separately: in
  the state or as a step argument)."""
  net: Any
  param: Parameterization
  schedule: Schedule


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What an objective's loss is built from, once per compile (no arrays).

  schedule, param: the run's forward process and parameterization.
  step: the train step's ``StepConfig`` (weighting, time_sampling, loss_opts, conditional,
    compute_dtype).
  net: the student's network (progressive distillation's teacher is the same network).
  config: the run's config (the objective's own fields, e.g. config.distill), or None when the
    loss is built from Python without one (the objectives that need it say so).
  teacher: a fixed teacher's ``TeacherModel`` (consistency distillation), else None.
  round_index: the round being compiled (progressive distillation; 0 otherwise).
  loss_fn: a replacement for the objective's library loss, called as that loss is (a custom
    dsm-like loss in tests and research code); None: the objective's own.
  """
  schedule: Schedule
  param: Parameterization
  step: Any
  net: Any = None
  config: Any = None
  teacher: Optional[TeacherModel] = None
  round_index: int = 0
  loss_fn: Optional[Callable] = None

  def require_config(self, objective: str):
    if self.config is None:
      raise ValueError(f"objective {objective!r} reads the run's config (config.distill): build "
                       f"its loss with LossContext(config=...) (experiments build it)")
    return self.config


class Objective:
  """Base class: the defaults of a denoiser objective trained on the data (module doc)."""
  name: str = ""
  aux_metrics: Tuple[str, ...] = ()
  network: str = "denoiser"
  batch_source: str = "data"
  teacher_in_state: bool = False
  teacher_per_step: bool = False
  can_teach: bool = False
  supports_conditional: bool = True
  supports_ema_profiles: bool = True
  supports_learned_schedule: bool = False
  required_parameterization: Optional[str] = None
  # Whether a network of required_parameterization is trained only by the objectives that
  # require it (consistency: yes; sCM's 'trigflow' is also a plain diffusion model's: no).
  exclusive_parameterization: bool = True
  required_outputs: str = "denoiser"
  # Config sections besides training.objective that define the run (its identity).
  identity_fields: Tuple[str, ...] = ()
  # Runs written before training.objective existed hold no such key (only the default's).
  identity_omits_name: bool = False

  @property
  def predicts_labels(self) -> bool:
    """A classifier: eval reports its held-out accuracy; it draws no samples."""
    return self.network == "classifier"

  @property
  def draws_samples(self) -> bool:
    """A denoiser, consistency function or flow map (SAMPLING_NETWORKS): not a classifier, not
    an autoencoder."""
    return self.network in SAMPLING_NETWORKS

  @property
  def reconstructs(self) -> bool:
    """An autoencoder: eval reports its held-out reconstructions; it draws no samples."""
    return self.network == "autoencoder"

  @property
  def has_likelihood(self) -> bool:
    """Whether eval can compute a PF-ODE likelihood: a denoiser's (not a consistency
    function's, a classifier's or an autoencoder's)."""
    return self.network == "denoiser"

  # -- loss --------------------------------------------------------------------------------
  def make_loss(self, ctx: LossContext) -> LossFn:
    raise NotImplementedError

  def loss_function(self) -> Optional[Callable]:
    """The library loss whose keyword-only arguments config.training.loss_opts may set; None:
    the objective reads no loss_opts."""
    return None

  def resolved_facts(self, config) -> Dict[str, Any]:
    """Facts of files the config names that define the run as its fields do (saved in
    config.json's 'resolved', compared on resume); none by default."""
    return {}

  def loss_option_names(self) -> Sequence[str]:
    """The keywords config.training.loss_opts may set: the library loss's own (the step sets
    the others) and, for a loss drawing times by a ``losses.TimeSampling``, its options."""
    fn = self.loss_function()
    if fn is None:
      return []
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items()
             if p.kind == p.KEYWORD_ONLY and n not in STEP_SET_LOSS_ARGS}
    if "time_sampling" in params:
      names |= set(losses.TIME_SAMPLING_OPTIONS)
    return sorted(names)

  # -- teacher -----------------------------------------------------------------------------
  def needs_teacher(self, config) -> bool:
    """Whether the run reads a teacher from config.distill.teacher_workdir."""
    return False

  def starts_from_teacher(self, config) -> bool:
    """Whether a fresh student starts from the teacher's EMA parameters."""
    return self.needs_teacher(config) and bool(config.distill.init_from_teacher)

  def check_teacher(self, config, teacher_config) -> None:
    """ConfigError unless ``teacher_config`` (the teacher's saved config) fits this run."""

  def target_ema(self, config) -> float:
    """mu of the target network the loss reads (context['target'], updated after every step
    theta^- <- mu theta^- + (1 - mu) theta; ``training.TargetState``); 0.0: none (default)."""
    return 0.0

  # -- schedule and rounds -----------------------------------------------------------------
  def lr_schedule_steps(self, config) -> int:
    """The steps of the lr schedule (its cosine decay): the run's."""
    return int(config.training.num_steps)

  def round_boundaries(self, config) -> Sequence[int]:
    """Steps where a new round starts (a fresh optimizer, ``begin_round``); none by default."""
    return ()

  def round_of(self, config, step: int) -> int:
    return 0

  def begin_round(self, state, optimizer):
    raise NotImplementedError(f"objective {self.name!r} has no rounds")

  def keep_period(self, config) -> Optional[int]:
    """Checkpoints at multiples of this are never garbage-collected (a round's student)."""
    return None

  def round_message(self, config, step: int) -> str:
    return ""

  # -- config ------------------------------------------------------------------------------
  def check(self, config, mode: str) -> None:
    """The start-up checks of the fields this objective reads (ConfigError)."""

  def describe(self, config) -> str:
    """One line naming what the run trains (the start-up message); '' for plain training."""
    return ""

  def reads_labels(self, config) -> bool:
    """Whether the train step reads batch['label']."""
    return bool(config.model.conditional)

  def __repr__(self) -> str:
    return f"<objective {self.name!r}>"


def time_sampling_of(step) -> Tuple[losses.TimeSampling, Dict[str, Any]]:
  """(the ``losses.TimeSampling`` of a ``StepConfig``: its time_sampling method with the
  TimeSampling options of its loss_opts, the other loss options)."""
  opts = dict(step.loss_opts)
  times = {k: opts.pop(k) for k in losses.TIME_SAMPLING_OPTIONS if k in opts}
  return losses.TimeSampling.of(step.time_sampling, **times), opts


# Loss keywords the train step sets itself (not config.training.loss_opts).
STEP_SET_LOSS_ARGS = ("weighting", "time_sampling", "cond", "noise")

_REGISTRY: Dict[str, Objective] = {}


def register(cls):
  """Class decorator: registers one instance of the Objective subclass under ``cls.name``."""
  obj = cls()
  if not obj.name or obj.name in _REGISTRY:
    raise ValueError(f"objective {obj.name!r}: empty or registered twice")
  if obj.network not in NETWORKS or obj.batch_source not in BATCH_SOURCES:
    raise ValueError(f"objective {obj.name!r}: network {obj.network!r} (accepted: {NETWORKS}), "
                     f"batch_source {obj.batch_source!r} (accepted: {BATCH_SOURCES})")
  _REGISTRY[obj.name] = obj
  return cls


def names() -> Tuple[str, ...]:
  """The registered objectives, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Objective:
  """The registered objective ``name``; ValueError naming the registered ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; registered: {list(_REGISTRY)}")
  return _REGISTRY[name]


def of_config(config) -> Objective:
  """The objective of ``config`` (training.objective; absent: the default), ConfigError if it
  is not registered."""
  name = config.training.get("objective", DEFAULT)
  if name not in _REGISTRY:
    raise ConfigError(f"config.training.objective={name!r} is not accepted; accepted: "
                      f"{list(_REGISTRY)}")
  return _REGISTRY[name]
