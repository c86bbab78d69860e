"""The particle loop: G independent groups of K weighted particles through a reverse diffusion.

Notation: a decreasing grid t_0 = t_max > ... > t_N = t_min (``samplers.engine.check_grid``);
x_i the particles at t_i, m_i = x0_hat(x_i) the denoiser, and a (log) twist phi_i (B,) evaluated
with it (``diffusion.smc.twists`` / ``potentials``). The model's reverse transition of step
i (t_i -> t_{i+1}) is the Gaussian p(x_{i+1} | x_i) = N(A_i x_i + D_i m_i, C_i^2 I) of a
registered stochastic sampler ('ddpm': ``samplers.sde.ddpm_coefs``, 'euler_maruyama':
``em_coefs``; or any ``coefs(schedule, t, s) -> (A, D, C)``).

Proposal. Untwisted (bootstrap): the transition itself. Twisted (TDS, Wu et al. 2023, sec. 3.2):
the same step with the score replaced by the conditional score score + grad log phi_i, i.e.
with m_i replaced by m_i + (sigma_i^2 / alpha_i) grad_x log phi_i(x_i) (Tweedie), so
q(x_{i+1} | x_i) = N(mean_p + delta_i, C_i^2 I), delta_i = D_i sigma_i^2 / alpha_i grad log phi_i.
(The TDS reference code does this, for its DDPM steps; with 'euler_maruyama' delta_i is
g^2 dt grad log phi_i, the paper's eq. 11.) One VJP through the denoiser per particle and step.

Weights (log space), with x_{i+1} = mean_p + delta_i + C_i z:

  w_0     = phi_0(x_0)                                   (x_0 ~ the prior p_{t_max})
  w_{i+1} = p(x_{i+1} | x_i) phi_{i+1}(x_{i+1}) / (q(x_{i+1} | x_i) phi_i(x_i)),
            log p / q = -|delta_i|^2 / (2 C_i^2) - <delta_i, z> / C_i,
  w_final = phi_final(x0) / phi_N(x_N)                   (the twist's ``final``: the exact
            likelihood p(y | x0) in place of the last twist, and the returned x0).

Normalised weights W (log W sums to 0 per group) are carried; after each step
log Z += log sum_k W_k w_k (Del Moral 2004; Naesseth, Lindsten & Schoen 2019, Alg. 2), the
unbiased (in Z, not log Z) estimate of the evidence Z = E_p[phi_final], i.e. p(y) for TDS.
Resampling (per group, never across groups) at the steps i + 1 = k, 2k, ... (``resample_every``
= k) when ESS < ess_threshold * K (None: always at those steps); after it W = 1/K.

Randomness: group g's noise and resampling come from fold_in(key, group_offset + g) only
(``samplers.engine.sample_keys``), so a group's result does not depend on the other groups in
the batch or on how the groups are split over devices (the G axis is the batch axis that
``diffusion.parallel`` shards).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import guidance
from diffusion.samplers import engine
from diffusion.samplers.sde import ddpm_coefs, em_coefs
from diffusion.schedules import Schedule
from diffusion.smc import resampling

Array = Any
CoefsFn = Callable[[Schedule, float, float], Tuple[float, float, float]]
TRANSITIONS: Dict[str, CoefsFn] = {"ddpm": ddpm_coefs, "euler_maruyama": em_coefs}
SHIFTS = ("variance", "denoiser")


def _transition_coefs(transition: Union[str, CoefsFn]) -> CoefsFn:
  if callable(transition):
    return transition
  if transition not in TRANSITIONS:
    raise ValueError(f"unknown transition {transition!r}; accepted: {sorted(TRANSITIONS)} or a "
                     f"callable coefs(schedule, t, s) -> (A, D, C)")
  return TRANSITIONS[transition]


def expand_cond(cond, num_particles: int):
  """Per-group ``cond`` (leaves (G, ...)) -> per-particle (G * K, ...): each group's entry
  repeated K times (particle k of group g is row g * K + k)."""
  if cond is None:
    return None
  return jax.tree_util.tree_map(lambda a: jnp.repeat(jnp.asarray(a), num_particles, axis=0), cond)


def prior_particles(schedule: Schedule, key, num_groups: int, num_particles: int, shape,
                    group_offset: int = 0, dtype=jnp.float32) -> Array:
  """x_T (G, K, *shape) ~ the prior, group g's from fold_in(key, group_offset + g) only."""
  keys = engine.sample_keys(key, num_groups, group_offset)
  draw = lambda k: schedule.prior_std() * jax.random.normal(k, (num_particles,) + tuple(shape),
                                                            dtype)
  return jax.vmap(draw)(keys)


