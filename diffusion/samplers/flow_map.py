"""Multistep flow-map sampling: x_{i+1} = Phi(x_i, t_i -> t_{i+1}) on the grid.

The ``denoise`` argument is a *flow map* Phi(x_t (B, ...), t, s, cond) -> x_s
(``diffusion.flow_map.FlowMap``: a two-time network's ``make_flow_map``, e.g. MeanFlow's
x_t - (t - s) u(x_t, s, t) or a shortcut model's, or the exact ``exact_flow_map_fn``), so this
sampler is registered with kind 'flow_map'. With the exact flow map every N gives the exact PF-ODE
solution from x_T: Phi composes (Phi(Phi(x, t -> s) s -> r) = Phi(x, t -> r)). NFE = N (one call
per step), deterministic, batch-invariant (no noise; each sample's map is its own).

The grid t_0 > ... > t_N may include its ends (closed grid: on rectified flow t_0 = 1, pure noise,
and t_N = 0, the data), which the PF-ODE samplers refuse; the configs of flow-map runs set the
schedule's t_min = 0, t_max = 1 and sampling.grid = 'uniform' for that (docs/mean_flow.md).
The loop is unrolled over the N steps (N is small: 1-8 for the few-step maps); each step's times
are host floats, so an exact (reference) flow map sees concrete times even under jit.
"""
from __future__ import annotations

from diffusion.samplers import engine
from diffusion.samplers.registry import register_sampler


@register_sampler("flow_map", kind="flow_map", order=1.0, nfe=lambda n, hp: n,
                  nfe_per_step="1",
                  paper="Geng et al. 2025, Mean Flows for One-step Generative Modeling, Alg. 2 "
                  "(1-step) and its multistep form z_r = z_t - (t - r) u(z_t, r, t); Frans et "
                  "al. 2024, One Step Diffusion via Shortcut Models, Sec. 3")
def flow_map(denoise, schedule, key, x_T, time_grid, *, cond=None, sample_offset=0):
  """x <- Phi(x, t_i -> t_{i+1}) for i = 0..N-1 with ``denoise`` the flow map; returns (x_N,
  {'nfe': N}). ``key`` and ``sample_offset`` are unused (deterministic)."""
  t = engine.check_grid(time_grid, schedule, closed=True)
  x = x_T
  for t_i, t_next in zip(t[:-1], t[1:]):
    x = denoise(x, float(t_i), float(t_next), cond)
  return x, {"nfe": len(t) - 1}
