"""Deterministic, resumable, per-process image pipelines (no TensorFlow needed to read).

One entry point for every image dataset the drivers use::

  it = make_image_dataset("cifar10", "train", batch_size=128, seed=0,
                          process_index=jax.process_index(),
                          process_count=jax.process_count(), start_step=step)
  batch = next(it)  # {'image': float32 (B, H, W, C) in [-1, 1], 'label': int32 (B,)}

Datasets: ``digits`` (scikit-learn's 8x8 digits, embedded: see :mod:`diffusion.data.digits`),
the tfds catalog datasets ``mnist``, ``cifar10``, ``celeb_a``, ``lsun/<category>`` and
``imagenet2012``, read with ``tfds.data_source`` (random access to array_record files, no
TensorFlow), and ``folder``: a folder of class folders (ImageNet's train layout,
:mod:`diffusion.data.folder`), ``data_dir`` the root holding one folder per split. Preparing a
catalog dataset needs TensorFlow to encode its images, once::

  pip install tensorflow-cpu   # or: pip install -e .[tf]
  tfds build cifar10 --file_format=array_record [--data_dir=DIR]
  tfds build imagenet2012 --manual_dir=DIR_OF_THE_ILSVRC2012_TARS --file_format=array_record

Determinism and sharding. The examples form one infinite stream: epoch e is the permutation
``numpy.random.default_rng([seed, e]).permutation(N)`` of the split (the identity without
``shuffle``). The global batch of step i is the stream positions
``[i * B * P, (i + 1) * B * P)`` (B the per-process ``batch_size``, P ``process_count``), and
process p gets the p-th contiguous block of B of them: processes are disjoint and together read
each epoch exactly once. The per-example randomness (dequantization noise, flips) of step i on
process p comes from ``default_rng([seed, 1, i, p])``. So batch i is a function of
(seed, i, process_index) only (for fixed sizes), and an iterator made with ``start_step=k``
yields exactly batches k, k+1, ... of a fresh run.

Background prefetch. With ``workers > 0`` the iterator computes ``batch(step)`` for the next
``workers * prefetch`` steps on a pool of ``workers`` threads (or, with
``worker_type='process'``, spawned processes that each reopen the source from picklable
arguments) while the caller trains on the current one, and returns them in step order
(:class:`Prefetcher`). Each batch is still ``batch(step)``, so the batches are bit-identical to
the synchronous ones and resuming at ``start_step=k`` starts the prefetch at k. A worker's
exception is re-raised by ``next()`` with its traceback (a process's as the text of its
``__cause__``); ``close()`` (or ``with``) stops the workers.

Decoded cache. With ``cache_decoded`` (by default 'auto': a split read more than once whose
decoded uint8 images fit in ``cache_limit_bytes``, 4 GiB: digits, MNIST, CIFAR-10) the split is
decoded once into one uint8 array and ``batch(step)`` gathers its rows from it; the conversion,
noise and flips are unchanged, so the batches are bit-identical to the uncached ones.
``benchmarks/input_pipeline.py`` measures both (PIL's PNG decode holds the GIL: threads overlap
the data with the step but do not add decoding cores; the cache removes the decoding).

Pixel values. ``L`` grey levels (256; 17 for digits) map to [-1, 1] by uniform
dequantization ``v = (x + u) / L``, ``u ~ U[0, 1)``, then ``2 v - 1`` (Theis et al. 2016; so
that the continuous model's likelihood bounds the discrete one), or without dequantization by
``x / (L - 1) * 2 - 1``.

Geometry (``crop``). 'center', every dataset's default but ImageNet's: celeb_a is
center-cropped to 140x140 and resized to 64x64 (``image_size``), the convention of Song et al.
2021 (and NCSN / NCSNv2); lsun images are center-cropped to a square and resized to
``image_size`` (default 256). A resize (bilinear, antialiased: PIL) happens only when
``image_size`` differs from the (cropped) native size; the result is rounded back to uint8
before dequantization. 'adm', the default of ``imagenet2012`` and ``folder`` (and accepted for
``lsun/*``, the datasets cropped to a square): ADM's ``center_crop_arr`` (Dhariwal & Nichol
2021, guided-diffusion's image_datasets.py), the ImageNet preprocessing of ADM, DiT, SiT and
EDM2 (``dataset_tool.py --transform=center-crop-dhariwal``): see :func:`adm_center_crop`.
ImageNet's images have no common size, so ``image_size`` is needed (``imagenet2012`` defaults to
256; ``folder`` has no default).
"""
import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import functools
import logging
import multiprocessing
import os
import pickle
import threading
import time
import uuid
import weakref
from typing import (Any, Callable, Deque, Dict, Generic, Iterator, Optional, Tuple, TypeVar,
                    Union)

import numpy as np

from diffusion.data import digits as digits_lib
from diffusion.data import folder as folder_lib

Batch = Dict[str, np.ndarray]
log = logging.getLogger(__name__)

_NOISE_TAG = 1  # separates the per-batch noise seeds [seed, 1, step, p] from [seed, epoch]


