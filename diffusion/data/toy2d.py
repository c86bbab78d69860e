"""Seeded 2-D toy densities of the FFJORD / score-SDE literature.

Every dataset is a sampler ``(n, rng) -> (n, 2) float32`` driven only by the
``numpy.random.Generator`` it is given; nothing reads global random state. The
conventions follow the toy data of FFJORD (Grathwohl et al., 2019, Sec. 5.1),
re-derived here with i.i.d. draws (a random component per sample instead of
equal-sized, shuffled groups), so that ``n`` samples are exactly ``n`` draws
from one fixed density:

* ``8gaussians``: equal mixture of 8 isotropic Gaussians, means at radius
  ``2*sqrt(2)`` and angles ``k*pi/4`` (FFJORD's unit circle times 4, divided by
  ``sqrt(2)``), standard deviation ``sqrt(2)/4`` (variance 1/8) per coordinate.
  FFJORD divides by the rounded 1.414; the exact ``sqrt(2)`` is used here.
  Differential entropy 2.8305 nats (Monte Carlo; ``1 + ln(2 pi)`` = 2.8379
  would hold for disjoint components, the slight overlap lowers it).
* ``checkerboard``: uniform on the 8 black squares of the ``[-4, 4]^2`` board
  of 2x2 squares, black meaning ``floor(x/2) + floor(y/2)`` even (so
  ``[0, 2)^2`` is black). Area 32, entropy ``ln 32``.
* ``moons``: two moons, scikit-learn's ``make_moons(noise=0.1)`` times 2 plus
  ``(-1, -0.2)``: upper half circle of radius 2 centred at ``(-1, -0.2)`` and
  lower half circle of radius 2 centred at ``(1, 0.8)``, each chosen with
  probability 1/2 at a uniform angle in ``[0, pi]``, plus N(0, 0.2^2 I) noise.
* ``swissroll``: ``(t cos t, t sin t) / 5 + N(0, 0.2^2 I)``,
  ``t ~ U(1.5 pi, 4.5 pi)`` (``make_swiss_roll(noise=1)``, coordinates x, z).
* ``pinwheel``: 5 arms; ``f = (1 + 0.3 z_1, 0.1 z_2)``, ``z ~ N(0, I)``,
  arm ``k`` uniform, angle ``phi = 2 pi k / 5 + 0.25 exp(f_1)``, and
  ``x = 2 f R(phi)`` with ``R(phi) = [[cos, -sin], [sin, cos]]`` (row vector).
* ``2spirals``: ``s = 3 pi sqrt(u)``, ``u ~ U(0, 1)``;
  ``d = (-s cos s + v_1, s sin s + v_2)`` with ``v ~ U(0, 0.5)^2``; a random
  sign picks the arm, ``x = +-d / 3 + N(0, 0.1^2 I)``.
* ``rings``: 4 concentric circles of radii 0.75, 1.5, 2.25, 3, each with
  probability 1/4, uniform angle, plus N(0, 0.08^2 I) noise.

Exact densities (``log_prob``) exist for ``8gaussians``, ``checkerboard`` and
``rings``; the others return ``None`` from ``true_entropy``.

Labels (for class-conditional models and classifiers): ``8gaussians`` labels
each point with its mixture component k in 0..7 (the mean at angle k pi/4 of
``gaussian_mixture_params``), drawn with the point itself: ``sample``,
``batch``, ``iterator`` and ``heldout`` with ``with_labels=True`` return
``(x, labels)`` where ``x`` is bit for bit what ``with_labels=False`` returns
(the same draws from the same generator). ``has_labels`` / ``num_classes`` /
``labelled`` say which datasets have them.

Batches for training are a pure function of ``(seed, step)`` (``batch``,
``iterator``), and ``heldout`` draws from a separate seed stream, so a resumed
run sees exactly the same data and evaluation never reuses training draws.
"""
import dataclasses
import math
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
from scipy import special

