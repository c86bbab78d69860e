"""The teacher of a student run (docs/few_step.md): its config, the checks of config.distill that
every student objective shares, and its restored parameters.

What each objective does with its teacher is the objective's (``diffusion.objectives``:
``needs_teacher``, ``starts_from_teacher``, ``teacher_in_state`` for progressive distillation's
rounds, ``teacher_per_step`` for consistency distillation, ``check_teacher``). A student's config
names its teacher's config file and workdir; the teacher's config is that file with the
workdir's config.json values set on it (``setup.saved_config``), and anything that makes the pair
incompatible (another forward process or data, another network where the student starts from the
teacher's parameters, a teacher that is not a denoiser) is a ConfigError before anything is
compiled.
"""
from __future__ import annotations

import os

import ml_collections

from diffusion import objectives
from diffusion.config_checks import ConfigError, int_at_least, is_bool
from experiments import config_files
from experiments.setup import restore_params, saved_config

Config = ml_collections.ConfigDict


def teacher_config(config: Config) -> Config:
  """The teacher's config: distill.teacher_config (a file) with the values of
  distill.teacher_workdir/config.json set on it."""
  d = config.distill
  try:
    file_config = config_files.load_config_file(d.teacher_config)
  except FileNotFoundError as e:
    raise ConfigError(f"config.distill.teacher_config: {e}") from None
  teacher = saved_config(file_config, d.teacher_workdir)
  config_files.import_user_modules(teacher)  # a teacher trained with a user's objective
  return teacher


def check_teacher(config: Config, teacher: Config) -> None:
  """ConfigError unless ``teacher`` (a config) can teach the run of ``config``."""
  objectives.of_config(config).check_teacher(config, teacher)


def check_distill(config: Config, mode: str) -> None:
  """config.distill's shared fields: a teacher where the objective needs one (its config and
  workdir; in train mode the workdir exists and its config fits), then the objective's own
  checks (``Objective.check``)."""
  objective, d = objectives.of_config(config), config.distill
  is_bool("distill.init_from_teacher", d.init_from_teacher)
  if mode == "pairs":
    int_at_least("distill.num_pairs", d.num_pairs, 1)
    int_at_least("distill.pairs_shard_size", d.pairs_shard_size, 1)
  if objective.needs_teacher(config):
    without_init = config.copy_and_resolve_references()
    without_init.distill.init_from_teacher = False
    optional = not objective.needs_teacher(without_init)
    for name in ("teacher_config", "teacher_workdir"):
      if not d[name]:
        raise ConfigError(f"config.training.objective={objective.name!r} needs "
                          f"config.distill.{name}"
                          + (" (or config.distill.init_from_teacher=False)" if optional else ""))
    if d.teacher_step is not None:
      int_at_least("distill.teacher_step", d.teacher_step, 0)
    if mode == "train":  # sample / eval of a student read only its own workdir
      if not os.path.isdir(d.teacher_workdir):
        raise ConfigError(f"config.distill.teacher_workdir={d.teacher_workdir!r} is not a "
                          f"directory (train the teacher there first)")
      check_teacher(config, teacher_config(config))
  objective.check(config, mode)


def load_teacher(config: Config):
  """(teacher Setup, its EMA params, step) of distill.teacher_workdir (read-only)."""
  d = config.distill
  t_cfg = teacher_config(config)
  check_teacher(config, t_cfg)
  return restore_params(t_cfg, d.teacher_workdir, step=d.teacher_step)