class DatasetNotPreparedError(RuntimeError):
  """A tfds catalog dataset is not prepared as array_record where tfds looks for it."""


CROPS = ("center", "adm")  # the geometries of the ``crop`` argument (module docstring)


@dataclasses.dataclass(frozen=True)
class _Spec:
  # (H, W, C) after cropping; H = W = None: the images have no common size (image_size needed)
  native_shape: Tuple[Optional[int], Optional[int], int]
  num_classes: Optional[int]  # None: the class folders' count (the 'folder' dataset)
  levels: int
  default_size: Optional[int] = None  # output size when image_size is None (None: native)
  crop: Optional[int] = None  # center crop to crop x crop (None: none; 0: to a square)
  label_key: Optional[str] = "label"
  default_crop: str = "center"  # the ``crop`` geometry when none is given (CROPS)


_SPECS: Dict[str, _Spec] = {
    "digits": _Spec(digits_lib.SHAPE, digits_lib.NUM_CLASSES, digits_lib.LEVELS),
    "mnist": _Spec((28, 28, 1), 10, 256),
    "cifar10": _Spec((32, 32, 3), 10, 256),
    "celeb_a": _Spec((140, 140, 3), 0, 256, default_size=64, crop=140, label_key=None),
    # ILSVRC 2012 (Russakovsky et al. 2015): 1,281,167 train / 50,000 validation images of
    # 1000 classes, labels in the sorted synset order of the class folders.
    "imagenet2012": _Spec((None, None, 3), 1000, 256, default_size=256, crop=0,
                          default_crop="adm"),
    "folder": _Spec((None, None, 3), None, 256, crop=0, default_crop="adm"),
}
_LSUN = _Spec((256, 256, 3), 0, 256, default_size=256, crop=0, label_key=None)


def _spec(name: str) -> _Spec:
  if name in _SPECS:
    return _SPECS[name]
  if name.startswith("lsun/") and len(name) > len("lsun/"):
    return _LSUN
  raise ValueError(f"unknown image dataset {name!r}; accepted: {sorted(_SPECS)} "
                   "or 'lsun/<category>'")


def dataset_names() -> Tuple[str, ...]:
  """Names accepted by :func:`make_image_dataset` (plus any ``lsun/<category>``)."""
  return tuple(sorted(_SPECS))


def image_shape(name: str, image_size: Optional[int] = None) -> Tuple[int, int, int]:
  """(H, W, C) of the images :func:`make_image_dataset` yields for ``name``."""
  spec = _spec(name)
  size = _output_size(name, spec, image_size)
  if size is None:
    return spec.native_shape
  return (size, size, spec.native_shape[2])


def has_labels(name: str) -> bool:
  """Whether ``name``'s examples carry class labels (a 'folder' dataset: its class folders)."""
  spec = _spec(name)
  return spec.num_classes is None or spec.num_classes > 0


def num_classes(name: str, data_dir: Optional[str] = None, split: str = "train") -> int:
  """Number of label classes (0: unlabelled; labels are then all 0). For 'folder' the number of
  class folders of ``data_dir``/``split`` (:func:`diffusion.data.folder.list_classes`)."""
  spec = _spec(name)
  if spec.num_classes is not None:
    return spec.num_classes
  return len(folder_lib.list_classes(folder_split_dir(data_dir, split)))


def folder_split_dir(data_dir: Optional[str], split: str) -> str:
  """``data_dir``/``split``, the folder of a 'folder' dataset's split; ValueError without a
  ``data_dir`` or with a ``split`` that is not a plain folder name."""
  if not data_dir or not isinstance(data_dir, str):
    raise ValueError(f"the 'folder' dataset reads data_dir/<split>/<class>/<image>; data_dir="
                     f"{data_dir!r} must be the folder holding the split folders")
  if (not isinstance(split, str) or not split or split in (".", "..") or "/" in split
      or os.sep in split or "[" in split):
    raise ValueError(f"split={split!r} must name a sub-folder of {data_dir!r} (e.g. 'train', "
                     f"'val'); tfds slicing is not supported for folders")
  return os.path.join(data_dir, split)


def resolve_crop(name: str, crop: Optional[str]) -> str:
  """The geometry ``crop`` (None: the dataset's default: 'adm' for imagenet2012 and folder,
  'center' otherwise) after checking it: one of CROPS, and 'adm' only for the datasets cropped
  to a square (imagenet2012, folder, lsun/*)."""
  spec = _spec(name)
  if crop is None:
    return spec.default_crop
  if crop not in CROPS:
    raise ValueError(f"crop={crop!r} is not accepted; accepted: {list(CROPS)} (or None: the "
                     f"dataset's default, {spec.default_crop!r} for {name!r})")
  if crop == "adm" and spec.crop != 0:
    raise ValueError(f"crop='adm' (ADM's center crop to a square) applies to the datasets "
                     f"cropped to a square (imagenet2012, folder, lsun/<category>), not to "
                     f"{name!r}; use crop='center' or None")
  return crop


