"""--mode=eval on real runs: checkpoints chosen and skipped, sample shards resumed after an
interruption (the same set as an uninterrupted run, and as on several devices), a missing step
refused in one line, and the image path writing the PF-ODE bits/dim and the ELBO side by side."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import evaluate, shards, train
from tests.conftest import REPO, one_result, run_main, tiny_config, with_overrides
from tests.test_logs import read_tb_scalars

EVAL = {"eval.density_grid": 0, "eval.shard_size": 48}  # 128 samples: shards of 48, 48, 32


def _mtimes(wd):
  return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(wd, "**"), recursive=True)}


def _run_dir(wd, step):
  """eval/step_<step>/<name>: the one evaluation of that step (experiments/results.py)."""
  return one_result(os.path.join(wd, "eval", f"step_{step}"))


def _samples_dir(wd, step):
  return os.path.join(_run_dir(wd, step), "samples")


def test_eval_resumes_its_shards_and_evaluates_every_checkpoint(tmp_path, capsys):
  wd = str(tmp_path / "run")
  train.train(tiny_config(**EVAL), wd)  # checkpoints at 10, 20, 30
  m20 = evaluate.run(tiny_config(**EVAL, **{"eval.step": 20}), wd)
  assert m20["step"] == 20 and json.load(open(os.path.join(wd, "eval", "metrics.json"))) == m20
  d = _samples_dir(wd, 20)
  assert sorted(os.listdir(d)) == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
  full = shards.read_samples(d)
  assert full.shape == (128, 2)

  # An interruption after the first shard: its metrics and the later shards never written.
  os.remove(os.path.join(_run_dir(wd, 20), "metrics.json"))
  for k in (1, 2):
    os.remove(os.path.join(d, shards.shard_name(k)))
  first = os.path.getmtime(os.path.join(d, "shard_00000.npz"))
  capsys.readouterr()
  again = evaluate.run(tiny_config(**EVAL, **{"eval.step": 20}), wd)
  out = capsys.readouterr().out
  assert "48 of 128 samples already" in out
  assert re.search(r"^sampling 80/80 \([\d,.]+ samples/s, done\)$", out, re.M), out
  np.testing.assert_array_equal(shards.read_samples(d), full)  # the same set, exactly
  assert os.path.getmtime(os.path.join(d, "shard_00000.npz")) == first  # read, not rewritten
  for k in ("sliced_wasserstein", "mmd", "nll_nats"):
    assert again[k] == pytest.approx(m20[k], rel=1e-6, abs=1e-9)

  # Every checkpoint: 10 and 30 are evaluated, 20 is skipped.
  capsys.readouterr()
  last = evaluate.run(tiny_config(**EVAL, **{"eval.all_checkpoints": True}), wd)
  out = capsys.readouterr().out
  assert "step 20 already evaluated" in out and "step 10 already" not in out
  assert last["step"] == 30
  assert json.load(open(os.path.join(wd, "eval", "metrics.json")))["step"] == 30
  for step in (10, 20, 30):
    assert os.path.exists(os.path.join(_run_dir(wd, step), "metrics.json"))
  tb = read_tb_scalars(os.path.join(wd, "tb", "eval"))
  assert sorted(tb["eval/nll_nats"]) == [10, 20, 30]
  assert tb["eval/nll_nats"][30] == pytest.approx(last["nll_nats"], rel=1e-6)


def test_a_corrupt_checkpoint_is_passed_over_and_never_moved(tmp_path, capsys):
  """The newest checkpoint fails its integrity check: the default evaluates the newest intact
  one, all_checkpoints evaluates the others, an explicit request for it is one clear error."""
  from diffusion import checkpoint
  from tests.conftest import workdir_fingerprint
  from tests.test_checkpoint import _data_files, _flip_byte
  wd = str(tmp_path / "run")
  train.train(tiny_config(**EVAL), wd)  # checkpoints at 10, 20, 30
  _flip_byte(_data_files(os.path.join(wd, "checkpoints", "30"))[0])
  before = workdir_fingerprint(wd)
  assert evaluate.run(tiny_config(**EVAL), wd)["step"] == 20
  with pytest.raises(checkpoint.NoUsableCheckpointError,
                     match=r"the checkpoint at step 30 .* failed its integrity check"):
    evaluate.run(tiny_config(**EVAL, **{"eval.step": 30}), wd)
  capsys.readouterr()
  assert evaluate.run(tiny_config(**EVAL, **{"eval.all_checkpoints": True}), wd)["step"] == 20
  out = capsys.readouterr().out
  assert "skipping step 30" in out and "step 20 already evaluated" in out
  assert os.path.exists(os.path.join(_run_dir(wd, 10), "metrics.json"))
  assert not os.path.exists(os.path.join(wd, "eval", "step_30"))
  assert workdir_fingerprint(wd) == before  # nothing moved: eval only reads checkpoints


@pytest.mark.slow  # a CLI run (~11 s); eval's checkpoint handling in-process: the two tests above
def test_cli_missing_step_is_one_line_and_changes_nothing(tmp_path):
  wd = str(tmp_path)
  train.train(tiny_config(**EVAL), wd)
  before = _mtimes(wd)
  r = run_main(wd, "eval", {**EVAL, "eval.step": 15}, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  err = [line for line in r.stderr.splitlines() if line.strip()]
  assert err == [err[-1]] and err[0].startswith("error: config.eval.step=15"), r.stderr[-2000:]
  assert "available steps: [10, 20, 30]" in err[0]
  assert _mtimes(wd) == before


DIGITS = {
    "model.net.ch": 4, "model.net.ch_mult": (1,), "model.net.num_res_blocks": 1,
    "model.net.attn_resolutions": (), "data.batch_size": 16, "training.num_steps": 4,
    "training.log_every": 2, "training.ckpt_every": 2, "training.sample_every": 0,
    "training.async_checkpoints": False, "optim.warmup_steps": 1,
    "sampling.num_steps": 1, "sampling.batch_size": 8,
    "eval.num_samples": 8, "eval.shard_size": 4, "eval.nll_points": 8, "eval.nll_batch_size": 8,
    "eval.mmd_points": 8, "eval.plot_samples": 8, "eval.sw_projections": 8,
    "eval.rtol": 1e-2, "eval.atol": 1e-2, "eval.dequantization_draws": 2,
    "eval.elbo_time_samples": 2,
}


def digits_config(**overrides):
  """The digits VP config with DIGITS (and ``overrides``, dotted keys) applied."""
  from configs.digits.vp import get_config
  return with_overrides(get_config(), {**DIGITS, **overrides})


@pytest.mark.slow  # 40 s with a cold compilation cache (the U-Net's PF-ODE and ELBO); ~12 s warm
def test_digits_eval_writes_pf_ode_bits_per_dim_and_the_elbo(tmp_path, capsys):
  wd = str(tmp_path)
  cfg = digits_config(**{"eval.nll_batch_size": 4})
  train.train(cfg, wd)
  capsys.readouterr()
  m = evaluate.run(cfg, wd)
  out = capsys.readouterr().out  # progress: what starts, then every batch with an ETA
  for d in (1, 2):
    assert (f"PF-ODE bits/dim, draw {d}/2: 8 images in 2 batches of 4 (eval.nll_points, "
            f"eval.nll_batch_size, eval.dequantization_draws)\n") in out, out
    assert re.search(rf"^PF-ODE bits/dim, draw {d}/2 4/8 \([\d,.]+ images/s, ETA .+\)$", out,
                     re.M), out
  assert re.search(r"^ELBO: 8 images in 2 batches of 4 .*\nELBO 4/8 \([\d,.]+ images/s, ETA .+"
                   r"\)\nELBO 8/8 \([\d,.]+ images/s, done\)$", out, re.M), out
  on_disk = json.load(open(os.path.join(wd, "eval", "step_4", m["name"], "metrics.json")))
  assert on_disk == m and m["step"] == 4
  for k in ("bpd_pf_ode", "bpd_pf_ode_stderr", "bpd_pf_ode_nfe", "bpd_elbo", "bpd_elbo_stderr",
            "bpd_elbo_prior", "bpd_elbo_diffusion", "bpd_elbo_recon"):
    assert np.isfinite(m[k]) and m[k] >= 0, k
  assert m["bpd_elbo"] == pytest.approx(
      m["bpd_elbo_prior"] + m["bpd_elbo_diffusion"] + m["bpd_elbo_recon"], rel=1e-6)
  assert m["num_levels"] == 17 and m["bpd_pf_ode_draws"] == 2 and m["bpd_points"] == 8
  assert m["likelihood_t_min"] == 1e-3 and m["probe"] == "rademacher"
  assert m["bits_per_dim"] == m["bpd_pf_ode"]
  # An untrained network: both far above a trained one's 2 bits/dim, below absurd values.
  assert 2.0 < m["bpd_pf_ode"] < 40 and 2.0 < m["bpd_elbo"] < 40
  x = shards.read_samples(_samples_dir(wd, 4))
  assert x.shape == (8, 8, 8, 1)
  tb = read_tb_scalars(os.path.join(wd, "tb", "eval"))
  assert tb["eval/bpd_elbo"] == {4: pytest.approx(m["bpd_elbo"], rel=1e-6)}


SCRIPT = """
import sys, jax
from tests.conftest import tiny_config
from experiments import evaluate
assert jax.device_count() == 4, jax.devices()
evaluate.run(tiny_config(**{"eval.density_grid": 0, "eval.shard_size": 48}), sys.argv[1])
"""


@pytest.mark.slow
def test_the_sample_set_is_the_same_on_four_devices(tmp_path):
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  train.train(tiny_config(**EVAL), one)
  shutil.copytree(one, four)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), four], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  evaluate.run(tiny_config(**EVAL), one)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-4000:]
  a, b = shards.read_samples(_samples_dir(one, 30)), shards.read_samples(_samples_dir(four, 30))
  assert a.shape == b.shape == (128, 2)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
