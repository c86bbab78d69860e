"""FID and KID from Inception features, and reference statistics files.

FID (Heusel et al., 2017): the Frechet distance of two Gaussians fitted to pool_3 features,

  FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}),

with the unbiased sample covariance (ddof=1), all in float64. The trace of the matrix square
root is computed without a general sqrtm: for any factor S1 = R R^T (Cholesky, or the
symmetric square root when S1 is singular), S1 S2 is similar to the symmetric PSD matrix
A = R^T S2 R, so tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A)), from one symmetric eigenvalue
solve (eigenvalues below the round-off floor d * eps * max|lambda| are set to 0, since their
square roots would add noise of order sqrt(eps)). This stays finite
and real for singular covariances (fewer images than 2048), where scipy.linalg.sqrtm needs the
usual eps * I offset and returns small imaginary parts.

KID (Binkowski et al., 2018): the unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over ``num_subsets`` random subsets of ``subset_size``
features drawn without replacement from each set (100 subsets of 1000, as TF-GAN and
clean-fid; the subset size is reduced to the smaller set's size if that is smaller).

Reference statistics (:func:`save_stats` / :func:`load_stats`): one ``.npz`` with ``mu``,
``sigma``, optionally ``features`` (float32, needed for KID) and a JSON ``meta`` holding the
dataset, split, resolution, number of images and the Inception weights' SHA-256.
:func:`check_compatible` refuses statistics of another dataset, resolution or network.

ADM's reference batches (Dhariwal & Nichol 2021; guided-diffusion's ``evaluations/``, e.g.
``VIRTUAL_imagenet256_labeled.npz``, the FID reference of ADM, DiT, SiT and most ImageNet
papers since): an ``.npz`` of ``arr_0`` uint8 (N, H, W, 3) images (N = 10,000, for precision /
recall), maybe ``arr_1`` labels, and the precomputed statistics ``mu`` (2048,), ``sigma``
(2048, 2048) of the pool_3 features over the whole dataset and ``mu_s``, ``sigma_s`` of the
spatial features (sFID). :func:`read_adm_reference` reads and checks them (``arr_0`` by its
header only; :func:`iter_npz_array` streams it in batches).
"""
import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from diffusion.io_utils import atomic_write

FORMAT_VERSION = 1


def _features(f, name: str) -> np.ndarray:
  f = np.asarray(f)
  if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
    raise ValueError(f"{name} must be (n >= 2, d) features, got shape {f.shape}")
  if not np.all(np.isfinite(f)):
    raise ValueError(f"{name} contains non-finite values")
  return f


def feature_stats(features) -> Tuple[np.ndarray, np.ndarray]:
  """(n, d) features -> (mu (d,), sigma (d, d)), float64, sigma with ddof=1."""
  f = _features(features, "features").astype(np.float64)
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _floor(w: np.ndarray) -> np.ndarray:
  """Eigenvalues of a symmetric PSD matrix with those below its round-off floor
  (d * eps * max|lambda|, the accuracy of a symmetric eigensolver) set to 0."""
  tol = w.shape[0] * np.finfo(np.float64).eps * max(np.abs(w).max(), 1e-300)
  return np.where(w > tol, w, 0.0)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
  """Square root of a symmetric PSD matrix (round-off eigenvalues set to 0, see _floor)."""
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(_floor(w))) @ v.T


def _check_cov(s: np.ndarray, name: str, d: int) -> np.ndarray:
  s = np.asarray(s, np.float64)
  if s.shape != (d, d):
    raise ValueError(f"{name} must be ({d}, {d}), got shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name} contains non-finite values")
  scale = max(np.abs(s).max(), 1e-300)
  if np.abs(s - s.T).max() > 1e-6 * scale:
    raise ValueError(f"{name} is not symmetric (max |S - S^T| = {np.abs(s - s.T).max():.3g})")
  return (s + s.T) / 2


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 (see the module docstring).

  With a factor R of S1 = R R^T, tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(R^T S2 R)) (the
  symmetric PSD matrix R^T S2 R is similar to S2 S1). R is the Cholesky factor when S1 is
  numerically positive definite (cheap, backward stable), else the symmetric square root.
  Raises if R^T S2 R has an eigenvalue below -1e-6 max|lambda|: the inputs are not PSD.
  """
  try:
    r = np.linalg.cholesky(sigma1)
  except np.linalg.LinAlgError:
    r = _sym_sqrt(sigma1)
  a = r.T @ sigma2 @ r
  w = np.linalg.eigvalsh((a + a.T) / 2)
  top = max(np.abs(w).max(), 1e-300)
  if w.min() < -1e-6 * top:
    raise ValueError(f"covariances are not positive semi-definite: S1^1/2 S2 S1^1/2 has "
                     f"eigenvalue {w.min():.3g} (largest {top:.3g})")
  return float(np.sqrt(_floor(w)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2), in float64 (>= 0 up to round-off)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape}, {mu2.shape}")
  d = mu1.shape[0]
  s1, s2 = _check_cov(sigma1, "sigma1", d), _check_cov(sigma2, "sigma2", d)
  diff = mu1 - mu2
  tr_covmean = trace_sqrt_product(s1, s2)
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features1, features2) -> float:
  """FID of two feature sets (n1, d), (n2, d)."""
  return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of equal-size x, y (m, d) with k(a, b) = (a.b / d + 1)^3."""
  m, d = x.shape
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(off - 2.0 * kxy.sum() / (m * m))


