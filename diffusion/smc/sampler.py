"""TDS as a sampler of the registry's signature: one sample per observation, K particles behind it.

``tds_sampler(op, num_particles=K, ...)`` returns ``fn(denoise, schedule, key, x_T (B, ...),
time_grid, *, cond=None, sample_offset=0) -> (x0 (B, ...), info)``, the interface of
``diffusion.inverse``'s DPS / DAPS / DDRM samplers, so a driver samples it in place of its
configured sampler: each of the B samples is one SMC group (its observation cond['y'][b]) of K
particles drawn from the prior by fold_in(key_prior, sample_offset + b), run by ``tds`` and
reduced to one particle drawn from the group's final weights (``select``). Sample b therefore
depends on (key, sample_offset + b) only, not on its batch. x_T fixes the shape and dtype only:
the K particles are the group's own draws. Cost: K denoiser evaluations per sample and call
(``info['batch_multiplier']`` = K), with a VJP each for the twisted proposal.
"""
from __future__ import annotations

from typing import Optional

import jax

from diffusion.inverse.operators import LinearOperator
from diffusion.smc import resampling, twists
from diffusion.smc.core import TRANSITIONS, prior_particles, select


def tds_sampler(op: LinearOperator, *, num_particles: int, noise_std: float = 0.0,
                variance: str = "pigdm", sigma_data: float = 1.0, proposal: str = "tds",
                transition: str = "ddpm", resample: str = "systematic",
                ess_threshold: Optional[float] = 0.5):
  """See the module docstring; the arguments are ``diffusion.smc.tds``'s (checked here)."""
  from diffusion.smc import PROPOSALS, tds
  if not isinstance(op, LinearOperator):
    raise TypeError(f"op must be a diffusion.inverse operator, got {op!r}")
  if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
    raise ValueError(f"num_particles must be an int >= 1, got {num_particles!r}")
  if proposal not in PROPOSALS:
    raise ValueError(f"unknown proposal {proposal!r}; accepted: {PROPOSALS}")
  if variance not in twists.VARIANCES:
    raise ValueError(f"unknown twist variance {variance!r}; accepted: {twists.VARIANCES}")
  if transition not in TRANSITIONS:
    raise ValueError(f"unknown transition {transition!r}; accepted: {sorted(TRANSITIONS)}")
  resampling.get(resample)
  if ess_threshold is not None and (isinstance(ess_threshold, bool) or not isinstance(
      ess_threshold, (int, float)) or not 0.0 < ess_threshold <= 1.0):
    raise ValueError(f"ess_threshold must be None or in (0, 1], got {ess_threshold!r}")
  for name, v in (("noise_std", noise_std), ("sigma_data", sigma_data)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if name ==
                                                                        "noise_std" else v > 0):
      raise ValueError(f"{name} must be a real {'>= 0' if name == 'noise_std' else '> 0'}, got "
                       f"{v!r}")
  k = int(num_particles)

  def sampler(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
    b = x_T.shape[0]

    k_prior, k_run, k_pick = jax.random.split(key, 3)
    particles = prior_particles(schedule, k_prior, b, k, x_T.shape[1:], group_offset=sample_offset,
                                dtype=x_T.dtype)
    x0, info = tds(denoise, schedule, k_run, particles, time_grid, op, cond=cond,
                   noise_std=noise_std, variance=variance, sigma_data=sigma_data,
                   proposal=proposal, group_offset=sample_offset, transition=transition,
                   resample=resample, ess_threshold=ess_threshold)
    pick = select(k_pick, x0, info["log_weights"], 1, group_offset=sample_offset)[:, 0]
    return pick, {"nfe": info["nfe"], "log_evidence": info["log_evidence"],
                  "num_resampled": info["num_resampled"]}

  sampler.hparams = dict(num_particles=k, noise_std=noise_std, variance=variance,
                         sigma_data=sigma_data, proposal=proposal, transition=transition,
                         resample=resample, ess_threshold=ess_threshold)
  return sampler
