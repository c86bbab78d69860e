"""Writing a file all at once: the one write-then-rename helper of the library and the driver.

A reader (another process, a resumed run, a person) sees either the old file or the whole new
one, never a half-written one: the content goes to a temporary file in the same folder, which
is then renamed onto the final name (``os.replace``: atomic on POSIX within one file system).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import IO, Any, Iterator, Optional


def default_tmp(path: str) -> str:
  """The temporary name used when the caller gives none: ``.<name>.tmp`` next to ``path``."""
  return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, tmp: Optional[str] = None,
                 fsync: bool = False) -> Iterator[IO]:
  """Yields a file opened with ``mode`` ('w' or 'wb') on a temporary name (``tmp``, default
  ``default_tmp(path)``); when the block ends without an error the file is closed (flushed and
  fsynced first with ``fsync``) and renamed onto ``path``, replacing any file there.

  On an error the temporary file is left as it is (provably incomplete: it never had the final
  name) and ``path`` is unchanged; the next write replaces it.

      with atomic_write(path) as f:
        json.dump(obj, f)
      with atomic_write(path, "wb") as f:
        np.savez(f, x=x)
  """
  tmp = tmp or default_tmp(path)
  with open(tmp, mode) as f:
    yield f
    if fsync:
      f.flush()
      os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str) -> Optional[Any]:
  """The JSON value in ``path``, or None when there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def sha256_file(path: str) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
