"""Regenerates the score SDE conversion fixtures from the authors' own model code.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
code github.com/yang-song/score_sde (Apache-2.0). Nothing of that code is in this repository;
this script imports it at run time from a checkout you point it at:

  git clone https://github.com/yang-song/score_sde /tmp/score_sde
  python tests/data/convert/make_score_sde_fixtures.py --score_sde=/tmp/score_sde

Run it with this repository off PYTHONPATH: our regular package ``configs`` would shadow their
namespace package of the same name. It writes, under tests/data/convert/score_sde/:
  layouts.json: for every released config that uses their 'ncsnpp' or 'ddpm' model
    (configs/{ve,vp,subvp}/*.py, configs/vp/ddpm/*.py) the config fields a converter needs, the
    parameter tree (names and shapes, from ``jax.eval_shape`` of ``model.init``: nothing is
    allocated) and the parameter count;
  <fixture>/checkpoint_1: a small random network of a config derived from theirs, saved as their
    run_lib saves its ``State`` (see :func:`state_dict`);
  <fixture>/config.json: its config fields;
  <fixture>/reference.npz: inputs and their model's outputs with ``params_ema`` (float64 and
    float32).

Their code needs no file patches on current JAX / flax (jax 0.10, flax 0.12); the script
installs these run-time stand-ins before importing it:
  * ``flax.optim`` (removed from flax) is only used as a type annotation in
    ``models/utils.py`` (``State.optimizer: flax.optim.Optimizer``): a namespace with
    ``Optimizer = Any``;
  * ``sde_lib``, ``utils`` (imports tensorflow) and ``models.wideresnet_noise_conditional`` are
    imported by ``models/utils.py`` but not used by the model classes: empty modules
    (``utils.batch_mul`` defined);
  * ``torch`` (imported by configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py only to set
    ``config.device``), if not installed: a stand-in whose ``cuda.is_available()`` is False;
  * ``models/ncsnv2.py`` is not imported.
The model modules (ncsnpp.py, ddpm.py, layerspp.py, layers.py, up_or_down_sampling.py,
normalization.py, utils.py) then import and run unchanged.
"""
import argparse
import glob
import importlib
import json
import os
import sys
import types
from typing import Any, Dict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "score_sde")

MODEL_FIELDS = ("name", "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
                "resblock_type", "progressive", "progressive_input", "progressive_combine",
                "embedding_type", "fourier_scale", "fir", "fir_kernel", "skip_rescale",
                "init_scale", "conditional", "scale_by_sigma", "resamp_with_conv", "conv_size",
                "sigma_min", "sigma_max", "beta_min", "beta_max", "num_scales", "nonlinearity",
                "normalization")


def import_theirs(path: str):
  """(models.utils, get_config(name)) from their checkout, with the stand-ins above."""
  import flax
  path = os.path.abspath(path)
  if path not in sys.path:
    sys.path.insert(0, path)
  if not hasattr(flax, "optim"):
    flax.optim = types.SimpleNamespace(Optimizer=Any)
  for name in ("sde_lib", "utils", "models.wideresnet_noise_conditional"):
    mod = types.ModuleType(name)
    mod.batch_mul = lambda a, b: a * b.reshape((-1,) + (1,) * (a.ndim - 1))
    sys.modules[name] = mod
  try:
    importlib.import_module("torch")
  except ImportError:
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    torch.device = str
    sys.modules["torch"] = torch
  mutils = importlib.import_module("models.utils")
  importlib.import_module("models.ncsnpp")
  importlib.import_module("models.ddpm")

  def get_config(name):
    return importlib.import_module(f"configs.{name.replace('/', '.')}").get_config()

  return mutils, get_config


def config_fields(config) -> Dict[str, Any]:
  """The fields a converter reads, as plain JSON values."""
  m = config.model
  out = {}
  for f in MODEL_FIELDS:
    v = m.get(f, None)
    if isinstance(v, (tuple, list)):
      v = [x for x in v]
    out[f] = v
  out.update(image_size=config.data.image_size, num_channels=config.data.num_channels,
             centered=config.data.centered, sde=config.training.sde,
             continuous=config.training.continuous)
  return out


def model_of(mutils, config):
  import functools
  return functools.partial(mutils.get_model(config.model.name), config=config)()


def param_shapes(mutils, config) -> Dict[str, Any]:
  """{'a/b/c': shape} of model.init's variables (eval_shape: nothing allocated)."""
  import jax
  import jax.numpy as jnp
  from flax.traverse_util import flatten_dict
  model = model_of(mutils, config)
  s = config.data.image_size
  x = jnp.zeros((1, s, s, config.data.num_channels))
  lab = jnp.zeros((1,), jnp.int32)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  var = jax.eval_shape(lambda: model.init(rngs, x, lab, train=False))
  extra = sorted(k for k in var if k != "params")
  if extra:
    raise RuntimeError(f"collections other than params: {extra}")
  flat = flatten_dict(dict(var["params"]), sep="/")
  return {k: list(v.shape) for k, v in sorted(flat.items())}


