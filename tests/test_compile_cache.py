"""The entry points' persistent compilation cache: where it goes and how it is turned off."""
import os

import pytest

from experiments import compile_cache


def test_default_dir_order(tmp_path):
  assert compile_cache.default_dir({"JAX_COMPILATION_CACHE_DIR": "/a/b",
                                    "XDG_CACHE_HOME": "/x"}) == "/a/b"
  assert compile_cache.default_dir({"XDG_CACHE_HOME": "/x"}) == "/x/diffusion_jax/xla"
  home = os.path.join(os.path.expanduser("~"), ".cache", "diffusion_jax", "xla")
  assert compile_cache.default_dir({}) == home


def test_resolve_flag_and_off(tmp_path):
  assert compile_cache.resolve("off") is None
  assert compile_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")
  assert compile_cache.resolve(None, {"JAX_COMPILATION_CACHE_DIR": str(tmp_path)}) == str(tmp_path)
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match="is not a folder"):
    compile_cache.resolve(str(f))
