"""DPS, DAPS and DDRM (diffusion/inverse/{dps,daps,ddrm}.py) and the operators' SVD interface.

* ``svd_parts`` of every operator against the dense matrix built by applying it to a basis.
* Exact claims: DDRM with an oracle denoiser keeps x_t ~ N(alpha x0, sigma^2 I) given x0 at every
  t (its construction) and ends at x0; on isotropic Gaussian data DDRM (eta = 0, noiseless) is
  DDIM on the unobserved spectral coordinates and y on the observed ones. DPS with zeta = 0 is the
  registered 'ddpm' sampler, and one DPS step's correction is 2 zeta J^T A^T r / ||r|| in closed
  form. DAPS's Langevin score is that of N(x0; x0_hat, r^2 I) N(y; A x0, tau^2 I), and its chain
  has the discrete Langevin chain's exact Gaussian law.
* The mixture of benchmarks/inverse_mixture.py: the errors (printed with -s) asserted below 1.5x
  their measured value and above the Monte Carlo floor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import inverse_mixture as bench
from diffusion import analytic, inverse, schedules
from diffusion.inverse import daps as daps_lib
from diffusion.samplers import build_sampler, engine, grids

VP = schedules.VP()
IMG = (2, 4, 4, 3)


@pytest.fixture(scope="module")
def x64():
  with jax.enable_x64(True):
    yield


def _mask(shape, seed=0):
  return (np.random.default_rng(seed).uniform(size=shape) < 0.5).astype(np.float64)


def _dense(op, x_shape, cond, b):
  """The matrix (M, D) of sample b's operator, from the operator applied to a basis."""
  d = int(np.prod(x_shape[1:]))
  basis = jnp.eye(d).reshape((d,) + tuple(x_shape[1:]))
  cb = {k: jnp.broadcast_to(jnp.asarray(v)[b], (d,) + np.shape(v)[1:]) for k, v in cond.items()}
  return np.asarray(op.apply(basis, cb)).reshape(d, -1).T


def _svd_cases():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((3, 5))
  a_def = np.concatenate([a[:2], a[:1] + 2 * a[1:2]])
  return [
      ("inpainting", inverse.Inpainting(), IMG, {"mask": _mask(IMG)}),
      ("colorization", inverse.Colorization(), IMG, {}),
      ("super_resolution", inverse.SuperResolution(2), IMG, {}),
      ("matrix", inverse.MatrixOperator(a), (2, 5), {}),
      ("matrix_rank_deficient", inverse.MatrixOperator(a_def), (2, 5), {}),
      ("matrix_tall", inverse.MatrixOperator(rng.standard_normal((4, 3))), (2, 3), {}),
  ]


SVD_CASES = _svd_cases()


@pytest.mark.parametrize("name,op,shape,cond", SVD_CASES, ids=[c[0] for c in SVD_CASES])
def test_svd_parts_against_the_dense_matrix(name, op, shape, cond, x64):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal(shape))
  y = op.apply(x, cond)
  noisy = jnp.asarray(rng.standard_normal(op.output_shape(shape)))
  parts = op.svd_parts(shape, dict(cond, y=y))
  parts_noisy = op.svd_parts(shape, dict(cond, y=noisy))
  d = int(np.prod(shape[1:]))
  basis = jnp.eye(d).reshape((d,) + shape[1:])
  vt = np.asarray(parts.vt(basis)).T  # (D, D): V^T
  np.testing.assert_allclose(vt @ vt.T, np.eye(d), atol=1e-12)
  np.testing.assert_allclose(np.asarray(parts.v(parts.vt(x))), np.asarray(x), atol=1e-12)
  for b in range(shape[0]):
    a = _dense(op, shape, cond, b)
    s = np.asarray(parts.s[b])
    # A^T A = V diag(s^2) V^T, and s has rank(A) nonzero entries, all positive.
    np.testing.assert_allclose(a.T @ a, vt.T @ np.diag(s**2) @ vt, atol=1e-12)
    assert np.sum(s > 0) == np.linalg.matrix_rank(a) and np.all(s >= 0)
    # U^T (A x) = s * V^T x on every coordinate (zero where s = 0).
    np.testing.assert_allclose(np.asarray(parts.ut_y[b]), s * (vt @ np.asarray(x[b]).ravel()),
                               atol=1e-12)
    # U^T of a general y: its component in range(A), norm-preserving there.
    y_obs = np.asarray(op.observed(noisy, cond))[b].ravel()
    if name == "inpainting":
      y_obs = y_obs[np.flatnonzero(np.asarray(cond["mask"])[b].ravel())]
      a = a[np.flatnonzero(np.asarray(cond["mask"])[b].ravel())]
    u_range = np.linalg.svd(a, full_matrices=False)[0][:, :np.linalg.matrix_rank(a)]
    np.testing.assert_allclose(np.linalg.norm(parts_noisy.ut_y[b]),
                               np.linalg.norm(u_range.T @ y_obs), atol=1e-12)
    # ... and A^T y = V S U^T y.
    np.testing.assert_allclose(vt.T @ (s * np.asarray(parts_noisy.ut_y[b])), a.T @ y_obs,
                               atol=1e-12)


