"""Tests of the image pipelines: the embedded digits and tfds datasets under mock_data."""
import numpy as np
import pytest

from diffusion.data import digits, images


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


# ----------------------------------------------------------------------------- metadata


def test_metadata():
  assert images.image_shape("digits") == (8, 8, 1)
  assert images.image_shape("mnist") == (28, 28, 1)
  assert images.image_shape("mnist", image_size=32) == (32, 32, 1)
  assert images.image_shape("cifar10") == (32, 32, 3)
  assert images.image_shape("celeb_a") == (64, 64, 3)
  assert images.image_shape("lsun/church_outdoor") == (256, 256, 3)
  assert [images.num_classes(n) for n in ("digits", "mnist", "cifar10", "celeb_a")] == [
      10, 10, 10, 0]
  assert images.num_levels("digits") == 17 and images.num_levels("cifar10") == 256


@pytest.mark.parametrize("kwargs", [
    dict(name="imagenet"), dict(name="lsun/"), dict(split="validation"),
    dict(batch_size=0), dict(seed=-1), dict(process_index=2, process_count=2),
    dict(image_size=16), dict(start_step=-1), dict(num_epochs=0),
])
def test_bad_arguments_raise(kwargs):
  args = {**dict(name="digits", split="train", batch_size=4, seed=0), **kwargs}
  with pytest.raises(ValueError):
    images.make_image_dataset(args.pop("name"), args.pop("split"), **args)


# ----------------------------------------------------------------------------- digits


def test_digits_splits():
  tr, te, al = (digits.load_digits(s) for s in ("train", "test", "all"))
  assert tr[0].shape == (1500, 8, 8, 1) and te[0].shape == (297, 8, 8, 1)
  assert al[0].shape == (1797, 8, 8, 1) and al[0].dtype == np.uint8
  assert al[0].max() == 16 and al[0].min() == 0
  np.testing.assert_array_equal(np.concatenate([tr[0], te[0]]), al[0])
  np.testing.assert_array_equal(te[1], al[1][-297:])
  assert set(np.unique(al[1])) == set(range(10))


def test_digits_batches_shapes_ranges_and_dequantization():
  it = images.make_image_dataset("digits", "train", batch_size=32, seed=3)
  exact = images.make_image_dataset("digits", "train", batch_size=32, seed=3, dequantize=False)
  for step in range(3):
    b, e = next(it), next(exact)
    assert b["image"].shape == (32, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (32,) and b["label"].dtype == np.int32
    assert b["image"].min() >= -1.0 and b["image"].max() < 1.0
    np.testing.assert_array_equal(b["label"], e["label"])
    # Without dequantization: the 17-level grid x / 16 * 2 - 1, endpoints included.
    levels = (e["image"] + 1) / 2 * 16
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)
    # With it: v = (x + u) / 17 lies in [x / 17, (x + 1) / 17).
    x = np.round(levels)
    v = (b["image"] + 1) / 2
    assert np.all(v >= x / 17 - 1e-6) and np.all(v < (x + 1) / 17 + 1e-6)
  idx = it.indices(0)
  imgs, labels = digits.load_digits("train")
  np.testing.assert_array_equal(labels[idx], images.make_image_dataset(
      "digits", "train", batch_size=32, seed=3).batch(0)["label"])
  assert np.all(np.abs(x - imgs[it.indices(2)]) == 0)


def test_determinism_and_seeds():
  a = _take(images.make_image_dataset("digits", "train", batch_size=64, seed=1), 3)
  b = _take(images.make_image_dataset("digits", "train", batch_size=64, seed=1), 3)
  c = _take(images.make_image_dataset("digits", "train", batch_size=64, seed=2), 3)
  for x, y in zip(a, b):
    _assert_batches_equal(x, y)
  assert not np.array_equal(a[0]["label"], c[0]["label"])
  assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_resumption_matches_fresh_run_across_epochs():
  # 1500 images, batch 64: the epoch boundary falls inside step 23.
  fresh = _take(images.make_image_dataset("digits", "train", batch_size=64, seed=5,
                                          random_flip=True), 26)
  for k in (1, 22, 23, 24):
    resumed = images.make_image_dataset("digits", "train", batch_size=64, seed=5,
                                        random_flip=True, start_step=k)
    for step in range(k, 26):
      _assert_batches_equal(next(resumed), fresh[step])
    assert resumed.step == 26


def test_epochs_are_permutations_and_differ():
  it = images.make_image_dataset("digits", "train", batch_size=50, seed=0)
  epoch0 = np.concatenate([it.indices(i) for i in range(30)])
  epoch1 = np.concatenate([it.indices(i) for i in range(30, 60)])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(1500))
  np.testing.assert_array_equal(np.sort(epoch1), np.arange(1500))
  assert not np.array_equal(epoch0, epoch1)