Sampler = Callable[[int, np.random.Generator], np.ndarray]
# (n, rng) -> (x (n, 2), labels (n,) int): the same draws as the plain sampler, with labels.
LabelledSampler = Callable[[int, np.random.Generator], Tuple[np.ndarray, np.ndarray]]
LogProb = Callable[[np.ndarray], np.ndarray]

# --- 8gaussians -------------------------------------------------------------

_GAUSS8_RADIUS = 2.0 * math.sqrt(2.0)
_GAUSS8_STD = math.sqrt(2.0) / 4.0
_GAUSS8_ANGLES = np.arange(8) * (np.pi / 4.0)
_GAUSS8_MEANS = _GAUSS8_RADIUS * np.stack(
    [np.cos(_GAUSS8_ANGLES), np.sin(_GAUSS8_ANGLES)], axis=-1)  # (8, 2)


def _sample_8gaussians_labelled(n: int, rng: np.random.Generator
                                ) -> Tuple[np.ndarray, np.ndarray]:
  """(x (n, 2), component k (n,)): k uniform on 0..7, x ~ N(mu_k, std^2 I)."""
  k = rng.integers(0, 8, size=n)
  return _GAUSS8_MEANS[k] + _GAUSS8_STD * rng.standard_normal((n, 2)), k


def _sample_8gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
  return _sample_8gaussians_labelled(n, rng)[0]


def _log_prob_8gaussians(x: np.ndarray) -> np.ndarray:
  """log p(x) = logsumexp_k log N(x; mu_k, s^2 I) - ln 8, x: (n, 2) -> (n,)."""
  d2 = np.sum((x[:, None, :] - _GAUSS8_MEANS[None]) ** 2, axis=-1)  # (n, 8)
  log_comp = -d2 / (2 * _GAUSS8_STD**2) - math.log(2 * math.pi * _GAUSS8_STD**2)
  return special.logsumexp(log_comp, axis=-1) - math.log(8)


# --- checkerboard ----------------------------------------------------------


def _sample_checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
  x = rng.uniform(-4.0, 4.0, size=n)
  col = np.floor(x / 2.0)  # in {-2, -1, 0, 1}
  # The two rows (of {-2, -1, 0, 1}) whose parity makes (col + row) even.
  row = np.mod(col, 2) + 2 * rng.integers(0, 2, size=n) - 2
  y = 2.0 * (row + rng.uniform(0.0, 1.0, size=n))
  return np.stack([x, y], axis=-1)


def _log_prob_checkerboard(x: np.ndarray) -> np.ndarray:
  """-ln 32 on the black squares of [-4, 4)^2, -inf elsewhere; (n, 2) -> (n,)."""
  inside = np.all((x >= -4.0) & (x < 4.0), axis=-1)
  black = np.mod(np.floor(x[:, 0] / 2.0) + np.floor(x[:, 1] / 2.0), 2) == 0
  return np.where(inside & black, -math.log(32.0), -np.inf)


# --- moons -----------------------------------------------------------------


def _sample_moons(n: int, rng: np.random.Generator) -> np.ndarray:
  t = rng.uniform(0.0, np.pi, size=n)
  upper = rng.integers(0, 2, size=n).astype(bool)
  arc = np.stack([np.cos(t), np.sin(t)], axis=-1)
  # Upper moon: (-1, -0.2) + 2 (cos t, sin t); lower: (1, 0.8) - 2 (cos t, sin t).
  pts = np.where(upper[:, None], np.array([-1.0, -0.2]) + 2 * arc,
                 np.array([1.0, 0.8]) - 2 * arc)
  return pts + 0.2 * rng.standard_normal((n, 2))


# --- swissroll -------------------------------------------------------------


def _sample_swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
  t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, size=n))
  roll = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1)
  return (roll + rng.standard_normal((n, 2))) / 5.0


# --- pinwheel --------------------------------------------------------------


def _sample_pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
  num_arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
  f = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
  f[:, 0] += 1.0
  arm = rng.integers(0, num_arms, size=n)
  phi = 2 * np.pi * arm / num_arms + rate * np.exp(f[:, 0])
  c, s = np.cos(phi), np.sin(phi)
  # Row vector times [[c, -s], [s, c]]: (f0 c + f1 s, -f0 s + f1 c).
  return 2.0 * np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c],
                        axis=-1)


