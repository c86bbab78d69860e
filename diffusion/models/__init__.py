"""Score / denoiser networks (flax.linen), a registry by name, and the contract they offer.

Every network is called as ``model.apply(variables, x, c, labels=None, train=False)``:
``x`` is the (already scaled) noisy input, shape (B, ...); ``c`` is the noise-conditioning
scalar per example, shape (B,) (t, log sigma or EDM's c_noise, chosen by the
parameterization); ``labels`` is an int array (B,) or None. The output has the shape of ``x``
(a denoiser network), or is (B, num_classes) logits (a classifier, registered with
``outputs='logits'``).

The contract. Beyond that call a network MAY offer, and the rest of the codebase asks only
through :func:`capabilities` (never by probing attributes itself):

  dtype             a dataclass field ``dtype``: the network can compute in bfloat16
                    (``diffusion.networks.compute_model`` clones it with another dtype)
  num_classes       an int field > 0: a denoiser embeds class labels (index num_classes is
                    NULL); a classifier has that many outputs
  return_logvar     ``__call__(..., return_logvar=True) -> (F, u (B,))``: a learned
                    log-variance head (EDM2's uncertainty weighting, loss 'edm2'; sCM's
                    adaptive weighting); a network whose head is optional has a bool field
                    ``logvar_head`` and offers return_logvar only when it is True
  project_params    a method ``project_params(params) -> params`` applied after every
                    optimizer update (EDM2's forced weight normalisation)
  time_inputs       a class attribute ``time_inputs = 2``: ``c`` may also be (B, 2), two times
                    (a two-time flow-map network, e.g. MeanFlow's u(x_t, r, t) fed
                    (c(t), c(t - r))): column 0 through the network's own noise embedding,
                    column 1 through a twin with its own parameters, summed; a (B,) ``c`` is
                    unchanged. Networks without it (time_inputs 1) refuse (B, 2)
  outputs           'denoiser' (the default), 'logits' (a noise-conditional classifier of
                    x_t, objective 'classifier') or 'autoencoder' (below), given at
                    registration

An autoencoder network (``outputs='autoencoder'``, e.g. ``autoencoder_kl``,
diffusion.models.autoencoder) maps images to latents and back instead of predicting from a
noisy input. It offers, with x (B, H, W, C) in [-1, 1] and latents (B, H/f, W/f, c):

  encode(x) -> (mean, logvar)   the diagonal Gaussian posterior q(z | x) (``method='encode'``)
  decode(z) -> x_rec            (B, H, W, out_channels) (``method='decode'``)
  __call__(x, c=None, labels=None, train=False, noise=None) -> (x_rec, mean, logvar)
                                z = mean, or mean + exp(logvar / 2) * noise with noise drawn by
                                the caller in the latent's shape; c and train are ignored
and its module has ``latent_shape(image_shape, channels, latent_channels)`` and
``downsample_factor(channels)``. It is not a denoiser: no parameterization or objective of the
diffusion path applies to it.
"""
import dataclasses
import inspect
from typing import Callable, Dict

import flax.linen as nn

OUTPUTS = ("denoiser", "logits", "autoencoder")
_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_OUTPUTS: Dict[str, str] = {}


def register_model(name: str, outputs: str = "denoiser"):
  """Class decorator: makes ``get_model(name, **kwargs)`` build this module. ``outputs``: what
  the network predicts, 'denoiser' (the parameterization's F), 'logits' (a classifier) or
  'autoencoder' (encode / decode, the module docstring)."""
  if outputs not in OUTPUTS:
    raise ValueError(f"register_model({name!r}): outputs={outputs!r}; accepted: {OUTPUTS}")

  def wrap(cls):
    if name in _MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = cls
    _OUTPUTS[name] = outputs
    return cls

  return wrap


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What a network instance offers (the module docstring's contract)."""
  outputs: str = "denoiser"
  dtype: bool = False
  num_classes: int = 0
  return_logvar: bool = False
  project_params: bool = False
  time_inputs: int = 1


def capabilities(model: nn.Module) -> Capabilities:
  """The contract ``model`` (a built network) fulfils; see the module docstring."""
  fields = {f.name for f in dataclasses.fields(model)} if dataclasses.is_dataclass(model) else ()
  classes = getattr(model, "num_classes", 0)
  name = next((n for n, cls in _MODELS.items() if type(model) is cls), None)
  return Capabilities(
      outputs=_OUTPUTS.get(name, "denoiser"), dtype="dtype" in fields,
      num_classes=classes if isinstance(classes, int) and not isinstance(classes, bool) else 0,
      return_logvar=("return_logvar" in inspect.signature(type(model).__call__).parameters
                     and getattr(model, "logvar_head", True) is not False),
      project_params=callable(getattr(model, "project_params", None)),
      time_inputs=int(getattr(type(model), "time_inputs", 1)))


def model_outputs(name: str) -> str:
  """'denoiser', 'logits' or 'autoencoder': what the registered network ``name`` predicts."""
  _import_all()
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; registered models: {sorted(_MODELS)}")
  return _OUTPUTS[name]


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