def released_configs(root: str):
  names = []
  for pat in ("ve/*.py", "vp/*.py", "subvp/*.py", "vp/ddpm/*.py"):
    for f in sorted(glob.glob(os.path.join(root, "configs", pat))):
      names.append(os.path.relpath(f, os.path.join(root, "configs"))[:-3])
  return names


def write_layouts(root: str, mutils, get_config):
  layouts = {}
  for name in released_configs(root):
    config = get_config(name)
    if config.model.name not in ("ncsnpp", "ddpm"):
      continue
    shapes = param_shapes(mutils, config)
    n = int(sum(np.prod(s, dtype=np.int64) for s in shapes.values()))
    layouts[name] = {"config": config_fields(config), "params": shapes, "num_params": n}
    print(f"{name}: {config.model.name} {n:,} parameters")
  with open(os.path.join(OUT, "layouts.json"), "w") as f:
    json.dump(layouts, f, separators=(",", ":"), sort_keys=True)
  return layouts


# Small configs derived from the released ones (the base config, then these model / data fields).
# 8x8 -> 4x4 with attention at 4x4 (a checkpoint holds four trees of this size: the optimizer's
# target, Adam's two moments, and the EMA; about 340 kB each).
SMALL = dict(nf=8, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,))
FIXTURES = {
    # (a) NCSN++ cont. (VE) of CIFAR-10: Fourier features, FIR, BigGAN blocks, input 'residual'.
    "ncsnpp_ve": ("ve/cifar10_ncsnpp_continuous",
                  SMALL,
                  dict(image_size=8)),
    # (b) DDPM++ cont. (VP) of CIFAR-10: positional embedding, no FIR, no progressive paths.
    "ddpmpp_vp": ("vp/cifar10_ddpmpp_continuous",
                  SMALL,
                  dict(image_size=8)),
    # (c) the CelebA-HQ / FFHQ 256 structure: output 'output_skip', input 'input_skip', 'sum'.
    "ncsnpp_ve_skip": ("ve/ffhq_256_ncsnpp_continuous",
                       SMALL,
                       dict(image_size=8)),
    # (d) DDPM residual blocks with separate conv resampling, output 'residual', input
    # 'input_skip' combined by 'cat', no FIR, sub-VP (not a released combination; covers the
    # rest).
    "ncsnpp_subvp_ddpmblocks": ("subvp/cifar10_ncsnpp_continuous",
                                dict(SMALL, resblock_type="ddpm",
                                     progressive="residual", progressive_input="input_skip",
                                     progressive_combine="cat", skip_rescale=False,
                                     fir=False),
                                dict(image_size=8)),
    # (e) FIR resampling layers with learned convs: DDPM blocks with FIR Downsample / Upsample
    # convs, output and input 'residual' (their fused upsampling conv adds its bias after the
    # FIR filter; not a released combination).
    "ncsnpp_ve_fir_convs": ("ve/cifar10_ncsnpp_continuous",
                            dict(SMALL, resblock_type="ddpm", progressive="residual",
                                 progressive_input="residual", fir=True),
                            dict(image_size=8)),
}
BATCH = 3


def random_params(shapes: Dict[str, Any], seed: int, fourier_scale: float) -> Dict[str, Any]:
  """Random float32 parameters with O(1) activations: kernels N(0, 1/fan_in), biases N(0, 0.2^2),
  GroupNorm scales 1 + N(0, 0.2^2), Fourier frequencies N(0, fourier_scale^2). Nothing is left
  at its (often zero) initial value."""
  from flax.traverse_util import unflatten_dict
  rs = np.random.RandomState(seed)
  flat = {}
  for k, shape in sorted(shapes.items()):
    leaf = k.rsplit("/", 1)[-1]
    if k.endswith("GaussianFourierProjection_0/W"):
      v = fourier_scale * rs.randn(*shape)
    elif leaf == "scale":
      v = 1.0 + 0.2 * rs.randn(*shape)
    elif len(shape) == 1:
      v = 0.2 * rs.randn(*shape)
    else:
      v = rs.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
    flat[tuple(k.split("/"))] = v.astype(np.float32)
  return unflatten_dict(flat)


