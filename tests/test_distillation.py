"""Progressive distillation (diffusion.distillation) against ground truth.

The teacher is the exact denoiser of an analytic Gaussian mixture (diffusion.analytic), in
float64 (``jax.enable_x64``) wherever an exact answer is compared:

* ``ddim_step`` equals the registry's 'ddim' sampler on concrete grids;
* one student DDIM step with x0_hat = x~ (``distillation_target``) lands on the teacher's two
  steps, also at t'' = t_min and at sigma(t'') = 0;
* the loss is 0 for the ideal student and w * delta^2 for one off by delta;
* composing ideal students over rounds gives a 1-step map equal to the teacher's 8-step DDIM map,
  and the DDIM maps' errors against the exact PF-ODE map are what ideal distillation inherits;
* a tiny student trained with ``training.make_train_step`` and the distillation loss beats the
  teacher's own N/2-step map at approximating the teacher's N-step map.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, distillation as D, schedules, training
from diffusion.models.mlp import sinusoidal_embedding
from diffusion.parameterization import Parameterization, make_denoiser
from diffusion.samplers import build_sampler, registered_samplers

COSINE = schedules.VPCosine()
# t_min = 0: the last step goes to the data itself (sigma = 0 exactly, VPCosine included:
# schedules.VPCosine.sigma is computed without the cancellation of sqrt(1 - alpha^2)).
COSINE0 = schedules.VPCosine(t_min=0.0)
VP0 = schedules.VP(t_min=0.0)
SCHEDULES = (COSINE, schedules.VP(), schedules.EDM(), COSINE0, VP0)


@functools.lru_cache(None)
def mixture(dim: int = 2) -> analytic.GaussianMixture:
  return analytic.random_mixture(0, dim, num_components=4)


def _x(key, n, sch, dim=2):
  """n points of p_{t_max}, float64 (call inside enable_x64)."""
  return mixture(dim).sample(jax.random.PRNGKey(key), n, sch.t_max, sch, jnp.float64)


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# -- DDIM step and target -------------------------------------------------------------------------


@pytest.mark.parametrize("sch", SCHEDULES[:3], ids=lambda s: s.name)
def test_ddim_step_equals_registry_ddim(sch):
  assert "ddim" in registered_samplers()
  with jax.enable_x64(True):
    den = mixture().denoiser(sch)
    x = _x(0, 16, sch)
    for grid in ([sch.t_max, sch.t_min], [0.7 * sch.t_max, 0.3 * sch.t_max],
                 [sch.t_max, 0.5 * sch.t_max, 0.1 * sch.t_max, sch.t_min]):
      grid = np.asarray(grid, np.float64)
      ref, _ = build_sampler("ddim", sch, time_grid=grid, jit=False)(den, jax.random.PRNGKey(0), x)
      y = x
      for t, s in zip(grid[:-1], grid[1:]):
        tb = jnp.full((16,), t)
        y = D.ddim_step(den(y, tb), y, tb, jnp.full((16,), s), sch)
      np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(ref))))
    # The student's grid (t = t_min + i/N (t_max - t_min)) is the registry's 'uniform' grid, so a
    # distilled N-step student samples with build_sampler('ddim', sch, N, grid='uniform').
    ref, _ = build_sampler("ddim", sch, 4, grid="uniform", jit=False)(den, jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(D.ddim_map(den, x, sch, 4), ref, rtol=0,
                               atol=1e-12 * float(jnp.max(jnp.abs(ref))))


def test_ddim_step_to_sigma_zero():
  with jax.enable_x64(True):
    x0_hat, x = _x(1, 8, COSINE0), _x(2, 8, COSINE0)
    y = D.ddim_step(x0_hat, x, 0.5, 0.0, COSINE0)
    np.testing.assert_array_equal(y, COSINE0.alpha(0.0) * x0_hat)
    assert float(COSINE0.sigma(0.0)) == 0.0 and float(COSINE0.alpha(0.0)) == 1.0


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: f"{s.name}-{s.t_min}")
def test_target_reproduces_two_teacher_steps(sch):
  """One student DDIM step t -> t'' from x~ lands on the teacher's t -> t' -> t'' (1e-12),
  for random per-sample times, at t'' = t_min (sigma = 0 for COSINE0) and near t_max."""
  with jax.enable_x64(True):
    den = mixture().denoiser(sch)
    b = 64
    rng = np.random.default_rng(0)
    lo, hi = sch.t_min, sch.t_max
    t = rng.uniform(lo + 0.2 * (hi - lo), hi, b)
    t[:8] = hi
    t_next = lo + rng.uniform(0, 1, b) * (t - lo) * 0.9
    t_next[8:24] = lo  # the last step of the student's grid
    t_mid = 0.5 * (t + t_next)
    t, t_mid, t_next = (jnp.asarray(v) for v in (t, t_mid, t_next))
    x = _x(3, b, sch)
    two = D.teacher_two_steps(den, x, t, t_mid, t_next, sch)
    target = D.distillation_target(den, x, t, t_mid, t_next, sch)
    one = D.ddim_step(target, x, t, t_next, sch)
    scale = float(jnp.max(jnp.abs(two)))
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-12 * scale)
    if sch.t_min == 0.0:  # sigma(t'') = 0: the target is the teacher's end point x_{t''} itself
      np.testing.assert_allclose(target[8:24], two[8:24], rtol=0, atol=1e-14 * scale)


def test_loss_minimised_by_ideal_student():
  """loss(ideal student) = 0; a student off by delta everywhere has loss mean_b w(t_b) delta^2."""
  with jax.enable_x64(True):
    gm, n, delta = mixture(), 4, 1e-2
    for sch in (COSINE, COSINE0):
      den = gm.denoiser(sch)
      ideal = D.ideal_student(den, sch, n)
      x0 = gm.sample0(jax.random.PRNGKey(4), 256, jnp.float64)
      for weighting in D.WEIGHTINGS:
        loss = lambda s: D.progressive_distillation_loss(s, den, x0, jax.random.PRNGKey(5), sch, n,
                                                         weighting=weighting)
        l0, aux = loss(ideal)
        assert float(l0) <= 1e-24
        assert set(np.asarray(aux["index"]).tolist()) == set(range(1, n + 1))
        l1, _ = loss(lambda x, t, c=None: ideal(x, t, c) + delta)
        w = D.distillation_weight(aux["t"], sch, weighting)
        np.testing.assert_allclose(float(l1), float(jnp.mean(w)) * delta**2, rtol=1e-8)


def test_loss_passes_cond():
  """A class-conditional teacher: the ideal student given the same labels has loss 0; the
  unconditional student does not."""
  with jax.enable_x64(True):
    gm = analytic.GaussianMixture.create([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.3],
                                         classes=[0, 1])
    den = gm.denoiser(COSINE)
    x0, labels = gm.sample0_labelled(jax.random.PRNGKey(6), 128, jnp.float64)
    ideal = D.ideal_student(den, COSINE, 2)
    loss = lambda s: float(D.progressive_distillation_loss(s, den, x0, jax.random.PRNGKey(7),
                                                           COSINE, 2, cond=labels)[0])
    assert loss(ideal) <= 1e-24
    assert loss(lambda x, t, c=None: ideal(x, t, None)) > 1e-3


def test_weightings():
  """truncated SNR = max(SNR, 1) (Salimans & Ho 2022, sec. 4); on a VP schedule the v weight is
  1 + SNR, so v / truncated_snr lies in [1, 2], equal to 2 at SNR = 1."""
  with jax.enable_x64(True):
    t = jnp.linspace(COSINE.t_min, COSINE.t_max, 101)
    snr = COSINE.alpha(t)**2 / COSINE.sigma(t)**2
    tr = D.distillation_weight(t, COSINE, "truncated_snr")
    v = D.distillation_weight(t, COSINE, "v")
    np.testing.assert_allclose(tr, jnp.maximum(snr, 1.0), rtol=1e-12)
    np.testing.assert_allclose(D.distillation_weight(t, COSINE, "snr"), snr, rtol=1e-12)
    np.testing.assert_allclose(v, 1.0 + snr, rtol=1e-10)
    ratio = v / tr
    assert float(ratio.min()) >= 1.0 and float(ratio.max()) <= 2.0 + 1e-12
    t1 = jnp.asarray([COSINE.t_from_logsnr(0.0)])
    np.testing.assert_allclose(D.distillation_weight(t1, COSINE, "v")
                               / D.distillation_weight(t1, COSINE, "truncated_snr"), 2.0, rtol=1e-9)


# -- rounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sch", (COSINE, COSINE0), ids=("t_min=1e-3", "t_min=0"))
def test_ideal_rounds_compose_to_teacher_ddim_map(sch):
  """The ideal student of round k (the exact target function, teacher = student of round k-1)
  has an N/2^k-step DDIM map equal to the exact denoiser's N-step DDIM map (N = 8, to 1e-10)."""
  with jax.enable_x64(True):
    den = mixture().denoiser(sch)
    x = _x(8, 64, sch)
    ref = D.ddim_map(den, x, sch, 8)
    f = den
    for n in D.round_steps(8, 3)[1:]:
      f = D.ideal_student(f, sch, n)
      y = D.ddim_map(f, x, sch, n)
      np.testing.assert_allclose(y, ref, rtol=0, atol=1e-10)


