"""The entry points' persistent compilation cache: where it goes and how it is turned off."""
import os
import re

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


def test_enable_sets_the_folder_and_off_disables(tmp_path, monkeypatch):
  import jax
  keys = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
  saved = {k: getattr(jax.config, k) for k in keys}
  try:
    path = compile_cache.enable(str(tmp_path / "xla"))
    assert path == str(tmp_path / "xla") and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path and jax.config.jax_enable_compilation_cache
    assert compile_cache.enable("off") is None and not jax.config.jax_enable_compilation_cache
  finally:
    for k, v in saved.items():
      jax.config.update(k, v)


@pytest.mark.slow  # ~20 s: a CLI run filling a cache (the cache settings: the tests above)
def test_main_fills_the_given_cache_and_refuses_a_file(tmp_path):
  from tests.conftest import run_main
  bad = tmp_path / "a_file"
  bad.write_text("x")
  r = run_main(str(tmp_path / "wd_bad"), "train", extra=[f"--compilation_cache={bad}"])
  assert r.returncode == 1 and "is not a folder" in r.stderr, r.stderr[-2000:]
  cache = tmp_path / "cache"
  r = run_main(str(tmp_path / "wd"), "train", overrides={"training.num_steps": 10},
               extra=[f"--compilation_cache={cache}"],
               env={"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  assert r.returncode == 0, r.stderr[-2000:]
  assert len(os.listdir(cache)) > 0  # the compiled programs were written there
  # The first line of every run names the platform and devices (experiments.runtime).
  import jax
  first = r.stdout.splitlines()[0]
  assert re.fullmatch(rf"jax {re.escape(jax.__version__)} on (cpu|gpu|tpu): \d+ devices? "
                      rf"\(.+\), 1 process", first), first
