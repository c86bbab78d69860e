"""Tests of the image experiment configs (configs/digits, cifar10, mnist, celeba).

Fast (default suite): every config file loads, every key it sets is one the drivers read (no
typos: the keys of configs/base.py, plus the network's constructor arguments, the schedule's
fields, dsm_loss options and sampler hyper-parameters, each checked against what its consumer
accepts), and its network builds under ``jax.eval_shape`` with the published parameter count
where there is one.

Slow (``pytest -m slow tests/test_image_configs.py``): every paper config (CIFAR-10, MNIST,
CelebA) trains a few steps on ``tfds.testing.mock_data`` through the real train driver with its
full architecture (batch size, steps and sampler steps shrunk by overrides), then samples through
the sample driver (an autoencoder: evaluates its reconstructions through the eval driver). On 2
CPU cores this takes minutes per config (the deep NCSN++ / DDPM++ compile slowly).
"""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.samplers.registry import sampler_info

from tests.conftest import REPO, with_overrides

CONFIG_DIRS = ("digits", "cifar10", "mnist", "celeba")
HELPERS = ("common.py", "few_step.py", "__init__.py")


def _config_files():
  out = []
  for d in CONFIG_DIRS:
    for f in sorted(glob.glob(os.path.join(REPO, "configs", d, "*.py"))):
      if os.path.basename(f) not in HELPERS:
        out.append(os.path.relpath(f, REPO))
  return out


CONFIG_FILES = _config_files()
PAPER_CONFIGS = [f for f in CONFIG_FILES if not f.startswith("configs/digits/")]

# Parameter counts of the published networks. DDPM: the released CIFAR-10 model (Ho et al.
# 2020). NCSN++ / DDPM++ cont. (and deep): the released score_sde configurations (Song et al.
# 2021), as checked in tests/test_models_images.py.
EXPECTED_PARAMS = {
    "configs/cifar10/ddpm.py": 35_746_307,
    "configs/cifar10/ncsnpp_cont_ve.py": 62_758_915,
    "configs/cifar10/ncsnpp_cont_deep_ve.py": 107_587_075,
    "configs/cifar10/ddpmpp_cont_vp.py": 61_804_419,
    "configs/cifar10/ddpmpp_cont_subvp.py": 61_804_419,
    "configs/cifar10/ddpmpp_cont_deep_vp.py": 106_632_579,
    "configs/cifar10/ddpmpp_cont_deep_subvp.py": 106_632_579,
    "configs/cifar10/edm2.py": 36_610_076,  # edm2_unet's cifar10 preset (not a paper's network)
}


def _load(path):
  from experiments.config_files import load_config_file
  return load_config_file(os.path.join(REPO, path))


def test_every_image_config_is_listed():
  assert "configs/digits/vp.py" in CONFIG_FILES
  assert set(EXPECTED_PARAMS) <= set(CONFIG_FILES)
  for d in CONFIG_DIRS:
    assert any(f.startswith(f"configs/{d}/") for f in CONFIG_FILES), d


