"""VDM's learned noise schedule (Kingma et al. 2021, "Variational Diffusion Models", Sec. 4-5 and
App. H) as a schedule of this codebase, and its training loss.

gamma(t) = -logSNR(t) is a monotone network of t (VDM's three-layer "NoiseNet" with positive
weights):

  gamma~(t) = w1 t + b1 + (1/H) sum_j w3_j (2 sigmoid(w2_j (2t - 1) + b2_j) - 1) + b3,
  w1 = softplus(v1) > 0, w2 = |v2|, w3 = |v3|  (VDM: |.| everywhere; softplus on w1 keeps
  gamma~ strictly increasing for every parameter value, so the normalisation below is defined)

  gamma(t) = gamma_0 + (gamma_1 - gamma_0) (gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0)),

with fixed endpoints gamma_0 = gamma_min, gamma_1 = gamma_max (VDM: -13.3, 5) or learned ones
(parameters 'gamma_min' / 'gamma_max'). alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma), so
alpha^2 + sigma^2 = 1 exactly (VDM eq. 3-4); every derivative is in closed form and the inverse
t(logSNR) is a bisection of the monotone gamma (to the float resolution).

:class:`diffusion.schedules.LearnedVP` holds the schedule's parameters (``bind(params)``): unbound it is the config's
description; bound to host numpy arrays it is a frozen schedule that every sampler and the
likelihood use unchanged; bound to traced arrays (inside the train step) its parameters get
gradients. The parameters live in the network's parameter tree under 'schedule'
(:class:`WithLearnedSchedule`), so the optimizer, EMA, sharding and checkpoints treat them like
any weight.

Training (:func:`vdm_loss`): the continuous-time diffusion loss, VDM eq. 17 in t,

  L_i = 1/2 gamma'(t_i) || eps - eps_hat(z_t, t_i) ||^2,  t ~ U[t_0, t_1],

(in nats, summed over dimensions; the x0-space form is identical) trains the network; with fixed
endpoints its expectation does not depend on the shape of gamma (VDM Sec. 5.1, for a network
conditioned on the logSNR), and the shape is trained to minimise the variance of the estimator,
grad E[L^2] (VDM Sec. 5.2). Learned endpoints get the gradient of the whole bound: L plus the
prior KL at t_1 and the discrete decoder's reconstruction NLL at t_0 (diffusion.elbo).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.schedules import GAMMA_SHAPE_KEYS, LearnedVP

Array = Any
Params = Dict[str, Any]


class WithLearnedSchedule(nn.Module):
  """A network plus the learned schedule's parameters: params {'net': ..., 'schedule': ...}.

  ``apply(variables, x, c, labels=None, train=False)`` is the network's; the schedule's
  parameters are only created here (``LearnedVP.init_params``) and read by ``bind``.
  """
  net_name: str
  net_kwargs: Any
  schedule: LearnedVP
  dtype: Any = jnp.float32

  def setup(self):
    from diffusion.models import get_model
    self.net = get_model(self.net_name, **dict(self.net_kwargs), dtype=self.dtype)
    self.schedule_params = self.param("schedule", lambda key: self.schedule.init_params(key))

  def __call__(self, x, c, labels=None, train: bool = False):
    return self.net(x, c, labels=labels, train=train)


def draws(key, x0: Array, t0: float, t1: float, time_sampling: str):
  """(t (B,) in [t0, t1], eps like x0, the decoder's key): the random draws of :func:`vdm_loss`."""
  from diffusion.losses import unit_uniforms
  k_t, k_eps, k_rec = jax.random.split(key, 3)
  t = t0 + (t1 - t0) * unit_uniforms(k_t, x0.shape[0], time_sampling)
  return t, jax.random.normal(k_eps, x0.shape, jnp.float32), k_rec


def diffusion_loss(apply_fn: Callable, net_params, sched: LearnedVP, param, x0: Array, t: Array,
                   eps: Array, cond=None) -> Array:
  """VDM's continuous-time diffusion loss per example in nats (B,), VDM eq. 17 in t:
  1/2 gamma'(t) e^{-gamma} ||x0 - x0_hat(z_t)||^2 = 1/2 gamma'(t) ||eps - eps_hat||^2, with
  z_t = alpha_t x0 + sigma_t eps on the bound schedule ``sched``."""
  from diffusion.parameterization import make_denoiser
  g, dg = sched.gamma_and_derivative(t)
  denoise = make_denoiser(lambda x_in, c, cond_: apply_fn(net_params, x_in, c, cond_), sched,
                          param)
  x0_hat = denoise(sched.marginal(x0, eps, t), t, cond)
  err = jnp.sum(jnp.square(x0_hat - x0).reshape(x0.shape[0], -1), axis=-1)
  return 0.5 * dg * jnp.exp(-g) * err


def vdm_loss(apply_fn: Callable, params: Params, schedule: LearnedVP, param, x0: Array, key, *,
             cond=None, time_sampling: str = "stratified", num_levels: Optional[int] = None,
             t_min: Optional[float] = None, t_max: Optional[float] = None
             ) -> Tuple[Array, Dict[str, Array]]:
  """VDM's training objective with a learned schedule (module docstring), as one scalar whose
  gradient is the mean diffusion loss for the network (and learned endpoints), and
  grad E[L^2] for gamma's shape.

  Args:
    apply_fn: ``apply_fn(net_params_tree, x_in, c, cond) -> F`` the network, given the whole
      parameter tree (so stop-gradients can be placed on either part).
    params: {'net': ..., 'schedule': ...}.
    schedule: the unbound LearnedVP of the config; param: the Parameterization.
    x0: (B, ...) data in [-1, 1]; with ``num_levels`` (learned endpoints) dequantized levels,
      whose integers give the decoder's reconstruction term.
  Returns (loss scalar, aux): aux 'per_example' (B,) the diffusion loss in nats, 't' (B,),
  'prior' and 'recon' (B,) when the endpoints are learned.
  """
  from diffusion import elbo
  b = x0.shape[0]
  t0 = schedule.t_min if t_min is None else t_min
  t1 = schedule.t_max if t_max is None else t_max
  t, eps, k_rec = draws(key, x0, t0, t1, time_sampling)
  sg = jax.lax.stop_gradient

  def per_example(net_params, sched_params):
    return diffusion_loss(apply_fn, net_params, schedule.bind(sched_params), param, x0, t, eps,
                          cond)

  sp = params["schedule"]
  frozen_shape = {k: (sg(v) if k in GAMMA_SHAPE_KEYS else v) for k, v in sp.items()}
  loss_mean = per_example(params["net"], frozen_shape)  # network (and endpoints)
  loss_var = per_example(sg(params["net"]), {k: (v if k in GAMMA_SHAPE_KEYS else sg(v))
                                             for k, v in sp.items()})  # gamma's shape
  value = jnp.mean(loss_mean)
  objective = value + jnp.mean(loss_var**2) - sg(jnp.mean(loss_var**2))
  aux = {"per_example": loss_mean, "t": t}
  if schedule.learn_endpoints:
    if num_levels is None:
      raise ValueError("learned endpoints train on the whole bound: vdm_loss needs num_levels")
    sched = schedule.bind(sp)
    x_int = jnp.clip(jnp.floor((x0 + 1.0) * num_levels / 2.0), 0, num_levels - 1)
    a0, s0 = sched.alpha(jnp.asarray(t0)), sched.sigma(jnp.asarray(t0))
    z0 = a0 * elbo.bin_centers(x_int, num_levels) + s0 * jax.random.normal(k_rec, x0.shape)
    recon = elbo.reconstruction_nll(x_int.astype(jnp.int32), z0, num_levels, a0, s0)
    a1, s1 = sched.alpha(jnp.asarray(t1)), sched.sigma(jnp.asarray(t1))
    xc = elbo.bin_centers(x_int, num_levels).reshape(b, -1)
    # KL(N(a1 x, s1^2) || N(0, 1)) per dimension (elbo.prior_kl with the prior's std 1).
    prior = jnp.sum(0.5 * (s1 * s1 + a1 * a1 * xc**2 - 1.0 - jnp.log(s1 * s1)), axis=-1)
    aux.update(prior=prior, recon=recon)
    objective = objective + jnp.mean(prior + recon)
    value = value + sg(jnp.mean(prior + recon))
  return objective - sg(objective) + sg(value), aux  # value of the loss, gradient of the objective
