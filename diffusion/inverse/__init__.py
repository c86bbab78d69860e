"""Linear inverse problems (inpainting, colorization, super-resolution) as denoiser transformers.

An observation y = A x0 (+ noise_std n) of a sample x0 of the model's distribution is to be
completed: sample p(x0 | y). A linear operator A is a small frozen dataclass with the pure,
batch-first maps

  apply(x, cond) = A x,  adjoint(v, cond) = A^T v,  pinv(y, cond) = A^+ y  (Moore-Penrose),
  project(x, cond) = A^+ A x  (the orthogonal projector P onto the row space of A),
  solve_gram(v, r2, noise_var, cond) = (r2 A A^T + noise_var I)^{-1} v,

whose per-sample data come from ``cond`` (``diffusion.guidance``'s protocol): cond['y'] the
observation (B, ...), cond['mask'] for inpainting, an optional cond['label'] (B,) handed to the
inner denoiser. Two transformers turn an unconditional (or class-conditional) denoiser into one
of p(x0 | y), so every registered sampler samples the conditional problem unchanged:

  replacement(denoise, op): score SDE's replacement method (Song et al. 2021, App. I.2),
      x0 = (I - P) D(x_t) + A^+ y; noiseless observations only.
  pigdm(denoise, schedule, op, noise_std=...): pseudoinverse-guided diffusion (Song, Vahdat,
      Mardani & Kautz 2023, eq. 7-8), one vector-Jacobian product through the denoiser per call.

Three posterior samplers are tied to their own update rule, so they are samplers with the
registry's signature ``fn(denoise, schedule, key, x_T, time_grid, *, cond=None,
sample_offset=0) -> (x0, info)`` (``denoise`` the inner denoiser, info['nfe'] the true count):

  dps_sampler(op, zeta=...): DPS (Chung et al., ICLR 2023, Alg. 1): DDPM ancestral steps, each
      followed by -zeta grad ||y - A x0_hat||^2 / ||y - A x0_hat||; back-propagates.
  daps_sampler(op, ...): DAPS (Zhang, Chu, Berner, Meng, Anandkumar & Song, CVPR 2025): per
      annealing level a PF-ODE solve to x0_hat, Langevin on N(x0; x0_hat, r^2 I)
      N(y; A x0, tau^2 I), re-noising.
  ddrm_sampler(op, noise_std=..., eta=..., eta_b=...): DDRM (Kawar et al., NeurIPS 2022, eq. 7-8)
      in the SVD basis of A (``op.svd_parts``).

The exact posterior of a Gaussian mixture under a linear Gaussian observation
(``diffusion.analytic.linear_gaussian_posterior``) is the ground truth both are tested against;
see docs/inverse.md for the equations and measured errors.
"""
from diffusion.inverse.daps import daps_nfe, daps_sampler
from diffusion.inverse.ddrm import ddrm_nfe, ddrm_sampler
from diffusion.inverse.dps import dps_nfe, dps_sampler
from diffusion.inverse.operators import (Colorization, Inpainting, LinearOperator, MatrixOperator,
                                         SuperResolution, SVDParts)
from diffusion.inverse.pigdm import pigdm
from diffusion.inverse.replacement import replacement

__all__ = ["Colorization", "Inpainting", "LinearOperator", "MatrixOperator", "SuperResolution",
           "SVDParts", "daps_nfe", "daps_sampler", "ddrm_nfe", "ddrm_sampler", "dps_nfe",
           "dps_sampler", "pigdm", "replacement"]