# Relative errors ||DDIM_N(x_T) - PF-ODE(x_T)|| / ||PF-ODE(x_T)|| of the exact denoiser's N-step
# DDIM map (uniform t grid on the cosine schedule, t_max = 0.9946 -> t_min = 1e-3, 2-D 4-component
# mixture, 256 points of p_{t_max}), measured with dpm_solver_3 at 200 logSNR steps as the exact
# map: what an ideal progressive distillation of the 8-step teacher inherits at each round.
DDIM_ERRORS = {8: 0.0812, 4: 0.1550, 2: 0.2903, 1: 0.5961}


def test_ideal_distillation_inherits_ddim_error():
  with jax.enable_x64(True):
    den = mixture().denoiser(COSINE)
    x = _x(1, 256, COSINE)
    exact = lambda n: build_sampler("dpm_solver_3", COSINE, num_steps=n, grid="logsnr")(
        den, jax.random.PRNGKey(0), x)[0]
    ref = exact(200)
    # third order: 100 vs 200 steps differ by 1.1e-6, so ref is within ~2e-7 of the exact map,
    # five orders of magnitude below the errors measured
    assert _rel(exact(100), ref) < 1e-5
    errs = {n: _rel(D.ddim_map(den, x, COSINE, n), ref) for n in (8, 4, 2, 1)}
    print("relative error of the N-step DDIM map against the PF-ODE map:", errs)
    for n, e in errs.items():
      np.testing.assert_allclose(e, DDIM_ERRORS[n], rtol=2e-3)
    for n in (8, 4, 2):  # first order: halving the steps about doubles the error
      assert 1.5 < errs[n // 2] / errs[n] < 2.5


# -- training a student with make_train_step ------------------------------------------------------


class ResidualStudent(nn.Module):
  """x0_hat = teacher(x, t) + MLP(x, t) with a zero-initialised head: the student starts as the
  teacher, as in Salimans & Ho 2022 (Alg. 2: the student is initialised from the teacher)."""
  teacher: object
  width: int = 64

  @nn.compact
  def __call__(self, x, c, labels=None, train=False):
    h = jnp.concatenate([x, sinusoidal_embedding(c, 16, 10.0)], axis=-1)
    h = nn.silu(nn.Dense(self.width)(h))
    h = nn.silu(nn.Dense(self.width)(h))
    return self.teacher(x, c) + nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)


