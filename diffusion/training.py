"""Train state, optimizer, EMA and a pure train step for any registered training objective.

The step is a pure function ``(state, batch) -> (state, metrics)``: the loss is the objective's
(``diffusion.objectives``: ``StepConfig.objective`` names it, e.g. 'dsm', ``dsm_loss`` on the
network wrapped by ``make_denoiser``) on the network as ``networks.TrainNetwork``; the update is optax
(Adam/AdamW, linear warm-up, optional cosine or inverse square-root decay, global-norm
clipping), optionally the model's ``project_params`` (EDM2's forced weight normalisation),
followed by an EMA of the parameters (and, with ``StepConfig.ema_profiles``, EDM2's
power-function EMAs in a ``PowerEMAState``; diffusion/posthoc_ema.py). Everything random comes
from ``fold_in(state.key, state.step)``, and the data of step i is batch i, so a run restored
from a checkpoint continues bit for bit.

Non-finite loss or gradients (policy ``nonfinite``):
  'skip': the update is dropped (params, EMA and optimizer state unchanged), the step counter
          advances, ``state.num_skipped`` counts it. The host loop feeds the per-step ``finite``
          metric to a ``SkipMonitor``, which raises NonFiniteError after too many consecutive
          skips (a run that diverged for good would otherwise skip to the end and report
          success).
  'stop': the state freezes at the last good values and ``state.bad_step`` records the first bad
          step; the host loop sees it (``check_finite``) and stops, naming that step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import numpy as np
import jax.numpy as jnp
import optax

from diffusion import objectives, posthoc_ema
from diffusion.models import capabilities
from diffusion.networks import COMPUTE_DTYPES, TrainNetwork, compute_model, jnp_compute_dtype
from diffusion.parameterization import Parameterization
from diffusion.schedules import Schedule

PyTree = Any
Batch = Dict[str, jax.Array]  # {'x': (B, ...) float, optionally 'label': (B,) int}

NONFINITE_POLICIES = ("stop", "skip")
OPTIMIZERS = ("adam", "adamw")
DECAYS = ("none", "cosine", "rsqrt")
@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly. All leaves are arrays (checkpointable).

  step: () int32, the number of steps taken (= index of the next data batch).
  params / ema_params: network parameters and their exponential moving average.
  opt_state: optax state.
  key: (2,) uint32, the run's base PRNG key (never split; per-step keys are fold_in(key, step)).
  num_skipped: () int32, steps whose update was dropped as non-finite.
  bad_step: () int32, first non-finite step under the 'stop' policy, -1 if none.
  """
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  key: jax.Array
  num_skipped: jax.Array
  bad_step: jax.Array


@flax.struct.dataclass
class DistillState(TrainState):
  """A TrainState that also carries a teacher's parameters (the few-step objectives): a fixed
  teacher (consistency distillation), the current round's teacher (progressive distillation:
  the previous round's student), or an empty dict (consistency training). Checkpointed with the
  rest, so a student's workdir holds everything its run needs."""
  teacher: PyTree


@flax.struct.dataclass
class PowerEMAState(TrainState):
  """A TrainState that also carries EDM2's power-function EMAs of the parameters (Karras et al.
  2024, Sec. 3; ``diffusion.posthoc_ema``): ``power_ema`` is a tuple of parameter pytrees, one
  per sigma_rel of ``StepConfig.ema_profiles`` in that order. Runs without profiles keep the
  plain TrainState, so their checkpoints (and older ones) restore unchanged."""
  power_ema: Tuple[PyTree, ...]


@flax.struct.dataclass
class TargetState(TrainState):
  """A TrainState that also carries a target network's parameters theta^-, an EMA of the
  parameters updated after every step with ``StepConfig.target_ema`` mu (Song et al. 2023,
  "Consistency Models", Alg. 2: theta^- <- stopgrad(mu theta^- + (1 - mu) theta)), passed to the
  loss as context['target'] (consistency distillation with distill.target_ema). Separate from
  ``ema_params`` (the EMA that is sampled, its own decay). Runs without it keep the plain
  TrainState."""
  target: PyTree


def with_target(state: TrainState) -> TargetState:
  """``state`` as a TargetState whose target starts as a copy of its parameters (CM Alg. 2:
  theta^- <- theta)."""
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}
  return TargetState(**fields, target=jax.tree_util.tree_map(jnp.copy, state.params))


