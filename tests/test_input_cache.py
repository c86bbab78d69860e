"""The decoded in-memory cache and the process workers of the image pipeline
(diffusion/data/images.py: cache_decoded, worker_type='process'): batches bit-identical to the
uncached, synchronous ones (same permutation, flips, dequantization noise), across epochs and
on resume; 'auto' caches a small split, not one over the limit nor a single pass; a worker
process's exception reaches the caller with the worker's traceback text; close() ends the
processes; bad values are refused at start-up."""
import functools
import multiprocessing

import numpy as np
import pytest

from diffusion.data import images
from experiments import build
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests import pipeline_sources
from tests.conftest import dit_config, tiny_config


def _assert_batches_equal(a, b):
  assert a["image"].dtype == b["image"].dtype == np.float32
  assert a["label"].dtype == b["label"].dtype == np.int32
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


def _digits(**kw):
  return images.make_image_dataset("digits", "train", batch_size=64, seed=7, random_flip=True,
                                   **kw)


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("kw", [dict(), dict(dequantize=False),
                                dict(process_index=1, process_count=3)])
def test_cached_batches_equal_uncached(kw):
  plain, cached = _digits(cache_decoded=False, **kw), _digits(cache_decoded=True, **kw)
  assert cached.cached and not plain.cached
  for step in range(50):  # 3 * 64 * 50 / 1500: crosses several epoch boundaries
    _assert_batches_equal(cached.batch(step), plain.batch(step))
  assert cached.cache_seconds is not None and plain.cache_seconds is None


def test_cached_cifar_shaped_with_flips_and_labels_equal_uncached():
  factory = functools.partial(pipeline_sources.RandomSource, 40)
  make = lambda **kw: images.make_image_dataset(  # noqa: E731
      "cifar10", "train", batch_size=16, seed=3, random_flip=True, source_factory=factory, **kw)
  plain, cached = make(cache_decoded=False), make(cache_decoded=True, workers=2)
  with cached:
    for step in range(8):  # 128 > 40 examples: three epoch boundaries
      b = next(cached)
      _assert_batches_equal(b, plain.batch(step))
  assert b["image"].shape == (16, 32, 32, 3) and set(b["label"]) <= set(range(10))
  flipped = np.any(b["image"] != plain.batch(7)["image"][:, :, ::-1])  # not all flipped
  assert flipped


@pytest.mark.parametrize("k", [0, 5, 23, 24, 31])
def test_cached_resume_is_the_tail_of_an_uncached_run(k):
  fresh = [b for _, b in zip(range(35), _digits(cache_decoded=False))]
  with _digits(cache_decoded=True, start_step=k, workers=2) as resumed:
    for step in range(k, 35):
      _assert_batches_equal(next(resumed), fresh[step])


def test_cache_reads_each_example_once():
  src = pipeline_sources.RandomSource(50, (4, 4, 3))
  it = images.make_image_dataset("cifar10", "train", batch_size=8, seed=0, image_size=4,
                                 source_factory=lambda: src, cache_decoded=True)
  for step in range(30):  # 240 examples: almost five epochs
    it.batch(step)
  assert src.reads == 50 and it.decode_cache() == it.cache_seconds


def test_auto_caches_a_small_split_only():
  assert _digits().cached  # 'auto' by default: 1500 x 8 x 8 x 1 bytes
  assert not _digits(cache_limit_bytes=1500 * 68 - 1).cached  # one byte short
  assert _digits(cache_limit_bytes=1500 * 68).cached  # images + int32 labels
  assert _digits(cache_decoded=True, cache_limit_bytes=0).cached  # forced
  assert not _digits(num_epochs=1).cached  # one pass: nothing to reuse
  assert images.decoded_bytes(50_000, (32, 32, 3)) == 50_000 * (3072 + 4)  # CIFAR-10: 154 MB
  assert images.resolve_cache("auto", 50_000, (32, 32, 3), None)
  assert not images.resolve_cache("auto", 3_033_042, (256, 256, 3), None)  # LSUN bedroom
  assert not images.resolve_cache(False, 10, (8, 8, 1), None)


