"""The eval driver's pieces: the choice of checkpoints, the TensorBoard scalars and the sample
shards (bits/dim: tests/test_bits_per_dim.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import parallel, schedules
from experiments import eval_common, evaluate, shards


# -- which checkpoints ----------------------------------------------------------------------------


def _ecfg(step=None, all_checkpoints=False):
  import ml_collections
  return ml_collections.ConfigDict(dict(step=step, all_checkpoints=all_checkpoints))


def test_steps_to_evaluate():
  assert eval_common.steps_to_evaluate(_ecfg(), [10, 20, 30], "W") == [None]  # newest intact
  assert eval_common.steps_to_evaluate(_ecfg(20), [10, 20, 30], "W") == [20]
  assert eval_common.steps_to_evaluate(_ecfg(all_checkpoints=True), [10, 20], "W") == [10, 20]
  with pytest.raises(FileNotFoundError) as e:
    eval_common.steps_to_evaluate(_ecfg(15), [10, 20, 30], "W/checkpoints")
  msg = str(e.value)
  assert "config.eval.step=15" in msg and "[10, 20, 30]" in msg and "\n" not in msg
  with pytest.raises(FileNotFoundError, match="train first"):
    eval_common.steps_to_evaluate(_ecfg(), [], "W")


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


def test_a_shard_holding_a_non_finite_sample_is_never_written(tmp_path):
  """Shard 1 of 3 draws a NaN: its samples are returned (the caller counts and refuses them,
  experiments/results.py), the finite shards are written, and a later run draws shard 1 again."""
  d, shape = str(tmp_path), (2,)

  def draw(start):
    x, info = _draw_fn(shape, 4, [])(start)
    if start == 4:
      x[1] = np.nan
    return x, info

  x, _ = shards.generate(d, 12, 4, shape, draw, 4, "fp", say=lambda m: 0)
  assert np.isnan(x[5]).all() and np.isfinite(np.delete(x, 5, axis=0)).all()
  assert sorted(os.listdir(d)) == ["shard_00000.npz", "shard_00002.npz"]
  calls = []
  y, _ = shards.generate(d, 12, 4, shape, _draw_fn(shape, 4, calls), 4, "fp", say=lambda m: 0)
  assert calls == [4] and np.isfinite(y).all()  # only the missing shard is drawn again
  assert sorted(os.listdir(d)) == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]


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