def _leaf_keys(config, skip=()):
  from experiments.cli import config_keys
  return {k for k in config_keys(config) if not k.startswith(skip)}


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_config_keys_are_all_consumed(path):
  from configs.base import get_base_config
  from diffusion import losses, objectives, training
  from diffusion.data import images
  from diffusion.models import get_model
  from diffusion.parameterization import Parameterization
  from experiments import build

  c = _load(path)
  # 1. No key outside configs/base.py, except the free-form sub-dicts checked below.
  free = ("model.net.", "sde.fields.", "training.loss_opts.")
  extra = _leaf_keys(c, free) - _leaf_keys(get_base_config(), free)
  assert not extra, f"{path}: keys the drivers never read: {sorted(extra)}"
  # 2. Each free-form sub-dict is accepted by its consumer (unknown names raise).
  get_model(c.model.name, **c.model.net.to_dict())  # flax dataclass: unknown kwargs raise
  sched = build.schedule(c)  # get_schedule rejects unknown fields
  if sched.learned:  # VDM: its initial parameters, for the time grid
    sched = sched.bind(jax.tree_util.tree_map(np.asarray, sched.init_params(
        jax.random.PRNGKey(0))))
  accepted = set(objectives.of_config(c).loss_option_names())  # the objective's loss's
  assert set(c.training.loss_opts.to_dict()) <= accepted, c.training.loss_opts
  # 3. Names are valid.
  assert c.data.name in images.dataset_names()
  Parameterization(kind=c.model.parameterization, time_input=c.model.time_input,
                   sigma_data=c.model.sigma_data, scale_input=c.model.scale_input)
  assert c.training.weighting in losses.WEIGHTINGS
  assert c.training.time_sampling in losses.TIME_SAMPLINGS
  training.make_optimizer(build.optim_config(c))
  build.step_config(c)
  build.sampler(c, sched)  # unknown sampler hyper-parameters raise; builds the time grid
  # 4. The docstring gives the command.
  import importlib.util
  spec = importlib.util.spec_from_file_location("_cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert f"--config={path}" in (mod.__doc__ or ""), f"{path}: docstring lacks the command"
  if path in PAPER_CONFIGS and path.startswith("configs/cifar10/"):
    assert "THE PAPER'S RESULT" in mod.__doc__


_SHAPE_CACHE = {}


def _param_count(c):
  from diffusion.data import images
  from experiments import build
  shape = images.image_shape(c.data.name, c.data.image_size)
  key = (c.model.name, c.model.net.to_json(), shape)
  if key not in _SHAPE_CACHE:
    net = build.model(c)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    p = jax.eval_shape(lambda: net.init(rngs, jnp.zeros((1,) + shape), jnp.zeros((1,))))
    _SHAPE_CACHE[key] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(p))
  return _SHAPE_CACHE[key]


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_network_builds_with_expected_params(path):
  n = _param_count(_load(path))
  assert n > 0
  if path in EXPECTED_PARAMS:
    assert n == EXPECTED_PARAMS[path], f"{path}: {n:,} parameters"


def test_digits_vp_is_the_default_image_experiment():
  c = _load("configs/digits/vp.py")
  assert c.data.name == "digits" and c.sde.name == "vp"
  assert c.eval.divergence == "hutchinson" and c.eval.plot_samples == 64


def test_edm_configs_use_the_papers_settings():
  for path in ("configs/cifar10/edm_vp.py", "configs/cifar10/edm_ve.py", "configs/digits/edm.py"):
    c = _load(path)
    assert c.sde.name == "edm" and c.model.parameterization == "edm"
    assert c.training.weighting == "edm" and c.training.time_sampling == "lognormal"
    assert c.training.loss_opts.p_mean == -1.2 and c.training.loss_opts.p_std == 1.2
    assert c.model.sigma_data == 0.5
    assert c.sampling.sampler == "heun" and c.sampling.num_steps == 17
  info = sampler_info("heun")  # EDM's 18 noise levels and the step to sigma = 0: 35 NFE
  assert info.nfe(c.sampling.num_steps, info.resolve({})) == 35
  assert _load("configs/cifar10/edm_vp.py").model.name == "ddpmpp"
  assert _load("configs/cifar10/edm_ve.py").model.name == "ncsnpp"


def test_ddpm_config_has_the_papers_settings():
  c = _load("configs/cifar10/ddpm.py")
  assert (c.sde.fields.beta_min, c.sde.fields.beta_max) == (0.1, 20.0)
  assert (c.optim.lr, c.data.batch_size, c.training.num_steps) == (2e-4, 128, 800_000)
  assert (c.training.ema_decay, c.model.net.dropout, c.optim.grad_clip) == (0.9999, 0.1, 1.0)
  assert c.optim.warmup_steps == 5000 and c.model.parameterization == "eps"


def test_dit_configs_use_the_papers_settings():
  """DiT (Peebles & Xie 2023, Sec. 4): AdamW 1e-4 without weight decay, warm-up or clipping,
  batch 256, EMA 0.9999, the linear DDPM schedule with eps prediction, 250 DDPM steps."""
  c = _load("configs/cifar10/dit.py")
  assert c.model.name == "dit" and c.model.net.patch_size == 2
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == ("adamw", 1e-4, 0.0)
  assert (c.optim.warmup_steps, c.optim.grad_clip, c.data.batch_size) == (0, 0.0, 256)
  assert c.training.ema_decay == 0.9999 and c.model.parameterization == "eps"
  assert c.sde.name == "vp" and (c.sde.fields.beta_min, c.sde.fields.beta_max) == (0.1, 20.0)
  assert (c.sampling.sampler, c.sampling.num_steps) == ("ddpm", 250)
  d, vp = _load("configs/digits/dit.py"), _load("configs/digits/vp.py")
  assert d.model.name == "dit" and d.model.net.to_dict() == dict(
      depth=6, hidden_size=128, num_heads=4, patch_size=2, embedding_scale=999.0)
  for key in ("optim", "training", "sampling", "sde", "data"):
    assert d[key].to_dict() == vp[key].to_dict(), key


