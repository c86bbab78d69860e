"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), in JAX, from weight files read without torch. Differentiable: consistency models
(Song et al. 2023) train with it as their distance.

  d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f_l(x)_{hwc} / |f_l(x)_{hw}| - f_l(y)_{hwc} /
            |f_l(y)_{hw}|)^2        (eq. 1; |.| the channel norm + 1e-10)

f_l are the ReLU outputs ("taps") of an ImageNet trunk applied to (x - shift) / scale, x in
[-1, 1] (the reference's ScalingLayer): 'alex' (AlexNet, Krizhevsky 2014 "one weird trick"
variant as in torchvision: its 5 ReLUs) or 'vgg' (VGG-16: relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3). w_l >= 0 are the learned channel weights of LPIPS v0.1.

Weights. Nothing is downloaded. The channel weights w_l ship in the ``lpips`` PyPI wheel
(BSD-2; ``lpips/weights/v0.1/<net>.pth``; ``pip install --no-deps lpips==0.1.4``, done by
``make venv``), or are passed as a file. The trunk's ImageNet weights ship with no package and
cannot be fetched here: pass torchvision's file, ``alexnet-owt-7be5be79.pth`` (net='alex') or
``vgg16-397923af.pth`` (net='vgg'), read by ``diffusion.convert.files.read_weights`` (zip or
legacy torch format, no torch needed); only its ``features.*`` entries are used.

Checked against the reference (``lpips.LPIPS`` of the ``lpips`` package, torch) on fixed image
pairs with seeded random trunk weights and the wheel's real channel weights
(tests/data/lpips_fixture.npz, written by tests/data/make_lpips_fixture.py).

Resolution. The reference takes any size above the trunk's minimum (AlexNet: 31 px, VGG: 32 px;
smaller inputs are refused here). Consistency models upsample CIFAR-10 / 64 px images to 224 x 224
with torch's bilinear interpolation (align_corners=False, no antialiasing) before LPIPS:
``resize=224`` does the same (``bilinear_matrix``). CM's own LPIPS was piq's VGG variant
(average instead of max pooling, ImageNet mean / std instead of the ScalingLayer); that variant
is not offered here: this module is Zhang et al.'s reference.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

NETS = ("alex", "vgg")
PACKAGE = "lpips"
PIP_SPEC = "lpips==0.1.4"
TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# The reference's ScalingLayer: (x - SHIFT) / SCALE per RGB channel, x in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# The trunks as torchvision's ``features`` Sequential: ('conv', index, kernel, stride, padding)
# (a conv + ReLU; 'tap' after it marks an LPIPS layer), ('pool', kernel, stride) max pooling.
_ALEX = (("conv", 0, 11, 4, 2), "tap", ("pool", 3, 2), ("conv", 3, 5, 1, 2), "tap",
         ("pool", 3, 2), ("conv", 6, 3, 1, 1), "tap", ("conv", 8, 3, 1, 1), "tap",
         ("conv", 10, 3, 1, 1), "tap")


def _vgg16():
  layers, index = [], 0
  for block, (n_convs, _) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))):
    if block:
      layers.append(("pool", 2, 2))
      index += 1
    for _ in range(n_convs):
      layers.append(("conv", index, 3, 1, 1))
      index += 2  # the conv and its ReLU
    layers.append("tap")
  return tuple(layers)


TRUNKS = {"alex": _ALEX, "vgg": _vgg16()}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
MIN_SIZE = {"alex": 31, "vgg": 32}  # the smallest input whose last tap is non-empty

Params = Dict[str, jax.Array]


def _check_net(net: str) -> None:
  if net not in NETS:
    raise ValueError(f"LPIPS net={net!r} is not accepted; accepted: {list(NETS)}")


# -- weights -----------------------------------------------------------------------------------


def channel_weights_path(net: str, path: Optional[str] = None) -> str:
  """LPIPS v0.1's channel-weight file: ``path`` if given, else ``weights/v0.1/<net>.pth`` of the
  installed ``lpips`` package (located without importing it: it imports torch)."""
  _check_net(net)
  if path is not None:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"LPIPS channel-weight file {path!r} does not exist")
    return path
  spec = importlib.util.find_spec(PACKAGE)
  for loc in (spec.submodule_search_locations or []) if spec else []:
    candidate = os.path.join(loc, "weights", "v0.1", f"{net}.pth")
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"LPIPS channel weights for net={net!r} not found: pip install "
                          f"--no-deps {PIP_SPEC} (make venv does), or pass the path of "
                          f"lpips/weights/v0.1/{net}.pth")


