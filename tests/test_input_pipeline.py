"""Background prefetch of the image pipeline (diffusion/data/images.py: Prefetcher, workers):
the batches are bit-identical to the synchronous ones, in order, resumable at any step; a
worker's exception reaches the caller with its traceback; close() stops the threads; the
config's data.workers / data.prefetch are validated at start-up."""
import threading
import time
import traceback

import numpy as np
import pytest

from diffusion.data import digits, images
from experiments import build
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests.conftest import dit_config, tiny_config


def _prefetch_threads() -> list:
  return [t for t in threading.enumerate() if t.name.startswith("prefetch")]


def _wait_no_prefetch_threads(timeout: float = 5.0) -> bool:
  end = time.time() + timeout
  while _prefetch_threads() and time.time() < end:
    time.sleep(0.01)
  return not _prefetch_threads()


def _assert_batches_equal(a, b):
  assert a["image"].dtype == b["image"].dtype and a["label"].dtype == b["label"].dtype
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


def _digits(**kw):
  return images.make_image_dataset("digits", "train", batch_size=64, seed=7, random_flip=True,
                                   **kw)


# ----------------------------------------------------------------------------- identity


@pytest.mark.parametrize("workers,prefetch", [(1, 1), (2, 2), (3, 1)])
def test_prefetched_batches_equal_synchronous(workers, prefetch):
  sync = _digits()
  with _digits(workers=workers, prefetch=prefetch) as pre:
    for step in range(60):  # 1500 / 64: crosses two epoch boundaries
      _assert_batches_equal(next(pre), sync.batch(step))
    assert pre.step == 60


def test_prefetched_tfds_mock_equals_synchronous():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=40):
    make = lambda **kw: images.make_image_dataset("cifar10", "train", batch_size=8, seed=0,
                                                  random_flip=True, **kw)
    it = make()
    expected = [next(it) for _ in range(7)]  # 56 > 40 examples: crosses an epoch
    with make(workers=2, prefetch=2) as pre:
      for b in expected:
        _assert_batches_equal(next(pre), b)


@pytest.mark.parametrize("k", [0, 1, 13, 24])
def test_resume_with_prefetch_is_the_tail_of_a_fresh_run(k):
  fresh = [b for _, b in zip(range(30), _digits())]
  with _digits(workers=2, prefetch=2, start_step=k) as resumed:
    for step in range(k, 30):
      _assert_batches_equal(next(resumed), fresh[step])


def test_finite_stream_with_prefetch_ends_like_the_synchronous_one():
  kw = dict(batch_size=100, seed=0, shuffle=False, num_epochs=2, drop_remainder=False)
  sync = list(images.make_image_dataset("digits", "test", **kw))
  with images.make_image_dataset("digits", "test", workers=3, prefetch=2, **kw) as it:
    pre = list(it)
    assert it.num_steps == len(sync) == 6  # 2 * 297 / 100, the last one 94 rows
  assert len(pre) == len(sync)
  for a, b in zip(pre, sync):
    _assert_batches_equal(a, b)


def test_setting_step_restarts_the_prefetch_there():
  sync = _digits()
  with _digits(workers=2) as it:
    next(it), next(it)
    it.step = 40
    _assert_batches_equal(next(it), sync.batch(40))
    _assert_batches_equal(next(it), sync.batch(41))


# ----------------------------------------------------------------------------- prefetcher


def test_prefetcher_runs_ahead_in_order():
  calls, lock = [], threading.Lock()

  def fn(step):
    with lock:
      calls.append(step)
    return step * step

  with images.Prefetcher(fn, 5, None, workers=2, prefetch=3) as p:
    assert next(p) == 25 and p.next_step == 6
    end = time.time() + 5
    while len(calls) < 7 and time.time() < end:  # 5..10 queued, then 11 after the first
      time.sleep(0.01)
    assert sorted(calls) == list(range(5, 12))  # 2 * 3 steps ahead of the consumer
    assert [next(p) for _ in range(4)] == [36, 49, 64, 81]


def test_prefetcher_stop_is_exclusive():
  with images.Prefetcher(lambda s: s, 2, 5, workers=2, prefetch=2) as p:
    assert list(p) == [2, 3, 4]


class _Boom(RuntimeError):
  pass


def _raise_at_7(step):
  if step == 7:
    raise _Boom(f"failed at step {step}")
  return step


def test_prefetcher_reraises_worker_exception_with_traceback():
  p = images.Prefetcher(_raise_at_7, 0, None, workers=3, prefetch=2)
  assert [next(p) for _ in range(7)] == list(range(7))
  with pytest.raises(_Boom, match="failed at step 7") as e:
    next(p)
  frames = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
  assert "_raise_at_7" in frames  # the worker's frame, not only the main thread's
  assert p.closed and _wait_no_prefetch_threads()
  with pytest.raises(StopIteration):
    next(p)