# -- slow: a few real training steps and samples of every paper config on mock data ------------

SMALL = {
    "data.batch_size": 2, "training.num_steps": 2, "training.log_every": 1,
    "training.ckpt_every": 2, "training.sample_every": 0, "training.async_checkpoints": False,
    "optim.warmup_steps": 1, "sampling.num_steps": 2, "sampling.num_samples": 2,
    "sampling.batch_size": 2, "eval.plot_samples": 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_paper_config_trains_and_samples_on_mock_data(path, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from diffusion import objectives
  from experiments import evaluate, sample, train
  c = with_overrides(_load(path), SMALL)
  if c.training.objective == "consistency_training":  # a curriculum that fits in 2 steps
    c.distill.s0, c.distill.s1 = 2, 4
  n = _param_count(c)
  if path in EXPECTED_PARAMS:
    assert n == EXPECTED_PARAMS[path]
  with tfds.testing.mock_data(num_examples=8):
    if c.distill.teacher_config:  # a student: train its teacher (2 steps) first
      teacher = with_overrides(_load(c.distill.teacher_config), SMALL)
      c.distill.teacher_workdir = str(tmp_path / "teacher")
      train.train(teacher, c.distill.teacher_workdir)
      tmp_path = tmp_path / "student"
    out = train.train(c, str(tmp_path))
    assert out["status"] == "done" and out["step"] == 2 and np.isfinite(out["loss"])
    if objectives.of_config(c).reconstructs:  # an autoencoder draws no samples: its eval
      m = evaluate.run(with_overrides(c, {"data.num_heldout": 2}), str(tmp_path))
      assert m["heldout_images"] == 2 and np.isfinite(m["mse"])
      return
    res = sample.run(c, str(tmp_path))
  assert res["step"] == 2 and res["num_samples"] == 2
  x = np.load(os.path.join(res["out"], "samples.npz"))["x"]
  assert x.shape[0] == 2 and np.all(np.isfinite(x))
  assert os.path.exists(os.path.join(res["out"], "samples.png"))


# (schedule t_min, training t_min, sampler t_min, likelihood t_min) after resolving None to the
# schedule's: score SDE's continuous VP / sub-VP (released code: loss eps 1e-5, sampling_eps
# 1e-3, likelihood eps 1e-5), VE (1e-5 throughout), DDPM (its first discrete time 1e-3), and
# the digits runs (trained with 1e-3: their experiment identity must not change).
TIME_RANGES = {
    "configs/cifar10/ddpmpp_cont_vp.py": (1e-5, 1e-5, 1e-3, 1e-5),
    "configs/cifar10/ddpmpp_cont_subvp.py": (1e-5, 1e-5, 1e-3, 1e-5),
    "configs/cifar10/ddpmpp_cont_deep_vp.py": (1e-5, 1e-5, 1e-3, 1e-5),
    "configs/cifar10/ddpmpp_cont_deep_subvp.py": (1e-5, 1e-5, 1e-3, 1e-5),
    "configs/cifar10/ncsnpp_cont_ve.py": (1e-5, 1e-5, 1e-5, 1e-5),
    "configs/cifar10/ddpm.py": (1e-3, 1e-3, 1e-3, 1e-3),
    "configs/mnist/ddpm.py": (1e-5, 1e-5, 1e-3, 1e-5),
    "configs/celeba/ddpm.py": (1e-5, 1e-5, 1e-3, 1e-5),
    "configs/digits/vp.py": (1e-3, 1e-3, 1e-3, 1e-3),
    "configs/digits/ve.py": (1e-5, 1e-5, 1e-5, 1e-5),
}


@pytest.mark.parametrize("path", sorted(TIME_RANGES))
def test_time_ranges_are_the_papers(path):
  from experiments import build
  c = _load(path)
  sched_t_min = c.sde.fields.t_min
  resolve = lambda v: sched_t_min if v is None else v
  got = (sched_t_min, resolve(build.loss_options(c).get("t_min")), resolve(c.sampling.t_min),
         resolve(c.eval.t_min))
  assert got == TIME_RANGES[path]


def test_score_sde_likelihood_settings():
  c = _load("configs/cifar10/ddpmpp_cont_vp.py")
  e = c.eval
  assert (e.rtol, e.atol, e.probe, e.solver, e.dequantization_draws) == (
      1e-5, 1e-5, "rademacher", "dopri5", 5)
