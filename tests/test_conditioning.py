"""The conditional-sampling driver's inputs: config.guidance / config.inverse validation (one line
naming the field), observation files and masks, the reference classifiers."""
import os

import numpy as np
import pytest

from experiments import conditioning, observations
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests.conftest import REPO, tiny_config, with_overrides


def _digits(**overrides):
  from experiments.config_files import load_config_file
  c = load_config_file(os.path.join(REPO, "configs", "digits", "vp.py"))
  return with_overrides(c, overrides)


COND = {"model.conditional": True, "model.net.num_classes": 10}


def _refused(config, mode="sample") -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, mode, device_count=1, process_count=1)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


@pytest.mark.parametrize("overrides, mode, expected", [
    ({"guidance.kind": "cfg"}, "sample", ["guidance.kind='cfg'", "unconditional"]),
    ({"guidance.label": 3}, "sample", ["guidance.label=3", "unconditional", "-1"]),
    ({**COND, "guidance.label": 11}, "sample", ["guidance.label=11", "out of range", "0..9"]),
    ({**COND, "guidance.label": -2}, "eval", ["guidance.label=-2", "out of range"]),
    ({**COND, "guidance.kind": "cfg", "guidance.label": 10}, "sample", ["NULL label"]),
    ({**COND, "guidance.kind": "cfgg"}, "sample", ["guidance.kind='cfgg'", "'classifier'"]),
    ({**COND, "guidance.kind": "cfg", "guidance.convention": "x"}, "sample",
     ["guidance.convention='x'", "ho_salimans"]),
    ({**COND, "guidance.kind": "cfg", "guidance.weight": float("nan")}, "sample",
     ["guidance.weight=nan"]),
    ({**COND, "guidance.kind": "cfg", "guidance.t_lo": 0.5, "guidance.t_hi": 0.2}, "sample",
     ["t_lo=0.5", "t_hi=0.2"]),
    ({**COND, "guidance.kind": "cfg", "guidance.t_hi": 3.0}, "sample", ["guidance.t_hi=3.0"]),
    ({**COND, "guidance.t_lo": 0.1}, "sample", ["guidance.t_lo", "kind='none'"]),
    ({"guidance.kind": "classifier"}, "sample", ["classifier_config"]),
    ({"guidance.kind": "classifier", "guidance.classifier_config": "nope.py",
      "guidance.classifier_workdir": "/tmp"}, "sample", ["classifier_config", "nope.py"]),
    ({"guidance.kind": "autoguidance"}, "sample", ["guide_workdir", "autoguidance"]),
    ({"guidance.kind": "autoguidance", "guidance.guide_workdir": "/nonexistent"}, "sample",
     ["guide_workdir='/nonexistent'", "not a directory"]),
    ({"guidance.kind": "autoguidance", "guidance.guide_workdir": "/tmp",
      "guidance.guide_step": -1}, "sample", ["guide_step=-1"]),
    ({"guidance.kind": "autoguidance", "guidance.guide_workdir": "/tmp",
      "guidance.guide_config": os.path.join(REPO, "configs", "toy", "8gaussians_vp.py")},
     "sample", ["autoguidance's guide", "another data"]),
    ({"guidance.kind": "autoguidance", "guidance.guide_workdir": "/tmp",
      "guidance.guide_config": os.path.join(REPO, "configs", "digits", "classifier.py")},
     "sample", ["not a denoiser"]),
    ({**COND, "guidance.kind": "cfg", "guidance.guide_workdir": "/tmp"}, "sample",
     ["guide_workdir", "only by guidance.kind='autoguidance'"]),
    ({"inverse.task": "deblur"}, "sample", ["inverse.task='deblur'", "inpaint"]),
    ({"inverse.task": "inpaint"}, "eval", ["inverse.task='inpaint'", "--mode=sample"]),
    ({"inverse.task": "inpaint"}, "sweep", ["--mode=sample"]),
    ({"inverse.task": "inpaint"}, "sample", ["inverse.observations", "experiments.observations"]),
    ({"inverse.task": "inpaint", "inverse.observations": "/nonexistent.npz"}, "sample",
     ["inverse.observations='/nonexistent.npz'", "not a file"]),
    ({"inverse.task": "inpaint", "inverse.noise_std": 0.1}, "sample",
     ["noise_std=0.1", "pigdm"]),
    ({"inverse.task": "inpaint", "inverse.method": "dpss"}, "sample",
     ["inverse.method='dpss'", "replacement", "ddrm"]),
    ({"inverse.task": "inpaint", "inverse.method": "dps", "inverse.dps_zeta": -1.0}, "sample",
     ["inverse.method='dps'", "dps_zeta", "-1"]),
    ({"inverse.task": "inpaint", "inverse.method": "daps"}, "sample",
     ["inverse.method='daps'", "daps_tau", "tau"]),  # noiseless: DAPS needs a likelihood std
    ({"inverse.task": "inpaint", "inverse.method": "daps", "inverse.daps_tau": 0.05,
      "inverse.daps_ode_solver": "rk4"}, "sample", ["daps_ode_solver", "'rk4'"]),
    ({"inverse.task": "inpaint", "inverse.method": "ddrm", "inverse.ddrm_eta": 1.5}, "sample",
     ["inverse.method='ddrm'", "ddrm_eta", "1.5"]),
    ({**COND, "inverse.task": "inpaint", "inverse.method": "ddrm", "guidance.kind": "cfgpp",
      "sampling.sampler": "ddim"}, "sample", ["sampler of its own", "cfgpp"]),
    ({"guidance.kind": "apg"}, "sample", ["guidance.kind='apg'", "unconditional"]),
    ({**COND, "guidance.kind": "cfg_rescale", "guidance.rescale_space": "score"}, "sample",
     ["guidance.kind='cfg_rescale'", "rescale_space", "'score'"]),
    ({**COND, "guidance.kind": "apg", "guidance.apg_norm_threshold": -1.0}, "sample",
     ["guidance.kind='apg'", "apg_norm_threshold", "-1"]),
    ({**COND, "guidance.kind": "apg", "guidance.convention": "ho_salimans"}, "sample",
     ["convention='ho_salimans'", "kind 'cfg' only"]),
    ({**COND, "guidance.kind": "cfgpp"}, "sample", ["kind='cfgpp'", "DDIM", "'heun'"]),
    ({**COND, "guidance.kind": "cfgpp", "sampling.sampler": "ddim"}, "sweep",
     ["kind='cfgpp'", "every cell"]),
    ({**COND, "guidance.kind": "cfgpp", "sampling.sampler": "ddim", "guidance.weight": 3.0},
     "sample", ["kind='cfgpp'", "3.0"]),

    ({"inverse.task": "super_resolution", "inverse.factor": 0}, "sample",
     ["inverse.factor=0"]),
    ({"inverse.task": "inpaint", "inverse.observation_labels": True}, "sample",
     ["observation_labels=True", "unconditional"]),
    ({**COND, "inverse.task": "inpaint", "inverse.observation_labels": True, "guidance.label": 3},
     "sample", ["observation_labels=True", "guidance.label=3"]),
])
def test_bad_guidance_and_inverse_fields(overrides, mode, expected):
  msg = _refused(_digits(**overrides), mode)
  for e in expected:
    assert e in msg, (e, msg)


