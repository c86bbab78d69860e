"""ImageNet as ADM, DiT, SiT and EDM2 prepare it: the image-folder source (order, labels, batches
as deterministic, sharded and resumable as the other sources), ADM's center crop against
guided-diffusion's own outputs (tests/data/adm_crop), tfds imagenet2012 under mock_data, ADM's
reference batches as FID statistics, and the config checks of data.folder / data.crop."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion.config_checks import ConfigError
from diffusion.data import folder, images
from diffusion.metrics import fid
from tests.conftest import REPO, dit_config

ADM_DIR = os.path.join(REPO, "tests", "data", "adm_crop")
SIZE = 16


def _load_maker():
  spec = importlib.util.spec_from_file_location(
      "make_adm_crop_fixture", os.path.join(ADM_DIR, "make_adm_crop_fixture.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


MAKER = _load_maker()


def _sha(a) -> str:
  return hashlib.sha256(np.ascontiguousarray(a, np.uint8).tobytes()).hexdigest()


def _save(path: str, h: int, w: int, mode: str, seed: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  MAKER.synthetic_image(h + seed, w + 2 * seed, mode).save(path)


# Train: class folders created out of order; modes, a JPEG, a nested folder, and files that are
# not examples (a text file, a hidden macOS fork).
TRAIN = {
    "n02": [("b.png", 20, 30, "RGB"), ("a.png", 33, 17, "L"), ("sub/c.png", 25, 25, "P")],
    "n01": [("z.png", 40, 21, "RGBA"), ("y.jpg", 18, 50, "RGB")],
    "n10": [("q.png", 16, 16, "RGB"), ("p.png", 64, 48, "RGB"), ("r.tiff", 19, 35, "CMYK")],
}
VAL = {c: [("v.png", 22, 26, "RGB")] for c in TRAIN}


def make_folder(root, splits) -> str:
  for split, classes in splits.items():
    for k, (cls, files) in enumerate(classes.items()):
      for i, (name, h, w, mode) in enumerate(files):
        _save(os.path.join(root, split, cls, name), h, w, mode, seed=k + i)
  with open(os.path.join(root, "train", "n01", "notes.txt"), "w") as f:
    f.write("not an image")
  with open(os.path.join(root, "train", "n02", "._b.png"), "wb") as f:
    f.write(b"\x00\x05\x16\x07 AppleDouble")
  return str(root)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return make_folder(tmp_path_factory.mktemp("imagenet"), {"train": TRAIN, "val": VAL})


def _make(root, **kw):
  args = dict(batch_size=3, seed=7, data_dir=root, image_size=SIZE, cache_decoded=False)
  args.update(kw)
  return images.make_image_dataset("folder", args.pop("split", "train"), **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


# ----------------------------------------------------------------------------- folder source


def test_folder_source_orders_by_class_then_path_and_converts_to_rgb(root):
  src = folder.FolderSource(os.path.join(root, "train"))
  assert src.classes == ("n01", "n02", "n10")
  names = [src.file_name(i) for i in range(len(src))]
  assert names == ["n01/y.jpg", "n01/z.png", "n02/a.png", "n02/b.png", "n02/sub/c.png",
                   "n10/p.png", "n10/q.png", "n10/r.tiff"]
  np.testing.assert_array_equal(src.labels, [0, 0, 1, 1, 1, 2, 2, 2])
  assert src.skipped == 1  # notes.txt; the hidden ._b.png is not counted, nor read
  for i in range(len(src)):
    rec = src[i]
    with Image.open(os.path.join(root, "train", names[i])) as im:
      want = np.asarray(im.convert("RGB"))
    assert rec["image"].dtype == np.uint8 and rec["image"].shape[2] == 3
    np.testing.assert_array_equal(rec["image"], want)
    assert rec["label"] == src.labels[i] and rec["file_name"] == names[i]
  with pytest.raises(IndexError, match="out of range for 8 images"):
    src[8]
  assert images.num_classes("folder", root) == 3
  assert images.has_labels("folder") and images.has_labels("imagenet2012")
  assert not images.has_labels("celeb_a")


def test_folder_batches_are_deterministic_resumable_and_sharded(root):
  fresh = _take(_make(root, random_flip=True), 7)  # 21 > 8 examples: crosses two epochs
  again = _take(_make(root, random_flip=True), 7)
  for a, b in zip(fresh, again):
    _equal(a, b)
  assert fresh[0]["image"].shape == (3, SIZE, SIZE, 3)
  for k in (1, 3, 5):
    for step, b in enumerate(_take(_make(root, random_flip=True, start_step=k), 7 - k), k):
      _equal(b, fresh[step])
  with _make(root, random_flip=True, workers=2, prefetch=2) as threads:
    for a, b in zip(fresh, _take(threads, 7)):
      _equal(a, b)
  cached = _make(root, random_flip=True, cache_decoded=True)
  assert cached.cached
  for a, b in zip(fresh, _take(cached, 7)):
    _equal(a, b)
  # Labels are the source's, at the iterator's indices.
  src = folder.FolderSource(os.path.join(root, "train"))
  it = _make(root)
  for step in range(4):
    np.testing.assert_array_equal(it.batch(step)["label"], src.labels[it.indices(step)])
  # Two processes: disjoint within a step, the two blocks of the single-process global batch.
  shards = [_make(root, batch_size=2, process_index=p, process_count=2) for p in range(2)]
  single = _make(root, batch_size=4)
  for step in range(4):
    parts = [s.indices(step) for s in shards]
    assert not set(parts[0]) & set(parts[1])
    np.testing.assert_array_equal(np.concatenate(parts), single.indices(step))


def test_folder_process_workers_match(root):
  fresh = _take(_make(root), 3)
  with _make(root, workers=1, prefetch=1, worker_type="process") as procs:
    assert procs.worker_type == "process"
    for a, b in zip(fresh, _take(procs, 3)):
      _equal(a, b)


def test_folder_pixels_are_the_crops_of_the_files(root):
  src = folder.FolderSource(os.path.join(root, "train"))
  for crop in ("adm", "center"):
    it = _make(root, crop=crop, batch_size=8, shuffle=False, num_epochs=1, dequantize=False)
    (b,) = list(it)
    got = images.to_levels(b["image"], 256)
    for i in range(len(src)):
      rgb = src[i]["image"]
      want = (images.adm_center_crop(rgb, SIZE) if crop == "adm"
              else images._resize(images._center_crop(rgb, 0), SIZE))
      np.testing.assert_array_equal(got[i], want)
  assert _make(root).crop == "adm"  # the folder's default


def test_folder_errors(root, tmp_path):
  with pytest.raises(ValueError, match="data_dir=None must be the folder holding the split"):
    images.make_image_dataset("folder", "train", batch_size=2, seed=0, image_size=8)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    _make(root, split="test")
  with pytest.raises(ValueError, match="tfds slicing is not supported"):
    _make(root, split="train[:50%]")
  with pytest.raises(ValueError, match="no common size: give image_size"):
    _make(root, image_size=None)
  empty = tmp_path / "empty" / "train"
  empty.mkdir(parents=True)
  with pytest.raises(ValueError, match="holds no class folder"):
    _make(str(empty.parent))
  flat = tmp_path / "flat"
  _save(str(flat / "val" / "ILSVRC2012_val_00000001.JPEG"), 9, 9, "RGB", 0)
  with pytest.raises(ValueError, match="1 image file\\(s\\) outside class folders"):
    _make(str(flat), split="val")
  hollow = tmp_path / "hollow"
  _save(str(hollow / "train" / "a" / "x.png"), 9, 9, "RGB", 0)
  (hollow / "train" / "b").mkdir()
  (hollow / "train" / "b" / "readme.txt").write_text("no images")
  with pytest.raises(ValueError, match="/b' holds no image file"):
    _make(str(hollow))
  with pytest.raises(ValueError, match="/b' holds no image file"):
    folder.check_split(str(hollow / "train"))
  bad = tmp_path / "bad"
  _save(str(bad / "train" / "a" / "x.png"), 9, 9, "RGB", 0)
  (bad / "train" / "a" / "y.png").write_bytes(b"not a png")
  it = _make(str(bad), batch_size=2, shuffle=False)
  with pytest.raises(OSError, match="cannot read image .*y.png"):
    next(it)


def test_crop_argument_is_checked():
  assert images.resolve_crop("imagenet2012", None) == "adm"
  assert images.resolve_crop("lsun/bedroom", None) == "center"
  assert images.resolve_crop("lsun/bedroom", "adm") == "adm"
  assert images.resolve_crop("cifar10", None) == "center"
  with pytest.raises(ValueError, match="crop='adm' .* not to 'cifar10'"):
    images.resolve_crop("cifar10", "adm")
  with pytest.raises(ValueError, match=r"crop='box' is not accepted; accepted: \['center', 'adm'\]"):
    images.resolve_crop("folder", "box")
  with pytest.raises(ValueError, match="crop='adm' .* not to 'digits'"):
    images.make_image_dataset("digits", "train", batch_size=2, seed=0, crop="adm")


# ----------------------------------------------------------------------------- ADM's crop


@pytest.fixture(scope="module")
def adm_reference():
  with open(os.path.join(ADM_DIR, "reference.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def fixture_images():
  sklearn = importlib.util.find_spec("sklearn")  # located, not imported (seconds)
  return MAKER.fixture_images(os.path.join(sklearn.submodule_search_locations[0], "datasets",
                                           "images"))


def test_adm_center_crop_equals_guided_diffusion(adm_reference, fixture_images):
  cases = adm_reference["cases"]
  assert len(cases) == 26 and {c["size"] for c in cases.values()} == {256, 512}
  for key, case in sorted(cases.items()):
    rgb = fixture_images[case["image"]].convert("RGB")
    assert MAKER.sha256(np.asarray(rgb)) == case["input_rgb"]["sha256"], (
        f"{key}: the input decodes differently here (Pillow {Image.__version__}; the fixture: "
        f"Pillow {adm_reference['meta']['pillow']}): regenerate the fixture")
    for inp in (rgb, np.asarray(rgb)):  # a PIL image or its array
      out = images.adm_center_crop(inp, case["size"])
      assert out.shape == tuple(case["output"]["shape"])
      assert _sha(out) == case["output"]["sha256"], (
          f"{key}: differs from ADM's center_crop_arr (max top-left 4x4 difference "
          f"{np.abs(out[:4, :4].astype(int) - np.array(case['output']['top_left_4x4'])).max()})")


def test_adm_crop_through_the_folder_pipeline(adm_reference, fixture_images, tmp_path):
  """The synthetic inputs written as files (PNG; the CMYK one as TIFF), read by the folder
  source (RGB conversion) and the pipeline at 256: ADM's exact crops."""
  names = [n for n in MAKER.SYNTHETIC if n != "rgb_2048x1536"]  # the big one: above
  for i, name in enumerate(names):
    ext = "tiff" if name.startswith("cmyk") else "png"
    path = tmp_path / "train" / "c" / f"{i:02d}_{name}.{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fixture_images[name].save(str(path))
  it = images.make_image_dataset("folder", "train", batch_size=len(names), seed=0,
                                 data_dir=str(tmp_path), image_size=256, shuffle=False,
                                 num_epochs=1, dequantize=False, cache_decoded=False)
  (b,) = list(it)
  got = images.to_levels(b["image"], 256)
  for i, name in enumerate(names):
    assert _sha(got[i]) == adm_reference["cases"][f"{name}@256"]["output"]["sha256"], name