class _FaultySource:
  """A digits-shaped random-access source whose example ``bad`` raises."""

  def __init__(self, bad: int):
    self.x, self.y = digits.load_digits("train")
    self.bad = bad

  def __len__(self):
    return len(self.x)

  def __getitem__(self, i):
    if i == self.bad:
      raise OSError(f"corrupt record {i}")
    return {"image": self.x[i], "label": self.y[i]}


def _faulty_iterator(bad: int, **kw):
  args = dict(batch_size=50, seed=0, process_index=0, process_count=1, size=None,
              random_flip=False, dequantize=True, start_step=0, shuffle=False, num_epochs=None,
              drop_remainder=True, num_threads=1)
  return images.ImageIterator(_FaultySource(bad), images._spec("digits"), **{**args, **kw})


def test_source_exception_surfaces_in_main_thread():
  with _faulty_iterator(bad=3 * 50 + 7, workers=2, prefetch=2) as it:
    for _ in range(3):
      next(it)
    with pytest.raises(OSError, match="corrupt record 157") as e:
      next(it)
    frames = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert "__getitem__" in frames and "_load_example" in frames
    assert it.step == 3  # the failed batch was not consumed
  assert _wait_no_prefetch_threads()


# ----------------------------------------------------------------------------- shutdown


def test_close_stops_the_threads_and_is_idempotent():
  assert _wait_no_prefetch_threads()
  it = _digits(workers=3, prefetch=2)
  assert not _prefetch_threads()  # started lazily, at the first next()
  next(it)
  assert len(_prefetch_threads()) == 3
  it.close()
  assert not _prefetch_threads()  # close() joins them
  it.close()
  _assert_batches_equal(next(it), _digits().batch(1))  # next() after close restarts at step
  it.close()
  assert not _prefetch_threads()


def test_context_manager_stops_threads_when_the_loop_stops_early():
  with _digits(workers=2) as it:
    for step, _ in enumerate(it):
      if step == 3:
        break  # training stopped early
    assert _prefetch_threads()
  assert not _prefetch_threads()


def test_del_without_close_releases_the_threads():
  it = _digits(workers=2)
  next(it)
  del it  # no reference cycle: freed at once, without gc.collect()
  assert _wait_no_prefetch_threads()


def test_train_batches_close_stops_the_prefetch():
  config = dit_config(**{"data.workers": 2, "data.prefetch": 1})
  batches = build.train_batches(config, 5, 0, 1)
  sync = images.make_image_dataset("digits", config.data.split, batch_size=16,
                                   seed=config.seed)
  for step in range(5, 8):
    np.testing.assert_array_equal(next(batches)["x"], sync.batch(step)["image"])
  assert len(_prefetch_threads()) == 2
  batches.close()
  assert not _prefetch_threads()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kw,words", [
    (dict(workers=-1), ["workers", "-1", ">= 0"]), (dict(workers=1.5), ["workers", "1.5"]),
    (dict(workers=True), ["workers", "True"]), (dict(prefetch=0), ["prefetch", "0", ">= 1"]),
])
def test_make_image_dataset_rejects_bad_prefetch_arguments(kw, words):
  with pytest.raises(ValueError) as e:
    _digits(**kw)
  assert all(w in str(e.value) for w in words)


@pytest.mark.parametrize("overrides,words", [
    ({"data.workers": -1}, ["config.data.workers=-1", ">= 0"]),
    ({"data.prefetch": 0}, ["config.data.prefetch=0", ">= 1"]),
])
def test_validation_rejects_bad_workers_and_prefetch(overrides, words):
  with pytest.raises(ConfigError) as e:
    validate(tiny_config(**overrides), "train", device_count=1, process_count=1)
  assert all(w in str(e.value) for w in words), str(e.value)


def test_default_config_prefetches():
  c = tiny_config()
  assert 1 <= c.data.workers <= 4 and c.data.prefetch == 2
  validate(tiny_config(**{"data.workers": 0}), "train", device_count=1, process_count=1)


@pytest.mark.slow  # about 20 s: compiles a tiny DiT
def test_train_driver_leaves_no_prefetch_threads(tmp_path):
  from experiments import train
  config = dit_config(**{"training.num_steps": 4, "training.ckpt_every": 2, "data.workers": 2})
  assert train.train(config, str(tmp_path))["step"] == 4
  assert not _prefetch_threads()
