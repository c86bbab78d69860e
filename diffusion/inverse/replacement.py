"""The replacement method of score SDE (Song et al. 2021, App. I.2)."""
from __future__ import annotations

import jax.numpy as jnp

from diffusion import guidance
from diffusion.inverse.operators import Denoiser, LinearOperator, _check_transform_args


def replacement(denoise: Denoiser, op: LinearOperator) -> Denoiser:
  """Score SDE's replacement method (Song et al. 2021, App. I.2) as a denoiser:

    x0(x_t) = (I - P) D(x_t, t, label) + A^+ y,     P = A^+ A = ``op.project``,

  the network's prediction of the unobserved part, with the observed part set to the observation.
  Noiseless observations only (y = A x0 exactly): with noise, A^+ y would force the noise into
  the sample.

  Why every registered sampler works unchanged: each sampler step is x' = a x + d x0_hat (+ c z,
  + earlier x0_hat's for multistep methods) with scalar coefficients, which commute with P. So
  the observed coordinates P x_t evolve by themselves, driven by the constant P x0_hat = A^+ y:
  the sampler integrates the PF-ODE (or reverse SDE) of a point mass at A^+ y, whose exact
  solution is the forward marginal P x_t = alpha_t A^+ y + sigma_t P eps (one eps for an ODE,
  re-drawn by an SDE). Euler / DDIM and Heun in EDM variables and DPM-Solver++ steps are exact
  for a constant x0_hat (tested: P x_t = alpha_t A^+ y + sigma_t/sigma_T (P x_T - alpha_T A^+ y)),
  and ancestral (DDPM) steps keep its marginal N(alpha_t A^+ y, sigma_t^2 P) exactly; other
  solvers converge to it. The unobserved coordinates meanwhile follow the unconditional dynamics
  given the whole x_t, observed part included. Score SDE's code (``get_pc_inpainter``,
  ``get_pc_colorizer``) instead re-draws the observed coordinates as alpha_t A^+ y + sigma_t z
  with fresh z after every predictor / corrector step, which only fits inside an SDE / PC loop;
  the two agree in the marginal law of the observed coordinates at every t (not in their joint
  law with the unobserved ones across times). With the sampler's final denoise (or a last step to
  sigma = 0) A x0 = y exactly; a sampler stopping at t_min > 0 leaves A x = alpha y + sigma A eps.

  The result is an approximation of p(x0 | y): E[x0 | x_t] for a noised observation, not
  E[x0 | x_t, y] (docs/inverse.md gives its measured error on a Gaussian mixture).
  """
  _check_transform_args(denoise, op)

  def fn(x, t, cond=None):
    op.check(x.shape, cond)
    x0 = denoise(x, t, guidance.label_of(cond))
    y = jnp.asarray(cond["y"]).astype(x0.dtype)
    return x0 - op.project(x0, cond) + op.pinv(y, cond)

  return guidance.with_info(fn, denoise, "replacement")