def state_dict(params_raw, params_ema, step: int, config) -> Dict[str, Any]:
  """What ``flax.training.checkpoints.save_checkpoint(dir, state)`` writes for their ``State``
  (models/utils.py; run_lib.py saves ``flax_utils.unreplicate(pstate).replace(rng=rng)``):
  ``serialization.to_bytes(state)`` = ``msgpack_serialize(to_state_dict(state))``. A
  ``flax.struct.dataclass`` becomes the dict of its pytree fields, a flax.optim ``Optimizer``
  the dict {'state': OptimizerState, 'target': params} (``optimizer_def`` is not a pytree field)
  and ``OptimizerState`` {'step', 'param_states'}; Adam's per-parameter state is
  ``_AdamParamState(grad_ema, grad_sq_ema)``."""
  import jax
  adam = jax.tree_util.tree_map(
      lambda p: {"grad_ema": np.full_like(p, 1e-3), "grad_sq_ema": np.full_like(p, 1e-6)},
      params_raw)
  return {
      "step": np.asarray(step, np.int32),
      "optimizer": {"state": {"step": np.asarray(step, np.int32), "param_states": adam},
                    "target": params_raw},
      "lr": config.optim.lr,
      "model_state": {},
      "ema_rate": config.model.ema_rate,
      "params_ema": params_ema,
      "rng": np.asarray([0, 42], np.uint32),
  }


def inputs(config, seed: int):
  """x in their data convention, the continuous times t, and the labels their model receives
  (run_lib / losses.get_score_fn): VE: sigma(t); VP / sub-VP: 999 t.

  t is chosen so that the converted network's conditioning is a float32 number exactly: for VE
  log sigma_ours = log(2 sigma(t)) in {-2.5, 0.75, 3.5}; for VP t in {3, 400, 1000} / 1024 (so
  999 t is exact too). The network then sees the same conditioning in both codebases."""
  rs = np.random.RandomState(seed)
  m = config.model
  s, ch = config.data.image_size, config.data.num_channels
  x0 = rs.rand(BATCH, s, s, ch)  # data in [0, 1]
  if config.data.centered:
    x0 = 2 * x0 - 1
  z = rs.randn(BATCH, s, s, ch)
  if config.training.sde == "vesde":
    log_sigma_ours = np.array([-2.5, 0.75, 3.5])
    sigma = np.exp(log_sigma_ours) / 2
    t = np.log(sigma / m.sigma_min) / np.log(m.sigma_max / m.sigma_min)
    x = x0 + sigma[:, None, None, None] * z
    labels = sigma
  else:
    t = np.array([3.0, 400.0, 1000.0]) / 1024
    b = 0.5 * t**2 * (m.beta_max - m.beta_min) + t * m.beta_min
    mean = np.exp(-0.5 * b)
    std = np.sqrt(1 - np.exp(-b)) if config.training.sde == "vpsde" else 1 - np.exp(-b)
    x = mean[:, None, None, None] * x0 + std[:, None, None, None] * z
    labels = 999 * t
  return x, t, labels


def write_fixture(name: str, mutils, get_config, seed: int):
  import jax
  import jax.numpy as jnp
  from flax import serialization
  base, model_over, data_over = FIXTURES[name]
  config = get_config(base)
  for k, v in model_over.items():
    setattr(config.model, k, v)
  for k, v in data_over.items():
    setattr(config.data, k, v)
  shapes = param_shapes(mutils, config)
  raw = random_params(shapes, seed, config.model.fourier_scale)
  ema = random_params(shapes, seed + 1, config.model.fourier_scale)
  out_dir = os.path.join(OUT, name)
  os.makedirs(out_dir, exist_ok=True)
  state = state_dict(raw, ema, 1000, config)
  with open(os.path.join(out_dir, "checkpoint_1"), "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  fields = config_fields(config)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(fields, f, indent=1, sort_keys=True)
  x, t, labels = inputs(config, seed + 2)
  model = model_of(mutils, config)
  outs = {}
  for dt in ("float64", "float32"):
    # float32 runs without x64: their code has numpy float64 scalars (np.sqrt(2.)) that would
    # promote to float64 under x64.
    with jax.enable_x64(dt == "float64"):
      p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), ema)
      out = model.apply({"params": p}, jnp.asarray(x, dt), jnp.asarray(labels, dt), train=False)
      outs[dt] = np.asarray(out, np.float64)
  np.savez(os.path.join(out_dir, "reference.npz"), x=x, t=t, labels=labels,
           out_float64=outs["float64"], out_float32=outs["float32"])
  n = sum(int(np.prod(s)) for s in shapes.values())
  rel = np.linalg.norm(outs["float32"] - outs["float64"]) / np.linalg.norm(outs["float64"])
  print(f"{name}: {n:,} parameters, |out| rms {np.sqrt(np.mean(outs['float64']**2)):.3g}, "
        f"their float32 vs float64 relative error {rel:.2e}")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--score_sde", required=True, help="path of a score_sde checkout")
  p.add_argument("--skip_layouts", action="store_true")
  p.add_argument("--only", default=None, help="write only this fixture")
  args = p.parse_args()
  os.makedirs(OUT, exist_ok=True)
  mutils, get_config = import_theirs(args.score_sde)
  if not args.skip_layouts:
    write_layouts(args.score_sde, mutils, get_config)
  for i, name in enumerate(FIXTURES):
    if args.only in (None, name):
      write_fixture(name, mutils, get_config, seed=10 * i)


if __name__ == "__main__":
  main()