# ------------------------------------------------------------------------------------------------
# DDRM
# ------------------------------------------------------------------------------------------------

A_DEF = np.array([[1.0, 0.5, 0.0, 0.2, -0.3], [0.0, 1.0, -1.0, 0.4, 0.1],
                  [1.0, 2.5, -2.0, 1.0, -0.1]])  # rank 2: one observed direction is repeated


@pytest.mark.parametrize("init", ["x_T", "paper"])
@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_ddrm_with_an_oracle_keeps_the_forward_marginals(noise_std, init, x64):
  """x0_hat = x0 (the true one): eq. 8 is built so that xbar_t / alpha = x0 + sigma_t eps given x0,
  averaged over y = A x0 + noise_std n and the noise, in every case (observed before / after
  sigma_t = noise_std / s, unobserved), for any eta, eta_b; and the step to sigma = 0 returns x0.
  init='paper' starts the observed coordinates so; the unobserved ones start from x_T."""
  n, d = 20000, 5
  op = inverse.MatrixOperator(A_DEF)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.standard_normal(d) + 0.3 * rng.standard_normal((n, d)))
  y = x0 @ A_DEF.T + noise_std * jnp.asarray(rng.standard_normal((n, 3)))
  cond = {"y": y}
  grid = grids.time_grid(VP, 12, "karras", t_min=0.05)
  a_T, s_T = engine.alpha_sigma(VP, grid[0])
  x_T = (a_T * x0 if init == "x_T" else 0.0) + s_T * jnp.asarray(rng.standard_normal((n, d)))
  oracle = lambda x, t, c=None: x0
  run = inverse.ddrm_sampler(op, noise_std=noise_std, eta=0.5, eta_b=0.7, init=init,
                             final_denoise=False)
  x, info = run(oracle, VP, jax.random.PRNGKey(1), x_T, grid, cond=cond)
  assert info["nfe"] == 12 and not info["network_vjp"]
  a_e, s_e = engine.alpha_sigma(VP, grid[-1])
  parts = op.svd_parts((n, d), cond)
  u = np.asarray(parts.vt((x / a_e - x0) / (s_e / a_e)))
  cols = np.flatnonzero(np.asarray(parts.s[0]) > 0) if init == "paper" else np.arange(d)
  u = u[:, cols]
  assert np.all(np.abs(u.mean(0)) < 4 / np.sqrt(n)), u.mean(0)
  np.testing.assert_allclose(np.cov(u, rowvar=False), np.eye(len(cols)), atol=5 * np.sqrt(2 / n))
  # With the final step to sigma = 0 the oracle's x0 comes back exactly.
  run = inverse.ddrm_sampler(op, noise_std=noise_std, eta=0.5, eta_b=0.7, init=init)
  x, info = run(oracle, VP, jax.random.PRNGKey(1), x_T, grid, cond=cond)
  assert info["nfe"] == 13
  np.testing.assert_allclose(np.asarray(x), np.asarray(x0), atol=1e-9)


