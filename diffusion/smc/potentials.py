"""Feynman-Kac steering potentials (Singhal, Horvitz, Teehan, Ren, Yu, Cho & Ranganath 2025,
"A General Framework for Inference-Time Scaling and Steering of Diffusion Models", sec. 3).

FK steering runs the plain reverse steps (the bootstrap proposal: ``guided = False``) and
resamples every k steps (``core.smc(resample_every=k)``) with potentials built from a reward
r_i = r(x_i) evaluated at those steps i (the 'active' steps), e.g. r(x0_hat(x_i)). With lambda the
inverse temperature (the paper's types):

  'difference':  G_i = exp(lambda (r_i - r_prev))       (r_prev: the previous active step's)
  'max':         G_i = exp(lambda max_{j active, j <= i} r_j)
  'sum':         G_i = exp(lambda sum_{j active, j <= i} r_j)

In the twist form of ``core`` the weight of a particle at step i is Phi_i = the product of the
potentials applied so far (log Phi carried in the per-particle state, resampled with it), so
core's ratio Phi_{i+1} / Phi_i is G at active steps and 1 elsewhere.

Final step: the target of FK steering is p(x0) exp(lambda r(x0)) (the paper's tilted
distribution). 'difference' reaches it by telescoping; 'max' and 'sum' do not. With
``exact_target=True`` (default) the final weight is exp(lambda r(x0)) / Phi_N, so every type
targets exactly p(x0) exp(lambda r(x0)) and the types differ only in the intermediate
resampling; ``exact_target=False`` applies one more potential of the type at x0 instead (the
potentials alone; FLAG: which of the two the paper's code does for 'max'/'sum' was not checked).
log Z_hat then estimates E_p[exp(lambda r(x0))] (with exact_target).

Rewards have the signature ``reward(x_t (B, ...), t (B,), x0_hat (B, ...), cond) -> (B,)``;
``x0_reward(fn)`` wraps fn(x0_hat, cond), ``class_reward(log_prob_fn)`` the classifier interface
of ``diffusion.guidance`` (log p(y | x_t), with y = the labels in cond). At the final step the
reward is evaluated at x0 = x0_hat(x_N) with t = t_N (x_t = x0).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffusion.guidance import LogProbFn, label_of

Array = Any
Reward = Callable[[Array, Array, Array, Any], Array]
KINDS = ("difference", "max", "sum")


def x0_reward(fn: Callable[[Array, Any], Array]) -> Reward:
  """A reward of the denoised estimate: fn(x0_hat (B, ...), cond) -> (B,)."""
  if not callable(fn):
    raise TypeError(f"fn must be callable fn(x0_hat, cond) -> (B,), got {fn!r}")
  return lambda x, t, m, cond: fn(m, cond)


def class_reward(log_prob_fn: LogProbFn) -> Reward:
  """r(x_t) = log p(y | x_t) of a noise-conditional classifier (``guidance.LogProbFn``:
  (x_t, t, labels) -> (B,)), y = label_of(cond). With lambda = 1, an exact classifier and
  ``exact_target``, FK steering targets p(x0) p(y | x0) = p(x0, y) (the class posterior)."""
  if not callable(log_prob_fn):
    raise TypeError(f"log_prob_fn must be callable, got {log_prob_fn!r}")

  def reward(x, t, m, cond):
    labels = label_of(cond)
    if labels is None:
      raise ValueError("class_reward needs class labels in cond (an int array (G,) or a dict "
                       "with 'label')")
    return log_prob_fn(x, t, labels)

  return reward


class RewardPotential:
  """FK-steering potential of ``reward`` (module doc): ``kind`` in 'difference' / 'max' / 'sum',
  ``lam`` the inverse temperature lambda (finite), ``exact_target`` the final correction."""
  guided = False

  def __init__(self, reward: Reward, kind: str = "difference", lam: float = 1.0,
               exact_target: bool = True):
    if not callable(reward):
      raise TypeError(f"reward must be callable reward(x_t, t, x0_hat, cond) -> (B,), got "
                      f"{reward!r}")
    if kind not in KINDS:
      raise ValueError(f"unknown potential kind {kind!r}; accepted: {KINDS}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
      raise ValueError(f"lam must be a finite real number, got {lam!r}")
    self.reward, self.kind, self.lam, self.exact_target = reward, kind, float(lam), bool(
        exact_target)

  def init_state(self, batch: int, dtype) -> dict:
    return {"log_phi": jnp.zeros((batch,), dtype), "rmax": jnp.full((batch,), -jnp.inf, dtype),
            "rsum": jnp.zeros((batch,), dtype)}

  def _apply(self, r, state):
    lam = jnp.asarray(self.lam, r.dtype)
    if self.kind == "difference":
      return lam * r, state
    if self.kind == "max":
      rmax = jnp.maximum(state["rmax"], r)
      return state["log_phi"] + lam * rmax, dict(state, rmax=rmax)
    rsum = state["rsum"] + r
    return state["log_phi"] + lam * rsum, dict(state, rsum=rsum)

  def value(self, x, t, m, cond, state, active):
    def on(_):
      r = self.reward(x, t, m, cond).astype(x.dtype)
      log_phi, st = self._apply(r, state)
      return log_phi, dict(st, log_phi=log_phi)

    def off(_):
      return state["log_phi"], state

    return jax.lax.cond(active, on, off, None)

  def final(self, keys, x, t, m, cond, state, log_phi):
    r = self.reward(m, t, m, cond).astype(m.dtype)
    if self.exact_target:
      return m, jnp.asarray(self.lam, m.dtype) * r
    return m, self._apply(r, state)[0]