def test_process_shards_are_disjoint_and_cover_each_epoch():
  n_proc, bsz = 3, 50  # global batch 150: 10 steps per epoch of 1500
  its = [images.make_image_dataset("digits", "train", batch_size=bsz, seed=4,
                                   process_index=p, process_count=n_proc)
         for p in range(n_proc)]
  single = images.make_image_dataset("digits", "train", batch_size=bsz * n_proc, seed=4)
  seen = []
  for step in range(10):
    parts = [it.indices(step) for it in its]
    assert len(set(np.concatenate(parts))) == bsz * n_proc  # disjoint within the step
    # The shards are consecutive blocks of the single-process global batch.
    np.testing.assert_array_equal(np.concatenate(parts), single.indices(step))
    seen.append(np.concatenate(parts))
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(1500))
  b0, b1 = next(its[0]), next(its[1])
  assert b0["image"].shape == (bsz, 8, 8, 1)
  assert not np.array_equal(b0["image"], b1["image"])


def test_no_shuffle_and_finite_epochs():
  it = images.make_image_dataset("digits", "test", batch_size=100, seed=0, shuffle=False,
                                 num_epochs=1, dequantize=False)
  batches = list(it)
  assert len(batches) == 2  # 297 // 100, the partial batch is dropped
  imgs, labels = digits.load_digits("test")
  np.testing.assert_array_equal(batches[1]["label"], labels[100:200])
  np.testing.assert_allclose(batches[0]["image"], imgs[:100] / 16 * 2 - 1, atol=1e-6)


def test_finite_stream_without_drop_remainder_covers_split_once():
  parts = []
  for p in range(2):
    it = images.make_image_dataset("digits", "test", batch_size=100, seed=0, num_epochs=1,
                                   drop_remainder=False, process_index=p, process_count=2)
    batches = list(it)
    assert len(batches) == 2  # the same number of batches on every process
    parts.append(np.concatenate([it.indices(i) for i in range(2)]))
    assert [len(b["label"]) for b in batches] == ([100, 97] if p == 0 else [100, 0])
    assert batches[-1]["image"].shape[1:] == (8, 8, 1)
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(297))


def test_random_flip_mirrors_images():
  kw = dict(batch_size=64, seed=9, dequantize=False)
  plain = images.make_image_dataset("digits", "train", **kw).batch(4)["image"]
  flipped = images.make_image_dataset("digits", "train", random_flip=True, **kw).batch(4)
  flipped = flipped["image"]
  same = np.all(flipped == plain, axis=(1, 2, 3))
  mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 0 < np.sum(mirrored & ~same) < 64


def test_to_float_maps_grid_to_unit_interval():
  x = np.array([0, 255], np.uint8)
  np.testing.assert_allclose(images.to_float(x, 256), [-1.0, 1.0])
  np.testing.assert_allclose(images.to_float(x, 256, np.array([0.0, 0.999])),
                             [-1.0, 2 * 255.999 / 256 - 1], atol=1e-6)


# ----------------------------------------------------------------------------- tfds (mocked)


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(tfds, name, shape):
  with tfds.testing.mock_data(num_examples=40):
    make = lambda **kw: images.make_image_dataset(name, "train", batch_size=8, seed=0, **kw)
    it = make(random_flip=True)
    fresh = _take(it, 7)  # 56 > 40 examples: crosses an epoch boundary
    for b in fresh:
      assert b["image"].shape == (8, *shape) and b["image"].dtype == np.float32
      assert b["image"].min() >= -1.0 and b["image"].max() < 1.0
      assert b["label"].dtype == np.int32 and b["label"].min() >= 0 and b["label"].max() < 10
    for k, b in enumerate(_take(make(random_flip=True, start_step=3), 4), start=3):
      _assert_batches_equal(b, fresh[k])
    shards = [make(process_index=p, process_count=2).indices(1) for p in range(2)]
    assert not set(shards[0]) & set(shards[1])
    exact = make(dequantize=False).batch(0)["image"]
    grid = (exact + 1) / 2 * 255
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)
    resized = make(image_size=16).batch(0)["image"]
    assert resized.shape == (8, 16, 16, shape[2])


def test_tfds_mock_celeba_crop_and_resize(tfds):
  with tfds.testing.mock_data(num_examples=4):
    b = images.make_image_dataset("celeb_a", "train", batch_size=2, seed=0).batch(0)
  assert b["image"].shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(b["label"], [0, 0])


def test_unprepared_tfds_dataset_raises_clear_error(tfds, tmp_path):
  with pytest.raises(images.DatasetNotPreparedError, match="tfds build cifar10"):
    images.make_image_dataset("cifar10", "train", batch_size=4, seed=0,
                              data_dir=str(tmp_path))
