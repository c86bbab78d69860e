"""Flow-map runs through the driver: the toy MeanFlow and shortcut configs train a few steps,
sample, evaluate (no likelihood) and sweep with the 'flow_map' sampler, and the start-up checks refuse
the mismatches (a flow map with a PF-ODE sampler, a denoiser with the flow-map sampler, another
schedule, a one-time network, bad loss options)."""
import os

import numpy as np
import pytest

from diffusion.config_checks import ConfigError
from experiments import evaluate, sample, sweep, train
from experiments.config_files import load_config_file
from experiments.validate import validate
from tests.conftest import REPO, TINY, with_overrides

TOY = os.path.join(REPO, "configs", "toy")


def _config(name, **overrides):
  c = load_config_file(os.path.join(TOY, f"checkerboard_{name}.py"))
  return with_overrides(c, {**TINY, "sampling.num_steps": 1, **overrides})


def _refused(config, mode="train") -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, mode, device_count=1, process_count=1)
  return str(e.value)


@pytest.mark.slow  # 13-22 s cold each; train + sample of a MeanFlow run: the golden cases
@pytest.mark.parametrize("name", ["meanflow", "shortcut"])
def test_flow_map_run_trains_samples_and_evaluates(name, tmp_path):
  wd = str(tmp_path / name)
  cfg = _config(name, **{"training.num_steps": 20})
  out = train.train(cfg, wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  r = sample.run(_config(name, **{"training.num_steps": 20, "sampling.num_steps": 2}), wd)
  assert r["nfe"] == 2
  m = evaluate.run(_config(name, **{"training.num_steps": 20}), wd)
  assert m["nfe"] == 1 and m["sampler"] == "flow_map" and "nll_nats" not in m
  assert np.isfinite(m["sliced_wasserstein"])
  if name == "meanflow":  # --mode=sweep: the flow map at 1 and 2 steps
    cells = sweep.run(_config(name, **{"training.num_steps": 20, "eval.sweep_nfe": "1,2",
                                       "eval.sweep_num_samples": 128}), wd)["cells"]
    assert [(c["sampler"], c["nfe"]) for c in cells] == [("flow_map", 1), ("flow_map", 2)]


def test_flow_map_runs_refuse_what_does_not_fit():
  assert "network is a flow map" in _refused(_config("meanflow", **{"sampling.sampler": "heun"}))
  assert "'flow_map'" in _refused(_config("rf", **{"sampling.sampler": "flow_map"}))
  msg = _refused(_config("meanflow", **{"sde.name": "vp", "sde.fields": {}}))
  assert "rectified_flow" in msg
  msg = _refused(_config("meanflow", **{"training.loss_opts": {"ratio_r_neq_t": 2.0}}))
  assert "ratio_r_neq_t" in msg
  assert "unknown option" in _refused(_config("shortcut", **{"training.loss_opts": {"p": 1}}))
  msg = _refused(_config("shortcut", **{"training.loss_opts": {"max_steps": 100}}))
  assert "power of two" in msg
  assert "draws its own times" in _refused(_config("meanflow", **{"training.t_min": 0.01}))
  msg = _refused(_config("meanflow", **{"model.parameterization": "flow"}))
  assert "mean_flow" in msg