def test_good_guidance_configs_pass():
  for o in ({**COND, "guidance.kind": "cfg", "guidance.weight": 3.0},
            {**COND, "guidance.label": 10},  # the NULL label: unconditional samples
            {**COND, "guidance.kind": "cfg", "guidance.t_lo": 0.1, "guidance.t_hi": 0.8},
            {"inverse.task": "inpaint"}):  # inverse problems are only read by --mode=sample
    validate(_digits(**o), "train", device_count=1, process_count=1)


def test_tags_name_the_conditioning():
  assert conditioning.tag(_digits()) == ""
  assert conditioning.tag(_digits(**COND, **{"guidance.kind": "cfg", "guidance.weight": 3.0})) \
      == "cfg_scale_w3"
  t = conditioning.tag(_digits(**COND, **{"guidance.kind": "cfg", "guidance.label": 4,
                                          "guidance.t_lo": 0.2}))
  assert t == "cfg_scale_w1_t0.2-max_class4"
  inv = _digits(**{"inverse.task": "inpaint", "inverse.observations": "/x/obs.npz"})
  assert conditioning.tag(inv, "sample") == "inpaint_replacement_obs"
  assert conditioning.tag(inv, "eval") == ""


def test_masks():
  m = observations.make_mask("right_half", (8, 8, 3), 2)
  assert m.shape == (2, 8, 8, 3) and m[:, :, :4].min() == 1 and m[:, :, 4:].max() == 0
  m = observations.make_mask("center", (8, 8, 1), 1)
  assert m.sum() == 64 - 16 and m[0, 2:6, 2:6].max() == 0
  m = observations.make_mask("random:0.5", (8, 8, 3), 200, seed=1)
  assert abs(1 - m.mean() - 0.5) < 0.02
  assert np.all(m[..., 0] == m[..., 2])  # channels together
  assert np.array_equal(observations.make_mask("x", (2,), 3), np.tile([1.0, 0.0], (3, 1)))
  with pytest.raises(ValueError, match="random:<p>"):
    observations.make_mask("random:2", (8, 8, 1), 1)
  with pytest.raises(ValueError, match="'x', 'y'"):
    observations.make_mask("right_half", (2,), 1)
  with pytest.raises(ValueError, match="unknown mask 'left'"):
    observations.make_mask("left", (8, 8, 1), 1)