def target_of(state: TrainState, target_ema: float) -> PyTree:
  """The target parameters of a TargetState; ValueError for another state."""
  if not isinstance(state, TargetState):
    raise ValueError(f"StepConfig.target_ema={target_ema} needs a TargetState "
                     f"(training.with_target), got {type(state).__name__}")
  return state.target


def with_power_ema(state: TrainState, num_profiles: int) -> TrainState:
  """``state`` as a PowerEMAState whose ``num_profiles`` EMAs start as copies of the parameters
  (their value is never used: beta(1) = 0); ``state`` itself when ``num_profiles`` is 0."""
  if num_profiles == 0:
    return state
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}
  copies = tuple(jax.tree_util.tree_map(jnp.copy, state.params) for _ in range(num_profiles))
  return PowerEMAState(**fields, power_ema=copies)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer hyper-parameters (see ``make_optimizer``)."""
  name: str = "adam"
  lr: float = 1e-3
  warmup_steps: int = 0
  grad_clip: float = 1.0  # global-norm clip; <= 0 disables
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  decay: str = "none"  # 'none' | 'cosine'
  decay_steps: int = 0  # total steps of the cosine schedule (including warm-up)
  end_lr_factor: float = 0.0  # cosine decays to lr * end_lr_factor
  rsqrt_ref_steps: int = 0  # 'rsqrt': lr / sqrt(max(step / rsqrt_ref_steps, 1)) (EDM2)

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.name!r}; available: {OPTIMIZERS}")
    if self.decay not in DECAYS:
      raise ValueError(f"unknown lr decay {self.decay!r}; available: {DECAYS}")
    if self.decay == "cosine" and self.decay_steps <= self.warmup_steps:
      raise ValueError(f"cosine decay needs decay_steps > warmup_steps, got decay_steps="
                       f"{self.decay_steps}, warmup_steps={self.warmup_steps}")
    if self.decay == "rsqrt" and self.rsqrt_ref_steps < 1:
      raise ValueError(f"rsqrt decay needs rsqrt_ref_steps >= 1, got {self.rsqrt_ref_steps}")
    if self.lr <= 0 or self.warmup_steps < 0:
      raise ValueError(f"need lr > 0 and warmup_steps >= 0, got lr={self.lr}, "
                       f"warmup_steps={self.warmup_steps}")


def lr_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Linear warm-up from 0 over ``warmup_steps``, then constant or cosine to lr*end_lr_factor;
  'rsqrt': lr min(step / warmup_steps, 1) / sqrt(max(step / rsqrt_ref_steps, 1)) (EDM2's inverse
  square-root decay, Karras et al. 2024, alpha_ref / sqrt(max(t / t_ref, 1)), t_ref in steps)."""
  if cfg.decay == "rsqrt":
    def rsqrt(step):
      s = jnp.asarray(step, jnp.float32)
      lr = cfg.lr / jnp.sqrt(jnp.maximum(s / cfg.rsqrt_ref_steps, 1.0))
      return lr * jnp.minimum(s / cfg.warmup_steps, 1.0) if cfg.warmup_steps > 0 else lr
    return rsqrt
  if cfg.decay == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1),
                                              cfg.decay_steps, cfg.lr * cfg.end_lr_factor)
  if cfg.warmup_steps > 0:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
        [cfg.warmup_steps])
  return optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """clip_by_global_norm -> Adam / AdamW with the learning-rate schedule of ``lr_schedule``."""
  sched = lr_schedule(cfg)
  if cfg.name == "adam":
    opt = optax.adam(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if cfg.grad_clip and cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt


# -- EMA ------------------------------------------------------------------------------------------


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """The EMA decay used at update number ``step`` (0-based).

  Without warm-up: ``decay``. With warm-up: min(decay, (1 + step) / (10 + step)), so early
  averages are not dominated by the random initialization (as in TF's ExponentialMovingAverage
  with num_updates).
  """
  d = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return d
  s = jnp.asarray(step, jnp.float32)
  return jnp.minimum(d, (1.0 + s) / (10.0 + s))


def ema_update(ema: PyTree, params: PyTree, decay: jax.Array) -> PyTree:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p.astype(e.dtype) - e),
                                ema, params)


# -- how far the EMA reaches (host-side, float64) -------------------------------------------------