@pytest.mark.slow  # 26 s on 2 cores: a training run; the loss and target math are tested fast
def test_student_training_run_beats_teacher_half_steps():
  """300 Adam steps of the distillation loss (truncated SNR) through make_train_step: the
  evaluation loss drops (measured 0.0302 -> 0.00144), and the student's 2-step DDIM map is
  closer to the teacher's 4-step map (relative error 0.033) than the teacher's own 2-step map
  (0.152)."""
  gm, sch, n_teacher = mixture(), COSINE, 4
  n_student = D.round_steps(n_teacher, 1)[1]
  teacher = gm.denoiser(sch)
  net, param = ResidualStudent(teacher), Parameterization("x0", "t")
  opt = training.make_optimizer(training.OptimConfig(lr=3e-3))
  cfg = training.StepConfig(weighting="truncated_snr", ema_decay=0.0)
  loss_fn = D.make_loss_fn(teacher, n_student)
  step = jax.jit(training.make_train_step(net, sch, param, opt, cfg, loss_fn=loss_fn))
  state0 = training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  state = state0
  for i in range(300):
    state, m = step(state, {"x": gm.sample0(jax.random.PRNGKey(100 + i), 256)})
    assert float(m["finite"]) == 1.0

  def student(p):
    return make_denoiser(lambda xi, c, cond=None: net.apply({"params": p}, xi, c), sch, param)

  x0 = gm.sample0(jax.random.PRNGKey(9), 4096)
  before, after = (float(loss_fn(student(s.params), x0, jax.random.PRNGKey(3), sch)[0])
                   for s in (state0, state))
  x = sch.prior_sample(jax.random.PRNGKey(5), (1024, 2))
  target = D.ddim_map(teacher, x, sch, n_teacher)
  err_teacher = _rel(D.ddim_map(teacher, x, sch, n_student), target)
  err_student = _rel(D.ddim_map(student(state.params), x, sch, n_student), target)
  print(f"eval loss {before:.4g} -> {after:.4g}; {n_student}-step map vs teacher's "
        f"{n_teacher}-step map: teacher {err_teacher:.4f}, student {err_student:.4f}")
  assert after < 0.2 * before
  assert err_student < 0.5 * err_teacher