# --- 2spirals --------------------------------------------------------------


def _sample_2spirals(n: int, rng: np.random.Generator) -> np.ndarray:
  s = 3.0 * np.pi * np.sqrt(rng.uniform(0.0, 1.0, size=n))
  v = rng.uniform(0.0, 0.5, size=(n, 2))
  d = np.stack([-s * np.cos(s), s * np.sin(s)], axis=-1) + v
  sign = 2.0 * rng.integers(0, 2, size=n) - 1.0
  return sign[:, None] * d / 3.0 + 0.1 * rng.standard_normal((n, 2))


# --- rings -----------------------------------------------------------------

_RINGS_RADII = np.array([0.75, 1.5, 2.25, 3.0])
_RINGS_STD = 0.08


def _sample_rings(n: int, rng: np.random.Generator) -> np.ndarray:
  radius = _RINGS_RADII[rng.integers(0, len(_RINGS_RADII), size=n)]
  theta = rng.uniform(0.0, 2 * np.pi, size=n)
  pts = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
  return pts + _RINGS_STD * rng.standard_normal((n, 2))


def _log_prob_rings(x: np.ndarray) -> np.ndarray:
  """Exact log-density of the rings; (n, 2) -> (n,).

  A circle of radius R, uniform in angle, convolved with N(0, s^2 I) has
  p(x) = exp(-(r^2 + R^2) / (2 s^2)) I_0(r R / s^2) / (2 pi s^2), r = |x|
  (integrate the Gaussian over the angle; I_0 is the modified Bessel function).
  With ``i0e(z) = exp(-z) I_0(z)`` this is
  log p = -(r - R)^2 / (2 s^2) + log i0e(r R / s^2) - log(2 pi s^2), stable for
  all r. The rings are an equal mixture over the 4 radii.
  """
  r = np.linalg.norm(x, axis=-1)[:, None]  # (n, 1)
  big_r = _RINGS_RADII[None]  # (1, 4)
  var = _RINGS_STD**2
  log_comp = (-(r - big_r) ** 2 / (2 * var) + np.log(special.i0e(r * big_r / var))
              - math.log(2 * math.pi * var))
  return special.logsumexp(log_comp, axis=-1) - math.log(len(_RINGS_RADII))


# --- registry --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyDataset:
  """A 2-D toy density: its sampler and, when known in closed form, log p; for labelled data a
  sampler of (x, labels) drawing x exactly as ``sampler`` does, and the number of classes."""
  name: str
  sampler: Sampler
  log_prob: Optional[LogProb] = None
  labelled_sampler: Optional[LabelledSampler] = None
  num_classes: int = 0


DATASETS: Dict[str, ToyDataset] = {
    d.name: d for d in [
        ToyDataset("8gaussians", _sample_8gaussians, _log_prob_8gaussians,
                   _sample_8gaussians_labelled, 8),
        ToyDataset("checkerboard", _sample_checkerboard, _log_prob_checkerboard),
        ToyDataset("moons", _sample_moons),
        ToyDataset("swissroll", _sample_swissroll),
        ToyDataset("pinwheel", _sample_pinwheel),
        ToyDataset("2spirals", _sample_2spirals),
        ToyDataset("rings", _sample_rings, _log_prob_rings),
    ]
}

# Differential entropies -E log p(x) in nats. checkerboard is exact; the others
# are Monte Carlo estimates from `monte_carlo_entropy(name, 4_000_000, seed=0)`
# (standard error 4.9e-4 for 8gaussians, 4.4e-4 for rings); tests recompute them.
_ENTROPY: Dict[str, float] = {
    "8gaussians": 2.830469449352013,
    "checkerboard": math.log(32.0),
    "rings": 2.622969636238665,
}


def available() -> Tuple[str, ...]:
  """Names of all toy datasets, sorted."""
  return tuple(sorted(DATASETS))


