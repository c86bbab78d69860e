"""The parts shared by the converters: an explicit name-by-name mapping that proves every source
parameter is used exactly once, the torch-to-flax layout changes, and the result type.

A converter builds the target tree with :class:`ParamMap`: ``take(name)`` reads a source tensor
(an unknown or twice-read name is an error naming it), ``put(path, value)`` writes one target
leaf (a path written twice is an error), and ``finish(target_shapes)`` checks that nothing of the
source is left over and that every target leaf is filled with its shape. So a checkpoint of
another architecture can never convert silently into a half-initialised network.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Array = np.ndarray


class ConversionError(ValueError):
  """A checkpoint that cannot be mapped: unknown architecture, missing / unused parameters,
  shape mismatches. The message names the parameter or the config field."""


def flatten(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}. Leaves are anything that is not a Mapping."""
  out: Dict[str, Any] = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, sep, name + sep))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> Dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}; the inverse of :func:`flatten`."""
  out: Dict[str, Any] = {}
  for name, v in flat.items():
    *path, last = name.split(sep)
    node = out
    for p in path:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def conv_kernel(w: Array) -> Array:
  """A torch Conv2d weight (O, I, kh, kw) as a flax Conv kernel (kh, kw, I, O). Both compute a
  cross-correlation, so no spatial flip."""
  if w.ndim != 4:
    raise ConversionError(f"a conv weight must be 4-D (O, I, kh, kw), got shape {w.shape}")
  return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: Array) -> Array:
  """A torch Linear weight (O, I), or a 1x1 Conv2d weight (O, I, 1, 1), as a flax Dense kernel
  (I, O)."""
  if w.ndim == 4:
    if w.shape[2:] != (1, 1):
      raise ConversionError(f"a 1x1 conv weight must have shape (O, I, 1, 1), got {w.shape}")
    w = w[:, :, 0, 0]
  if w.ndim != 2:
    raise ConversionError(f"a linear weight must be 2-D (O, I), got shape {w.shape}")
  return np.transpose(w)


class ParamMap:
  """Builds a flat target tree from a flat source dict, recording every read and write.

  Args:
    source: {name: array} of the released checkpoint.
    what: how errors name the source, e.g. "diffusers UNet2DModel checkpoint".
  """

  def __init__(self, source: Mapping[str, Array], what: str):
    self.source = dict(source)
    self.what = what
    self.used: Dict[str, str] = {}  # source name -> target path
    self.target: Dict[str, Array] = {}

  def take(self, name: str) -> Array:
    """The source tensor ``name`` as a float array; each name can be taken once."""
    if name in self.used:
      raise ConversionError(f"{self.what}: parameter {name!r} is used twice (already mapped to "
                            f"{self.used[name]!r})")
    if name not in self.source:
      close = sorted(k for k in self.source if k.rsplit(".", 1)[0] == name.rsplit(".", 1)[0])
      hint = f"; parameters of that module: {close}" if close else ""
      raise ConversionError(f"{self.what}: missing parameter {name!r}{hint}")
    self.used[name] = "?"
    return np.asarray(self.source[name])

  def has(self, name: str) -> bool:
    return name in self.source

  def put(self, path: str, value: Array, source_name: Optional[str] = None) -> None:
    """Writes target leaf ``path`` ('module/param'); ``source_name`` is recorded for errors."""
    if path in self.target:
      raise ConversionError(f"target parameter {path!r} is written twice")
    self.target[path] = np.asarray(value)
    if source_name is not None:
      self.used[source_name] = path

  def move(self, name: str, path: str, transform=None) -> None:
    """``put(path, transform(take(name)))``."""
    v = self.take(name)
    self.put(path, v if transform is None else transform(v), name)

  def finish(self, target_shapes: Mapping[str, Tuple[int, ...]],
             dtype=np.float32) -> Dict[str, Any]:
    """The nested target tree, after checking the mapping is complete and exact.

    Raises ConversionError listing the source parameters left unused, the target parameters
    left unfilled or unknown, and every shape mismatch.
    """
    problems: List[str] = []
    unused = sorted(set(self.source) - set(self.used))
    if unused:
      problems.append(f"{len(unused)} parameter(s) of the {self.what} are not used by the "
                      f"mapping (another architecture?): {_short(unused)}")
    missing = sorted(set(target_shapes) - set(self.target))
    if missing:
      problems.append(f"{len(missing)} parameter(s) of the target network are not filled: "
                      f"{_short(missing)}")
    unknown = sorted(set(self.target) - set(target_shapes))
    if unknown:
      problems.append(f"{len(unknown)} mapped parameter(s) do not exist in the target network: "
                      f"{_short(unknown)}")
    for path in sorted(set(self.target) & set(target_shapes)):
      got, want = tuple(self.target[path].shape), tuple(target_shapes[path])
      if got != want:
        src = [k for k, v in self.used.items() if v == path]
        problems.append(f"shape mismatch at {path!r} (from {src[0] if src else '?'}): "
                        f"checkpoint {got}, network {want}")
    if problems:
      raise ConversionError("; ".join(problems))
    return unflatten({k: np.asarray(v, dtype) for k, v in self.target.items()})


def _short(names: Sequence[str], n: int = 12) -> str:
  names = list(names)
  more = f" ... and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(repr(x) for x in names[:n]) + more


@dataclasses.dataclass
class Converted:
  """A converted network and what the rest of a config needs to run it.

  Attributes:
    params: nested flax params of ``model(**net)`` (numpy float32).
    model: registered network name ('ddpm_unet', 'ncsnpp', 'ddpmpp').
    net: its constructor kwargs (config.model.net).
    sde: schedule name and fields (config.sde.name / config.sde.fields).
    parameterization: config.model.parameterization ('eps', 'v', 'x0').
    time_input: config.model.time_input (what c the network sees).
    image_shape: (H, W, C) of the data.
    source: provenance, written into the converted workdir (format, file, sha256, ...).
    notes: what the conversion changed on the way (one line each), for the report.
    sampling_t_min: where the source's samplers stop, when above the schedule's t_min (score
      SDE's VP / sub-VP: 1e-3 on a schedule, training and likelihood range from 1e-5).
    clip_denoised: whether the source's samplers clip x0_hat to [-1, 1] (diffusers'
      ``clip_sample``), for config.sampling.clip_denoised.
    latent: for a latent diffusion model (DiT): ``image_size`` (the pixel images' side),
      ``normalization`` and ``scale_factor`` (config.latent); ``image_shape`` is then the
      latents' shape. None: a pixel-space model.
  """
  params: Dict[str, Any]
  model: str
  net: Dict[str, Any]
  sde: Tuple[str, Dict[str, Any]]
  parameterization: str
  time_input: str
  image_shape: Tuple[int, int, int]
  source: Dict[str, Any]
  notes: List[str] = dataclasses.field(default_factory=list)
  sampling_t_min: Optional[float] = None
  clip_denoised: bool = False
  latent: Optional[Dict[str, Any]] = None