# -- round_steps and errors -----------------------------------------------------------------------


def test_round_steps():
  assert D.round_steps(8, 3) == [8, 4, 2, 1]
  assert D.round_steps(12, 2) == [12, 6, 3]
  assert D.round_steps(5, 0) == [5]
  with pytest.raises(ValueError, match=r"initial_steps=12 .* 2\*\*rounds = 8.*rounds=2"):
    D.round_steps(12, 3)
  with pytest.raises(ValueError, match="rounds must be an int >= 0, got -1"):
    D.round_steps(8, -1)
  with pytest.raises(TypeError, match="initial_steps"):
    D.round_steps(8.0, 1)
  with pytest.raises(ValueError, match="initial_steps must be an int >= 1, got 0"):
    D.round_steps(0, 1)


def test_errors_name_the_bad_value():
  den = mixture().denoiser(COSINE)
  x = jnp.zeros((4, 2))
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="unknown distillation weighting 'eps'"):
    D.progressive_distillation_loss(den, den, x, key, COSINE, 4, weighting="eps")
  with pytest.raises(ValueError, match="unknown distillation weighting 'eps'.*StepConfig"):
    D.make_loss_fn(den, 4)(den, x, key, COSINE, weighting="eps")
  with pytest.raises(ValueError, match="time_sampling must be 'uniform', got 'lognormal'"):
    D.make_loss_fn(den, 4)(den, x, key, COSINE, time_sampling="lognormal")
  with pytest.raises(ValueError, match="num_student_steps must be an int >= 1, got 0"):
    D.progressive_distillation_loss(den, den, x, key, COSINE, 0)
  with pytest.raises(TypeError, match="num_student_steps"):
    D.make_loss_fn(den, 2.5)
  with pytest.raises(ValueError, match=r"t_max=1.5"):
    D.progressive_distillation_loss(den, den, x, key, COSINE, 4, t_max=1.5)
  with pytest.raises(ValueError, match=r"t must be finite times in the vp_cosine .* got t in "
                                       r"\[1.2, 1.2\]"):
    D.distillation_target(den, x, 1.2, 0.5, 0.2, COSINE)
  with pytest.raises(ValueError, match=r"t_next must be .* got t_next in \[0.0, 0.0\]"):
    D.distillation_target(den, x, 0.9, 0.5, 0.0, COSINE)  # t_min = 1e-3
  with pytest.raises(ValueError, match="need t_mid > t_next"):
    D.distillation_target(den, x, 0.9, 0.2, 0.5, COSINE)
  with pytest.raises(ValueError, match=r"s must be finite times .* got s in \[-0.1, -0.1\]"):
    D.ddim_step(x, x, 0.5, -0.1, COSINE)
