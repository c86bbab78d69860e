"""Samplers: pure functions ``(denoise, schedule, key, x_T, time_grid, **hparams) -> (x_0, info)``
and a registry by name. See ``registry`` for the interface and ``engine`` for the linear
multistep engine most of them share; docs/samplers.md for the table of samplers."""
from diffusion.samplers.registry import (COMMON_ARGS, KINDS, SamplerInfo, build_sampler,
                                         get_sampler, register_sampler, registered_samplers,
                                         sampler_info)

__all__ = ["COMMON_ARGS", "KINDS", "SamplerInfo", "build_sampler", "get_sampler",
           "register_sampler", "registered_samplers", "sampler_info"]
