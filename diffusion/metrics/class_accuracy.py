"""Class accuracy of conditional samples: the fraction a reference classifier of clean data puts
in the class they were asked for.

A reference classifier is ``predict(x (n, ...)) -> (n,) int``. Two are provided:

* ``mixture_classifier``: the Bayes classifier argmax_y p(y | x) of a labelled Gaussian mixture
  (the toy data), exact (its own accuracy on the data is the Bayes rate, below 1 where classes
  overlap);
* ``digits_classifier``: an RBF support-vector machine (scikit-learn's SVC) fit on the digits'
  training split in the model's pixel range [-1, 1] (with uniform dequantization draws, so it
  sees values between the grey levels as the model's samples have them); its accuracy on the
  test split is returned with it, the ceiling of what samples can score.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence, Tuple

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


def class_accuracy(predict: Predict, x: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of samples x (n, ...) that ``predict`` assigns to their ``labels`` (n,); a sample
  with a non-finite value counts as wrong."""
  x, labels = np.asarray(x), np.asarray(labels)
  if len(x) != len(labels) or len(x) == 0:
    raise ValueError(f"need as many labels as samples (> 0), got {len(x)} samples and "
                     f"{len(labels)} labels")
  finite = np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)
  correct = np.zeros(len(x), bool)
  if finite.any():
    correct[finite] = np.asarray(predict(x[finite])) == labels[finite]
  return float(np.mean(correct))


def per_class_accuracy(predict: Predict, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Accuracy per class, (num_classes,) over the classes present in ``labels`` (sorted)."""
  pred = np.asarray(predict(np.asarray(x)))
  labels = np.asarray(labels)
  return np.array([np.mean(pred[labels == c] == c) for c in np.unique(labels)])


def mixture_classifier(weights: Sequence[float], means: np.ndarray, covs: np.ndarray,
                       classes: Sequence[int]) -> Predict:
  """The Bayes classifier of a Gaussian mixture whose component k has weight weights[k], mean
  means[k] (D,), covariance covs[k] (D, D) and class classes[k]:
  argmax_y sum_{k: classes[k] = y} w_k N(x; mu_k, S_k)."""
  w = np.asarray(weights, np.float64)
  mu = np.asarray(means, np.float64)
  chol = np.linalg.cholesky(np.asarray(covs, np.float64))  # (K, D, D)
  logdet = 2 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
  cls = np.asarray(classes, np.int64)
  if cls.shape != w.shape or mu.shape[0] != w.shape[0]:
    raise ValueError(f"weights {w.shape}, means {mu.shape} and classes {cls.shape} must agree "
                     f"on the number of components")

  def predict(x):
    x = np.asarray(x, np.float64)
    diff = x[:, None, :] - mu[None]  # (n, K, D)
    z = np.stack([np.linalg.solve(chol[k], diff[:, k].T).T for k in range(len(w))], axis=1)
    logc = np.log(w)[None] - 0.5 * np.sum(z * z, axis=-1) - 0.5 * logdet[None]
    per_class = np.stack([np.logaddexp.reduce(logc[:, cls == y], axis=1)
                          for y in range(int(cls.max()) + 1)], axis=1)
    return np.argmax(per_class, axis=1)

  return predict


@functools.lru_cache(maxsize=1)
def digits_classifier(draws: int = 4, seed: int = 0) -> Tuple[Predict, float]:
  """(predict, test accuracy) of an RBF SVC on the digits' training split in [-1, 1].

  Training images are dequantized ``draws`` times ((k + u) / 17 * 2 - 1, u ~ U[0, 1)); the test
  accuracy is measured on the test split at the grey levels' centres ((k + 0.5) / 17 * 2 - 1).
  """
  from sklearn.svm import SVC
  from diffusion.data.digits import LEVELS, load_digits
  rng = np.random.default_rng(seed)
  xi, yi = load_digits("train")
  k = np.repeat(xi.reshape(len(xi), -1).astype(np.float64), draws, axis=0)
  x = (k + rng.random(k.shape)) / LEVELS * 2 - 1
  y = np.repeat(yi, draws)
  svc = SVC(gamma="scale", C=10.0).fit(x, y)

  def predict(images):
    images = np.asarray(images, np.float64)
    return svc.predict(images.reshape(len(images), -1)).astype(np.int64)

  xt, yt = load_digits("test")
  acc = class_accuracy(predict, (xt.astype(np.float64) + 0.5) / LEVELS * 2 - 1, yt)
  return predict, acc
