"""experiments.setup: the public way to a trained workdir's config and parameters from Python
(the example of its docstring and of the README)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import checkpoint, networks
from experiments import build, train
from experiments.config_files import load_config_file
from experiments.setup import Setup, restore_params, saved_config
from tests.conftest import REPO, tiny_config

FILE = os.path.join(REPO, "configs/toy/checkerboard_vp.py")


def test_restore_a_trained_workdir_from_python(tmp_path):
  wd = str(tmp_path / "cb")
  run = tiny_config(**{"training.num_steps": 10, "eval.density_grid": 0})
  train.train(run, wd)
  config = saved_config(load_config_file(FILE), wd)  # the file, with the run's overrides
  assert config.model.net.width == 32 and config.training.num_steps == 10
  s, params, step = restore_params(config, wd)
  assert isinstance(s, Setup) and step == 10
  denoise = networks.eval_denoiser(s.net, params, s.schedule, s.param)
  x0 = denoise(jnp.zeros((4, 2)), jnp.full((4,), 0.5))
  assert x0.shape == (4, 2) and np.all(np.isfinite(np.asarray(x0)))
  before = sorted(os.listdir(os.path.join(wd, checkpoint.CKPT_DIR)))
  s2, params2, step2 = restore_params(config, wd, step=10)  # read-only: nothing changes
  assert step2 == 10 and sorted(os.listdir(os.path.join(wd, checkpoint.CKPT_DIR))) == before
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(params2)))


def test_restore_refuses_an_empty_workdir_and_another_experiment(tmp_path):
  with pytest.raises(FileNotFoundError, match="train first"):
    restore_params(tiny_config(), str(tmp_path))
  wd = str(tmp_path / "cb")
  train.train(tiny_config(**{"training.num_steps": 10, "eval.density_grid": 0}), wd)
  with pytest.raises(checkpoint.WorkdirMismatchError):
    restore_params(tiny_config(**{"model.net.width": 16}), wd)