def test_ddrm_on_isotropic_gaussian_data_is_ddim_off_the_observation(x64):
  """For x0 ~ N(mu, sd^2 I) the exact denoiser is affine per coordinate in any orthonormal basis,
  so DDRM's unobserved spectral coordinates (eta = 0) follow DDIM alone: they equal an
  unconditional DDIM run's; the noiseless observed ones end at ybar exactly (eta_b = 1)."""
  n, d, sd = 64, 5, 0.7
  mu = np.linspace(-1.0, 1.0, d)
  gm = analytic.GaussianMixture.create([1.0], mu[None], [sd**2])
  op = inverse.MatrixOperator(A_DEF)
  y = jnp.broadcast_to(jnp.asarray(A_DEF @ (mu + 0.5)), (n, 3))
  grid = grids.time_grid(VP, 15, "karras")
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (n, d)).astype(jnp.float64)
  run = inverse.ddrm_sampler(op, eta=0.0, eta_b=1.0)
  x, _ = run(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, grid, cond={"y": y})
  ref, _ = build_sampler("ddim", VP, time_grid=grid, final_denoise=True)(
      gm.denoiser(VP), jax.random.PRNGKey(2), x_T)
  parts = op.svd_parts((n, d), {"y": y})
  free = np.asarray(parts.s[0]) == 0
  np.testing.assert_allclose(np.asarray(parts.vt(x))[:, free], np.asarray(parts.vt(ref))[:, free],
                             atol=1e-10)
  np.testing.assert_allclose(np.asarray(x @ A_DEF.T), np.asarray(y), atol=1e-10)


# ------------------------------------------------------------------------------------------------
# DPS
# ------------------------------------------------------------------------------------------------


def test_dps_with_zero_step_is_ddpm(x64):
  gm, a, y = bench.problem()
  n = 32
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (n, 4)).astype(jnp.float64)
  cond = {"y": jnp.broadcast_to(jnp.asarray(y), (n, 2))}
  grid = grids.time_grid(VP, 12, "karras")
  x, info = inverse.dps_sampler(inverse.MatrixOperator(a), zeta=0.0)(
      gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, grid, cond=cond)
  ref, ref_info = build_sampler("ddpm", VP, 12)(gm.denoiser(VP), jax.random.PRNGKey(1), x_T)
  np.testing.assert_allclose(np.asarray(x), np.asarray(ref), atol=1e-12)
  assert info["nfe"] == ref_info["nfe"] == 13 and info["network_vjp"]


def test_dps_step_is_the_papers_correction(x64):
  """One step t -> s on x0 ~ N(mu, sd^2 I): x0_hat = mu + c (x - alpha mu), J = c I with
  c = alpha sd^2 / (alpha^2 sd^2 + sigma^2); DPS adds -zeta grad ||r||^2 / ||r|| =
  2 zeta c A^T r / ||r|| to the ancestral step (the same noise as zeta = 0)."""
  sd, zeta = 0.8, 0.37
  mu = np.array([0.3, -0.2, 0.5])
  gm = analytic.GaussianMixture.create([1.0], mu[None], [sd**2])
  a = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
  op = inverse.MatrixOperator(a)
  n = 8
  x_T = jax.random.normal(jax.random.PRNGKey(0), (n, 3), jnp.float64)
  y = jax.random.normal(jax.random.PRNGKey(1), (n, 2), jnp.float64)
  grid = np.array([0.6, 0.3])
  runs = [inverse.dps_sampler(op, zeta=z, final_denoise=False)(
      gm.denoiser(VP), VP, jax.random.PRNGKey(2), x_T, grid, cond={"y": y})[0]
      for z in (zeta, 0.0)]
  al, sg = engine.alpha_sigma(VP, 0.6)
  c = al * sd**2 / (al**2 * sd**2 + sg**2)
  x0_hat = mu + c * (np.asarray(x_T) - al * mu)
  r = np.asarray(y) - x0_hat @ a.T
  want = 2 * zeta * c * (r @ a) / np.linalg.norm(r, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(runs[0] - runs[1]), want, atol=1e-12)


def test_dps_moves_the_mean_toward_the_gaussian_posterior(x64):
  """Single Gaussian data: DPS's sample mean ends much nearer the exact posterior mean than the
  prior mean is (DPS is not exact: the amount depends on zeta)."""
  gm = analytic.random_mixture(4, 3, num_components=1)
  a, y, s = np.array([[1.0, 1.0, 0.0]]), np.array([1.5]), 0.2
  post = analytic.linear_gaussian_posterior(gm, a, y, s)
  n = 2000
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (n, 3)).astype(jnp.float64)
  x, _ = inverse.dps_sampler(inverse.MatrixOperator(a), zeta=0.3)(
      gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, grids.time_grid(VP, 50, "karras"),
      cond={"y": jnp.broadcast_to(y, (n, 1))})
  err = np.linalg.norm(np.asarray(x).mean(0) - post.mean())
  prior_err = np.linalg.norm(gm.mean() - post.mean())
  print(f"DPS mean error {err:.3f}, prior mean's {prior_err:.3f}")
  assert err < 0.25 * prior_err


