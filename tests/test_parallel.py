"""Data parallelism and FSDP on 8 simulated CPU devices equal the 1-device run.

The 8-device runs happen in a subprocess (XLA_FLAGS must be set before jax starts); the
1-device references run here. Compared: losses, final params / EMA / optimizer state after N
steps (float tolerance: reductions are ordered differently), and samples.
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from diffusion import checkpoint, parallel
from experiments import sample, setup, train
from tests.conftest import REPO, one_result, tiny_config

STEPS = {"training.num_steps": 20, "training.ckpt_every": 10, "training.log_every": 5,
         "eval.density_grid": 0, "eval.plot_samples": 64, "sampling.num_samples": 100,
         "sampling.batch_size": 48}
VARIANTS = {
    "data8": {},
    # 4-way data x 2-way FSDP, gradient accumulation, two steps per jit call (lax.scan).
    "fsdp": {"parallel.model_axis": 2, "parallel.fsdp": True, "parallel.fsdp_min_size": 0,
             "training.grad_accum_steps": 2, "training.steps_per_call": 2},
}
SCRIPT = """
import json, sys, jax
from tests.conftest import tiny_config
from experiments import sample, setup, train
assert jax.device_count() == 8, jax.devices()
for wd, overrides in json.loads(sys.argv[1]):
  cfg = tiny_config(**overrides)
  train.train(cfg, wd)
  sample.run(cfg, wd)
"""


def _state(workdir, overrides):
  s = setup.setup(tiny_config(**{**overrides, "parallel.model_axis": 1}))
  ck = checkpoint.Checkpointer(workdir, max_to_keep=None, async_save=False)
  state, _, step = ck.restore(s.abstract_state)
  ck.close()
  assert step == 20
  return jax.device_get(state)


def _losses(workdir):
  return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_mesh_and_shardings():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data", "model") and mesh.devices.size == jax.device_count()
  with pytest.raises(ValueError, match="model_axis"):
    parallel.make_mesh(model_axis=3 * jax.device_count() + 1)
  spec = parallel._fsdp_spec((6, 8), 4, min_size=0)
  assert spec == jax.sharding.PartitionSpec(None, "model")
  assert parallel._fsdp_spec((6, 7), 4, min_size=0) == jax.sharding.PartitionSpec()


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
  runs = [(str(tmp_path / f"{name}_8"), {**STEPS, **v}) for name, v in VARIANTS.items()]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), json.dumps(runs)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  # Meanwhile, the 1-device references.
  refs = {}
  for name, v in VARIANTS.items():
    wd = str(tmp_path / f"{name}_1")
    cfg = tiny_config(**{**STEPS, **v, "parallel.model_axis": 1})
    train.train(cfg, wd)
    sample.run(cfg, wd)
    refs[name] = wd
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-4000:]
  for (wd8, overrides), name in zip(runs, VARIANTS):
    wd1 = refs[name]
    np.testing.assert_allclose(_losses(wd8), _losses(wd1), rtol=1e-4, err_msg=name)
    a = _state(wd8, overrides)
    b = _state(wd1, overrides)
    assert int(a.step) == int(b.step) == 20
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5,
                                 err_msg=name)
    s8 = np.load(os.path.join(one_result(os.path.join(wd8, "samples")), "samples.npz"))["x"]
    s1 = np.load(os.path.join(one_result(os.path.join(wd1, "samples")), "samples.npz"))["x"]
    assert s8.shape == s1.shape == (100, 2)
    np.testing.assert_allclose(s8, s1, rtol=1e-3, atol=1e-4, err_msg=name)


DIT_SCRIPT = """
import json, sys, jax
from tests.conftest import dit_config
from experiments import sample, setup, train
assert jax.device_count() == 8, jax.devices()
wd, overrides = json.loads(sys.argv[1])
cfg = dit_config(**overrides)
train.train(cfg, wd)
sample.run(cfg, wd)
"""


@pytest.mark.slow
def test_dit_fsdp_on_eight_devices_matches_one(tmp_path):
  """A tiny DiT (configs/digits/dit.py) with 4-way data x 2-way FSDP, gradient accumulation and
  two steps per call on 8 simulated devices: the losses, final state and samples of 1 device."""
  from tests.conftest import dit_config
  fsdp = {"parallel.model_axis": 2, "parallel.fsdp": True, "parallel.fsdp_min_size": 0,
          "training.grad_accum_steps": 2, "training.steps_per_call": 2}
  wd8, wd1 = str(tmp_path / "dit_8"), str(tmp_path / "dit_1")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DIT_SCRIPT),
                           json.dumps([wd8, fsdp])], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  one = {**fsdp, "parallel.model_axis": 1}
  cfg = dit_config(**one)
  train.train(cfg, wd1)
  sample.run(cfg, wd1)
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-4000:]
  np.testing.assert_allclose(_losses(wd8), _losses(wd1), rtol=1e-4)

  def state(wd):
    s = setup.setup(dit_config(**one))
    ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False)
    st, _, step = ck.restore(s.abstract_state)
    ck.close()
    assert step == 20
    return jax.device_get(st)

  for x, y in zip(jax.tree_util.tree_leaves(state(wd8)), jax.tree_util.tree_leaves(state(wd1))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  s8 = np.load(os.path.join(one_result(os.path.join(wd8, "samples")), "samples.npz"))["x"]
  s1 = np.load(os.path.join(one_result(os.path.join(wd1, "samples")), "samples.npz"))["x"]
  assert s8.shape == s1.shape == (16, 8, 8, 1)
  np.testing.assert_allclose(s8, s1, rtol=1e-3, atol=1e-4)


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  """Multi-host: 2 processes x 2 CPU devices (jax.distributed, gloo) train, checkpoint, resume
  and sample like one device; only process 0 writes logs."""
  from tests.conftest import popen_main
  wd, ref = str(tmp_path / "multi"), str(tmp_path / "one")

  def launch(steps):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [popen_main(wd, "train", {**STEPS, "training.num_steps": steps,
                                      "parallel.distributed": True,
                                      "parallel.coordinator_address": f"localhost:{port}",
                                      "parallel.num_processes": 2, "parallel.process_id": i},
                        env=env) for i in range(2)]
    outs = []
    for p in procs:
      out, _ = p.communicate(timeout=400)
      outs.append(out)
      assert p.returncode == 0, out[-4000:]
    return outs

  outs = launch(10)
  assert "2 process(es)" in outs[0] and "starting" not in outs[1]
  outs = launch(20)
  assert "resumed from the checkpoint at step 10" in outs[0]
  train.train(tiny_config(**STEPS), ref)
  np.testing.assert_allclose(_losses(wd), _losses(ref), rtol=1e-4)
  assert [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))] == [
      5, 10, 15, 20]
  a, b = _state(wd, STEPS), _state(ref, STEPS)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