def num_levels(name: str) -> int:
  """Number of grey levels per channel (256; 17 for digits), e.g. for bits/dim."""
  return _spec(name).levels


def _output_size(name: str, spec: _Spec, image_size: Optional[int]) -> Optional[int]:
  if image_size is not None and (not isinstance(image_size, (int, np.integer))
                                 or image_size < 1):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
  if name == "digits" and image_size not in (None, 8):
    raise ValueError(f"digits are 8x8; image_size={image_size} is not supported (use None or 8)")
  size = image_size if image_size is not None else spec.default_size
  if size is None and spec.native_shape[0] is None:
    raise ValueError(f"the images of {name!r} have no common size: give image_size (e.g. 256 "
                     f"or 512, as DiT, SiT and EDM2 train on ImageNet)")
  return size


# ----------------------------------------------------------------------------- pixels


def to_float(x: np.ndarray, levels: int, noise: Optional[np.ndarray] = None) -> np.ndarray:
  """Maps integers in 0..levels-1 to float32 in [-1, 1].

  With ``noise`` (same shape, U[0, 1)): ``2 (x + noise) / levels - 1`` in [-1, 1)
  (uniform dequantization); without: ``2 x / (levels - 1) - 1`` in [-1, 1].
  """
  out = x.astype(np.float32)  # a new array: the arithmetic below is in place, no temporaries
  if noise is None:
    out *= 2.0 / (levels - 1)
  else:
    out += noise.astype(np.float32, copy=False)
    out *= 2.0 / levels
  out -= 1.0
  return out


def to_levels(x: np.ndarray, levels: int) -> np.ndarray:
  """Inverse of ``to_float`` without noise: the exact grid ``2 k / (levels - 1) - 1`` -> the
  integer levels k (int32, same shape), e.g. for evaluation's own dequantization draws.

  Raises ValueError if ``x`` is not on that grid (more than 1e-3 of a level off): dequantized
  data cannot be mapped back.
  """
  u = (np.asarray(x, np.float64) + 1.0) * ((levels - 1) / 2.0)
  k = np.rint(u)
  if x.size and (np.max(np.abs(u - k)) > 1e-3 or k.min() < 0 or k.max() > levels - 1):
    raise ValueError(f"data are not on the {levels}-level grid 2 k / {levels - 1} - 1 (make the "
                     f"dataset with dequantize=False)")
  return k.astype(np.int32)


def quantize(x: np.ndarray, levels: int) -> np.ndarray:
  """Model samples in [-1, 1] -> integer levels k = clip(floor((x + 1) L / 2), 0, L - 1), int32:
  the inverse of the uniform dequantization ``2 (k + u) / L - 1``, u in [0, 1) (the bin that
  holds x). NaN is an error."""
  x = np.asarray(x, np.float64)
  if np.isnan(x).any():
    raise ValueError("quantize: samples contain NaN")
  return np.clip(np.floor((x + 1.0) * (levels / 2.0)), 0, levels - 1).astype(np.int32)


def _center_crop(img: np.ndarray, crop: Optional[int]) -> np.ndarray:
  if crop is None:
    return img
  h, w = img.shape[:2]
  size = min(h, w) if crop == 0 else crop
  if size > min(h, w):
    raise ValueError(f"cannot center-crop {size}x{size} from an image of {h}x{w}")
  top, left = (h - size) // 2, (w - size) // 2
  return img[top:top + size, left:left + size]


