"""A run's set-up, shared by every mode: everything built from the config (``Setup``), a fresh
train state, and the restore of a trained workdir's parameters (read-only).

From Python, a trained run is two calls away (the config it used, then its EMA parameters):

    from experiments.config_files import load_config_file
    from experiments.setup import restore_params, saved_config

    config = saved_config(load_config_file("configs/toy/checkerboard_vp.py"), "runs/cb")
    s, params, step = restore_params(config, "runs/cb")
    # s.net, s.schedule, s.param: the network, forward process and parameterization;
    # diffusion.networks.eval_denoiser(s.net, params, s.schedule, s.param) is its denoiser.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from diffusion import checkpoint, objectives, parallel, training
from diffusion.parameterization import Parameterization
from diffusion.schedules import Schedule
from experiments import build
from diffusion.config_checks import ConfigError
from experiments.writers import say

Config = ml_collections.ConfigDict


@dataclasses.dataclass
class Setup:
  """Everything built from the config that train, sample, eval, sweep and pairs share."""
  config: Config
  mesh: Mesh
  schedule: Schedule  # a learned one bound to the restored parameters (``restore_params``)
  param: Parameterization
  net: nn.Module
  optim: training.OptimConfig
  optimizer: optax.GradientTransformation
  step_cfg: training.StepConfig
  example: Dict[str, np.ndarray]  # one batch of zeros: 'x' (1, ...) and maybe 'label' (1,)
  abstract_state: training.TrainState  # of ShapeDtypeStructs with shardings
  state_shardings: training.TrainState  # of NamedShardings, the state's structure
  identity: Dict[str, Any]  # the full config + resolved facts, as saved in config.json
  objective: objectives.Objective  # the registered objective of config.training.objective


def setup(config: Config) -> Setup:
  """Builds and validates everything; no files are touched."""
  if config.debug.setup_delay_s > 0:  # fault injection: a slow set-up for the signal tests
    say("setting up (debug.setup_delay_s)")
    time.sleep(float(config.debug.setup_delay_s))
  build.check_dataset(config)
  mesh = parallel.make_mesh(config.parallel.model_axis)
  sched, param, net = build.schedule(config), build.parameterization(config), build.model(config)
  optim = build.optim_config(config)
  optimizer = training.make_optimizer(optim)
  step_cfg = build.step_config(config)
  objective = build.objective(config)
  example = build.example_batch(config)
  ex_label = example.get("label") if config.model.conditional else None  # the network's input

  def init(key):
    state = training.init_state(net, optimizer, key, jnp.asarray(example["x"]),
                                None if ex_label is None else jnp.asarray(ex_label),
                                time_inputs=2 if param.two_time else 1)
    if step_cfg.target_ema:  # CD's EMA target network (distill.target_ema)
      state = training.with_target(state)
    return training.with_power_ema(state, len(config.training.ema_profiles))

  key = jax.random.PRNGKey(config.seed)
  shapes = jax.eval_shape(init, key)
  if objective.teacher_in_state:  # PD: the round's teacher is the student's network
    shapes = _with_teacher(shapes, shapes.params)
  shardings = parallel.state_sharding(mesh, shapes, fsdp=config.parallel.fsdp,
                                     min_size=config.parallel.fsdp_min_size)
  abstract = checkpoint.abstract_like(shapes, shardings)
  identity = build.identity_dict(config, build.resolved(config, example, shapes.params))
  return Setup(config, mesh, sched, param, net, optim, optimizer, step_cfg, example, abstract,
               shardings, identity, objective)


def _with_teacher(state: training.TrainState, teacher) -> training.DistillState:
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(training.TrainState)}
  return training.DistillState(**fields, teacher=teacher)


def init_state(s: Setup, teacher_params=None) -> training.TrainState:
  """A fresh state; with ``teacher_params`` (the few-step objectives) the student starts from
  them where the objective does (``Objective.starts_from_teacher``: PD always, CD / reflow with
  distill.init_from_teacher), and a state that carries its teacher (PD's rounds) holds them as
  the first round's teacher."""
  ex_label = s.example.get("label") if s.config.model.conditional else None
  in_state = s.objective.teacher_in_state
  if in_state and teacher_params is None:
    raise ValueError(f"training.objective={s.config.training.objective!r} starts from the "
                     f"teacher's parameters; init_state needs teacher_params")
  copy = teacher_params is not None and s.objective.starts_from_teacher(s.config)

  def init(key, teacher):
    state = training.init_state(s.net, s.optimizer, key, jnp.asarray(s.example["x"]),
                                None if ex_label is None else jnp.asarray(ex_label),
                                time_inputs=2 if s.param.two_time else 1)
    if copy:
      state = state.replace(params=teacher, ema_params=jax.tree_util.tree_map(jnp.copy, teacher),
                            opt_state=s.optimizer.init(teacher))
    if s.step_cfg.target_ema:  # the target starts as the (initial) student: CM Alg. 2
      state = training.with_target(state)
    state = training.with_power_ema(state, len(s.config.training.ema_profiles))
    if in_state:
      state = _with_teacher(state, jax.tree_util.tree_map(jnp.copy, teacher))
    return state

  return jax.jit(init, out_shardings=s.state_shardings)(jax.random.PRNGKey(s.config.seed),
                                                        teacher_params)


def with_schedule_of(s: Setup, params) -> Setup:
  """The set-up ``s`` with its learned schedule (sde 'vdm_learned') bound to ``params``' (host
  copy: samplers build their coefficients from it in float64); ``s`` itself otherwise."""
  if s.schedule.learned and s.schedule.params is None:
    return dataclasses.replace(s, schedule=build.bind_schedule(s.schedule, params))
  return s


def restore_params(config: Config, workdir: str,
                   step: Optional[int] = None) -> Tuple[Setup, Any, int]:
  """(Setup, EMA params, step) of a trained ``workdir``: the newest intact checkpoint, or the one
  at ``step`` (then an error if it cannot be restored).

  ``config`` is the run's config (the one it was trained with, overrides included:
  ``saved_config`` gives it from its config file and the workdir). The Setup holds what the
  parameters are used with: ``s.net`` (flax module), ``s.schedule`` (a learned schedule comes
  bound to the restored parameters), ``s.param`` (parameterization), ``s.mesh``; the EMA params
  are a pytree of jax arrays placed on ``s.mesh``. Example::

      from diffusion import networks
      from experiments.config_files import load_config_file
      from experiments.setup import restore_params, saved_config

      config = saved_config(load_config_file("configs/toy/checkerboard_vp.py"), "runs/cb")
      s, params, step = restore_params(config, "runs/cb")
      denoise = networks.eval_denoiser(s.net, params, s.schedule, s.param)  # x0_hat(x_t, t)

  Raises FileNotFoundError for a workdir without (readable) checkpoints and
  checkpoint.WorkdirMismatchError for a workdir of another experiment. Read-only: checkpoints
  proven corrupt are skipped with a warning line, never moved; nothing in the workdir changes.
  Only the EMA parameters are read (``Checkpointer.restore_field``), so a run whose optimizer
  settings differ from ``config``'s (optim.*: the optimizer state's structure) still restores.
  """
  s = setup(config)
  if not checkpoint.has_checkpoints(workdir):
    raise FileNotFoundError(f"no checkpoints in {os.path.join(workdir, checkpoint.CKPT_DIR)}; "
                            f"train first (--mode=train)")
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS, ignore=("optim",))
  ckpt = checkpoint.Checkpointer(workdir, config=s.identity, read_only=True)
  try:
    ema, _, step = ckpt.restore_field("ema_params", s.abstract_state.ema_params, step=step)
  finally:
    ckpt.close()
  if ema is None:
    raise FileNotFoundError(f"no readable checkpoint in {ckpt.directory}")
  # A learned schedule is the restored one: samplers and the likelihood use it unchanged.
  return with_schedule_of(s, ema), ema, step


def saved_config(file_config: Config, workdir: str) -> Config:
  """The config a run in ``workdir`` used: ``file_config`` (its config file, which gives the
  fields and their types) with every value saved in <workdir>/config.json set on it, so command-
  line overrides of that run (a smaller network, other steps) are reproduced. A field the file no
  longer has is an error naming it; a workdir without config.json gives ``file_config``."""
  saved = checkpoint.read_config(workdir)
  if saved is None:
    return file_config
  saved = {k: v for k, v in saved.items() if k != "resolved"}
  out = file_config.copy_and_resolve_references()

  def overlay(node, values, prefix):
    for k, v in values.items():
      if k not in node:
        raise ConfigError(f"{workdir}/config.json has the field {prefix}{k}, which its config "
                          f"file no longer has; pass the config file the run was trained with")
      if isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
        overlay(node[k], v, f"{prefix}{k}.")
      else:
        node[k] = tuple(v) if isinstance(v, list) else v

  overlay(out, saved, "")
  return out
