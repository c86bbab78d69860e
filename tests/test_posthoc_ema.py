"""EDM2's power-function EMA and post-hoc EMA reconstruction (diffusion.posthoc_ema), against
ground truth: the closed-form profile statistics, the exact weights of the recursion, and the
power EMA of a synthetic trajectory computed directly."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import posthoc_ema as pe

PROFILES = (0.05, 0.10)  # EDM2's stored profiles
T, EVERY = 300, 50  # trajectory length, snapshot interval


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _run_ema(traj: np.ndarray, gamma: float) -> np.ndarray:
  """The power EMA after every step t = 1..T of ``traj`` (T, D), by the library's update."""
  ema, out = np.zeros(traj.shape[1:]), []
  for t in range(1, len(traj) + 1):
    ema = np.asarray(pe.power_ema_update(jnp.asarray(ema), jnp.asarray(traj[t - 1]), t, gamma))
    out.append(ema)
  return np.stack(out)


def _trajectories():
  rng = np.random.default_rng(0)
  walk = np.cumsum(rng.normal(size=(T, 6)), axis=0)  # a random walk per coordinate
  s = np.arange(1, T + 1)[:, None]
  sine = np.sin(2 * np.pi * s / np.array([40.0, 90.0, 250.0, 700.0])) + 1e-3 * s
  return {"random_walk": walk, "sinusoid": sine}


# -- the profile and its sigma_rel -----------------------------------------------------------------


def test_sigma_rel_is_the_relative_std_of_the_profile():
  """sigma_rel(gamma) (Eq. 3) = std / t of the density p_t(tau) ~ tau^gamma on [0, t], checked
  by quadrature; the profile integrates to 1."""
  t = 7.0
  tau = np.linspace(0.0, t, 400_001)
  for gamma in (0.0, 1.0, 6.94, 16.97):
    p = pe.power_profile(tau, t, gamma)
    mass = np.trapezoid(p, tau)
    mean = np.trapezoid(tau * p, tau)
    std = math.sqrt(np.trapezoid((tau - mean) ** 2 * p, tau))
    assert mass == pytest.approx(1.0, abs=1e-8)
    assert std / t == pytest.approx(float(pe.sigma_rel_of_gamma(gamma)), rel=1e-6)


def test_gamma_sigma_rel_round_trip():
  """(c) gamma -> sigma_rel -> gamma on the falling branch, and sigma_rel -> gamma -> sigma_rel
  over (0, SIGMA_REL_MAX], to float64 precision; EDM2's profiles 0.05 / 0.10 give gamma 16.97 /
  6.94; the maximum sits at gamma = (sqrt 5 - 3)/2."""
  gammas = np.array([pe.GAMMA_AT_SIGMA_REL_MAX + 1e-3, -0.3, 0.0, 0.5, 3.0, 6.94, 16.97, 100.0,
                     1e4])
  np.testing.assert_allclose(pe.gamma_of_sigma_rel(pe.sigma_rel_of_gamma(gammas)), gammas,
                             rtol=1e-9, atol=1e-6)
  sig = np.concatenate([np.geomspace(1e-4, 0.29, 50), [pe.SIGMA_REL_MAX]])
  np.testing.assert_allclose(pe.sigma_rel_of_gamma(pe.gamma_of_sigma_rel(sig)), sig, rtol=1e-12)
  np.testing.assert_allclose(pe.gamma_of_sigma_rel([0.05, 0.10]), [16.9722, 6.9372], atol=1e-4)
  assert pe.gamma_of_sigma_rel(pe.SIGMA_REL_MAX) == pytest.approx(pe.GAMMA_AT_SIGMA_REL_MAX,
                                                                 abs=1e-6)
  g = np.linspace(-0.99, 5.0, 100_001)
  assert pe.sigma_rel_of_gamma(g).max() <= pe.SIGMA_REL_MAX + 1e-15


