"""The eval driver's pieces against exact answers: PF-ODE bits/dim of dequantized integer data
with the exact denoiser of a Gaussian (closed-form density), the dequantization draws, the
per-image standard error, the choice of checkpoints, and the sample shards."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, likelihood, parallel, schedules
from diffusion.data import images
from experiments import evaluate, shards


# -- PF-ODE bits/dim against the closed form --------------------------------------------------------

L_LEVELS, SHAPE, N = 17, (2, 2, 1), 192


def _gaussian_setup():
  """Data: integer levels k whose dequantized values x = 2 (k + u) / L - 1 are scored by a
  model whose density is exactly N(0, S) at t = 0 (a one-component mixture, S full, so that
  Hutchinson's estimator has variance for both probes): its PF-ODE log-density at t_min is
  N(x; 0, alpha^2 S + sigma^2 I), in closed form."""
  dim = int(np.prod(SHAPE))
  q = np.linalg.qr(np.random.default_rng(2).standard_normal((dim, dim)))[0]
  cov = q @ np.diag([0.02, 0.1, 0.3, 0.6]) @ q.T
  gm = analytic.GaussianMixture.create([1.0], np.zeros((1, dim)), cov[None])
  sched = schedules.VP(t_min=1e-5)
  levels = np.random.default_rng(0).integers(0, L_LEVELS, (N, *SHAPE)).astype(np.int32)
  return gm, sched, levels, cov, dim


def _closed_form_bpd(x, sched, cov, dim):
  a, sg = float(sched.alpha(np.float64(sched.t_min))), float(sched.sigma(np.float64(sched.t_min)))
  c = a * a * cov + sg * sg * np.eye(dim)
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  maha = np.einsum("bi,ij,bj->b", flat, np.linalg.inv(c), flat)
  logp = -0.5 * maha - 0.5 * np.linalg.slogdet(2 * math.pi * c)[1]
  # The change of variables [0, L)^D -> [-1, 1]^D: log p_discrete-dequantized = log p + D log(2/L).
  return -(logp / dim + math.log(2.0 / L_LEVELS)) / math.log(2.0)


def _loglik(gm, sched, record=None, **kw):
  """loglik(x, key, draw) of the exact model; appends (x, log p) to ``record``."""
  fn = jax.jit(lambda x, k: likelihood.log_likelihood(
      lambda z, t, c=None: gm.denoiser(sched)(z.reshape(len(z), -1), t, c).reshape(z.shape),
      sched, x, k, **kw))

  def loglik(x, key, draw):
    out = fn(jnp.asarray(x), key)
    if record is not None:
      record.append((x, np.asarray(out["logp"], np.float64)))
    return np.asarray(out["logp"]), float(out["nfe"])

  return loglik


def test_pf_ode_bpd_with_the_exact_divergence_equals_the_closed_form():
  gm, sched, levels, cov, dim = _gaussian_setup()
  key = jax.random.PRNGKey(3)
  out = evaluate.bpd_pf_ode(_loglik(gm, sched, divergence="exact"), levels, L_LEVELS, key, 2)
  k_deq, _ = jax.random.split(key)
  exact = np.mean([_closed_form_bpd(evaluate.dequantize(levels, L_LEVELS, k_deq, d), sched, cov,
                                    dim) for d in range(2)], axis=0)
  assert out["bpd_pf_ode"] == pytest.approx(float(np.mean(exact)), abs=2e-3)
  assert out["bpd_pf_ode_stderr"] == pytest.approx(np.std(exact, ddof=1) / math.sqrt(N), rel=0.05)
  assert out["bpd_pf_ode_draws"] == 2 and out["bpd_points"] == N and out["bpd_pf_ode_nfe"] > 10


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_pf_ode_bpd_hutchinson_is_unbiased(probe):
  """Each probe gives a noisy estimate per image; their mean over images and draws is the
  closed form within its standard error (the estimator is unbiased)."""
  gm, sched, levels, cov, dim = _gaussian_setup()
  key = jax.random.PRNGKey(4)
  draws, record = 4, []
  out = evaluate.bpd_pf_ode(_loglik(gm, sched, record, divergence="hutchinson", probe=probe),
                            levels, L_LEVELS, key, draws)
  assert len(record) == draws
  est = np.stack([likelihood.bits_per_dim(lp, dim, L_LEVELS) for _, lp in record])
  exact = np.stack([_closed_form_bpd(x, sched, cov, dim) for x, _ in record])
  err = est - exact  # per image and draw: the probe's error only (same dequantized x)
  assert out["bpd_pf_ode"] == pytest.approx(float(np.mean(est)), abs=1e-9)
  assert abs(err.mean()) < 4 * err.std() / math.sqrt(err.size) + 2e-3
  assert err.std() > 1e-2  # it really is a stochastic estimate, per image


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_bits_per_dim_constant_gives_log2_levels_for_the_uniform_density(levels):
  """The uniform density on [-1, 1]^D (log p = -D log 2) is the uniform distribution over the
  L levels after dequantization: exactly log2(L) bits/dim."""
  d = 12
  bpd = likelihood.bits_per_dim(np.asarray(-d * math.log(2.0)), d, num_levels=levels)
  assert float(bpd) == pytest.approx(math.log2(levels), rel=1e-9)


# -- dequantization, levels, standard error ---------------------------------------------------------


def test_dequantize_stays_in_its_bin_and_depends_on_seed_draw_and_index_only():
  k = np.random.default_rng(1).integers(0, 256, (10, 3, 3, 3)).astype(np.int32)
  key = jax.random.PRNGKey(0)
  x = evaluate.dequantize(k, 256, key, 0)
  assert x.dtype == np.float32 and x.shape == k.shape
  np.testing.assert_array_equal(np.floor((x.astype(np.float64) + 1) * 128), k)
  np.testing.assert_array_equal(evaluate.dequantize(k[:4], 256, key, 0), x[:4])  # not on n
  assert not np.allclose(evaluate.dequantize(k, 256, key, 1), x)  # another draw
  assert not np.allclose(evaluate.dequantize(k, 256, jax.random.PRNGKey(1), 0), x)


def test_to_levels_inverts_the_exact_grid_and_refuses_dequantized_data():
  k = np.arange(17).reshape(17, 1, 1, 1)
  np.testing.assert_array_equal(images.to_levels(images.to_float(k, 17), 17), k)
  with pytest.raises(ValueError, match="17-level grid"):
    images.to_levels(images.to_float(k, 17, np.full(k.shape, 0.5)), 17)


def test_mean_and_stderr_average_the_draws_of_each_item_first():
  per_draw = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 4.0]])  # items: 2, 2, 2, 4
  mean, se = evaluate.mean_and_stderr(per_draw)
  assert mean == pytest.approx(2.5)
  assert se == pytest.approx(np.std([2, 2, 2, 4], ddof=1) / 2)
  assert evaluate.mean_and_stderr(np.array([[5.0]])) == (5.0, 0.0)


# -- which checkpoints ----------------------------------------------------------------------------


def _ecfg(step=None, all_checkpoints=False):
  import ml_collections
  return ml_collections.ConfigDict(dict(step=step, all_checkpoints=all_checkpoints))


def test_steps_to_evaluate():
  assert evaluate.steps_to_evaluate(_ecfg(), [10, 20, 30], "W") == [None]  # newest intact
  assert evaluate.steps_to_evaluate(_ecfg(20), [10, 20, 30], "W") == [20]
  assert evaluate.steps_to_evaluate(_ecfg(all_checkpoints=True), [10, 20], "W") == [10, 20]
  with pytest.raises(FileNotFoundError) as e:
    evaluate.steps_to_evaluate(_ecfg(15), [10, 20, 30], "W/checkpoints")
  msg = str(e.value)
  assert "config.eval.step=15" in msg and "[10, 20, 30]" in msg and "\n" not in msg
  with pytest.raises(FileNotFoundError, match="train first"):
    evaluate.steps_to_evaluate(_ecfg(), [], "W")


def test_scalar_metrics_keep_finite_numbers_only():
  m = {"step": 3, "a": 1.5, "b": 2, "name": "x", "flag": True, "bad": float("nan")}
  assert evaluate.scalar_metrics(m) == {"a": 1.5, "b": 2.0}


# -- shards ---------------------------------------------------------------------------------------


def _draw_fn(shape, bs, calls):
  """draw(start) -> (bs samples whose values encode their index, info), counting calls."""
  def draw(start):
    calls.append(start)
    idx = np.arange(start, start + bs, dtype=np.float32)
    return np.broadcast_to(idx.reshape(-1, *([1] * len(shape))), (bs, *shape)).copy(), {"nfe": 7}
  return draw


def test_shards_resume_from_the_finished_ones(tmp_path):
  d, shape = str(tmp_path / "samples"), (2, 2, 1)
  calls = []
  x, nfe = shards.generate(d, 10, 4, shape, _draw_fn(shape, 3, calls), 3, "fp", say=lambda m: 0)
  assert x.shape == (10, *shape) and nfe == 7
  np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(10))
  assert sorted(os.listdir(d)) == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
  assert calls == [0, 3, 4, 7, 8]  # batches start at each shard's first index
  # Interrupted after shard 0: the others are generated again, shard 0 is read, not drawn.
  os.remove(os.path.join(d, "shard_00001.npz"))
  os.remove(os.path.join(d, "shard_00002.npz"))
  mtime = os.path.getmtime(os.path.join(d, "shard_00000.npz"))
  calls.clear()
  lines, reports = [], []
  y, _ = shards.generate(d, 10, 4, shape, _draw_fn(shape, 3, calls), 3, "fp", say=lines.append,
                         progress=lambda total: lambda done: reports.append((done, total)))
  assert reports == [(3, 6), (4, 6), (6, 6)]  # the samples generated now: 6 of them
  np.testing.assert_array_equal(x, y)
  assert calls == [4, 7, 8] and os.path.getmtime(os.path.join(d, "shard_00000.npz")) == mtime
  assert "4 of 10 samples already" in lines[0]
  np.testing.assert_array_equal(shards.read_samples(d), x)
  np.testing.assert_array_equal(shards.read_samples(d, 5), x[:5])
  with pytest.raises(shards.ShardError, match="fewer than the 11"):
    shards.read_samples(d, 11)


def test_a_larger_set_extends_the_last_shard_of_a_smaller_one(tmp_path):
  """6 samples in shards of 4 (4 + 2), then 10: shard 1 grows to 4 keeping its 2 samples, shard 2
  is new, and the set equals one generated in one go; a smaller set reads a prefix."""
  d, shape = str(tmp_path / "s"), (2,)
  shards.generate(d, 6, 4, shape, _draw_fn(shape, 2, []), 2, "fp", say=lambda m: 0)
  first = shards.read_shard(os.path.join(d, "shard_00001.npz"))[0]
  calls = []
  x, _ = shards.generate(d, 10, 4, shape, _draw_fn(shape, 2, calls), 2, "fp", say=lambda m: 0)
  assert calls == [6, 8]  # only the missing samples are drawn
  np.testing.assert_array_equal(x[:, 0], np.arange(10))
  np.testing.assert_array_equal(shards.read_shard(os.path.join(d, "shard_00001.npz"))[0][:2],
                                first)
  np.testing.assert_array_equal(shards.read_samples(d), x)
  calls.clear()
  y, _ = shards.generate(d, 5, 4, shape, _draw_fn(shape, 2, calls), 2, "fp", say=lambda m: 0)
  assert calls == [] and y.shape == (5, 2)
  np.testing.assert_array_equal(y, x[:5])


def test_a_foreign_or_broken_shard_is_an_error_and_kept(tmp_path):
  d, shape = str(tmp_path), (3,)
  shards.generate(d, 8, 4, shape, _draw_fn(shape, 4, []), 4, "fp", say=lambda m: 0)
  with pytest.raises(shards.ShardError, match="other settings"):
    shards.generate(d, 8, 4, shape, _draw_fn(shape, 4, []), 4, "other", say=lambda m: 0)
  with pytest.raises(shards.ShardError, match="holds 4 samples, more than the shard size 3"):
    shards.generate(d, 7, 3, shape, _draw_fn(shape, 3, []), 3, "fp", say=lambda m: 0)
  path = os.path.join(d, "shard_00001.npz")
  with open(path, "wb") as f:
    f.write(b"not a zip")
  with pytest.raises(shards.ShardError, match="cannot be read.*move it"):
    shards.generate(d, 8, 4, shape, _draw_fn(shape, 4, []), 4, "fp", say=lambda m: 0)
  assert open(path, "rb").read() == b"not a zip"  # never overwritten


def test_batch_sampler_gives_sample_i_from_its_index_only():
  """Samples by index: [0, 10) in batches of 4 equals [0, 3) + [3, 10) in batches of 7."""
  sched = schedules.VP()
  mesh = parallel.make_mesh()
  fn = lambda p, k, x_t, offset: (x_t * p, {"nfe": jnp.int32(1)})
  key = jax.random.PRNGKey(5)
  a, _ = parallel.sample_sharded(fn, 2.0, key, sched, 10, (3,), 4, mesh)
  b1, _ = parallel.sample_sharded(fn, 2.0, key, sched, 3, (3,), 7, mesh)
  b2, _ = parallel.sample_sharded(fn, 2.0, key, sched, 7, (3,), 7, mesh, start=3)
  np.testing.assert_array_equal(a, np.concatenate([b1, b2]))
  assert a.shape == (10, 3) and len(np.unique(a[:, 0])) == 10


# -- ELBO bits/dim against the entropy -------------------------------------------------------------


def test_elbo_bpd_of_the_exact_denoiser_equals_the_entropy_in_bits():
  """Integer data from a known distribution P on an 8-level grid; with the exact denoiser of
  P (a mixture of point masses at the bin centres) the ELBO is tight: bpd_elbo equals
  -mean log2 P(x) / D within its standard error, and the terms add up."""
  from tests.test_elbo import L, D, _draw, _exact_setup
  grid, w, mixture, _ = _exact_setup()
  x, nll = _draw(grid, w, 2048)
  sched = schedules.VP(t_min=1e-5)
  from diffusion import elbo
  fn = jax.jit(lambda xi, k: elbo.elbo(mixture.denoiser(sched), sched, xi, k, num_levels=L,
                                       num_time_samples=8))
  out = evaluate.bpd_elbo(lambda xi, k: jax.device_get(fn(jnp.asarray(xi), k)), np.asarray(x),
                          jax.random.PRNGKey(0))
  exact = float(np.mean(nll)) / (D * math.log(2.0))
  assert abs(out["bpd_elbo"] - exact) < 4 * out["bpd_elbo_stderr"] + 0.01
  assert out["bpd_elbo"] == pytest.approx(
      out["bpd_elbo_prior"] + out["bpd_elbo_diffusion"] + out["bpd_elbo_recon"], rel=1e-6)
  assert 0 < out["bpd_elbo_stderr"] < 0.1 and out["bpd_elbo_diffusion"] > 1.0


def test_training_t_min_reaches_the_loss():
  from experiments import build
  from tests.conftest import tiny_config
  assert dict(build.step_config(tiny_config()).loss_opts).get("t_min") is None
  opts = dict(build.step_config(tiny_config(**{"training.t_min": 0.25})).loss_opts)
  assert opts["t_min"] == 0.25
  from diffusion import losses
  t = losses.sample_times(jax.random.PRNGKey(0), 4096, schedules.VP(), "uniform",
                          t_min=opts["t_min"])
  assert float(t.min()) >= 0.25 and float(t.min()) < 0.26
