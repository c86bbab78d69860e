"""Held-out accuracy and cross-entropy of a noise-conditional classifier p(y | x_t, t), per noise
level: how well it classifies data noised by the forward process x_t = alpha(t) x0 + sigma(t) eps
(the classifier of classifier guidance; Dhariwal & Nichol 2021). The Bayes classifier's
cross-entropy at t is H(Y | X_t), which grows to H(Y) as the signal vanishes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import jax
import numpy as np

CLASSIFIER_EVAL_LEVELS = 5  # noise levels of a classifier's held-out accuracy


def classifier_eval_times(schedule, t_min: float, t_max: float,
                          num: int = CLASSIFIER_EVAL_LEVELS) -> np.ndarray:
  """``num`` times (float64, increasing, the ends exactly t_min and t_max) evenly spaced in
  logSNR lambda(t) = log(alpha^2 / sigma^2) between lambda(t_min) and lambda(t_max)."""
  if num < 2 or not t_min < t_max:
    raise ValueError(f"need num >= 2 and t_min < t_max, got num={num}, t_min={t_min}, "
                     f"t_max={t_max}")
  lam = np.linspace(float(schedule.logsnr(np.float64(t_min))),
                    float(schedule.logsnr(np.float64(t_max))), num)
  t = np.asarray(schedule.t_from_logsnr(lam), np.float64)
  t[0], t[-1] = t_min, t_max
  return t


def classifier_accuracy(logits_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        x0: np.ndarray, labels: np.ndarray, schedule, times: np.ndarray,
                        key: jax.Array) -> Dict[str, Any]:
  """Accuracy and cross-entropy of a classifier on noisy held-out data, per time.

  For level i and time t_i: x_t = alpha(t_i) x0 + sigma(t_i) eps, eps ~ N(0, I) drawn for the
  whole set (n, ...) from fold_in(key, i); ``logits_of(x_t (n, ...), t (n,)) -> (n, C)``.
  Returns {'accuracy': (L,), 'cross_entropy': (L,)} (numpy float64; nats).
  """
  labels = np.asarray(labels, np.int64)
  acc, ce = [], []
  for i, t in enumerate(np.asarray(times, np.float64)):
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x0.shape), np.float64)
    xt = (float(schedule.alpha(t)) * x0 + float(schedule.sigma(t)) * eps).astype(np.float32)
    logits = np.asarray(logits_of(xt, np.full((len(x0),), t, np.float32)), np.float64)
    log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    ce.append(float(-np.mean(log_p[np.arange(len(labels)), labels])))
    acc.append(float(np.mean(np.argmax(logits, axis=-1) == labels)))
  return {"accuracy": np.asarray(acc), "cross_entropy": np.asarray(ce)}