def params_from_state_dicts(net: str, trunk: Dict[str, np.ndarray],
                            lin: Dict[str, np.ndarray]) -> Params:
  """Params {'conv<i>/kernel' (k, k, in, out), 'conv<i>/bias', 'lin<l>' (C_l,)} from torchvision's
  state dict (``features.<i>.weight`` (out, in, k, k), ``features.<i>.bias``; other entries
  ignored) and LPIPS's (``lin<l>.model.1.weight`` (1, C_l, 1, 1)). ValueError naming a missing
  entry or a wrong shape (e.g. AlexNet's file passed for net='vgg')."""
  _check_net(net)
  params: Params = {}
  in_ch = 3
  for layer in TRUNKS[net]:
    if layer == "tap" or layer[0] != "conv":
      continue
    _, i, k, _, _ = layer
    w, b = trunk.get(f"features.{i}.weight"), trunk.get(f"features.{i}.bias")
    if w is None or b is None:
      raise ValueError(f"the trunk weights lack features.{i}.weight / .bias: pass torchvision's "
                       f"{TRUNK_FILES[net]} for net={net!r}")
    out_ch = w.shape[0]
    if w.shape != (out_ch, in_ch, k, k) or b.shape != (out_ch,):
      raise ValueError(f"trunk features.{i}.weight has shape {w.shape} (bias {b.shape}), "
                       f"net={net!r} needs ({out_ch}, {in_ch}, {k}, {k}): is this "
                       f"{TRUNK_FILES[net]}?")
    params[f"conv{i}/kernel"] = jnp.asarray(np.transpose(w, (2, 3, 1, 0)), jnp.float32)
    params[f"conv{i}/bias"] = jnp.asarray(b, jnp.float32)
    in_ch = out_ch
  for l, c in enumerate(CHANNELS[net]):
    w = lin.get(f"lin{l}.model.1.weight")
    if w is None or w.shape != (1, c, 1, 1):
      raise ValueError(f"LPIPS channel weights lin{l}.model.1.weight: got "
                       f"{None if w is None else w.shape}, net={net!r} needs (1, {c}, 1, 1): "
                       f"pass lpips/weights/v0.1/{net}.pth")
    params[f"lin{l}"] = jnp.asarray(w.reshape(c), jnp.float32)
  return params


def load_params(net: str, trunk_path: str, lin_path: Optional[str] = None) -> Params:
  """Params of :func:`distance` from torchvision's trunk file and LPIPS's channel weights (the
  installed wheel's when ``lin_path`` is None); see the module docstring."""
  from diffusion.convert.files import read_weights
  _check_net(net)
  if not isinstance(trunk_path, str) or not os.path.isfile(trunk_path):
    raise FileNotFoundError(f"LPIPS trunk weights {trunk_path!r} do not exist: pass the path of "
                            f"torchvision's {TRUNK_FILES[net]} (none ships with a package, "
                            f"nothing is downloaded)")
  return params_from_state_dicts(net, read_weights(trunk_path),
                                 read_weights(channel_weights_path(net, lin_path)))


# -- the network -------------------------------------------------------------------------------


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) rows of torch's bilinear interpolation (align_corners=False, no antialias):
  source coordinate (i + 0.5) n_in / n_out - 0.5, clamped at 0, between its two neighbours."""
  src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def _resize(x: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) -> (B, size, size, C) by :func:`bilinear_matrix` along H and W."""
  mh = jnp.asarray(bilinear_matrix(x.shape[1], size), x.dtype)
  mw = jnp.asarray(bilinear_matrix(x.shape[2], size), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw)