def kid(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> Tuple[float, float]:
  """KID: (mean, std) over subsets of the unbiased polynomial-kernel MMD^2, float64.

  Each subset draws min(subset_size, n1, n2) rows of each set without replacement
  (numpy.random.default_rng(seed)). std is over subsets (ddof=1; 0 for one subset).
  """
  f1 = _features(features1, "features1").astype(np.float64)
  f2 = _features(features2, "features2").astype(np.float64)
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
  if not isinstance(num_subsets, (int, np.integer)) or num_subsets < 1:
    raise ValueError(f"num_subsets must be a positive int, got {num_subsets!r}")
  if not isinstance(subset_size, (int, np.integer)) or subset_size < 2:
    raise ValueError(f"subset_size must be an int >= 2, got {subset_size!r}")
  m = min(subset_size, f1.shape[0], f2.shape[0])
  rng = np.random.default_rng(seed)
  vals = np.array([_poly_mmd2(f1[rng.choice(f1.shape[0], m, replace=False)],
                              f2[rng.choice(f2.shape[0], m, replace=False)])
                   for _ in range(num_subsets)])
  return float(vals.mean()), float(vals.std(ddof=1)) if num_subsets > 1 else 0.0


# -- reference statistics files ---------------------------------------------------------------------

@dataclasses.dataclass
class Stats:
  """Reference statistics of a dataset split; ``meta`` keys: dataset, split, resolution,
  num_images, weights_sha256, format_version (and any extras given to save_stats)."""
  mu: np.ndarray
  sigma: np.ndarray
  features: Optional[np.ndarray]
  meta: Dict[str, Any]
  path: Optional[str] = None


def stats_filename(dataset: str, split: str, resolution: int, num_images: int) -> str:
  """'<dataset>_<split>_<resolution>px_<num_images>.npz' ('/' and ':' in names become '-')."""
  clean = lambda s: str(s).replace("/", "-").replace(":", "-").replace("%", "pc")
  return f"{clean(dataset)}_{clean(split)}_{int(resolution)}px_{int(num_images)}.npz"


def save_stats(path: str, features, *, dataset: str, split: str, resolution: int,
               weights_sha256: str, keep_features: bool = True, **extra) -> Stats:
  """Writes the statistics of ``features`` (n, 2048) to ``path`` (.npz); returns them."""
  f = _features(features, "features")
  mu, sigma = feature_stats(f)
  meta = dict(dataset=str(dataset), split=str(split), resolution=int(resolution),
              num_images=int(f.shape[0]), weights_sha256=str(weights_sha256), **extra)
  return write_stats(path, mu, sigma, f if keep_features else None, meta)


def write_stats(path: str, mu, sigma, features: Optional[np.ndarray],
                meta: Dict[str, Any]) -> Stats:
  """Writes ``mu`` (d,), ``sigma`` (d, d) (float64), ``features`` (n, d) (float32; None: not
  kept) and ``meta`` (JSON; format_version added) to ``path`` atomically; returns the Stats."""
  mu = np.asarray(mu, np.float64)
  if mu.ndim != 1:
    raise ValueError(f"mu must be a vector, got shape {mu.shape}")
  _check_cov(sigma, "sigma", mu.shape[0])
  sigma = np.asarray(sigma, np.float64)  # stored as given (the check symmetrizes a copy)
  meta = dict(meta, format_version=FORMAT_VERSION)
  arrays = dict(mu=mu, sigma=sigma, meta=np.array(json.dumps(meta, sort_keys=True)))
  if features is not None:
    arrays["features"] = _features(features, "features").astype(np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic_write(path, "wb", tmp=path + ".tmp.npz") as f:
    np.savez(f, **arrays)
  return Stats(mu, sigma, arrays.get("features"), meta, path)


def load_stats(path: str) -> Stats:
  """Reads a file written by :func:`save_stats`; clear errors for missing or foreign files."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference statistics {path!r} not found: compute them with "
                            f"python -m experiments.reference_stats --dataset=NAME "
                            f"--split=SPLIT --out=DIR")
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      mu, sigma = z["mu"], z["sigma"]
      feats = z["features"] if "features" in z.files else None
  except (KeyError, ValueError, OSError) as e:
    raise ValueError(f"{path!r} is not a reference statistics file ({e}): recompute it "
                     f"with python -m experiments.reference_stats") from None
  return Stats(mu, sigma, feats, meta, path)


def stats_crop(stats: Stats) -> str:
  """The crop geometry of the images behind ``stats`` (meta 'crop'; files written before it was
  recorded are 'center', the only geometry then)."""
  return str(stats.meta.get("crop", "center"))


def check_compatible(stats: Stats, dataset: str, resolution: int,
                     weights_sha256: Optional[str] = None, crop: Optional[str] = None) -> None:
  """Raises ValueError (one line, naming what to do) unless ``stats`` are of ``dataset`` at
  ``resolution`` (and, if given, of the Inception weights with that SHA-256, and of images
  cropped by ``crop``: diffusion.data.images' 'center' or 'adm')."""
  m = stats.meta
  where = f" {stats.path!r}" if stats.path else ""
  fix = (f": compute matching ones with python -m experiments.reference_stats "
         f"--dataset={dataset} --split=SPLIT --resolution={resolution} --out=DIR")
  if m.get("dataset") != dataset or int(m.get("resolution", -1)) != int(resolution):
    raise ValueError(f"reference statistics{where} are of dataset {m.get('dataset')!r} "
                     f"at resolution {m.get('resolution')}, not {dataset!r} at {resolution}"
                     + fix)
  if weights_sha256 is not None and m.get("weights_sha256") != weights_sha256:
    raise ValueError(f"reference statistics{where} were computed with Inception weights "
                     f"sha256 {str(m.get('weights_sha256'))[:12]}..., not "
                     f"{weights_sha256[:12]}..." + fix)
  if crop is not None and stats_crop(stats) != crop:
    raise ValueError(f"reference statistics{where} are of images cropped by {stats_crop(stats)!r}"
                     f", not {crop!r} (the run's data.crop)" + fix + f" --crop={crop}")


def fid_to_stats(features, stats: Stats) -> float:
  """FID of ``features`` (n, d) against reference statistics."""
  return frechet_distance(*feature_stats(features), stats.mu, stats.sigma)


def kid_to_stats(features, stats: Stats, **kw) -> Tuple[float, float]:
  """KID (mean, std) of ``features`` against the reference features stored in ``stats``."""
  if stats.features is None:
    raise ValueError(f"reference statistics {stats.path!r} hold no features, which KID "
                     f"needs: recompute them with python -m experiments.reference_stats "
                     f"(without --nofeatures)")
  return kid(features, stats.features, **kw)


def image_metrics(samples, stats: Stats, *, dataset: str, resolution: int, params=None,
                  weights: Optional[str] = None, batch_size: int = 64, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, seed: int = 0,
                  rounding: str = "nearest",
                  progress: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
  """FID (and KID where ``stats`` hold features) of model samples against reference statistics.

  ``samples``: (N, H, W, C) floats in [-1, 1] (quantised with inception.to_uint8(x, rounding),
  nearest level by default, as the reference images were) or uint8. The statistics must be of
  ``dataset`` at ``resolution`` and of the same Inception weights (:func:`check_compatible`), checked before any network
  evaluation. ``progress(done)`` is called after each Inception batch. Returns {'fid', 'kid',
  'kid_std', 'num_samples'} ('kid*' only with features).
  """
  from diffusion.metrics import inception  # flax and the weights: only when images are scored
  check_compatible(stats, dataset, resolution, weights_sha256=inception.weights_sha256(weights))
  x = np.asarray(samples)
  if x.ndim != 4 or x.shape[1] != resolution or x.shape[2] != resolution:
    raise ValueError(f"samples must be (N, {resolution}, {resolution}, C) images of {dataset}, "
                     f"got shape {x.shape}")
  if x.dtype != np.uint8:
    x = inception.to_uint8(x, rounding)
  if params is None:
    params = inception.load_params(weights)
  feats = inception.features(params, x, batch_size=batch_size, progress=progress)
  out = {"fid": fid_to_stats(feats, stats), "num_samples": int(len(feats))}
  if stats.features is not None:
    out["kid"], out["kid_std"] = kid(feats, stats.features, num_subsets=kid_subsets,
                                     subset_size=kid_subset_size, seed=seed)
  return out


# -- ADM's reference batches --------------------------------------------------------------------

ADM_IMAGES = "arr_0"


@dataclasses.dataclass
class AdmReference:
  """What :func:`read_adm_reference` found in an ADM reference batch: its ``mu`` (2048,) and
  ``sigma`` (2048, 2048) (float64), the shape (N, H, W, 3) of its uint8 ``arr_0`` images (not
  loaded), its arrays' names and the file's SHA-256."""
  path: str
  mu: np.ndarray
  sigma: np.ndarray
  images_shape: Tuple[int, ...]
  keys: List[str]
  sha256: str


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
  """SHA-256 of a file's bytes (hex), read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def _npz_member(z: zipfile.ZipFile, key: str, path: str) -> str:
  name = key + ".npy"
  if name not in z.namelist():
    keys = sorted(n[:-4] for n in z.namelist() if n.endswith(".npy"))
    raise ValueError(f"{path!r} holds no array {key!r} (it holds {keys})")
  return name


def _read_npy_header(f, path: str, key: str) -> Tuple[Tuple[int, ...], bool, np.dtype]:
  """(shape, fortran_order, dtype) of the .npy file object ``f``, left at the data."""
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(f)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(f)
  raise ValueError(f"{path!r}: array {key!r} has .npy format {version}; expected 1.0 or 2.0")


def npz_array_header(path: str, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
  """(shape, dtype) of array ``key`` of the .npz at ``path``, from its .npy header alone."""
  with zipfile.ZipFile(path) as z, z.open(_npz_member(z, key, path)) as f:
    shape, fortran, dtype = _read_npy_header(f, path, key)
  if fortran:
    raise ValueError(f"{path!r}: array {key!r} is stored in Fortran order; expected C order")
  return tuple(shape), dtype


def iter_npz_array(path: str, key: str, batch_size: int) -> Iterator[np.ndarray]:
  """Array ``key`` of the .npz at ``path`` in consecutive row batches of at most
  ``batch_size``, streamed from the archive (never the whole array in memory)."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  shape, dtype = npz_array_header(path, key)
  if dtype.hasobject or not shape:
    raise ValueError(f"{path!r}: array {key!r} ({dtype}, shape {shape}) cannot be streamed")
  row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
  with zipfile.ZipFile(path) as z, z.open(_npz_member(z, key, path)) as f:
    _read_npy_header(f, path, key)  # leaves f at the first row
    for lo in range(0, shape[0], batch_size):
      n = min(batch_size, shape[0] - lo)
      buf = f.read(n * row)
      if len(buf) != n * row:
        raise ValueError(f"{path!r}: array {key!r} ends after {lo} of {shape[0]} rows")
      yield np.frombuffer(buf, dtype).reshape((n,) + tuple(shape[1:]))


def read_adm_reference(path: str, dim: int = 2048) -> AdmReference:
  """Reads and checks an ADM reference batch (module docstring): ``mu`` (dim,), ``sigma``
  (dim, dim) finite and symmetric, ``arr_0`` uint8 (N, H, H, 3) (its header only). A sample
  batch (``arr_0`` without ``mu``), a missing or foreign file: ValueError / FileNotFoundError
  naming it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"ADM reference batch {path!r} not found (download it from the "
                            f"links in guided-diffusion's evaluations/README.md)")
  try:
    with np.load(path, allow_pickle=False) as z:
      keys = sorted(z.files)
      if "mu" not in keys or "sigma" not in keys:
        raise ValueError(f"{path!r} is not an ADM reference batch: it holds {keys}, no 'mu' and "
                         f"'sigma' (a sample batch has only images: score it, do not use it as "
                         f"the reference)")
      shape, dtype = npz_array_header(path, ADM_IMAGES)
      if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise ValueError(f"{path!r}: {ADM_IMAGES} is {dtype} of shape {shape}; expected uint8 "
                         f"(N, H, H, 3) images")
      mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"])
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f"{path!r} is not an .npz archive ({e})") from None
  if mu.shape != (dim,):
    raise ValueError(f"{path!r}: mu has shape {mu.shape}, expected ({dim},) (pool_3 features)")
  if not np.all(np.isfinite(mu)):
    raise ValueError(f"{path!r}: mu contains non-finite values")
  _check_cov(sigma, f"{path!r}: sigma", dim)
  sigma = np.asarray(sigma, np.float64)  # as stored (float64; the check symmetrizes a copy)
  return AdmReference(path, mu, sigma, tuple(int(n) for n in shape), keys, file_sha256(path))