def _check_args(x_T, resample, ess_threshold, resample_every):
  if getattr(x_T, "ndim", 0) < 3:
    raise ValueError(f"x_T must be (G, K, ...) (groups, particles, event), got shape "
                     f"{getattr(x_T, 'shape', None)}")
  fn = resampling.get(resample)
  if ess_threshold is not None and not (isinstance(ess_threshold, (int, float)) and not isinstance(
      ess_threshold, bool) and 0.0 < ess_threshold <= 1.0):
    raise ValueError(f"ess_threshold must be None (always resample) or a float in (0, 1], got "
                     f"{ess_threshold!r}")
  if isinstance(resample_every, bool) or not isinstance(resample_every, (int, np.integer)) or \
      resample_every < 1:
    raise ValueError(f"resample_every must be an int >= 1, got {resample_every!r}")
  return fn


def smc(denoise, schedule: Schedule, key, x_T: Array, time_grid, twist, *, cond=None,
        group_offset=0, transition: Union[str, CoefsFn] = "ddpm", resample: str = "systematic",
        ess_threshold: Optional[float] = 0.5, resample_every: int = 1,
        proposal_shift: str = "variance") -> Tuple[Array, Dict[str, Any]]:
  """Sequential Monte Carlo through the reverse diffusion (see the module docstring).

  Args:
    denoise: ``denoise(x (B, ...), t (B,), cond) -> x0_hat``, called on the G * K particles.
    schedule: the ``diffusion.schedules.Schedule``.
    key: PRNG key; group g uses fold_in(key, group_offset + g).
    x_T: (G, K, ...) particles at time_grid[0] (e.g. ``prior_particles``).
    time_grid: decreasing host array (N+1,) in the schedule's range.
    twist: a ``twists.Twist`` (TDS, bootstrap, none) or ``potentials.RewardPotential`` (FK).
    cond: per-group conditioning, leaves (G, ...) (e.g. {'y': (G, M)}), expanded to particles.
    transition: 'ddpm' (default), 'euler_maruyama' or coefs(schedule, t, s) -> (A, D, C).
    resample: 'systematic' or 'multinomial'.
    ess_threshold: resample when ESS < threshold * K; None: at every resampling step.
    resample_every: k, resampling (and FK potentials) at steps k, 2k, ...
    proposal_shift: for a guided twist, 'variance' (delta = C^2 grad log phi, the TDS paper's
      first-order proposal) or 'denoiser' (m + sigma^2 / alpha grad log phi in the step, the TDS
      reference code's form; degenerates with few steps, docs/smc.md).

  Returns (x0 (G, K, ...), info): 'nfe' = N + 1 denoiser calls on the (G * K) particle batch,
  'network_vjp' (the twisted proposal back-propagates through the denoiser at each call),
  'batch_multiplier' (the denoiser's, ``guidance.denoiser_info``),
  'log_evidence' (G,) log Z_hat, 'log_weights' (G, K) the final normalised log weights,
  'ess' (N + 2, G) the ESS at t_0, after each step (before resampling) and after the final
  weight, 'num_resampled' (G,) the number of resamplings, 'num_particles' K.
  """
  res_fn = _check_args(x_T, resample, ess_threshold, resample_every)
  coefs_fn = _transition_coefs(transition)
  t = engine.check_grid(time_grid, schedule)
  n = len(t) - 1
  coefs = np.array([coefs_fn(schedule, t[i], t[i + 1]) for i in range(n)], np.float64)
  if not np.all(coefs[:, 2] > 0):
    raise ValueError(f"SMC needs a stochastic transition with C > 0 at every step, got C = "
                     f"{coefs[:, 2]}")
  alpha, sigma = engine.alpha_sigma(schedule, t)
  if proposal_shift == "variance":
    guide = coefs[:, 2]**2
  elif proposal_shift == "denoiser":
    guide = coefs[:, 1] * sigma[:-1]**2 / alpha[:-1]
  else:
    raise ValueError(f"unknown proposal_shift {proposal_shift!r}; accepted: {SHIFTS}")
  active = np.array([(i + 1) % resample_every == 0 for i in range(n)])
  g, k = x_T.shape[:2]
  b = g * k
  dt = x_T.dtype
  thr = None if ess_threshold is None else float(ess_threshold)
  guided = bool(getattr(twist, "guided", False))
  group_keys = engine.sample_keys(key, g, group_offset)
  pcond = expand_cond(cond, k)

  flat = lambda a: jnp.reshape(a, (b,) + a.shape[2:])
  unflat = lambda a: jnp.reshape(a, (g, k) + a.shape[1:])
  tree_flat = lambda s: jax.tree_util.tree_map(flat, s)
  tree_unflat = lambda s: jax.tree_util.tree_map(unflat, s)

  def evaluate(x, ti, state, act):
    """(m, log phi, grad log phi, state) at the particles x (G, K, ...) and time ti."""
    xf, sf = flat(x), tree_flat(state)
    tb = jnp.full((b,), ti, dt)
    if guided:
      def f(z):
        m = denoise(z, tb, pcond).astype(dt)
        lp, st = twist.value(z, tb, m, pcond, sf, act)
        return (m, lp), st
      (m, lp), vjp, st = jax.vjp(f, xf, has_aux=True)
      (gr,) = vjp((jnp.zeros_like(m), jnp.ones_like(lp)))
    else:
      m = denoise(xf, tb, pcond).astype(dt)
      lp, st = twist.value(xf, tb, m, pcond, sf, act)
      gr = jnp.zeros_like(m)
    return unflat(m), unflat(lp), unflat(gr), tree_unflat(st)

  def reweight(log_w, log_z, inc):
    new = log_w + inc
    tot = jax.nn.logsumexp(new, axis=-1)
    return new - tot[:, None], log_z + tot

  def gather(tree, idx):
    def one(a):
      ix = jnp.reshape(idx, idx.shape + (1,) * (a.ndim - 2))
      return jnp.take_along_axis(a, ix, axis=1)
    return jax.tree_util.tree_map(one, tree)

  red = tuple(range(2, x_T.ndim))
  state0 = tree_unflat(twist.init_state(b, dt))
  m0, lp0, g0, state0 = evaluate(x_T, t[0], state0, jnp.asarray(True))
  log_w, log_z = reweight(jnp.full((g, k), -math.log(k), dt), jnp.zeros((g,), dt), lp0)
  ess0 = resampling.ess(log_w)

  xs = dict(t_next=jnp.asarray(t[1:], dt), a=jnp.asarray(coefs[:, 0], dt),
            d=jnp.asarray(coefs[:, 1], dt), c=jnp.asarray(coefs[:, 2], dt),
            guide=jnp.asarray(guide, dt), active=jnp.asarray(active), i=jnp.arange(n))

  def body(carry, s):
    x, m, lp, gr, state, log_w, log_z, count = carry
    step_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, s["i"]))(group_keys)
    z = jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, 0), x.shape[1:], dt))(
        step_keys)
    delta = s["guide"] * gr if guided else jnp.zeros_like(x)
    x_new = s["a"] * x + s["d"] * m + delta + s["c"] * z
    log_pq = (-jnp.sum(delta * delta, axis=red) / (2.0 * s["c"]**2)
              - jnp.sum(delta * z, axis=red) / s["c"])
    m_new, lp_new, gr_new, state = evaluate(x_new, s["t_next"], state, s["active"])
    log_w, log_z = reweight(log_w, log_z, log_pq + lp_new - lp)
    e = resampling.ess(log_w)
    want = e < thr * k if thr is not None else jnp.ones((g,), bool)
    do = want & s["active"]
    res_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(step_keys)
    anc = resampling.resample_groups(res_fn, res_keys, log_w)
    idx = jnp.where(do[:, None], anc, jnp.arange(k, dtype=anc.dtype)[None])
    x_new, m_new, lp_new, gr_new, state = gather((x_new, m_new, lp_new, gr_new, state), idx)
    log_w = jnp.where(do[:, None], -math.log(k), log_w)
    return (x_new, m_new, lp_new, gr_new, state, log_w, log_z, count + do), e

  carry = (x_T, m0, lp0, g0, state0, log_w, log_z, jnp.zeros((g,), jnp.int32))
  (x, m, lp, _, state, log_w, log_z, count), ess_steps = jax.lax.scan(body, carry, xs)
  fin_group = jax.vmap(lambda kk: jax.random.fold_in(kk, n))(group_keys)
  fin_keys = jax.vmap(lambda kk: jax.vmap(lambda j: jax.random.fold_in(kk, j))(jnp.arange(k)))(
      fin_group)  # (G, K) keys: particle k of group g
  fin_keys = jnp.reshape(fin_keys, (b,) + fin_keys.shape[2:])
  x0, lp_fin = twist.final(fin_keys, flat(x), jnp.full((b,), t[-1], dt), flat(m), pcond,
                           tree_flat(state), flat(lp))
  log_w, log_z = reweight(log_w, log_z, unflat(lp_fin) - lp)
  ess_trace = jnp.concatenate([ess0[None], ess_steps, resampling.ess(log_w)[None]], axis=0)
  base = guidance.denoiser_info(denoise)
  info = {"nfe": n + 1, "network_vjp": bool(guided or base["network_vjp"]),
          "batch_multiplier": base["batch_multiplier"], "log_evidence": log_z, "log_weights": log_w, "ess": ess_trace,
          "num_resampled": count, "num_particles": k}
  return unflat(x0.astype(dt)), info


def select(key, x0: Array, log_weights: Array, num: int = 1, group_offset=0) -> Array:
  """``num`` particles per group drawn (multinomially, with replacement) from the final weights:
  x0 (G, K, ...), log_weights (G, K) -> (G, num, ...); group g uses fold_in(key, group_offset +
  g). One draw per group is a sample of the SMC's approximation of the target, independent
  across groups."""
  g = x0.shape[0]
  keys = engine.sample_keys(key, g, group_offset)
  idx = jax.vmap(lambda kk, lw: jax.random.categorical(kk, lw, shape=(num,)))(keys, log_weights)
  ix = jnp.reshape(idx, idx.shape + (1,) * (x0.ndim - 2))
  return jnp.take_along_axis(x0, ix, axis=1)