def get(name: str) -> ToyDataset:
  """The registered dataset ``name``; raises ValueError listing the valid names."""
  if not isinstance(name, str) or name not in DATASETS:
    raise ValueError(f"unknown toy dataset {name!r}; available: {list(available())}")
  return DATASETS[name]


def has_labels(name: str) -> bool:
  """Whether dataset ``name`` has class labels (``with_labels=True``)."""
  return get(name).labelled_sampler is not None


def num_classes(name: str) -> int:
  """Number of label classes of ``name`` (0: unlabelled), as ``images.num_classes``."""
  return get(name).num_classes


def labelled() -> Tuple[str, ...]:
  """Names of the toy datasets with labels, sorted."""
  return tuple(k for k in available() if has_labels(k))


def _check_labelled(name: str) -> None:
  if not has_labels(name):
    raise ValueError(f"toy dataset {name!r} has no labels; datasets with labels: "
                     f"{list(labelled())}")


def _check_count(n: int, what: str = "n") -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"{what} must be a non-negative int, got {n!r}")
  return int(n)


def sample(name: str, n: int, rng: np.random.Generator, *, with_labels: bool = False):
  """Draws ``n`` i.i.d. points of dataset ``name``; returns (n, 2) float32, or with
  ``with_labels`` the pair (x, labels (n,) int32) with the same x.

  The draw uses only ``rng`` (a ``numpy.random.Generator``), which it advances.
  """
  dataset = get(name)
  n = _check_count(n)
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
  if with_labels:
    _check_labelled(name)
    x, labels = dataset.labelled_sampler(n, rng)
    return x.astype(np.float32), np.asarray(labels, np.int32)
  return dataset.sampler(n, rng).astype(np.float32)


def has_density(name: str) -> bool:
  """Whether ``log_prob(name, .)`` is available in closed form."""
  return get(name).log_prob is not None


def log_prob(name: str, x: np.ndarray) -> np.ndarray:
  """Exact log-density of dataset ``name`` at ``x`` (n, 2); returns (n,) float64.

  Raises ValueError for datasets without a closed-form density.
  """
  dataset = get(name)
  if dataset.log_prob is None:
    with_density = [k for k in available() if DATASETS[k].log_prob is not None]
    raise ValueError(f"toy dataset {name!r} has no exact density; datasets with one: "
                     f"{with_density}")
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2 or x.shape[1] != 2:
    raise ValueError(f"x must have shape (n, 2), got {x.shape}")
  return dataset.log_prob(x)


def monte_carlo_entropy(name: str, n: int, seed: int) -> Tuple[float, float]:
  """Monte Carlo differential entropy -E[log p(x)] of ``name`` in nats.

  Returns (estimate, standard error) from ``n`` samples drawn with
  ``np.random.default_rng(seed)``, in chunks of 2^18 to bound memory.
  """
  n = _check_count(n)
  if n < 2:
    raise ValueError(f"n must be >= 2 for a standard error, got {n}")
  rng = np.random.default_rng(seed)
  total, total_sq, chunk = 0.0, 0.0, 1 << 18
  for start in range(0, n, chunk):
    lp = log_prob(name, get(name).sampler(min(chunk, n - start), rng))
    total += float(np.sum(lp))
    total_sq += float(np.sum(lp**2))
  mean = total / n
  var = max(total_sq / n - mean**2, 0.0) * n / (n - 1)
  return -mean, math.sqrt(var / n)


def true_entropy(name: str) -> Optional[float]:
  """Differential entropy of ``name`` in nats, or None without an exact density.

  checkerboard: ln 32 exactly; 8gaussians (2.8305) and rings (2.6230): Monte
  Carlo estimates of the exact density, standard error < 0.002.
  """
  get(name)
  return _ENTROPY.get(name)