# ------------------------------------------------------------------------------------------------
# DAPS
# ------------------------------------------------------------------------------------------------


def _gaussian_target(a, x0_hat, y, r2, tau2):
  prec = np.eye(a.shape[1]) / r2 + a.T @ a / tau2
  return np.linalg.solve(prec, x0_hat / r2 + a.T @ y / tau2), prec


@pytest.mark.parametrize("which", ["matrix", "inpainting"])
def test_daps_langevin_score_is_the_gaussian_products(which, x64):
  rng = np.random.default_rng(3)
  if which == "matrix":
    a = rng.standard_normal((2, 4))
    op, cond = inverse.MatrixOperator(a), {}
    y = rng.standard_normal(2)
    y_in = jnp.broadcast_to(y, (3, 2))
  else:
    mask = np.array([1.0, 0.0, 1.0, 1.0])
    op, cond = inverse.Inpainting(), {"mask": np.broadcast_to(mask, (3, 4))}
    a = np.eye(4)[mask > 0]
    y = rng.standard_normal(3)
    y_in = op.observed(jnp.broadcast_to(jnp.asarray(mask * 7.0).at[mask > 0].set(y), (3, 4)),
                       cond)  # the unobserved entries of y are ignored
  x0_hat, x = rng.standard_normal(4), jnp.asarray(rng.standard_normal((3, 4)))
  r2, tau2 = 0.4, 0.09
  m, prec = _gaussian_target(a, x0_hat, y, r2, tau2)
  got = daps_lib.langevin_score(x, jnp.broadcast_to(x0_hat, (3, 4)), y_in, r2, tau2, op, cond)
  np.testing.assert_allclose(np.asarray(got), -(np.asarray(x) - m) @ prec, atol=1e-12)


def test_daps_langevin_chain_law(x64):
  """The unadjusted Langevin chain x' = x + lr grad log N(m, P^-1) + sqrt(2 lr) eps is Gaussian
  with stationary law N(m, P^-1 (I - lr P / 2)^-1), exactly (the target as lr -> 0)."""
  rng = np.random.default_rng(4)
  a = rng.standard_normal((2, 3))
  op = inverse.MatrixOperator(a)
  x0_hat, y = rng.standard_normal(3), rng.standard_normal(2)
  r2, tau2, lr, n = 0.25, 0.09, 0.02, 10000
  m, prec = _gaussian_target(a, x0_hat, y, r2, tau2)
  keys = engine.sample_keys(jax.random.PRNGKey(5), n)
  x = jax.jit(lambda k: daps_lib.langevin(jnp.broadcast_to(x0_hat, (n, 3)),
                                          jnp.broadcast_to(y, (n, 2)), r2, tau2, op, {}, lr=lr,
                                          num_steps=300, keys=k))(keys)
  x = np.asarray(x)
  cov = np.linalg.inv(prec) @ np.linalg.inv(np.eye(3) - lr * prec / 2)
  se = np.sqrt(np.diag(cov) / n)
  assert np.all(np.abs(x.mean(0) - m) < 4 * se), (x.mean(0), m)
  np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=4 * np.sqrt(2 / n) * cov.max())
  # The O(lr) bias is visible: the exact target's covariance is off by more.
  assert np.max(np.abs(np.cov(x, rowvar=False) - np.linalg.inv(prec))) > 0.005


def test_daps_nfe_and_unstable_step(x64):
  gm, a, y = bench.problem()
  op = inverse.MatrixOperator(a)
  n = 16
  cond = {"y": jnp.broadcast_to(jnp.asarray(y), (n, 2))}
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (n, 4)).astype(jnp.float64)
  grid = grids.time_grid(VP, 4, "karras")
  for solver, to_zero, per_level in [("euler", True, 3), ("heun", True, 5), ("heun", False, 6),
                                     ("euler", False, 3)]:
    run = inverse.daps_sampler(op, noise_std=0.3, ode_steps=3, ode_solver=solver,
                               ode_to_zero=to_zero, langevin_steps=5, lr=1e-3)
    x, info = run(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, grid, cond=cond)
    assert info["nfe"] == 5 * per_level == inverse.daps_nfe(4, 3, solver, to_zero)
    assert np.all(np.isfinite(np.asarray(x)))
  with pytest.raises(ValueError, match="unstable at level 4"):
    inverse.daps_sampler(op, noise_std=0.3, lr=0.1)(gm.denoiser(VP), VP, jax.random.PRNGKey(1),
                                                    x_T, grid, cond=cond)