def test_train_batches_use_the_cache_and_say_how_long(capsys):
  config = dit_config()
  assert config.data.cache_decoded == "auto" and config.data.worker_type == "thread"
  batches = build.train_batches(config, 3, 0, 1)
  assert "data: decoded digits 'train' into memory (1500 images" in capsys.readouterr().out
  plain = images.make_image_dataset("digits", config.data.split, batch_size=16,
                                    seed=config.seed, cache_decoded=False)
  for step in range(3, 6):
    np.testing.assert_array_equal(next(batches)["x"], plain.batch(step)["image"])
  batches.close()


# ----------------------------------------------------------------------------- processes


def test_process_workers_equal_synchronous_and_surface_errors():
  """One test: each pool of spawned workers costs seconds to start."""
  sync = _digits(cache_decoded=False)
  with _digits(cache_decoded=False, workers=2, prefetch=1, worker_type="process",
               start_step=21) as it:
    assert it.worker_type == "process"
    for step in range(21, 26):  # crosses the epoch boundary at 1500 / 64 = 23.4
      _assert_batches_equal(next(it), sync.batch(step))
    it.step = 2  # restarts the prefetch there, on the same processes
    _assert_batches_equal(next(it), sync.batch(2))
  assert not multiprocessing.active_children()  # close() joined the workers
  faulty = images.make_image_dataset(
      "digits", "train", batch_size=50, seed=0, shuffle=False, cache_decoded=False,
      workers=1, prefetch=2, worker_type="process",
      source_factory=functools.partial(pipeline_sources.FaultyDigits, 3 * 50 + 7))
  with faulty:
    for _ in range(3):
      next(faulty)
    with pytest.raises(OSError, match="corrupt record 157") as e:
      next(faulty)
    remote = str(e.value.__cause__)  # the worker's traceback, as text
    assert "__getitem__" in remote and "_load_example" in remote
    assert faulty.step == 3
  assert not multiprocessing.active_children()


def test_cached_split_prefetches_on_threads_not_processes():
  with _digits(cache_decoded=True, workers=2, worker_type="process") as it:
    assert it.worker_type == "thread"
    _assert_batches_equal(next(it), _digits(cache_decoded=False).batch(0))
    assert not multiprocessing.active_children()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kw,words", [
    (dict(cache_decoded="yes"), ["cache_decoded='yes'", "'auto', True, False", "'true'"]),
    (dict(cache_decoded=1), ["cache_decoded=1", "'auto', True, False"]),
    (dict(cache_decoded=None), ["cache_decoded=None"]),
    (dict(worker_type="fork"), ["worker_type='fork'", "['thread', 'process']"]),
    (dict(cache_limit_bytes=-1), ["cache_limit_bytes", "-1", ">= 0"]),
    (dict(workers=1, worker_type="process", cache_decoded=False,
          source_factory=lambda: pipeline_sources.RandomSource(4)),
     ["source_factory", "not picklable"]),
])
def test_make_image_dataset_rejects_bad_cache_and_worker_arguments(kw, words):
  with pytest.raises(ValueError) as e:
    images.make_image_dataset("cifar10" if "source_factory" in kw else "digits", "train",
                              batch_size=4, seed=0, **kw)
  assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("overrides,words", [
    ({"data.worker_type": "fork"}, ["config.data.worker_type", "'fork'", "'process'"]),
    ({"data.cache_decoded": "always"}, ["config.data.cache_decoded", "'always'", "'auto'"]),
])
def test_validation_rejects_bad_worker_type_and_cache(overrides, words):
  with pytest.raises(ConfigError) as e:
    validate(tiny_config(**overrides), "train", device_count=1, process_count=1)
  assert all(w in str(e.value) for w in words), str(e.value)
  for ok in ({"data.worker_type": "process"}, {"data.cache_decoded": "false"},
             {"data.cache_decoded": "True"}):
    validate(tiny_config(**ok), "train", device_count=1, process_count=1)


def test_cache_decoded_strings_from_the_command_line():
  assert images.parse_cache_decoded("False") is False and images.parse_cache_decoded("true")
  assert images.parse_cache_decoded("AUTO") == "auto" and images.parse_cache_decoded(True)
  assert not _digits(cache_decoded="false").cached and _digits(cache_decoded="True").cached
  c = tiny_config().copy_and_resolve_references()  # as experiments.sample / main copy it
  c.data.cache_decoded = "false"  # a str field: a saved run's value overlays it
