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

The exact posterior of a Gaussian mixture under a linear Gaussian observation
(``diffusion.analytic.linear_gaussian_posterior``) is the ground truth both are tested against;
see docs/inverse.md for the equations and measured errors.
"""
from diffusion.inverse.operators import (Colorization, Inpainting, LinearOperator, MatrixOperator,
                                         SuperResolution)
from diffusion.inverse.pigdm import pigdm
from diffusion.inverse.replacement import replacement

__all__ = ["Colorization", "Inpainting", "LinearOperator", "MatrixOperator", "SuperResolution",
           "pigdm", "replacement"]
