"""Readers of released weight files into {name: numpy array}, without torch or safetensors.

* ``.safetensors``: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
  data_offsets}}, then the raw little-endian tensor bytes (huggingface/safetensors' format).
* PyTorch ``.bin`` / ``.pt`` (``torch.save`` since torch 1.6): a zip archive holding
  ``<prefix>/data.pkl`` (the pickled state dict, whose tensors refer to storages by key) and
  ``<prefix>/data/<key>`` (each storage's raw bytes). The pickle is read by a restricted
  unpickler that builds only dicts and tensors: any other global in the file is refused, so a
  ``.bin`` cannot run code here.
* PyTorch ``.pth`` before torch 1.6 (the legacy format of torchvision's ImageNet weights and of
  LPIPS's channel weights): five concatenated parts, three small pickles (the magic number
  0x1950a86a20f9469cfc6c, the protocol version 1001, system info with the byte order), the state
  dict pickle whose tensors refer to storages by key, a pickled list of the storage keys, then for
  each key in that order an int64 element count and the storage's raw little-endian bytes. Read by
  the same restricted unpickler.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Dict

import ml_dtypes
import numpy as np

from diffusion.convert.common import ConversionError

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                      "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
TORCH_STORAGES = {"DoubleStorage": np.float64, "FloatStorage": np.float32,
                  "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def read_weights(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of a ``.safetensors`` file or a torch ``.bin`` / ``.pt`` / ``.pth`` (the zip
  format of torch >= 1.6 or the legacy format before it)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist")
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if zipfile.is_zipfile(path):
    return read_torch_zip(path)
  if is_torch_legacy(path):
    return read_torch_legacy(path)
  raise ConversionError(f"{path!r} is neither a .safetensors file nor a torch checkpoint (the "
                        f"zip format of torch >= 1.6 or the legacy format before it)")


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of a safetensors file (every dtype numpy or ml_dtypes has)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise ConversionError(f"{path!r}: too short for a safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
      raise ConversionError(f"{path!r}: header length {n} exceeds the file size {size}: not a "
                            f"safetensors file, or truncated")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ConversionError(f"{path!r}: unreadable safetensors header ({e})") from e
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info.get("dtype") not in SAFETENSORS_DTYPES:
      raise ConversionError(f"{path!r}: tensor {name!r} has dtype {info.get('dtype')!r}; "
                            f"accepted: {sorted(SAFETENSORS_DTYPES)}")
    dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end > len(data) or end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise ConversionError(f"{path!r}: tensor {name!r} of shape {shape} and dtype "
                            f"{info['dtype']} does not fit its bytes [{begin}, {end}) of "
                            f"{len(data)}: truncated or corrupt file")
    out[name] = np.frombuffer(data[begin:end], dtype.newbyteorder("<")).reshape(shape).copy()
  return out


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(TORCH_STORAGES[name])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
  """torch._utils._rebuild_tensor_v2 on a numpy storage: a strided view, copied."""
  del requires_grad, hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if min(size) > 0 and last >= storage.size:
    raise ConversionError(f"a tensor of size {size} / stride {stride} at offset {offset} "
                          f"reads past its storage of {storage.size} elements")
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride]).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
  del requires_grad, hooks
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Builds OrderedDicts and numpy tensors; refuses every other global."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self.archive, self.prefix, self.path = archive, prefix, path

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in TORCH_STORAGES:
      return _StorageType(name)
    raise ConversionError(f"{self.path!r}: the pickle asks for {module}.{name}, which a plain "
                          f"state dict of tensors never does; refused (only dicts of tensors "
                          f"are read)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise ConversionError(f"{self.path!r}: unknown storage reference {pid!r}")
    _, stype, key, _location, numel = pid
    try:
      raw = self.archive.read(f"{self.prefix}/data/{key}")
    except KeyError as e:
      raise ConversionError(f"{self.path!r}: storage {key!r} is missing from the archive") from e
    if len(raw) != numel * stype.dtype.itemsize:
      raise ConversionError(f"{self.path!r}: storage {key!r} holds {len(raw)} bytes, "
                            f"{numel} x {stype.name} need {numel * stype.dtype.itemsize}")
    return np.frombuffer(raw, stype.dtype.newbyteorder("<"))


def _state_dict_of(obj, path: str) -> Dict[str, np.ndarray]:
  """The {name: array} state dict in an unpickled checkpoint (or its 'state_dict' entry)."""
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ConversionError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
  bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise ConversionError(f"{path!r}: entries that are not tensors: {bad[:5]}")
  return dict(obj)


def read_torch_zip(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of a state dict saved by ``torch.save`` (zip format)."""
  with zipfile.ZipFile(path) as archive:
    pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise ConversionError(f"{path!r}: a torch zip checkpoint holds one '<prefix>/data.pkl', "
                            f"found {pkls or 'none'}")
    prefix = pkls[0][:-len("/data.pkl")]
    order = f"{prefix}/byteorder"
    if order in archive.namelist() and archive.read(order).strip() != b"little":
      raise ConversionError(f"{path!r}: big-endian torch checkpoints are not supported")
    with archive.open(pkls[0]) as f:
      obj = _TorchUnpickler(f, archive, prefix, path).load()
  return _state_dict_of(obj, path)


LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


class _PlainUnpickler(pickle.Unpickler):
  """The legacy format's header pickles hold only ints, strings and dicts."""

  def find_class(self, module: str, name: str) -> Any:
    raise ConversionError(f"a legacy torch checkpoint's header asks for {module}.{name}; refused")


def is_torch_legacy(path: str) -> bool:
  """Whether ``path`` starts with the legacy torch format's magic-number pickle."""
  with open(path, "rb") as f:
    try:
      return _PlainUnpickler(f).load() == LEGACY_MAGIC
    except (pickle.UnpicklingError, ConversionError, EOFError, ValueError, TypeError,
            IndexError, KeyError, OverflowError, AttributeError):
      return False  # not a pickle at all: some other format


class _LegacyStorage:
  """A storage named in the pickle; its bytes follow the pickle (``array`` is set then)."""

  def __init__(self, stype: _StorageType, numel: int):
    self.stype, self.numel, self.array = stype, numel, None


class _LegacyTensor:
  """A tensor whose storage bytes are not read yet: (storage, view offset, offset, size,
  stride), built into an array after the storages are read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def build(self) -> np.ndarray:
    root, view_offset = self.storage
    return _rebuild_tensor(root.array[view_offset:], self.offset, self.size, self.stride)


class _LegacyUnpickler(_TorchUnpickler):
  """The legacy state-dict pickle: storages are ('storage', type, key, location, numel,
  view_metadata); tensors wait for their storages' bytes (``_LegacyTensor``)."""

  def __init__(self, file, path: str):
    pickle.Unpickler.__init__(self, file)
    self.path, self.storages = path, {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                          ("torch._utils", "_rebuild_tensor")):
      return lambda storage, offset, size, stride, *_: _LegacyTensor(storage, offset, size,
                                                                      stride)
    return super().find_class(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise ConversionError(f"{self.path!r}: unknown storage reference {pid!r}")
    _, stype, key, _location, numel, view = pid
    root = self.storages.setdefault(key, _LegacyStorage(stype, int(numel)))
    if view is None:
      return (root, 0)
    _view_key, view_offset, _view_size = view
    return (root, int(view_offset))


def read_torch_legacy(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of a state dict saved by ``torch.save`` before torch 1.6 (module doc)."""
  with open(path, "rb") as f:
    header = [_PlainUnpickler(f).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
      raise ConversionError(f"{path!r}: not a legacy torch checkpoint (magic {header[0]!r}, "
                            f"protocol {header[1]!r}; expected {LEGACY_MAGIC:#x}, "
                            f"{LEGACY_PROTOCOL})")
    if not (isinstance(header[2], dict) and header[2].get("little_endian", True)):
      raise ConversionError(f"{path!r}: big-endian torch checkpoints are not supported")
    unpickler = _LegacyUnpickler(f, path)
    obj = unpickler.load()
    keys = _PlainUnpickler(f).load()
    if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
      raise ConversionError(f"{path!r}: the storage key list does not name the pickle's "
                            f"storages: truncated or corrupt file")
    for key in keys:
      storage = unpickler.storages[key]
      head = f.read(8)
      if len(head) != 8:
        raise ConversionError(f"{path!r}: storage {key!r} is missing: truncated file")
      (numel,) = struct.unpack("<q", head)
      nbytes = numel * storage.stype.dtype.itemsize
      raw = f.read(nbytes)
      if numel != storage.numel or len(raw) != nbytes:
        raise ConversionError(f"{path!r}: storage {key!r} holds {len(raw)} bytes for {numel} "
                              f"elements, the pickle says {storage.numel} x "
                              f"{storage.stype.name}: truncated or corrupt file")
      storage.array = np.frombuffer(raw, storage.stype.dtype.newbyteorder("<"))
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]  # a training checkpoint: its state dict (as ``_state_dict_of``)
  if isinstance(obj, dict):
    obj = {k: v.build() if isinstance(v, _LegacyTensor) else v for k, v in obj.items()}
  return _state_dict_of(obj, path)