def test_observation_file_round_trip_and_errors(tmp_path):
  cfg = _digits()
  path = observations.write(cfg, "inpaint", 3, str(tmp_path / "obs.npz"), "bottom_half")
  with np.load(path) as f:
    assert f["images"].shape == (3, 8, 8, 1) and f["mask"].shape == (3, 8, 8, 1)
    assert -1 <= f["images"].min() and f["images"].max() <= 1
  with pytest.raises(FileExistsError, match="nothing was overwritten"):
    observations.write(cfg, "inpaint", 3, path)
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, images=np.zeros((3, 8, 8, 1)), mask=np.ones((3, 8, 7, 1)))
  cfg = _digits(**{"inverse.task": "inpaint", "inverse.observations": bad})
  with pytest.raises(ConfigError, match=r"'mask' has shape \(3, 8, 7, 1\); expected \(N, 8, 8, 1"):
    conditioning.load_observations(cfg, (8, 8, 1))
  nomask = str(tmp_path / "nomask.npz")
  np.savez(nomask, images=np.zeros((3, 8, 8, 1)))
  cfg = _digits(**{"inverse.task": "inpaint", "inverse.observations": nomask})
  with pytest.raises(ConfigError, match="has no 'mask'"):
    conditioning.load_observations(cfg, (8, 8, 1))


def test_observation_labels_condition_each_completion_on_its_observation(tmp_path):
  import jax.numpy as jnp
  from experiments import build
  cfg = _digits(**COND)
  path = observations.write(cfg, "inpaint", 5, str(tmp_path / "obs.npz"), "right_half")
  _, truth = build.heldout_labelled(cfg, 5)
  with np.load(path) as f:
    assert np.array_equal(f["labels"], truth) and f["labels"].dtype == np.int32
  cfg = _digits(**COND, **{"inverse.task": "inpaint", "inverse.observations": path,
                           "inverse.observation_labels": True})
  labels = conditioning.load_observation_labels(cfg, 5)
  obs = conditioning.load_observations(cfg, (8, 8, 1))
  plan = conditioning.Plan(num_classes=10, observations=obs, observation_labels=True,
                           aux={"observations": obs, "observation_labels": labels})
  cond = plan.cond(plan.aux, jnp.arange(12))  # sample i completes observation i mod 5
  assert np.array_equal(np.asarray(cond["label"]), truth[np.arange(12) % 5])
  assert "obslabels" in conditioning.tag(cfg)
  plain = conditioning.Plan(num_classes=10, observations=obs, aux={"observations": obs})
  assert np.array_equal(np.asarray(plain.cond(plain.aux, jnp.arange(12))["label"]),
                        np.arange(12) % 10)  # without the flag: the classes in turn
  for arrays, match in (({}, "holds no 'labels'"),
                        ({"labels": np.array([0, 1, 2, 3, 10])}, "got 10 at index 4"),
                        ({"labels": np.zeros(4, np.int32)}, r"must be \(5,\) integers")):
    bad = str(tmp_path / f"bad{len(arrays) and len(arrays['labels'])}.npz")
    with np.load(path) as f:
      np.savez(bad, images=f["images"], mask=f["mask"], **arrays)
    with pytest.raises(ConfigError, match=match):
      conditioning.load_observation_labels(with_overrides(cfg, {"inverse.observations": bad}), 5)


