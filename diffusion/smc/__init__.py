"""Sequential Monte Carlo samplers for diffusion models (docs/smc.md).

G independent groups (one per observation / conditioning; the batch axis that
``diffusion.parallel`` shards) of K weighted particles each, x of shape (G, K, ...), moved by a
reverse-diffusion step (DDPM ancestral or Euler-Maruyama), optionally twisted, reweighted and
resampled within each group (``core.smc``). Two instances:

  ``tds``          Twisted Diffusion Sampler (Wu, Trippe, Naesseth, Blei & Cunningham, NeurIPS
                   2023) for linear inverse problems, twist N(y; A x0_hat, r_t^2 A A^T + s^2 I)
                   (``twists.LinearGaussianTwist``); also its bootstrap (untwisted proposal) and
                   no-twist (importance sampling) baselines;
  ``fk_steering``  Feynman-Kac steering (Singhal et al. 2025) with reward potentials
                   (``potentials.RewardPotential``: 'difference' / 'max' / 'sum').

Both return (x0 (G, K, ...), info) with the log evidence estimate per group; ``core.select``
draws samples from the weighted particles.
"""
from __future__ import annotations

from typing import Optional

from diffusion.inverse.operators import LinearOperator
from diffusion.schedules import Schedule
from diffusion.smc import potentials, resampling, twists
from diffusion.smc.core import TRANSITIONS, expand_cond, prior_particles, select, smc
from diffusion.smc.potentials import RewardPotential, class_reward, x0_reward
from diffusion.smc.sampler import tds_sampler
from diffusion.smc.twists import LinearGaussianTwist

PROPOSALS = ("tds", "bootstrap", "none")


def tds(denoise, schedule: Schedule, key, x_T, time_grid, op: LinearOperator, *, cond,
        noise_std: float = 0.0, variance: str = "pigdm", sigma_data: float = 1.0,
        proposal: str = "tds", group_offset=0, **smc_kwargs):
  """TDS on the inverse problem y = A x0 + noise_std n (``twists`` for the twist and the final
  step), x_T (G, K, ...), cond = {'y': (G, ...), ...} per group. ``proposal``: 'tds' (twisted
  proposal and weights, one VJP per step), 'bootstrap' (twisted weights, the plain reverse step)
  or 'none' (no twist: importance sampling with the final likelihood). ``smc_kwargs``: those of
  ``core.smc`` (transition, resample, ess_threshold, resample_every)."""
  if proposal not in PROPOSALS:
    raise ValueError(f"unknown proposal {proposal!r}; accepted: {PROPOSALS}")
  twist = LinearGaussianTwist(op, schedule, noise_std=noise_std, variance=variance,
                              sigma_data=sigma_data, guided=proposal == "tds",
                              twist=proposal != "none")
  return smc(denoise, schedule, key, x_T, time_grid, twist, cond=cond,
             group_offset=group_offset, **smc_kwargs)


def fk_steering(denoise, schedule: Schedule, key, x_T, time_grid, reward, *, cond=None,
                kind: str = "difference", lam: float = 1.0, resample_every: int = 1,
                exact_target: bool = True, ess_threshold: Optional[float] = None,
                group_offset=0, **smc_kwargs):
  """FK steering with the reward potential of ``reward(x_t, t, x0_hat, cond) -> (B,)``
  (``potentials``), resampling every ``resample_every`` steps (always there by default:
  ``ess_threshold=None``, as the paper)."""
  pot = RewardPotential(reward, kind=kind, lam=lam, exact_target=exact_target)
  return smc(denoise, schedule, key, x_T, time_grid, pot, cond=cond, group_offset=group_offset,
             resample_every=resample_every, ess_threshold=ess_threshold, **smc_kwargs)


__all__ = ["LinearGaussianTwist", "PROPOSALS", "RewardPotential", "TRANSITIONS", "class_reward",
           "expand_cond", "fk_steering", "potentials", "prior_particles", "resampling", "select",
           "smc", "tds", "tds_sampler", "twists", "x0_reward"]