def adm_center_crop(image: Any, size: int) -> np.ndarray:
  """ADM's center crop of an image to size x size (Dhariwal & Nichol 2021; guided-diffusion's
  ``image_datasets.center_crop_arr``, the ImageNet preprocessing of ADM, DiT, SiT and EDM2).

  ``image``: a PIL image or a uint8 (H, W) / (H, W, C) array. With PIL, on (W, H):
    1. while min(W, H) >= 2 size: (W, H) <- (W // 2, H // 2) by a BOX filter (2x2 means, the
       last odd row / column dropped);
    2. scale s = size / min(W, H); resize to (round(W s), round(H s)) with BICUBIC (Python's
       round: halves to even), so the short side becomes size;
    3. crop size x size at top = (H' - size) // 2, left = (W' - size) // 2.
  Returns uint8 (size, size, C), C the input's channels ((size, size, 1) for grey; convert a PIL
  image to RGB first, as ADM does). Identical to the reference, uint8
  for uint8, with the same PIL (tests/data/adm_crop). The BOX halvings make the large
  reductions antialiased; the resize then changes the size by less than 2x.
  """
  from PIL import Image  # local: only needed for resizing
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  squeeze = False
  if not isinstance(image, Image.Image):
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3
                                                           and arr.shape[2] not in (1, 3, 4)):
      raise ValueError(f"adm_center_crop takes a PIL image or a uint8 (H, W) / (H, W, 1|3|4) "
                       f"array, got {arr.dtype} {arr.shape}")
    squeeze = arr.ndim == 2 or arr.shape[2] == 1
    image = Image.fromarray(arr.reshape(arr.shape[:2]) if squeeze else arr)
  while min(image.size) >= 2 * size:
    image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize(tuple(round(n * scale) for n in image.size), resample=Image.BICUBIC)
  out = np.asarray(image)
  top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
  out = out[top:top + size, left:left + size]
  return out[..., None] if out.ndim == 2 else out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (antialiased when shrinking) resize of a uint8 HWC image to size x size."""
  if img.shape[0] == size and img.shape[1] == size:
    return img
  from PIL import Image  # local: only needed for resizing
  squeeze = img.shape[2] == 1
  pil = Image.fromarray(img[..., 0] if squeeze else img)
  out = np.asarray(pil.resize((size, size), resample=Image.BILINEAR))
  return out[..., None] if squeeze else out


# ----------------------------------------------------------------------------- sources


def _open_source(name: str, split: str, data_dir: Optional[str]):
  """A random-access source: ``len(src)``, ``src[i] -> dict(image=uint8 HWC, ...)``."""
  if name == "digits":
    return digits_lib.DigitsSource(split)
  if name == "folder":
    return folder_lib.FolderSource(folder_split_dir(data_dir, split))
  import tensorflow_datasets as tfds  # local: slow import, not needed for digits
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, AssertionError, FileNotFoundError) as e:
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    flag = f" --data_dir={data_dir}" if data_dir else ""
    manual = ""
    if name == "imagenet2012":  # tfds cannot download ImageNet: the archives come by hand
      flag = " --manual_dir=DIR" + flag
      manual = (" ImageNet is a manual download: put ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar (from image-net.org) in DIR; or read the extracted "
                "class folders with the 'folder' dataset (docs/images.md).")
    raise DatasetNotPreparedError(
        f"tfds dataset {name!r} (split {split!r}) is not prepared as array_record in "
        f"{where}. Preparing catalog image datasets needs TensorFlow to encode the images: "
        f"install it (`pip install -e .[tf]` or `pip install tensorflow-cpu`), then run "
        f"`tfds build {name} --file_format=array_record{flag}`.{manual} (tfds said: {e})") from e


def _load_example(source: Any, index: int, spec: _Spec, size: Optional[int],
                  crop: str = "center") -> Tuple[np.ndarray, int]:
  record = source[int(index)]  # one record at a time (batched reads fail under tfds mocks)
  img = np.asarray(record["image"])
  if img.ndim == 2:
    img = img[..., None]
  if crop == "adm":
    img = adm_center_crop(img, size)
  else:
    img = _center_crop(img, spec.crop)
    if size is not None:
      img = _resize(img, size)
  label = int(record[spec.label_key]) if spec.label_key else 0
  return img, label


# ----------------------------------------------------------------------------- prefetch

T = TypeVar("T")


class Prefetcher(Iterator[T], Generic[T]):
  """``fn(start), fn(start + 1), ...`` (up to ``stop``, exclusive; None: endless) computed on
  ``workers`` threads, at most ``workers * prefetch`` steps ahead of the consumer, returned in
  step order.

  ``next()`` re-raises an exception of ``fn`` (with its traceback from the worker thread) and
  closes the prefetcher. ``close()`` cancels the steps not started and joins the threads (it
  waits for the steps running, at most ``workers`` calls of ``fn``); after it ``next()`` raises
  StopIteration. Also a context manager.

  Attributes:
    next_step: the step the next ``next()`` returns.
  """

  def __init__(self, fn: Callable[[int], T], start: int, stop: Optional[int], *, workers: int,
               prefetch: int, executor: Optional[concurrent.futures.Executor] = None):
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
      raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 1:
      raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
    self._fn = fn
    self.next_step = int(start)
    self._submitted = int(start)  # the first step not yet submitted
    self._stop = stop
    self._depth = int(workers) * int(prefetch)
    self._queue: Deque[concurrent.futures.Future] = collections.deque()
    self._owned = executor is None  # our own threads, shut down by close()
    self._pool: Optional[concurrent.futures.Executor] = (
        executor if executor is not None
        else concurrent.futures.ThreadPoolExecutor(int(workers), thread_name_prefix="prefetch"))

  @property
  def closed(self) -> bool:
    return self._pool is None

  def _fill(self) -> None:
    while (len(self._queue) < self._depth
           and (self._stop is None or self._submitted < self._stop)):
      self._queue.append(self._pool.submit(self._fn, self._submitted))
      self._submitted += 1

  def __iter__(self) -> "Prefetcher[T]":
    return self

  def __next__(self) -> T:
    if self._pool is None:
      raise StopIteration
    self._fill()
    if not self._queue:
      raise StopIteration
    future = self._queue.popleft()
    try:
      out = future.result()  # a worker's exception is raised here, traceback and all
    except BaseException:
      self.close()
      raise
    self.next_step += 1
    self._fill()  # keep the workers busy while the caller uses ``out``
    return out

  def close(self, wait: bool = True) -> None:
    """Cancels pending steps and shuts the threads down (joins them unless ``wait=False``). A
    given ``executor`` is not shut down: its steps not started are cancelled and (``wait``) the
    running ones awaited, their results dropped."""
    pool, self._pool = self._pool, None
    queue, self._queue = list(self._queue), collections.deque()
    if pool is None:
      return
    if self._owned:
      pool.shutdown(wait=wait, cancel_futures=True)
      return
    running = [f for f in queue if not f.cancel()]
    if wait and running:
      concurrent.futures.wait(running)

  def __enter__(self) -> "Prefetcher[T]":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    if getattr(self, "_pool", None) is not None:
      self.close(wait=False)  # never join from the garbage collector (maybe a worker thread)


# ----------------------------------------------------------------------------- cache


CACHE_LIMIT_BYTES = 4 << 30  # 'auto' caches a decoded split up to this size (4 GiB)
CACHE_OPTIONS = ("auto", True, False)
WORKER_TYPES = ("thread", "process")


def parse_cache_decoded(value: Any) -> Union[str, bool]:
  """'auto', True or False; also the strings 'true' / 'false' (any case: a config's str field
  set from the command line). Anything else (0 / 1 included) is a ValueError."""
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
    return {"auto": "auto", "true": True, "false": False}[value.lower()]
  raise ValueError(f"cache_decoded={value!r} is not accepted; accepted: 'auto', True, False "
                   f"(or the strings 'true', 'false')")


def check_cache_decoded(value: Any) -> None:
  """Raises ValueError unless :func:`parse_cache_decoded` accepts ``value``."""
  parse_cache_decoded(value)


def check_worker_type(value: Any) -> None:
  """``value`` must be 'thread' or 'process'."""
  if not (isinstance(value, str) and value in WORKER_TYPES):
    raise ValueError(f"worker_type={value!r} is not accepted; accepted: {list(WORKER_TYPES)}")


def decoded_bytes(num_examples: int, image_shape: Tuple[int, int, int]) -> int:
  """Bytes of a decoded split in memory: N uint8 images of ``image_shape`` + N int32 labels."""
  return int(num_examples) * (int(np.prod(image_shape)) + 4)


def resolve_cache(cache_decoded: Any, num_examples: int, image_shape: Tuple[int, int, int],
                  num_epochs: Optional[int], limit_bytes: int = CACHE_LIMIT_BYTES) -> bool:
  """Whether to keep the decoded split in memory. True / False (or 'true' / 'false') as given;
  'auto': when the stream reads examples more than once (``num_epochs`` None or > 1: a single
  pass gains nothing) and :func:`decoded_bytes` is at most ``limit_bytes`` (CIFAR-10 train:
  50,000 x 32 x 32 x 3 = 154 MB; LSUN or CelebA-HQ at 256^2: tens of GB, not cached)."""
  cache_decoded = parse_cache_decoded(cache_decoded)
  if isinstance(cache_decoded, bool):
    return cache_decoded
  if num_epochs is not None and num_epochs <= 1:
    return False
  return decoded_bytes(num_examples, image_shape) <= limit_bytes


# ----------------------------------------------------------------------------- process workers

# Each worker process's iterator (one: the latest token), rebuilt from picklable arguments.
_WORKER_ITERATORS: Dict[str, "ImageIterator"] = {}


def _process_batch(token: str, factory: Callable[[], Any], kwargs: Dict[str, Any],
                   step: int) -> Batch:
  """``batch(step)`` in a worker process: the source is reopened there by ``factory()`` (at the
  first step of this ``token``), never pickled open from the parent."""
  it = _WORKER_ITERATORS.get(token)
  if it is None:
    _WORKER_ITERATORS.clear()
    it = _WORKER_ITERATORS[token] = ImageIterator(factory(), **kwargs)
  return it.batch(step)


# ----------------------------------------------------------------------------- iterator


def _weak_batch(it: "ImageIterator") -> Callable[[int], Batch]:
  """``it.batch`` without a strong reference to ``it``: the prefetcher then forms no cycle with
  its iterator, so dropping the iterator frees it (and its ``__del__`` stops the threads) at
  once instead of at the next cyclic garbage collection."""
  ref = weakref.ref(it)

  def batch(step: int) -> Batch:
    target = ref()
    if target is None:
      raise ReferenceError("the ImageIterator was garbage-collected")
    return target.batch(step)

  return batch


class ImageIterator(Iterator[Batch]):
  """Iterator of batches; ``batch(step)`` is the pure per-step function behind ``next``.

  With ``workers > 0``, ``next`` reads from a :class:`Prefetcher` of ``batch`` started (lazily,
  at the first ``next``) at ``step``, on threads or (``worker_type='process'``) on spawned
  processes that each reopen the source with ``source_factory()``; ``close()`` (or ``with``)
  stops them. With ``cache``, the first ``batch`` (or ``decode_cache()``) decodes the whole
  split into one uint8 array, and every batch is then gathered from it (prefetch then uses
  threads whatever ``worker_type``: there is no decoding left to spread).

  Attributes:
    step: the step of the batch the next ``next()`` returns.
    num_examples: size of the split.
    steps_per_epoch: ``num_examples / (batch_size * process_count)`` (a float).
    image_shape: (H, W, C) of the images.
    cached: whether the decoded split is kept in memory.
    cache_bytes: its size in memory (:func:`decoded_bytes`; whether or not cached).
    cache_seconds: seconds the decoding of the cache took (None until done).
  """

  def __init__(self, source: Any, spec: _Spec, *, batch_size: int, seed: int,
               process_index: int, process_count: int, size: Optional[int],
               random_flip: bool, dequantize: bool, start_step: int, shuffle: bool,
               num_epochs: Optional[int], drop_remainder: bool, num_threads: int,
               workers: int = 0, prefetch: int = 2, cache: bool = False,
               worker_type: str = "thread",
               source_factory: Optional[Callable[[], Any]] = None, crop: str = "center"):
    check_worker_type(worker_type)
    if crop not in CROPS:
      raise ValueError(f"crop={crop!r} is not accepted; accepted: {list(CROPS)}")
    if crop == "adm" and size is None:
      raise ValueError("crop='adm' needs an output size")
    if worker_type == "process" and workers > 0 and not cache:
      if source_factory is None:
        raise ValueError("worker_type='process' needs source_factory: a picklable callable "
                         "that reopens the source in each worker process")
      try:
        pickle.dumps(source_factory)
      except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise ValueError(f"worker_type='process': source_factory={source_factory!r} is not "
                         f"picklable ({e}); use a module-level function or "
                         f"functools.partial of one") from e
    self._source = source
    self._spec = spec
    self._size = size
    self.crop = crop
    self.batch_size = batch_size
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.random_flip = random_flip
    self.dequantize = dequantize
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    self.drop_remainder = drop_remainder
    self.step = start_step
    self.num_examples = len(source)
    if self.num_examples == 0:
      raise ValueError("the dataset split is empty")
    self.steps_per_epoch = self.num_examples / (batch_size * process_count)
    h, w, c = spec.native_shape
    self.image_shape = (size, size, c) if size is not None else (h, w, c)
    self.workers = workers
    self.prefetch = prefetch
    self.cached = bool(cache)
    self.cache_bytes = decoded_bytes(self.num_examples, self.image_shape)
    self.cache_seconds: Optional[float] = None
    self._cache: Optional[Tuple[np.ndarray, np.ndarray]] = None
    self._cache_lock = threading.Lock()
    self.worker_type = "thread" if self.cached else worker_type
    self._source_factory = source_factory
    # What a worker process needs to rebuild this iterator (its own source, no threads).
    self._rebuild = dict(spec=spec, batch_size=batch_size, seed=seed,
                         process_index=process_index, process_count=process_count, size=size,
                         random_flip=random_flip, dequantize=dequantize, start_step=0,
                         shuffle=shuffle, num_epochs=num_epochs,
                         drop_remainder=drop_remainder, num_threads=1, crop=crop)
    self._token = uuid.uuid4().hex
    self._procs: Optional[concurrent.futures.ProcessPoolExecutor] = None
    self._perms: Dict[int, np.ndarray] = {}
    self._perms_lock = threading.Lock()  # batch() runs on the prefetch threads
    self._pool = (concurrent.futures.ThreadPoolExecutor(num_threads)
                  if num_threads > 1 else None)
    self._prefetcher: Optional[Prefetcher[Batch]] = None

  @property
  def num_steps(self) -> Optional[int]:
    """Number of batches of a finite stream (``num_epochs``); None when endless."""
    if self.num_epochs is None:
      return None
    global_batch = self.batch_size * self.process_count
    total = self.num_epochs * self.num_examples
    return total // global_batch if self.drop_remainder else -(-total // global_batch)

  def __iter__(self) -> "ImageIterator":
    return self

  def __next__(self) -> Batch:
    stop = self.num_steps
    if stop is not None and self.step >= stop:
      raise StopIteration
    if self.workers > 0:
      out = self._prefetched()
    else:
      out = self.batch(self.step)
    self.step += 1
    return out

  def _step_fn(self) -> Tuple[Callable[[int], Batch], Optional[concurrent.futures.Executor]]:
    """The per-step function the prefetcher runs and its executor (None: its own threads)."""
    if self.worker_type == "thread":
      return _weak_batch(self), None
    if self._procs is None:
      ctx = multiprocessing.get_context("spawn")  # never fork: JAX's threads make it unsafe
      self._procs = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx)
    fn = functools.partial(_process_batch, self._token, self._source_factory, self._rebuild)
    return fn, self._procs

  def _prefetched(self) -> Batch:
    """batch(self.step) from the prefetcher, (re)started at self.step when needed (first call,
    ``step`` set by hand, or after a worker's exception closed it)."""
    p = self._prefetcher
    if p is None or p.closed or p.next_step != self.step:
      if p is not None:
        p.close()
      fn, executor = self._step_fn()
      p = self._prefetcher = Prefetcher(fn, self.step, self.num_steps, workers=self.workers,
                                        prefetch=self.prefetch, executor=executor)
    try:
      return next(p)
    except concurrent.futures.process.BrokenProcessPool:
      self._shutdown_procs(wait=True)  # a worker died: the next call starts a fresh pool
      raise

  def _shutdown_procs(self, wait: bool) -> None:
    procs, self._procs = self._procs, None
    if procs is not None:
      procs.shutdown(wait=wait, cancel_futures=True)

  def close(self) -> None:
    """Stops the prefetch and decoding threads and processes (joins them). Idempotent;
    ``next()`` after it restarts the prefetch at ``step``."""
    p, self._prefetcher = self._prefetcher, None
    if p is not None:
      p.close()
    self._shutdown_procs(wait=True)
    pool, self._pool = self._pool, None
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)

  def __enter__(self) -> "ImageIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    p = getattr(self, "_prefetcher", None)
    if p is not None:
      p.close(wait=False)
    if getattr(self, "_procs", None) is not None:
      self._shutdown_procs(wait=False)
    pool = getattr(self, "_pool", None)
    if pool is not None:
      pool.shutdown(wait=False, cancel_futures=True)

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._perms_lock:
      perm = self._perms.get(epoch)
      if perm is None:
        if len(self._perms) >= 2:
          self._perms.pop(min(self._perms))
        if self.shuffle:
          perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        else:
          perm = np.arange(self.num_examples)
        self._perms[epoch] = perm
      return perm

  def indices(self, step: int) -> np.ndarray:
    """(B,) int64 indices into the split of this process's examples at ``step`` (fewer, maybe
    none, in the last batch of a finite stream without ``drop_remainder``)."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    start = (step * self.process_count + self.process_index) * self.batch_size
    size = self.batch_size
    if self.num_epochs is not None:
      size = int(np.clip(self.num_epochs * self.num_examples - start, 0, size))
    pos = start + np.arange(size, dtype=np.int64)
    epochs, offsets = np.divmod(pos, self.num_examples)
    out = np.empty(size, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._permutation(int(e))[offsets[sel]]
    return out

  def _load(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Decodes the examples ``idx``: (uint8 (n, H, W, C), int32 (n,)), n >= 1."""
    load: Callable[[int], Tuple[np.ndarray, int]] = (
        lambda i: _load_example(self._source, i, self._spec, self._size, self.crop))
    examples = list(self._pool.map(load, idx)) if self._pool else [load(i) for i in idx]
    return (np.stack([im for im, _ in examples]),
            np.asarray([lb for _, lb in examples], np.int32))

  def decode_cache(self) -> Optional[float]:
    """With ``cached``: decodes the whole split into memory once (later calls return at once;
    thread-safe) and returns the seconds it took; without: None. Every process decodes the
    whole split: its share of each epoch is a different part of the split (see the module
    docstring), so over epochs it reads every example."""
    if not self.cached:
      return None
    with self._cache_lock:
      if self._cache is None:
        t0 = time.perf_counter()
        n, chunk = self.num_examples, 1024
        images = labels = None
        for lo in range(0, n, chunk):  # each example read once
          part, part_labels = self._load(np.arange(lo, min(lo + chunk, n)))
          if images is None:
            images = np.empty((n,) + part.shape[1:], part.dtype)
            labels = np.empty((n,), np.int32)
          images[lo:lo + len(part)], labels[lo:lo + len(part)] = part, part_labels
        images.setflags(write=False)
        labels.setflags(write=False)
        self._cache = (images, labels)
        self.cache_seconds = time.perf_counter() - t0
        log.info("decoded %d images (%.0f MB) into memory in %.1f s", self.num_examples,
                 (images.nbytes + labels.nbytes) / 1e6, self.cache_seconds)
    return self.cache_seconds

  def batch(self, step: int) -> Batch:
    """The batch of ``step`` on this process: ``{'image': float32 (B, H, W, C) in [-1, 1],
    'label': int32 (B,)}``. The same with or without the cache."""
    idx = self.indices(step)
    if not len(idx):
      h, w, c = self.image_shape
      return {"image": np.zeros((0, h, w, c), np.float32), "label": np.zeros((0,), np.int32)}
    if self.cached:
      self.decode_cache()
      images, labels = self._cache[0][idx], self._cache[1][idx]
    else:
      images, labels = self._load(idx)
    rng = np.random.default_rng([self.seed, _NOISE_TAG, step, self.process_index])
    noise = rng.random(images.shape, dtype=np.float32) if self.dequantize else None
    x = to_float(images, self._spec.levels, noise)
    if self.random_flip:
      flip = rng.random(len(idx)) < 0.5
      x[flip] = x[flip][:, :, ::-1]  # horizontal flips of the chosen rows, in place
    return {"image": np.ascontiguousarray(x, dtype=np.float32), "label": labels}