# An EMA fits a run when, at its end, the mean age of what it averages is at most
# EMA_MAX_LAG_FRACTION of the run. For a constant decay d over n steps the mean age is
# d (1 - d^n) / (1 - d) and the weight left on the initial parameters d^n: the bound holds when
# n (1 - d) >~ 5, i.e. the averaging length 1 / (1 - d) is at most a fifth of the run, and then at
# most about e^-5 = 0.7% of the weight is on the initialization. With warm-up (``ema_decay_at``)
# the mean age is a tenth of the run while the warm-up lasts. Measured: docs/posthoc_ema.md.
EMA_MAX_LAG_FRACTION = 0.2
_EMA_CHUNK = 1 << 20  # updates per vectorized chunk (bounded memory for any run length)


def _warmup_end(decay: float) -> int:
  """The first update k whose warm-up decay (1 + k) / (10 + k) reaches ``decay``."""
  return max(0, math.ceil((10.0 * decay - 1.0) / (1.0 - decay)))


def _chunk_reach(decays: np.ndarray) -> Tuple[float, float]:
  """(product of ``decays``, sum over k of prod_{j >= k} decays[j]): what a stretch of updates
  does to the initial weight and the mean age (``ema_reach``)."""
  with np.errstate(divide="ignore"):
    logs = np.log(decays)
  suffix = np.cumsum(logs[::-1])[::-1]  # sum_{j >= k} log d_j
  return float(np.exp(suffix[0])), float(np.sum(np.exp(suffix)))


def ema_reach(num_steps: int, decay: float, warmup: bool, start: int = 0) -> Tuple[float, float]:
  """(the weight of the initial parameters, the mean age in steps of what the EMA averages) after
  ``num_steps`` updates ``start .. start + num_steps - 1`` of ``ema_decay_at`` (float64).

  One update with decay d_k scales the old weights by d_k and ages them one step: W <- d_k W,
  A <- d_k (A + 1), from W = 1, A = 0 (the average is the initial parameters).
  """
  weight, age = 1.0, 0.0
  k, end = int(start), int(start) + int(num_steps)
  warm_end = _warmup_end(decay) if warmup else k
  while k < min(end, warm_end):  # warm-up: decay (1 + k) / (10 + k), in chunks
    m = min(end, warm_end, k + _EMA_CHUNK) - k
    steps = np.arange(k, k + m, dtype=np.float64)
    p, s = _chunk_reach(np.minimum(decay, (1.0 + steps) / (10.0 + steps)))
    weight, age, k = p * weight, p * age + s, k + m
  m = end - k  # the constant decay, in closed form
  if m > 0:
    p = decay ** m
    weight, age = p * weight, p * age + (decay * (1.0 - p) / (1.0 - decay) if decay else 0.0)
  return weight, age


def ema_fits(num_steps: int, decay: float, warmup: bool, start: int = 0) -> bool:
  """Whether the EMA averages over the run: its mean age at the end is at most
  EMA_MAX_LAG_FRACTION of ``num_steps``."""
  return ema_reach(num_steps, decay, warmup, start)[1] <= EMA_MAX_LAG_FRACTION * num_steps


def fitting_ema_decay(num_steps: int) -> float:
  """The largest decay without warm-up that fits a run of ``num_steps`` (``ema_fits``), rounded
  down to two significant digits of 1 - decay (0.9975, 0.99, ...) so that it prints exactly."""
  lo, hi = 0.0, 1.0
  for _ in range(60):  # the mean age grows with the decay: bisection
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if ema_fits(num_steps, mid, False) else (lo, mid)
  scale = 10.0 ** (math.floor(math.log10(1.0 - lo)) - 1)
  d = round(1.0 - math.ceil((1.0 - lo) / scale) * scale, 12)
  while not ema_fits(num_steps, d, False):  # a value rounded onto the bound itself
    d = round(d - scale, 12)
  return d


# -- state ----------------------------------------------------------------------------------------


def init_state(model, optimizer: optax.GradientTransformation, key: jax.Array,
               example_x: jax.Array, example_label: Optional[jax.Array] = None,
               time_inputs: int = 1) -> TrainState:
  """Initializes the network on ``example_x`` (B, ...) and builds a fresh TrainState.

  ``key`` (a raw uint32 key) seeds the initialization and becomes the run's base key.
  ``time_inputs`` 2: a two-time network (parameterization 'mean_flow'), initialised with c of
  shape (B, 2) so that its second time embedding exists.
  """
  init_key, dropout_key, run_key = jax.random.split(key, 3)
  c = jnp.zeros((example_x.shape[0],) if time_inputs == 1 else (example_x.shape[0], time_inputs),
                jnp.float32)
  variables = model.init({"params": init_key, "dropout": dropout_key}, example_x, c,
                         labels=example_label, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), key=run_key,
                    num_skipped=jnp.zeros((), jnp.int32), bad_step=jnp.full((), -1, jnp.int32))