# ------------------------------------------------------------------------------------------------
# Shared: batch independence, argument checks
# ------------------------------------------------------------------------------------------------


def _methods(op):
  return {"dps": inverse.dps_sampler(op, zeta=0.5),
          "daps": inverse.daps_sampler(op, noise_std=0.3, ode_steps=2, langevin_steps=3,
                                       lr=1e-3),
          "ddrm": inverse.ddrm_sampler(op, noise_std=0.3, eta=0.5)}


@pytest.mark.parametrize("method", ["dps", "daps", "ddrm"])
def test_a_sample_does_not_depend_on_its_batch(method, x64):
  gm, a, y = bench.problem()
  run = _methods(inverse.MatrixOperator(a))[method]
  n = 6
  x_T = VP.prior_sample(jax.random.PRNGKey(0), (n, 4)).astype(jnp.float64)
  y_all = jnp.asarray(np.random.default_rng(0).standard_normal((n, 2)))
  grid = grids.time_grid(VP, 5, "karras")
  full, _ = run(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T, grid, cond={"y": y_all})
  part, _ = run(gm.denoiser(VP), VP, jax.random.PRNGKey(1), x_T[2:4], grid, cond={"y": y_all[2:4]},
                sample_offset=2)
  np.testing.assert_allclose(np.asarray(part), np.asarray(full)[2:4], atol=1e-12)


def test_argument_errors():
  op = inverse.MatrixOperator(np.eye(3)[:1])
  for fn, kw, err, match in [
      (inverse.dps_sampler, {"zeta": -1.0}, ValueError, "zeta"),
      (inverse.dps_sampler, {"zeta": "1"}, TypeError, "zeta"),
      (inverse.dps_sampler, {"zeta": 1.0, "variance": "big"}, ValueError, "variance"),
      (inverse.ddrm_sampler, {"eta": 1.5}, ValueError, "eta"),
      (inverse.ddrm_sampler, {"eta_b": -0.1}, ValueError, "eta_b"),
      (inverse.ddrm_sampler, {"init": "zeros"}, ValueError, "init"),
      (inverse.ddrm_sampler, {"noise_std": float("nan")}, ValueError, "noise_std"),
      (inverse.daps_sampler, {}, ValueError, "tau"),
      (inverse.daps_sampler, {"noise_std": 0.1, "ode_steps": 0}, ValueError, "ode_steps"),
      (inverse.daps_sampler, {"noise_std": 0.1, "ode_solver": "rk4"}, ValueError, "ode_solver"),
      (inverse.daps_sampler, {"noise_std": 0.1, "r_schedule": "x"}, ValueError, "r_schedule"),
      (inverse.daps_sampler, {"noise_std": 0.1, "lr": 0.0}, ValueError, "lr"),
      (inverse.daps_sampler, {"tau": 0.0}, ValueError, "tau"),
  ]:
    with pytest.raises(err, match=match):
      fn(op, **kw)
  with pytest.raises(TypeError, match="op must be"):
    inverse.ddrm_sampler(np.eye(2))
  # The call checks the observation's shape before tracing.
  run = inverse.ddrm_sampler(op)
  with pytest.raises(ValueError, match=r"\(2, 1\)"):
    run(lambda x, t, c=None: x, VP, jax.random.PRNGKey(0), jnp.zeros((2, 3)),
        np.array([0.5, 0.2]), cond={"y": jnp.zeros((2, 2))})


# ------------------------------------------------------------------------------------------------
# The mixture of benchmarks/inverse_mixture.py
# ------------------------------------------------------------------------------------------------