def gaussian_mixture_params(name: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact Gaussian-mixture parameters of ``name`` (only ``8gaussians``).

  Returns (weights (K,), means (K, 2), covariances (K, 2, 2)), float64, with
  p(x) = sum_k weights[k] N(x; means[k], covariances[k]). For 8gaussians:
  K = 8, weights 1/8, means 2 sqrt(2) (cos(k pi/4), sin(k pi/4)), covariances I/8.
  """
  get(name)
  if name != "8gaussians":
    raise ValueError(f"toy dataset {name!r} is not a Gaussian mixture; "
                     f"Gaussian mixtures: ['8gaussians']")
  weights = np.full((8,), 1.0 / 8.0)
  covs = np.broadcast_to(_GAUSS8_STD**2 * np.eye(2), (8, 2, 2)).copy()
  return weights, _GAUSS8_MEANS.copy(), covs


# --- deterministic batches -------------------------------------------------

_TRAIN_STREAM = 1
_HELDOUT_STREAM = 2
_U64 = 1 << 64


def _rng_for(stream: int, seed: int, index: int) -> np.random.Generator:
  """Generator keyed by (stream, seed, index), each < 2^64.

  Each value is packed into exactly two 32-bit words, so the entropy list has a
  fixed length and distinct triples give distinct SeedSequence states (a
  variable-length list could collide, e.g. numpy pads short lists with zeros).
  """
  for what, v in (("seed", seed), ("step", index)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < _U64:
      raise ValueError(f"{what} must be an int in [0, 2**64), got {v!r}")
  words = []
  for v in (stream, int(seed), int(index)):
    words += [v & 0xFFFFFFFF, v >> 32]
  return np.random.default_rng(np.random.SeedSequence(words))


def _check_processes(batch_size: int, process_index: int, process_count: int) -> None:
  _check_count(batch_size, "batch_size")
  if (isinstance(process_count, bool) or not isinstance(process_count, (int, np.integer))
      or process_count < 1 or batch_size % process_count):
    raise ValueError(f"process_count must be a positive int dividing batch_size="
                     f"{batch_size}, got {process_count!r}")
  if (isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer))
      or not 0 <= process_index < process_count):
    raise ValueError(f"process_index must be an int in [0, {process_count}), "
                     f"got {process_index!r}")


def batch(name: str, batch_size: int, seed: int, step: int, *, process_index: int = 0,
          process_count: int = 1, with_labels: bool = False):
  """Training batch number ``step``: a pure function of (name, batch_size, seed, step).

  The global batch (batch_size, 2) is drawn from its own generator keyed by
  (seed, step); with several processes, process ``process_index`` gets rows
  ``[i * b, (i + 1) * b)``, ``b = batch_size // process_count``, so the union
  over processes does not depend on how many there are. Returns (b, 2) float32,
  or with ``with_labels`` (x, labels (b,) int32), x the same.
  """
  _check_processes(batch_size, process_index, process_count)
  data = sample(name, batch_size, _rng_for(_TRAIN_STREAM, seed, step), with_labels=with_labels)
  per = batch_size // process_count
  rows = slice(process_index * per, (process_index + 1) * per)
  return (data[0][rows], data[1][rows]) if with_labels else data[rows]


def iterator(name: str, batch_size: int, seed: int, start_step: int = 0, *,
             process_index: int = 0, process_count: int = 1,
             with_labels: bool = False) -> Iterator:
  """Infinite iterator of ``batch(name, batch_size, seed, step, with_labels=...)``, step =
  start_step, ...

  Resuming at ``start_step`` yields exactly the batches an uninterrupted run
  would have seen from that step on.
  """
  get(name)
  if with_labels:
    _check_labelled(name)
  batch_size = _check_count(batch_size, "batch_size")
  _rng_for(_TRAIN_STREAM, seed, start_step)  # Validates seed and start_step now.
  _check_processes(batch_size, process_index, process_count)

  def gen():
    step = int(start_step)
    while True:
      yield batch(name, batch_size, seed, step, process_index=process_index,
                  process_count=process_count, with_labels=with_labels)
      step += 1

  return gen()


def heldout(name: str, n: int, seed: int, *, with_labels: bool = False):
  """Fixed evaluation set (n, 2) float32 from a seed stream disjoint from training; with
  ``with_labels`` (x, labels (n,) int32), x the same."""
  return sample(name, n, _rng_for(_HELDOUT_STREAM, seed, 0), with_labels=with_labels)