def test_adm_crop_differs_from_center_crop(fixture_images):
  rgb = np.asarray(fixture_images["china.jpg"].convert("RGB"))
  adm = images.adm_center_crop(rgb, 256).astype(int)
  center = images._resize(images._center_crop(rgb, 0), 256).astype(int)
  assert 0 < np.abs(adm - center).mean() < 10  # the same region, other filters
  with pytest.raises(ValueError, match="size must be a positive int"):
    images.adm_center_crop(rgb, 0)
  with pytest.raises(ValueError, match="uint8"):
    images.adm_center_crop(rgb.astype(np.float32), 8)
  grey = images.adm_center_crop(rgb[..., 0], 8)
  assert grey.shape == (8, 8, 1)


# ----------------------------------------------------------------------------- tfds imagenet2012


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


def test_imagenet2012_spec():
  assert "imagenet2012" in images.dataset_names() and "folder" in images.dataset_names()
  assert images.num_classes("imagenet2012") == 1000 and images.num_levels("imagenet2012") == 256
  assert images.image_shape("imagenet2012") == (256, 256, 3)
  assert images.image_shape("imagenet2012", 512) == (512, 512, 3)


def test_imagenet2012_under_mock_data(tfds):
  with tfds.testing.mock_data(num_examples=10):  # random sizes, e.g. 47x17
    make = lambda **kw: images.make_image_dataset(  # noqa: E731
        "imagenet2012", kw.pop("split", "train"), batch_size=4, seed=1, image_size=32,
        random_flip=True, **kw)
    fresh = _take(make(), 4)
    for b in fresh:
      assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
      assert b["label"].min() >= 0 and b["label"].max() < 1000
    for step, b in enumerate(_take(make(start_step=2), 2), 2):
      _equal(b, fresh[step])
    assert make().crop == "adm"
    center = make(crop="center").batch(0)
    np.testing.assert_array_equal(center["label"], fresh[0]["label"])
    assert not np.array_equal(center["image"], fresh[0]["image"])
    assert make(split="validation").batch(0)["image"].shape == (4, 32, 32, 3)


