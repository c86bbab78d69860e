"""Samplers: pure functions ``(denoise, schedule, key, x_T, time_grid, **hparams) -> (x_0, info)``
and a registry by name. See ``registry`` for the interface and ``engine`` for the linear
multistep engine most of them share; docs/samplers.md for the table of samplers."""
from diffusion.samplers.registry import (COMMON_ARGS, KINDS, SamplerInfo, build_inverter,
                                         build_sampler, get_sampler, register_sampler,
                                         registered_samplers, sampler_info, sampling_grid)

# The sampler families: importing them registers their samplers, so the registry is complete as
# soon as anything of this package is imported (the families import the registry, never the
# other way round).
from diffusion.samplers import (  # noqa: E402,F401
    consistency, dpm_solver, dpm_solver_v3, flow_map, multistep, ode, sa_solver, sde)

__all__ = ["COMMON_ARGS", "KINDS", "SamplerInfo", "build_inverter", "build_sampler", "get_sampler",
           "register_sampler", "registered_samplers", "sampler_info", "sampling_grid"]
