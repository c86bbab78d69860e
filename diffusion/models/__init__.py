"""Score / denoiser networks (flax.linen) and a registry by name.

Every network is called as ``model.apply(variables, x, c, labels=None, train=False)``:
``x`` is the (already scaled) noisy input, shape (B, ...); ``c`` is the noise-conditioning
scalar per example, shape (B,) (t, log sigma or EDM's c_noise, chosen by the
parameterization); ``labels`` is an int array (B,) or None. The output has the shape of ``x``.
"""
from typing import Callable, Dict

import flax.linen as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
  """Class decorator: makes ``get_model(name, **kwargs)`` build this module."""

  def wrap(cls):
    if name in _MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = cls
    return cls

  return wrap


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the registered network ``name`` with keyword hyper-parameters."""
  _import_all()
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; registered models: {sorted(_MODELS)}")
  return _MODELS[name](**kwargs)


def registered_models():
  _import_all()
  return sorted(_MODELS)


def _import_all():
  # Importing the modules registers their classes; kept lazy so `import diffusion` stays light.
  import importlib
  import pkgutil
  for info in pkgutil.iter_modules(__path__):
    if not info.name.startswith("_"):
      importlib.import_module(f"{__name__}.{info.name}")
