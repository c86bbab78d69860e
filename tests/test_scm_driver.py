"""sCM through the driver: sCD from an EDM teacher (another schedule and parameterization), sCT,
sampling and evaluation of the students, and the refusals (samplers, heads, initialisation)."""
import os

import ml_collections
import numpy as np
import pytest

from diffusion.config_checks import ConfigError
from experiments import build, evaluate, sample, train
from experiments.config_files import load_config_file
from experiments.validate import validate
from tests.conftest import REPO, TINY, with_overrides

TOY = os.path.join(REPO, "configs", "toy")


def _config(name, **overrides):
  c = load_config_file(os.path.join(TOY, f"checkerboard_{name}.py"))
  return with_overrides(c, {**TINY, **overrides})


def _refused(config, mode="train") -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, mode, device_count=1, process_count=1)
  return str(e.value)


@pytest.fixture(scope="module")
def edm_teacher(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("scm") / "edm")
  train.train(_config("edm"), wd)
  return wd


def test_scm_distillation_from_an_edm_teacher_trains_samples_and_evaluates(edm_teacher, capsys):
  wd = os.path.join(os.path.dirname(edm_teacher), "scd")
  cfg = _config("scm", **{"training.num_steps": 20, "sampling.num_steps": 2,
                          "scm.tangent_warmup_steps": 10})
  cfg.distill.teacher_workdir = edm_teacher
  out = train.train(cfg, wd)
  assert out["status"] == "done" and np.isfinite(out["loss"])
  assert "teacher: the checkpoint at step 30" in capsys.readouterr().out
  r = sample.run(cfg, wd)
  assert r["nfe"] == 2
  m = evaluate.run(cfg, wd)
  assert m["sampler"] == "consistency" and "nll_nats" not in m
  assert np.isfinite(m["sliced_wasserstein"])


@pytest.mark.slow  # 16 s cold; the sCT loss: tests/test_scm.py, the driver path: sCD above
def test_scm_training_trains_without_a_teacher(tmp_path):
  cfg = _config("scm_ct", **{"training.num_steps": 20, "scm.weighting": "uniform",
                             "model.net.logvar_head": False})
  out = train.train(cfg, str(tmp_path / "sct"))
  assert out["status"] == "done" and np.isfinite(out["loss"])


def test_scm_refusals(edm_teacher):
  cfg = _config("scm_ct", **{"sampling.sampler": "heun"})
  assert "sampled by" in _refused(cfg, "sample")
  cfg = _config("scm_ct", **{"model.net.logvar_head": False})
  assert "log-variance head" in _refused(cfg)
  cfg = _config("scm_ct", **{"sde.name": "edm"})
  cfg.sde.fields = ml_collections.ConfigDict(dict(t_min=0.002, t_max=80.0))
  assert "'trigflow' schedule" in _refused(cfg)
  cfg = _config("scm", **{"distill.init_from_teacher": True})
  cfg.distill.teacher_workdir = edm_teacher
  assert "init_from_teacher" in _refused(cfg)


def test_a_trigflow_diffusion_model_is_a_denoiser():
  # dsm on TrigFlow: every sampler but the consistency ones; identity unchanged for old objectives
  cfg = _config("scm_ct", **{"training.objective": "dsm", "sampling.sampler": "heun",
                             "model.net.logvar_head": False, "training.weighting": "v"})
  validate(cfg, "sample", device_count=1, process_count=1)
  cfg.sampling.sampler = "consistency"
  assert "sampled by" in _refused(cfg, "sample")
  ident = build.identity_dict(cfg, {})
  assert "scm" not in ident and "distill" not in ident
  assert "scm" in build.identity_dict(_config("scm_ct"), {})
