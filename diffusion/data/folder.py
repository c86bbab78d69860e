"""Image folders with one sub-folder per class (ImageNet's train layout), read at random access.

Layout: a root holding one folder per split, each holding one folder per class::

  ROOT/train/n01440764/n01440764_10026.JPEG
  ROOT/train/n01443537/...
  ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG      (a held-out split, same classes)

Classes are the sorted sub-folder names of the split folder, labelled 0..K-1 in that order (as
torchvision's ImageFolder, which DiT and SiT train from, and EDM2's ``dataset_tool.py``; for
ImageNet the sorted synset ids n01440764, ..., the order of tfds ``imagenet2012``'s labels).
The examples are the files below each class folder (nested folders included) whose extension
PIL registers (``PIL.Image.registered_extensions()``: .jpeg, .jpg, .png, .webp, ...; any other
file is skipped and counted in ``skipped``), ordered by label, then by their path relative to
the class folder (sorted as strings): the order depends on the names alone, the same on every
host. Names starting with '.' (hidden files, macOS ``._*`` forks) are skipped.

Each example is decoded with PIL and converted to RGB (``Image.convert('RGB')``: grey repeated,
palette expanded, alpha dropped, CMYK converted), before any crop, as the loaders of ADM, DiT and
EDM2 do (no EXIF rotation, as they do not). Refused with a clear error: a missing split folder,
one with no class folder, a class folder with no image, image files directly in the split
folder (in no class).
"""
import os
from typing import Any, Dict, List, Tuple

import numpy as np

SPLIT_HINT = ("the split folder must hold one sub-folder per class, each holding that class's "
              "images (ImageNet's train layout: train/n01440764/*.JPEG)")


def image_extensions() -> frozenset:
  """The lower-case file extensions PIL can open ('.jpeg', '.png', ...)."""
  from PIL import Image  # local: PIL is needed only to read images
  Image.init()  # registers every plugin (without it only the preloaded few)
  return frozenset(ext.lower() for ext in Image.registered_extensions())


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _is_image(name: str, extensions: frozenset) -> bool:
  return os.path.splitext(name)[1].lower() in extensions


def list_classes(split_dir: str) -> Tuple[str, ...]:
  """The sorted class folder names of ``split_dir``; FileNotFoundError if it is no folder,
  ValueError if it holds no class folder or holds image files outside them."""
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f"image folder {split_dir!r} does not exist ({SPLIT_HINT})")
  extensions = image_extensions()
  classes, loose = [], []
  with os.scandir(split_dir) as entries:
    for e in entries:
      if not _visible(e.name):
        continue
      if e.is_dir():
        classes.append(e.name)
      elif _is_image(e.name, extensions):
        loose.append(e.name)
  if loose:
    raise ValueError(f"image folder {split_dir!r} holds {len(loose)} image file(s) outside class "
                     f"folders (e.g. {sorted(loose)[0]!r}); {SPLIT_HINT} (ImageNet's val/ "
                     f"comes flat: sort it into class folders first, docs/images.md)")
  if not classes:
    raise ValueError(f"image folder {split_dir!r} holds no class folder; {SPLIT_HINT}")
  return tuple(sorted(classes))


def _class_files(class_dir: str, extensions: frozenset, first_only: bool = False
                 ) -> Tuple[List[str], int]:
  """(the image paths below ``class_dir`` relative to it, sorted; the number of other files).
  ``first_only``: stop at the first image found (a cheap non-emptiness check)."""
  found, skipped = [], 0
  stack = [""]
  while stack:
    rel = stack.pop()
    with os.scandir(os.path.join(class_dir, rel)) as entries:
      for e in entries:
        if not _visible(e.name):
          continue
        path = os.path.join(rel, e.name) if rel else e.name
        if e.is_dir():
          stack.append(path)
        elif _is_image(e.name, extensions):
          found.append(path)
          if first_only:
            return found, skipped
        else:
          skipped += 1
  return sorted(found), skipped


def check_split(split_dir: str) -> Tuple[str, ...]:
  """The classes of ``split_dir`` (:func:`list_classes`) after checking that each class folder
  holds an image (stops at the first one: cheap on ImageNet's 1.28M files); ValueError naming an
  empty class otherwise."""
  classes = list_classes(split_dir)
  extensions = image_extensions()
  for name in classes:
    if not _class_files(os.path.join(split_dir, name), extensions, first_only=True)[0]:
      raise ValueError(f"class folder {os.path.join(split_dir, name)!r} holds no image file "
                       f"(extensions PIL opens: .jpeg, .png, ...); remove it or add its images")
  return classes


class FolderSource:
  """A random-access source over the images of one split folder (see the module docstring):
  ``len(src)``, ``src[i] -> {'image': uint8 (H, W, 3) RGB, 'label': int, 'file_name': str}``,
  the interface of ``tfds.data_source`` that ``diffusion.data.images`` reads.

  The file list is built once at construction (a directory walk; ImageNet's 1.28M names take a
  few seconds; they are kept as one bytes blob plus int64 offsets, about 50 MB).

  Attributes:
    path: the split folder (absolute).
    classes: the class folder names, label i = classes[i].
    labels: (N,) int32, the label of each example.
    skipped: files below the class folders that are not images PIL opens.
  """

  def __init__(self, split_dir: str):
    self.path = os.path.abspath(split_dir)
    self.classes = list_classes(self.path)
    extensions = image_extensions()
    names: List[bytes] = []
    labels: List[np.ndarray] = []
    self.skipped = 0
    for label, name in enumerate(self.classes):
      files, skipped = _class_files(os.path.join(self.path, name), extensions)
      if not files:
        raise ValueError(f"class folder {os.path.join(self.path, name)!r} holds no image file "
                         f"(extensions PIL opens: .jpeg, .png, ...); remove it or add its images")
      self.skipped += skipped
      names += [os.fsencode(os.path.join(name, f)) for f in files]
      labels.append(np.full(len(files), label, np.int32))
    self._blob = b"".join(names)
    self._ends = np.cumsum([len(n) for n in names], dtype=np.int64)
    self.labels = np.concatenate(labels)
    self.labels.setflags(write=False)

  def __len__(self) -> int:
    return len(self._ends)

  def file_name(self, index: int) -> str:
    """The path of example ``index`` relative to the split folder ('<class>/<file>')."""
    i = self._index(index)
    start = int(self._ends[i - 1]) if i else 0
    return os.fsdecode(self._blob[start:int(self._ends[i])])

  def _index(self, index: Any) -> int:
    i = int(index)
    if not 0 <= i < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} images in {self.path!r}")
    return i

  def __getitem__(self, index: int) -> Dict[str, Any]:
    i = self._index(index)
    name = self.file_name(i)
    return {"image": read_rgb(os.path.join(self.path, name)), "label": int(self.labels[i]),
            "file_name": name}

  def __repr__(self) -> str:
    return f"FolderSource({self.path!r}: {len(self)} images, {len(self.classes)} classes)"


def read_rgb(path: str) -> np.ndarray:
  """The image file at ``path`` decoded by PIL and converted to RGB: uint8 (H, W, 3). A file PIL
  cannot read is an OSError naming it."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
    raise OSError(f"cannot read image {path!r}: {e}") from e
