"""Config files are data: they import only ml_collections, their static tables match the
libraries, and every experiment config passes the driver's validation."""
import glob
import json
import os
import subprocess
import sys
from typing import Dict

import pytest

from tests.conftest import REPO

HELPERS = ("common.py", "few_step.py", "__init__.py")
EXPERIMENT_FILES = sorted(
    os.path.relpath(f, REPO) for f in glob.glob(os.path.join(REPO, "configs", "*", "*.py"))
    if os.path.basename(f) not in HELPERS)
# Modules no config file may bring in (directly or through another config).
FORBIDDEN = ("jax", "jaxlib", "flax", "optax", "diffusion", "experiments", "numpy",
             "tensorflow")


def test_there_are_experiment_configs():
  assert "configs/toy/checkerboard_vp.py" in EXPERIMENT_FILES
  assert "configs/cifar10/ddpm.py" in EXPERIMENT_FILES and len(EXPERIMENT_FILES) >= 20


_IMPORT_CHECK = r"""
import importlib.util, json, sys
forbidden = tuple(sys.argv[1].split(","))
def loaded():
  return sorted({m.split(".")[0] for m in sys.modules} & set(forbidden))
out = {"before": loaded()}
for path in sys.argv[2:]:
  spec = importlib.util.spec_from_file_location("_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.get_config()
  out[path] = loaded()
print(json.dumps(out))
"""


def test_loading_every_config_imports_no_library():
  """In a fresh interpreter, loading each config file (in turn) imports neither JAX nor
  diffusion (nor numpy, flax, ...): the first file that does is named."""
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, ",".join(FORBIDDEN),
                      *EXPERIMENT_FILES], cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout)
  assert out.pop("before") == []
  assert list(out) == EXPERIMENT_FILES
  for path in EXPERIMENT_FILES:
    assert out[path] == [], f"loading {path} imported {out[path]}"


def registry_hyperparameter_types() -> Dict[str, type]:
  """{name: type of its default} over all registered samplers (int with float is float)."""
  from diffusion.samplers import registered_samplers, sampler_info
  types: Dict[str, type] = {}
  for name in registered_samplers():
    for k, v in sampler_info(name).defaults().items():
      tp, prev = type(v), types.get(k)
      assert tp in (bool, int, float, str), (
          f"sampler {name!r}: hyper-parameter {k!r} has a default of type {tp.__name__}; "
          f"configs need bool, int, float or str")
      if prev is not None and prev is not tp:
        assert {prev, tp} == {int, float}, (
            f"hyper-parameter {k!r} has type {prev.__name__} in one sampler and {tp.__name__} "
            f"in {name!r}")
        tp = float
      types[k] = tp
  return types


def test_sampling_table_equals_the_registry():
  from configs import sampling
  reg = registry_hyperparameter_types()
  table = sampling.HYPERPARAMETER_TYPES
  missing = {k: tp.__name__ for k, tp in reg.items() if k not in table}
  assert not missing, ("configs/sampling.py HYPERPARAMETER_TYPES lacks sampler "
                       f"hyper-parameter(s); add: {missing}")
  stale = sorted(set(table) - set(reg))
  assert not stale, f"configs/sampling.py HYPERPARAMETER_TYPES lists unknown {stale}; remove them"
  wrong = {k: f"{table[k].__name__} -> {reg[k].__name__}" for k in reg if table[k] is not reg[k]}
  assert not wrong, f"configs/sampling.py HYPERPARAMETER_TYPES has wrong types: {wrong}"


def test_sampling_config_has_a_typed_placeholder_per_hyperparameter():
  from configs import sampling
  c = sampling.get_config()
  for k, tp in sampling.HYPERPARAMETER_TYPES.items():
    assert c[k] is None and c.get_type(k) is tp, k


def test_literal_networks_equal_the_model_presets():
  from configs.cifar10 import common as cifar
  from configs.cifar10 import dit as cifar_dit
  from configs.digits import common as digits
  from configs.digits import dit as digits_dit
  from diffusion.models import dit, ncsnpp, unet
  assert cifar.DDPM_UNET == unet.preset("cifar10")
  assert cifar.NCSNPP == ncsnpp.preset("cifar10")
  assert cifar.NCSNPP_DEEP == ncsnpp.preset("cifar10_deep")
  assert digits.NET == unet.preset("digits", num_res_blocks=1)
  assert cifar_dit.NET == dit.preset("S/2")
  assert digits_dit.NET == dit.preset("digits")


# The autoencoder of each latent config (its latents are stood in for: tests/conftest.py).
LATENT_AUTOENCODERS = {
    "configs/digits/latent_dit.py": "configs/digits/autoencoder.py",
    "configs/imagenet/dit_xl2_256.py": "sd",
    "configs/imagenet/sit_xl2_256.py": "sd",
    **{f"configs/imagenet/edm2_img512_{size}.py": "sd"
       for size in ("xs", "s", "m", "l", "xl", "xxl")},
}


def _autoencoder_net(source):
  from diffusion.models import autoencoder
  from experiments.config_files import load_config_file
  if source == "sd":
    return autoencoder.preset("sd")
  return load_config_file(os.path.join(REPO, source)).model.net.to_dict()


@pytest.mark.parametrize("path", EXPERIMENT_FILES)
def test_every_experiment_config_passes_validation(path, tmp_path):
  """Every config validates for training; a student (one naming a teacher, whose workdir does not
  exist here) validates for sampling, and its teacher's config file is a compatible teacher. A
  latent config validates on a stand-in folder of its autoencoder's latents."""
  from experiments import distill
  from experiments.config_files import load_config_file
  from experiments.validate import validate
  from tests.conftest import stand_in_latents
  config = load_config_file(os.path.join(REPO, path))
  assert (config.latent.dataset is not None) == (path in LATENT_AUTOENCODERS), path
  if path in LATENT_AUTOENCODERS:
    config.latent.dataset = stand_in_latents(str(tmp_path), config,
                                             _autoencoder_net(LATENT_AUTOENCODERS[path]))
  teacher = config.distill.teacher_config
  validate(config, "sample" if teacher else "train", device_count=1, process_count=1)
  if teacher:
    distill.check_teacher(config, load_config_file(os.path.join(REPO, teacher)))