def test_beta_and_the_recursion_weights(x64):
  """beta(t) = (1 - 1/t)^(gamma+1) (Eq. 2), 1 - beta computed stably, and the recursion's
  weights of theta(1..t) equal int_{s-1}^s p_t (the exact discrete profile)."""
  gamma = 6.94
  t = np.array([1.0, 2.0, 10.0, 1e3, 1e6])
  np.testing.assert_allclose(pe.power_ema_beta(t, gamma), (1 - 1 / t) ** (gamma + 1), rtol=1e-12)
  np.testing.assert_allclose(pe.power_ema_weight(t, gamma), 1 - (1 - 1 / t) ** (gamma + 1),
                             rtol=1e-9)
  with jax.enable_x64(False):  # float32 at t = 1e6: 1 - beta ~ (gamma + 1) / t to 1e-6
    w32 = float(pe.power_ema_weight(jnp.float32(1e6), gamma))
  assert w32 == pytest.approx(1 - (1 - 1e-6) ** (gamma + 1), rel=1e-5)
  traj = np.eye(40)  # theta(s) = e_s: the EMA after 40 steps is the weight vector
  ema = _run_ema(traj, gamma)[-1]
  np.testing.assert_allclose(ema, pe.discrete_weights(40, gamma), rtol=1e-10, atol=1e-15)
  assert ema.sum() == pytest.approx(1.0, abs=1e-12)


def test_ema_of_a_constant_trajectory_is_the_constant(x64):
  """(d) Every profile averages a constant trajectory to the constant, and so does every
  post-hoc reconstruction (its coefficients sum to 1)."""
  c = np.array([3.25, -1.5, 0.0])
  traj = np.broadcast_to(c, (120, 3))
  snaps, ts, ss = [], [], []
  for sr in (0.01, 0.05, 0.1, 0.2, pe.SIGMA_REL_MAX):
    ema = _run_ema(traj, float(pe.gamma_of_sigma_rel(sr)))
    np.testing.assert_allclose(ema, np.broadcast_to(c, ema.shape), rtol=1e-12, atol=1e-12)
    for t in (40, 80, 120):
      snaps.append(ema[t - 1]), ts.append(t), ss.append(sr)
  for target, t in ((0.07, None), (0.15, 100), (0.03, 60)):
    out, rec = pe.reconstruct(snaps, ts, ss, target, t)
    assert rec.coefficients.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(out, c, rtol=1e-8, atol=1e-8)


# -- the reconstruction ---------------------------------------------------------------------------


def _snapshots(traj):
  """Power EMAs of PROFILES over ``traj``, stored every EVERY steps: (trees, t, sigma_rel)."""
  runs = {sr: _run_ema(traj, float(pe.gamma_of_sigma_rel(sr))) for sr in PROFILES}
  trees, ts, ss = [], [], []
  for t in range(EVERY, len(traj) + 1, EVERY):
    for sr in PROFILES:
      trees.append({"w": runs[sr][t - 1]}), ts.append(t), ss.append(sr)
  return trees, ts, ss


def test_reconstructing_a_stored_profile_returns_it(x64):
  """(a) A stored (t, sigma_rel) is reconstructed by coefficient 1 on its snapshot, 0 elsewhere,
  at the last step and at earlier ones, with zero profile residual."""
  ts = [t for t in range(EVERY, T + 1, EVERY) for _ in PROFILES]
  ss = [sr for _ in range(EVERY, T + 1, EVERY) for sr in PROFILES]
  for i in (len(ts) - 1, len(ts) - 2, 3, 0):
    rec = pe.solve_coefficients(ts, ss, ss[i], ts[i])
    want = np.zeros(len(ts))
    want[i] = 1.0
    np.testing.assert_allclose(rec.coefficients, want, atol=1e-9)
    assert rec.relative_residual < 1e-6