def make_image_dataset(name: str, split: str, *, batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1,
                       image_size: Optional[int] = None, random_flip: bool = False,
                       dequantize: bool = True, start_step: int = 0,
                       data_dir: Optional[str] = None, shuffle: bool = True,
                       num_epochs: Optional[int] = None, drop_remainder: bool = True,
                       num_threads: int = 1, workers: int = 0,
                       prefetch: int = 2, worker_type: str = "thread",
                       cache_decoded: Any = "auto",
                       cache_limit_bytes: int = CACHE_LIMIT_BYTES,
                       source_factory: Optional[Callable[[], Any]] = None,
                       crop: Optional[str] = None) -> ImageIterator:
  """Deterministic iterator over batches of ``name``/``split`` for this process.

  Args:
    name: 'digits', 'mnist', 'cifar10', 'celeb_a', 'lsun/<category>', 'imagenet2012' or
      'folder' (``data_dir``/``split``/<class>/<image>: :mod:`diffusion.data.folder`).
    split: a split of the dataset ('train', 'test'; tfds slicing like 'train[:90%]' works for
      tfds datasets; digits: 'train', 'test', 'all'; imagenet2012: 'train', 'validation';
      folder: the name of a sub-folder of ``data_dir``, e.g. 'train', 'val').
    batch_size: per-process batch size B.
    seed: non-negative int; fixes the epoch permutations and the per-example noise.
    process_index, process_count: this process and the number of processes (disjoint shards).
    image_size: output H = W (None: the dataset's default, see :func:`image_shape`).
    random_flip: random horizontal flips (off by default; never wanted for digits).
    dequantize: uniform dequantization; otherwise the exact grid x / (L - 1) * 2 - 1.
    start_step: step of the first batch (for resuming from a checkpoint).
    data_dir: tfds data directory (None: tfds' default); for 'folder' the folder holding the
      split folders (required).
    shuffle: permute each epoch (False: file order, e.g. for evaluation).
    num_epochs: None for an endless stream; else the stream ends after ``num_epochs``
      passes over the split.
    drop_remainder: with ``num_epochs``, drop the last partial global batch; if False it is
      yielded, each process getting its (possibly smaller, possibly empty) part of it, so
      every process sees the same number of batches and the union is the whole split.
    num_threads: threads decoding the examples of a batch (order is kept).
    workers: threads (or processes) computing whole batches ahead of ``next()`` (0: none, each
      batch is computed by ``next()``; the batches are the same either way). Call ``close()``
      (or use ``with``) when done, to stop them before the iterator is garbage-collected.
    prefetch: batches computed ahead per worker (the queue holds ``workers * prefetch``).
    worker_type: 'thread' or 'process' (spawned processes, each reopening the source: for
      decoding that holds the GIL; not used when the split is cached).
    cache_decoded: 'auto', True or False: keep the decoded split in memory (uint8), decoded once
      at the first batch (or ``decode_cache()``); see :func:`resolve_cache` for 'auto'.
    cache_limit_bytes: 'auto' caches a split of at most this many decoded bytes.
    source_factory: a zero-argument callable returning the random-access source to read
      (``len``, ``[i] -> {'image', 'label'}``) instead of the named dataset's (e.g. offline data;
      ``name`` still fixes the shapes and levels); picklable for process workers. Default:
      reopen ``name``/``split`` (tfds ``data_source``, digits or the folder).
    crop: 'center' or 'adm' (:func:`adm_center_crop`; only for datasets cropped to a square),
      None: the dataset's default ('adm' for imagenet2012 and folder); see
      :func:`resolve_crop`.
  Returns:
    An :class:`ImageIterator` of ``{'image': float32 (B, H, W, C) in [-1, 1],
    'label': int32 (B,)}`` (labels are 0 for unlabelled datasets).
  """
  spec = _spec(name)
  size = _output_size(name, spec, image_size)
  crop = resolve_crop(name, crop)
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got process_index="
                     f"{process_index}, process_count={process_count}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}")
  if num_threads < 1:
    raise ValueError(f"num_threads must be >= 1, got {num_threads}")
  if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
    raise ValueError(f"workers must be an int >= 0 (0: no prefetch), got {workers!r}")
  if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 1:
    raise ValueError(f"prefetch must be an int >= 1 (batches ahead per worker), got "
                     f"{prefetch!r}")
  check_worker_type(worker_type)
  check_cache_decoded(cache_decoded)
  if (isinstance(cache_limit_bytes, bool) or not isinstance(cache_limit_bytes, (int, np.integer))
      or cache_limit_bytes < 0):
    raise ValueError(f"cache_limit_bytes must be an int >= 0, got {cache_limit_bytes!r}")
  if source_factory is not None and not callable(source_factory):
    raise TypeError(f"source_factory must be a zero-argument callable, got {source_factory!r}")
  factory = source_factory or functools.partial(_open_source, name, split, data_dir)
  source = factory()
  h, w, c = spec.native_shape
  shape = (size, size, c) if size is not None else (h, w, c)
  cache = resolve_cache(cache_decoded, len(source), shape, num_epochs, int(cache_limit_bytes))
  return ImageIterator(source, spec, batch_size=int(batch_size), seed=int(seed),
                       process_index=process_index, process_count=process_count, size=size,
                       random_flip=random_flip, dequantize=dequantize, start_step=start_step,
                       shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
                       num_threads=num_threads, workers=int(workers), prefetch=int(prefetch),
                       cache=cache, worker_type=worker_type, source_factory=factory, crop=crop)
