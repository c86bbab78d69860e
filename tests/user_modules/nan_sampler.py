"""A sampler that fails on purpose (tests/test_results.py): Euler on the PF-ODE, then NaN for
every sample of even index, so a run of N samples holds exactly ceil(N / 2) non-finite ones.

Imported only by the driver in a subprocess
(``--config.imports="('tests.user_modules.nan_sampler',)"
--config.sampling.sampler=nan_every_other``): importing it into a test process would add it to
the registry every sampler test walks.
"""
import jax.numpy as jnp

from diffusion.samplers.ode import euler
from diffusion.samplers.registry import register_sampler


@register_sampler("nan_every_other", kind="deterministic", order=1.0, nfe=lambda n, hp: n,
                  nfe_per_step="1", paper="none: a test's fault injection (Euler, then NaN)")
def nan_every_other(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
  x, info = euler(denoise, schedule, key, x_T, time_grid, cond=cond, sample_offset=sample_offset)
  idx = sample_offset + jnp.arange(x.shape[0])
  bad = (idx % 2 == 0).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(bad, jnp.nan, x), info