def taps(params: Params, x: jax.Array, net: str) -> List[jax.Array]:
  """The trunk's LPIPS layers [(B, H_l, W_l, C_l)] of scaled RGB input (B, H, W, 3)."""
  out = []
  for layer in TRUNKS[net]:
    if layer == "tap":
      out.append(x)
    elif layer[0] == "pool":
      _, k, s = layer
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")
    else:
      _, i, _, s, p = layer
      x = jax.lax.conv_general_dilated(x, params[f"conv{i}/kernel"], (s, s), ((p, p), (p, p)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu(x + params[f"conv{i}/bias"])
  return out


def _prepare(x: jax.Array, net: str, resize: Optional[int]) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if resize:
    x = _resize(x, resize)
  return (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)


def check_resize(net: str, resize: Optional[int]) -> None:
  """ValueError naming a bad net, or a resize that is neither None nor an int the net takes."""
  _check_net(net)
  if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int)
                             or resize < MIN_SIZE[net]):
    raise ValueError(f"resize={resize!r} must be None or an int >= {MIN_SIZE[net]} "
                     f"(net={net!r}); consistency models use 224")


def check_inputs(x_shape: Sequence[int], y_shape: Sequence[int], net: str,
                 resize: Optional[int]) -> None:
  """ValueError naming a bad shape, net or resize (see :func:`distance`)."""
  check_resize(net, resize)
  if tuple(x_shape) != tuple(y_shape):
    raise ValueError(f"LPIPS compares images of one shape, got {tuple(x_shape)} and "
                     f"{tuple(y_shape)}")
  if len(x_shape) != 4 or x_shape[-1] not in (1, 3):
    raise ValueError(f"LPIPS takes NHWC images with 1 (grey) or 3 (RGB) channels, got shape "
                     f"{tuple(x_shape)}")
  if resize is None and min(x_shape[1:3]) < MIN_SIZE[net]:
    raise ValueError(f"images of {x_shape[1]}x{x_shape[2]} are smaller than LPIPS's "
                     f"net={net!r} takes ({MIN_SIZE[net]} px): pass resize=224 (as consistency "
                     f"models do)")


def layer_distances(params: Params, x: jax.Array, y: jax.Array, net: str = "alex",
                    resize: Optional[int] = None) -> jax.Array:
  """(B, 5): the terms of :func:`distance` per LPIPS layer l, mean_{h,w} sum_c w_{l,c} (...)^2."""
  check_inputs(x.shape, y.shape, net, resize)
  b = x.shape[0]
  feats = taps(params, _prepare(jnp.concatenate([x, y]), net, resize), net)
  out = []
  for l, f in enumerate(feats):
    f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + EPS)
    out.append(jnp.mean(jnp.square(f[:b] - f[b:]) @ params[f"lin{l}"], axis=(1, 2)))
  return jnp.stack(out, axis=1)


def distance(params: Params, x: jax.Array, y: jax.Array, net: str = "alex",
             resize: Optional[int] = None) -> jax.Array:
  """LPIPS d(x, y) per example, (B, H, W, C) x 2 -> (B,), images in [-1, 1] (module doc).
  C = 1 is repeated to RGB; ``resize``: upsample both to resize x resize first (CM: 224)."""
  return jnp.sum(layer_distances(params, x, y, net, resize), axis=1)


def make_distance(net: str, trunk_path: str, lin_path: Optional[str] = None,
                  resize: Optional[int] = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``d(a, b) -> (B,)``: :func:`distance` with the weights loaded once (a loss's metric)."""
  check_resize(net, resize)
  params = load_params(net, trunk_path, lin_path)
  return lambda a, b: distance(params, a, b, net, resize)


def random_trunk(net: str, seed: int = 0) -> Dict[str, np.ndarray]:
  """A torchvision-layout trunk state dict with He-normal weights and small biases from numpy's
  PCG64(seed): the fixed trunk the reference check uses (no ImageNet weights exist here)."""
  _check_net(net)
  rng = np.random.default_rng(seed)
  out, in_ch = {}, 3
  convs = [layer for layer in TRUNKS[net] if layer != "tap" and layer[0] == "conv"]
  for (_, i, k, _, _), out_ch in zip(convs, _conv_widths(net)):
    fan_in = in_ch * k * k
    out[f"features.{i}.weight"] = (rng.standard_normal((out_ch, in_ch, k, k))
                                   * np.sqrt(2.0 / fan_in)).astype(np.float32)
    out[f"features.{i}.bias"] = (0.01 * rng.standard_normal(out_ch)).astype(np.float32)
    in_ch = out_ch
  return out


def _conv_widths(net: str) -> Tuple[int, ...]:
  if net == "alex":
    return (64, 192, 384, 256, 256)
  return (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