def test_observations_cli_errors_are_one_line(tmp_path, capsys):
  rc = observations.main(["--config", os.path.join(REPO, "configs", "digits", "vp.py"),
                          "--task", "inpaint", "--mask", "diagonal", "--out",
                          str(tmp_path / "o.npz")])
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "unknown mask 'diagonal'" in err[0]
  assert not os.path.exists(tmp_path / "o.npz")


def test_reference_classifiers():
  from diffusion.data import toy2d
  predict, what = conditioning.reference_classifier(tiny_config(**{"data.name": "8gaussians"}))
  w, means, covs = toy2d.gaussian_mixture_params("8gaussians")
  assert np.array_equal(predict(means), np.arange(8)) and "Bayes" in what
  assert conditioning.reference_classifier(tiny_config()) is None  # checkerboard: no classes
  predict, what = conditioning.reference_classifier(_digits())
  from diffusion.data.digits import LEVELS, load_digits
  x, y = load_digits("test")
  acc = np.mean(predict((x + 0.5) / LEVELS * 2 - 1) == y)
  assert acc > 0.93 and f"{acc:.1%}" in what


def test_class_accuracy_counts_non_finite_samples_as_wrong():
  from diffusion.metrics.class_accuracy import class_accuracy
  predict = lambda x: (x[:, 0] > 0).astype(int)  # noqa: E731
  x = np.array([[1.0], [-1.0], [np.nan], [np.inf]])
  assert class_accuracy(predict, x, np.array([1, 0, 1, 1])) == 0.5
  with pytest.raises(ValueError, match="as many labels"):
    class_accuracy(predict, x, np.array([1]))


def test_overridden_copies_and_refuses_unknown_keys():
  from experiments.cli import overridden
  c = tiny_config()
  d = overridden(c, {"guidance.weight": 3.0})
  assert d.guidance.weight == 3.0 and c.guidance.weight == 1.0
  with pytest.raises(KeyError, match="guidance.wieght"):
    overridden(c, {"guidance.wieght": 3.0})


def test_saved_config_reproduces_the_runs_overrides(tmp_path):
  """setup.saved_config: the config file's fields with the values of the workdir's config.json
  (lists back to tuples); a field the file lacks is an error naming it."""
  import json
  from experiments import setup
  c = _digits()
  saved = c.to_dict()
  saved["model"]["net"]["ch"] = 16
  saved["model"]["net"]["ch_mult"] = [1, 2]
  saved["resolved"] = {"param_count": 1}
  (tmp_path / "config.json").write_text(json.dumps(saved))
  out = setup.saved_config(c, str(tmp_path))
  assert out.model.net.ch == 16 and out.model.net.ch_mult == (1, 2) and c.model.net.ch == 32
  saved["model"]["net"]["chh"] = 3
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match="model.net.chh"):
    setup.saved_config(c, str(tmp_path))
  assert setup.saved_config(c, str(tmp_path / "nowhere")) is c


def test_the_consistency_sampler_is_refused_for_a_denoiser():
  msg = _refused(_digits(**{"sampling.sampler": "consistency"}))
  assert "sampling.sampler='consistency'" in msg and "network is a denoiser" in msg