# Measured (n = 4000, 30 steps, bench.complete's seeds; benchmarks/results/inverse_mixture.md).
MEASURED = {
    ("dps", 0.0): dict(obs=0.976, mean=0.403, cov=0.592, weights=0.153, sw=0.312),
    ("dps", 0.3): dict(mean=0.144, cov=0.689, weights=0.064, sw=0.185),
    ("daps", 0.0): dict(obs=0.209, mean=0.697, cov=0.945, weights=0.254, sw=0.459),
    ("daps", 0.3): dict(mean=0.455, cov=0.574, weights=0.162, sw=0.283),
    ("ddrm", 0.0): dict(obs=0.0, mean=0.704, cov=0.922, weights=0.260, sw=0.469),
    ("ddrm", 0.3): dict(mean=0.436, cov=0.621, weights=0.161, sw=0.297),
}
FLOOR = dict(mean=0.032, cov=0.044, weights=0.012, sw=0.059)  # tests/test_inverse.py's


@pytest.fixture(scope="module")
def exact(x64):
  out = {}
  for s in (0.0, bench.NOISY_STD):
    post = bench.exact_posterior(s)
    out[s] = (post, bench.exact_samples(post, 4000, 100))
  return out


# DAPS's noisy row (8 s: 155 denoiser calls and 3,100 Langevin steps per sample) is slow.
@pytest.mark.parametrize("method,noise_std", [
    pytest.param(*k, id="-".join(map(str, k)),
                 marks=[pytest.mark.slow] if k == ("daps", 0.3) else []) for k in MEASURED])
def test_mixture_completions_vs_exact_posterior(method, noise_std, exact):
  post, ref = exact[noise_std]
  x, info = bench.complete_posterior(method, 30, noise_std, 4000, 0)
  m = bench.metrics(x, post, noise_std, ref)
  print(f"{method} noise_std={noise_std} nfe={info['nfe']}: {m}")
  want = MEASURED[(method, noise_std)]
  for k, v in want.items():
    if k == "obs":
      assert m[k] <= max(1.5 * v, 1e-12), (k, m[k], v)
    else:
      assert m[k] <= 1.5 * v, (k, m[k], v)
      assert m[k] > 1.5 * FLOOR[k], (k, m[k])


# ------------------------------------------------------------------------------------------------
# Image operators
# ------------------------------------------------------------------------------------------------


def _image_gaussian(shape, sd=0.6):
  d = int(np.prod(shape[1:]))
  mu = np.linspace(-0.5, 0.5, d)
  gm = analytic.GaussianMixture.create([1.0], mu[None], [sd**2])
  return lambda x, t, c=None: gm.denoise(x.reshape(x.shape[0], -1), t, schedule=VP).reshape(
      x.shape)


@pytest.mark.parametrize("op", [inverse.Inpainting(), inverse.Colorization(),
                                inverse.SuperResolution(2)], ids=lambda o: o.name)
def test_ddrm_noiseless_images_meet_the_observation_exactly(op, x64):
  shape = (3, 4, 4, 3)
  cond = {"mask": _mask(shape, 5)} if op.name == "inpainting" else {}
  truth = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float64)
  cond["y"] = op.apply(truth, cond)
  x_T = VP.prior_sample(jax.random.PRNGKey(1), shape).astype(jnp.float64)
  x, _ = inverse.ddrm_sampler(op, eta=0.85)(_image_gaussian(shape), VP, jax.random.PRNGKey(2),
                                            x_T, grids.time_grid(VP, 6, "karras"), cond=cond)
  np.testing.assert_allclose(np.asarray(op.apply(x, cond)), np.asarray(cond["y"]), atol=1e-10)
  assert np.max(np.abs(np.asarray(x - truth))) > 0.1  # the unobserved part is sampled


@pytest.mark.parametrize("method", ["dps", "daps", "ddrm"])
def test_inpainting_ignores_the_unobserved_entries_of_y(method, x64):
  """Entries of y where mask = 0 are no observations: garbage there changes nothing."""
  shape = (2, 4, 4, 3)
  op = inverse.Inpainting()
  mask = _mask(shape, 6)
  y = mask * np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float64))
  run = _methods(op)[method]
  args = (_image_gaussian(shape), VP, jax.random.PRNGKey(2),
          VP.prior_sample(jax.random.PRNGKey(1), shape).astype(jnp.float64),
          grids.time_grid(VP, 4, "karras"))
  clean, _ = run(*args, cond={"mask": mask, "y": jnp.asarray(y)})
  dirty, _ = run(*args, cond={"mask": mask, "y": jnp.asarray(y + 5.0 * (1 - mask))})
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(dirty))
  assert np.all(np.isfinite(np.asarray(clean)))