def count_params(params: PyTree) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


# -- the train step -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static hyper-parameters of the train step.

  weighting / time_sampling / loss_opts: passed to ``dsm_loss``.
  ema_decay, ema_warmup: see ``ema_decay_at``.
  nonfinite: 'stop' or 'skip'.
  grad_accum_steps: the batch is split into this many micro-batches whose gradients are averaged
    (one optimizer update per step).
  compute_dtype: 'float32' or 'bfloat16' (params and inputs cast for the forward/backward pass;
    master params, loss and updates stay float32).
  ema_profiles: sigma_rel of each power-function EMA kept in ``PowerEMAState.power_ema``
    (EDM2; () for none), updated with beta(t) = (1 - 1/t)^(gamma + 1), t the updates applied.
  conditional: pass batch['label'] to the network as ``cond``.
  target_ema: mu of a target network's EMA (``TargetState``; consistency distillation's
    distill.target_ema), updated after every applied step; 0: no target network.
  objective: the registered objective (``diffusion.objectives.names()``) whose loss the step
    takes: 'dsm' (``dsm_loss``), 'classifier' (``classifier_loss`` with batch['label'] as
    targets; weighting and conditional do not apply), 'reflow', the few-step students, ...
  """
  weighting: str = "eps"
  time_sampling: str = "uniform"
  loss_opts: Tuple[Tuple[str, Any], ...] = ()
  ema_decay: float = 0.999
  ema_warmup: bool = False
  ema_profiles: Tuple[float, ...] = ()
  nonfinite: str = "stop"
  grad_accum_steps: int = 1
  compute_dtype: str = "float32"
  conditional: bool = False
  objective: str = "dsm"
  target_ema: float = 0.0

  def __post_init__(self):
    objective = objectives.get(self.objective)  # ValueError naming the registered ones
    if self.conditional and not objective.supports_conditional:
      raise ValueError(f"objective {self.objective!r} trains a network that takes no labels as "
                       f"input: conditional must be False")
    if self.nonfinite not in NONFINITE_POLICIES:
      raise ValueError(f"unknown nonfinite policy {self.nonfinite!r}; "
                       f"available: {NONFINITE_POLICIES}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"unknown compute_dtype {self.compute_dtype!r}; "
                       f"available: {COMPUTE_DTYPES}")
    if self.grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
    if self.ema_profiles:
      posthoc_ema.gamma_of_sigma_rel(self.ema_profiles)  # ValueError naming a bad sigma_rel
    if not 0.0 <= self.target_ema < 1.0:
      raise ValueError(f"target_ema must be in [0, 1) (0: no target network), got "
                       f"{self.target_ema}")


def make_loss(model, schedule: Schedule, param: Parameterization, cfg: StepConfig,
              loss_fn: Optional[Callable] = None, *, config: Any = None,
              teacher: Optional[objectives.TeacherModel] = None,
              round_index: int = 0) -> Callable:
  """``loss(params, batch, key, context=None) -> (scalar, aux)``: the loss of the objective
  ``cfg.objective`` (``objectives.get(...).make_loss``) on ``model`` computing in
  ``cfg.compute_dtype`` in training mode; ``context`` is the train step's dict {'step':
  state.step, 'teacher': the teacher's parameters, and 'target': the target network's
  parameters where the state has one (``TargetState``)}.

  loss_fn: replaces the objective's library loss, called as that loss is (a custom dsm-like
    loss; for the few-step students ``loss_fn(denoise, x0, key, context)``).
  config, teacher, round_index: what the objectives configured by the run's config read
    (``objectives.LossContext``); the driver passes them.
  """
  objective = objectives.get(cfg.objective)
  ctx = objectives.LossContext(schedule=schedule, param=param, step=cfg, net=model,
                               config=config, teacher=teacher, round_index=round_index,
                               loss_fn=loss_fn)
  objective_loss = objective.make_loss(ctx)
  dtype = jnp_compute_dtype(cfg.compute_dtype)
  model = compute_model(model, dtype)

  def loss(params, batch: Batch, key, context=None):
    noise_key, dropout_key = jax.random.split(key)
    p = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    net = TrainNetwork(module=model, params=p, raw_params=params, dtype=dtype,
                       dropout_key=dropout_key)
    return objective_loss(net, batch, noise_key, context)

  return loss


def _accumulated_grads(loss, params, batch: Batch, key, k: int,
                       aux_names: Tuple[str, ...] = (), context=None):
  """Mean loss, gradient and aux scalars ``aux_names`` (a dict) over k equal micro-batches of
  ``batch`` (lax.scan)."""
  grad_fn = jax.value_and_grad(functools.partial(loss, context=context), has_aux=True)

  def pick(aux):
    return {n: jnp.asarray(aux[n], jnp.float32) for n in aux_names}

  if k == 1:
    (value, aux), grads = grad_fn(params, batch, key)
    return value, grads, pick(aux)
  b = batch["x"].shape[0]
  if b % k:
    raise ValueError(f"batch size {b} is not divisible by grad_accum_steps={k}")
  micro = jax.tree_util.tree_map(lambda a: a.reshape((k, b // k) + a.shape[1:]), batch)

  def body(carry, inp):
    i, mb = inp
    (value, aux), g = grad_fn(params, mb, jax.random.fold_in(key, i))
    tot_v, tot_g, tot_m = carry
    return (tot_v + value, jax.tree_util.tree_map(jnp.add, tot_g, g),
            jax.tree_util.tree_map(jnp.add, tot_m, pick(aux))), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  zero_m = {n: jnp.zeros((), jnp.float32) for n in aux_names}
  (tot_v, tot_g, tot_m), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros, zero_m),
                                          (jnp.arange(k), micro))
  return (tot_v / k, jax.tree_util.tree_map(lambda g: g / k, tot_g),
          {n: v / k for n, v in tot_m.items()})


def make_train_step(model, schedule: Schedule, param: Parameterization,
                    optimizer: optax.GradientTransformation, cfg: StepConfig,
                    loss_fn: Optional[Callable] = None,
                    lr_fn: Optional[optax.Schedule] = None, **loss_context) -> Callable:
  """Returns the pure ``train_step(state, batch, teacher=None) -> (state, metrics)`` (not
  jitted); ``teacher``: fixed teacher parameters for the loss's context (else the state's own,
  ``DistillState.teacher``). ``loss_fn`` and ``loss_context`` (config, teacher, round_index):
  see ``make_loss``. With ``cfg.target_ema`` the state is a ``TargetState``: its target goes to
  the loss as context['target'] and is updated after the step.

  batch: {'x': (B, ...), 'label': (B,) optional}. metrics: scalars loss, grad_norm, finite,
  ema_decay, lr (when ``lr_fn`` is given) and the objective's ``aux_metrics`` (the classifier's
  training-batch accuracy). A model offering ``project_params(params) -> params`` (its
  ``capabilities``) gets its updated parameters projected with it (EDM2's forced weight
  normalisation); the EMA averages the projected parameters.
  """
  loss = make_loss(model, schedule, param, cfg, loss_fn, **loss_context)
  aux_names = objectives.get(cfg.objective).aux_metrics
  gammas = ([float(g) for g in posthoc_ema.gamma_of_sigma_rel(cfg.ema_profiles)]
            if cfg.ema_profiles else [])
  project = model.project_params if capabilities(model).project_params else None

  def train_step(state: TrainState, batch: Batch, teacher: Optional[PyTree] = None):
    key = jax.random.fold_in(state.key, state.step)
    context = {"step": state.step,
               "teacher": getattr(state, "teacher", None) if teacher is None else teacher}
    if cfg.target_ema:
      context["target"] = target_of(state, cfg.target_ema)
    value, grads, aux = _accumulated_grads(loss, state.params, batch, key,
                                           cfg.grad_accum_steps, aux_names, context)
    grad_norm = optax.tree.norm(grads)
    # One scalar: a non-finite gradient entry makes the global norm non-finite (as does a norm
    # overflowing float32). A per-leaf all-finite reduction here compiled into a chain of
    # n_leaves scalar ANDs that XLA duplicated into every leaf's update (compile time quadratic
    # in the number of leaves: 4 minutes on CPU for the DDPM U-Net).
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if project is not None:  # e.g. EDM2's forced weight normalisation
      params = project(params)
    decay = ema_decay_at(state.step - state.num_skipped, cfg.ema_decay, cfg.ema_warmup)
    ema = ema_update(state.ema_params, params, decay)
    stopped = state.bad_step >= 0
    apply = finite & ~stopped
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(apply, a, b), new, old)
    new = state.replace(
        params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
        opt_state=keep(opt_state, state.opt_state))
    if gammas:  # EDM2's power EMAs; t counts the updates applied, this one included
      if len(getattr(state, "power_ema", ())) != len(gammas):
        raise ValueError(f"StepConfig.ema_profiles={cfg.ema_profiles} needs a PowerEMAState "
                         f"with {len(gammas)} EMAs (training.with_power_ema), got "
                         f"{type(state).__name__}")
      t = (state.step - state.num_skipped + 1).astype(jnp.float32)
      power = tuple(posthoc_ema.power_ema_update(e, params, t, g)
                    for e, g in zip(state.power_ema, gammas))
      new = new.replace(power_ema=keep(power, state.power_ema))
    if cfg.target_ema:  # CM Alg. 2: theta^- <- mu theta^- + (1 - mu) theta, after the update
      target = ema_update(state.target, params, jnp.float32(cfg.target_ema))
      new = new.replace(target=keep(target, state.target))
    if cfg.nonfinite == "skip":
      new = new.replace(step=state.step + 1,
                        num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
    else:  # 'stop': freeze everything at the first bad step
      bad = jnp.where(stopped, state.bad_step, jnp.where(finite, -1, state.step))
      new = new.replace(step=jnp.where(apply, state.step + 1, state.step), bad_step=bad)
    metrics = {"loss": value, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32),
               "ema_decay": decay, **aux}
    if lr_fn is not None:
      metrics["lr"] = jnp.asarray(lr_fn(state.step - state.num_skipped), jnp.float32)
    return new, metrics

  return train_step


def multi_step(train_step: Callable, steps_per_call: int) -> Callable:
  """Runs ``steps_per_call`` train steps in one call with lax.scan.

  The returned function takes batches stacked on a leading axis (steps_per_call, B, ...) and
  returns the final state and the metrics of every step stacked (steps_per_call,).
  """
  if steps_per_call < 1:
    raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
  if steps_per_call == 1:
    def one(state, batches):
      state, m = train_step(state, jax.tree_util.tree_map(lambda a: a[0], batches))
      return state, jax.tree_util.tree_map(lambda a: a[None], m)
    return one

  def many(state, batches):
    return jax.lax.scan(train_step, state, batches)

  return many


class NonFiniteError(RuntimeError):
  """Raised by the host loop when the 'stop' policy saw a non-finite loss or gradient."""


def check_finite(state: TrainState) -> None:
  """Raises NonFiniteError naming the first non-finite step, if the state recorded one."""
  bad = int(jax.device_get(state.bad_step))
  if bad >= 0:
    raise NonFiniteError(
        f"non-finite loss or gradient at step {bad}; training stopped (policy 'stop'). The "
        f"state is frozen at the last good values and no checkpoint was written after it.")


class SkipMonitor:
  """Host-side count of the steps skipped under the 'skip' policy.

  ``update(first_step, finite)`` takes the per-step ``finite`` metric (0/1) of the consecutive
  steps first_step, first_step + 1, ... in order, and raises NonFiniteError when more than
  ``limit`` consecutive steps were skipped (``limit`` 0: no limit). ``limit_name`` names the
  setting in the message (the config field).
  """

  def __init__(self, limit: int, limit_name: str = "max_consecutive_skips"):
    if limit < 0:
      raise ValueError(f"{limit_name} must be >= 0 (0: no limit), got {limit}")
    self.limit, self.limit_name = int(limit), limit_name
    self.run = 0  # consecutive skipped steps ending at the last step seen
    self.run_start = -1
    self.skipped = 0  # skipped steps seen by this monitor

  def update(self, first_step: int, finite) -> None:
    flags = np.ravel(np.asarray(finite)) > 0.5
    for i, ok in enumerate(flags):
      if ok:
        self.run = 0
        continue
      if self.run == 0:
        self.run_start = first_step + i
      self.run += 1
      self.skipped += 1
      if self.limit and self.run > self.limit:
        raise NonFiniteError(
            f"{self.run} consecutive steps with a non-finite loss or gradient (steps "
            f"{self.run_start}-{first_step + i}) were skipped, more than "
            f"{self.limit_name}={self.limit}; training stopped (policy 'skip'; skipped steps leave "
            f"the parameters unchanged, so the checkpoints hold the last good ones). Lower the "
            f"learning rate, or raise {self.limit_name} (0: no limit).")