def test_unprepared_imagenet2012_names_the_manual_download(tfds, tmp_path):
  with pytest.raises(images.DatasetNotPreparedError,
                     match="tfds build imagenet2012 --file_format=array_record --manual_dir=DIR"):
    images.make_image_dataset("imagenet2012", "train", batch_size=2, seed=0,
                              data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- ADM reference batches


def _adm_npz(path, n=6, res=16, seed=0, **drop):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((64, 2048))
  arrays = dict(arr_0=rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8),
                arr_1=rng.integers(0, 1000, n), mu=rng.standard_normal(2048),
                sigma=a.T @ a / 64, mu_s=rng.standard_normal(2048), sigma_s=a.T @ a / 32)
  for k in drop:
    arrays.pop(k)
  np.savez(path, **arrays)
  return arrays


def _fake_features(x):
  """A deterministic stand-in for Inception: (B, H, W, 3) uint8 -> (B, 2048)."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  return np.tile(flat[:, :64], (1, 32)) / 255.0 + np.arange(2048) * 1e-3


def test_read_adm_reference_and_stream_its_images(tmp_path):
  path = str(tmp_path / "VIRTUAL_tiny16.npz")
  arrays = _adm_npz(path)
  ref = fid.read_adm_reference(path)
  np.testing.assert_array_equal(ref.mu, arrays["mu"])
  np.testing.assert_array_equal(ref.sigma, arrays["sigma"])
  assert ref.images_shape == (6, 16, 16, 3)
  assert ref.keys == ["arr_0", "arr_1", "mu", "mu_s", "sigma", "sigma_s"]
  with open(path, "rb") as f:
    assert ref.sha256 == hashlib.sha256(f.read()).hexdigest()
  parts = list(fid.iter_npz_array(path, "arr_0", 4))
  assert [len(p) for p in parts] == [4, 2]
  np.testing.assert_array_equal(np.concatenate(parts), arrays["arr_0"])
  sample = str(tmp_path / "samples.npz")
  _adm_npz(sample, mu=1, sigma=1, mu_s=1, sigma_s=1)
  with pytest.raises(ValueError, match="not an ADM reference batch: it holds \\['arr_0', 'arr_1'\\]"):
    fid.read_adm_reference(sample)
  np.savez(str(tmp_path / "short.npz"), arr_0=arrays["arr_0"], mu=arrays["mu"][:5],
           sigma=np.eye(5))
  with pytest.raises(ValueError, match=r"mu has shape \(5,\), expected \(2048,\)"):
    fid.read_adm_reference(str(tmp_path / "short.npz"))
  np.savez(str(tmp_path / "float.npz"), arr_0=arrays["arr_0"].astype(np.float32),
           mu=arrays["mu"], sigma=np.eye(5))
  with pytest.raises(ValueError, match="expected uint8 \\(N, H, H, 3\\)"):
    fid.read_adm_reference(str(tmp_path / "float.npz"))
  with pytest.raises(FileNotFoundError, match="guided-diffusion"):
    fid.read_adm_reference(str(tmp_path / "missing.npz"))


def test_convert_adm_reference(tmp_path, capsys, monkeypatch):
  from diffusion.metrics import inception
  from experiments import reference_stats
  distances = []  # the 2048-d Frechet distance takes seconds: its inputs are checked instead

  def frechet(*args):
    distances.append(args)
    return 1.25

  monkeypatch.setattr(fid, "frechet_distance", frechet)
  path = str(tmp_path / "VIRTUAL_tiny16.npz")
  arrays = _adm_npz(path)
  out = str(tmp_path / "stats")
  written, stats = reference_stats.convert_adm_reference(path, out, "imagenet2012")
  assert written == os.path.join(out, "adm_VIRTUAL_tiny16.npz")
  loaded = fid.load_stats(written)
  np.testing.assert_array_equal(loaded.mu, arrays["mu"])
  np.testing.assert_array_equal(loaded.sigma, arrays["sigma"])  # ADM's, byte for byte
  assert loaded.features is None
  m = loaded.meta
  assert (m["dataset"], m["split"], m["resolution"], m["num_images"]) == (
      "imagenet2012", "train", 16, None)
  assert (m["source"], m["source_file"], m["reference_images"], m["crop"]) == (
      "adm", "VIRTUAL_tiny16.npz", 6, "adm")
  assert m["source_sha256"] == fid.file_sha256(path)
  assert m["weights_sha256"] == inception.weights_sha256()
  fid.check_compatible(loaded, "imagenet2012", 16, inception.weights_sha256(), crop="adm")
  with pytest.raises(ValueError, match="cropped by 'adm', not 'center'"):
    fid.check_compatible(loaded, "imagenet2012", 16, crop="center")
  # Again: reused; with features asked: refused (never overwritten).
  reference_stats.convert_adm_reference(path, out, "imagenet2012")
  assert "reused, nothing computed" in capsys.readouterr().out
  with pytest.raises(ValueError, match="features: not kept there, asked for now"):
    reference_stats.convert_adm_reference(path, out, "imagenet2012", features=True,
                                          features_fn=_fake_features)
  # Features of arr_0 (the first 5), kept, and their FID to ADM's statistics.
  _, with_feats = reference_stats.convert_adm_reference(
      path, str(tmp_path / "f"), "folder", features=True, num_images=5,
      features_fn=_fake_features)
  want = _fake_features(arrays["arr_0"][:5])
  np.testing.assert_allclose(with_feats.features, want.astype(np.float32))
  assert with_feats.meta["features_images"] == 5 and with_feats.meta["dataset"] == "folder"
  assert with_feats.meta["fid_features_to_adm"] == 1.25
  ((mu1, sigma1, mu2, sigma2),) = distances
  np.testing.assert_allclose(mu1, want.mean(0), rtol=1e-6)
  np.testing.assert_allclose(sigma1, np.cov(want.astype(np.float32), rowvar=False), atol=1e-6)
  np.testing.assert_array_equal(mu2, arrays["mu"])
  np.testing.assert_array_equal(sigma2, arrays["sigma"])
  with pytest.raises(ValueError, match="--resolution=32, but the images of .* are 16x16"):
    reference_stats.convert_adm_reference(path, out, "imagenet2012", resolution=32)
  with pytest.raises(ValueError, match="unknown image dataset 'imagenet'"):
    reference_stats.convert_adm_reference(path, out, "imagenet")


def test_reference_stats_cli_from_adm(tmp_path):
  path = str(tmp_path / "VIRTUAL_tiny16.npz")
  _adm_npz(path)
  r = subprocess.run([sys.executable, "-m", "experiments.reference_stats", f"--from_adm={path}",
                      "--dataset=imagenet2012", f"--out={tmp_path}/stats"], cwd=REPO,
                     capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, PYTHONPATH=REPO))
  assert r.returncode == 0, r.stderr[-2000:]
  assert "ADM's statistics (VIRTUAL_tiny16.npz, sha256" in r.stdout
  assert os.path.isfile(tmp_path / "stats" / "adm_VIRTUAL_tiny16.npz")


# ----------------------------------------------------------------------------- config checks


def _config(root, **overrides):
  base = {"data.name": "folder", "data.folder": root, "data.image_size": 8,
          "data.eval_split": "val"}
  return dit_config(**{**base, **overrides})


def _refused(config, mode="train") -> str:
  from experiments import validate
  with pytest.raises(ConfigError) as e:
    validate.validate(config, mode, device_count=1, process_count=1)
  return str(e.value)


def test_config_checks(root, tmp_path):
  from experiments import build, validate
  for mode in ("train", "eval"):
    validate.validate(_config(root), mode, device_count=1, process_count=1)
  cond = _config(root, **{"model.conditional": True, "model.net.num_classes": 3})
  validate.validate(cond, "train", device_count=1, process_count=1)
  assert build.dataset_num_classes(cond) == 3 and "folder" in build.labelled_datasets()
  assert "must equal the number of classes" in _refused(
      _config(root, **{"model.conditional": True, "model.net.num_classes": 10}))
  assert "needs config.data.folder" in _refused(_config(None))
  assert "does not exist" in _refused(_config(str(tmp_path / "nope")))
  assert "config.data.image_size: the images of 'folder' have no common size" in _refused(
      _config(root, **{"data.image_size": None}))
  assert "config.data.split='test'" in _refused(_config(root, **{"data.split": "test"}))
  assert "read only with data.name='folder'" in _refused(
      dit_config(**{"data.folder": root}))
  assert "config.data.crop: crop='adm'" in _refused(dit_config(**{"data.crop": "adm"}))
  assert "config.data.crop: crop='box'" in _refused(_config(root, **{"data.crop": "box"}))
  # eval reads the held-out split: it must exist, with the training split's classes.
  no_val = _config(root, **{"data.eval_split": "test"})
  validate.validate(no_val, "train", device_count=1, process_count=1)
  msg = _refused(no_val, "eval")
  assert "config.data.eval_split='test'" in msg and "has no folder 'test'" in msg
  other = tmp_path / "other"
  make_folder(other, {"train": TRAIN, "val": {"n01": VAL["n01"], "n99": VAL["n02"]}})
  assert "other classes than config.data.split='train'" in _refused(_config(str(other)), "eval")


def test_train_batches_read_the_folder(root):
  from experiments import build
  config = _config(root, **{"data.batch_size": 4, "model.conditional": True,
                            "model.net.num_classes": 3, "data.workers": 0})
  gen = build.train_batches(config, 0, 0, 1)
  b = next(gen)
  gen.close()
  want = _make(root, batch_size=4, seed=config.seed, image_size=8).batch(0)
  np.testing.assert_array_equal(b["x"], want["image"])
  np.testing.assert_array_equal(b["label"], want["label"])
  x, y = build.heldout_labelled(config, 5)
  assert x.shape == (3, 8, 8, 3)  # val holds 3 images
  np.testing.assert_array_equal(y, [0, 1, 2])
