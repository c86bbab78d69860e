"""diffusion.io_utils.atomic_write: the one write-then-rename helper."""
import json
import os

import numpy as np
import pytest

from diffusion.io_utils import atomic_write, default_tmp


def test_writes_then_replaces(tmp_path):
  path = str(tmp_path / "a.json")
  with atomic_write(path) as f:
    json.dump({"x": 1}, f)
  with atomic_write(path) as f:
    json.dump({"x": 2}, f)
  with open(path) as f:
    assert json.load(f) == {"x": 2}
  assert os.listdir(tmp_path) == ["a.json"]  # the temporary name is gone


def test_binary_npz_under_a_named_temporary(tmp_path):
  path = str(tmp_path / "s.npz")
  tmp = str(tmp_path / ".s.tmp.npz")
  with atomic_write(path, "wb", tmp=tmp, fsync=True) as f:
    np.savez(f, x=np.arange(3))
  with np.load(path) as z:
    np.testing.assert_array_equal(z["x"], np.arange(3))
  assert not os.path.exists(tmp)


def test_an_error_leaves_the_old_file(tmp_path):
  path = str(tmp_path / "a.txt")
  with atomic_write(path) as f:
    f.write("old")
  with pytest.raises(RuntimeError):
    with atomic_write(path) as f:
      f.write("new, half")
      raise RuntimeError("killed")
  with open(path) as f:
    assert f.read() == "old"
  assert os.path.exists(default_tmp(path))  # provably incomplete; replaced by the next write