@pytest.mark.parametrize("name", ["random_walk", "sinusoid"])
def test_reconstruction_matches_the_direct_power_ema(x64, name, capsys):
  """(b) Snapshots of the 0.05 / 0.10 EMAs every 50 of 300 steps; the reconstruction of other
  sigma_rel (and of an earlier end step) is compared with the power EMA of that sigma_rel run
  directly over the same trajectory. Tolerance: the Cauchy-Schwarz bound residual *
  ||theta - mean||_2 (exact, since the discrete EMA is the integral of the continuous profile
  against the piecewise-constant trajectory), plus float64 rounding. The reconstruction must also
  beat the closest stored snapshot."""
  traj = _trajectories()[name]
  trees, ts, ss = _snapshots(traj)
  scale = np.abs(traj).max()
  for target, t in ((0.07, None), (0.13, None), (0.04, None), (0.08, 200)):
    t_end = T if t is None else t
    direct = _run_ema(traj[:t_end], float(pe.gamma_of_sigma_rel(target)))[-1]
    out, rec = pe.reconstruct(trees, ts, ss, target, t)
    err = np.abs(out["w"] - direct)
    bound = pe.trajectory_error_bound(rec, traj[:t_end])
    assert np.all(err <= bound + 1e-10 * scale), (err, bound)
    nearest = min(np.abs(tr["w"] - direct).max() for tr, tt in zip(trees, ts) if tt == t_end)
    assert err.max() < nearest
    with capsys.disabled():
      print(f"\n[posthoc_ema] {name}: sigma_rel={target} t={t_end}: max |err| "
            f"{err.max():.3e} (bound {bound.max():.3e}, nearest stored {nearest:.3e}, "
            f"|theta| max {scale:.2f}), relative profile residual "
            f"{rec.relative_residual:.4f}")


def test_float32_training_ema_stays_close_to_float64():
  """The train step's float32 update over 300 steps differs from the float64 recursion by
  rounding only (1e-5 relative)."""
  traj = _trajectories()["random_walk"].astype(np.float32)
  gamma = float(pe.gamma_of_sigma_rel(0.05))
  ema = jnp.zeros(traj.shape[1:], jnp.float32)
  for t in range(1, T + 1):
    ema = pe.power_ema_update(ema, jnp.asarray(traj[t - 1]), jnp.float32(t), gamma)
  exact = pe.discrete_weights(T, gamma) @ traj.astype(np.float64)
  np.testing.assert_allclose(np.asarray(ema), exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())


# -- bad inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.31, float("nan"), float("inf")])
def test_sigma_rel_out_of_range_is_refused(bad):
  with pytest.raises(ValueError, match=r"sigma_rel=.*out of range"):
    pe.gamma_of_sigma_rel(bad)
  with pytest.raises(ValueError, match=r"sigma_rel=.*out of range"):
    pe.solve_coefficients([50, 100], [0.05, 0.1], bad)
  with pytest.raises(ValueError, match=r"snapshot_sigma_rel=.*out of range"):
    pe.solve_coefficients([50, 100], [0.05, bad], 0.07)


def test_bad_snapshot_sets_are_refused():
  """(e) No snapshots, one profile at one step only (alone or repeated), mismatched lengths,
  times < 1, a target step after the last snapshot: ValueError naming the value."""
  with pytest.raises(ValueError, match=r"no snapshots"):
    pe.solve_coefficients([], [], 0.07)
  with pytest.raises(ValueError, match=r"one snapshot only, \(t, sigma_rel\)=\(100.0, 0.05\)"):
    pe.solve_coefficients([100], [0.05], 0.07)
  with pytest.raises(ValueError, match=r"duplicate snapshots .*\(100.0, 0.05\)"):
    pe.solve_coefficients([100, 100], [0.05, 0.05], 0.05)
  with pytest.raises(ValueError, match=r"one entry per snapshot"):
    pe.solve_coefficients([50, 100], [0.05], 0.07)
  with pytest.raises(ValueError, match=r"snapshot_t=\[0.0, 100.0\]"):
    pe.solve_coefficients([0, 100], [0.05, 0.05], 0.07)
  with pytest.raises(ValueError, match=r"t=150 is out of range.*t <= 100"):
    pe.solve_coefficients([50, 100], [0.05, 0.05], 0.07, t=150)
  with pytest.raises(ValueError, match=r"gamma must be finite and > -1 .*got -1.5"):
    pe.sigma_rel_of_gamma(-1.5)
  with pytest.raises(ValueError, match=r"2 coefficients for 3 snapshots"):
    pe.combine([0.5, 0.5], [{"w": 1.0}] * 3)
