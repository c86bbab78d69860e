"""--mode=sample with labels, classifier-free guidance, classifier guidance and inverse problems,
end to end on a tiny class-conditional 8gaussians model and a tiny noise-conditional classifier
(seconds of training: the checks are of the wiring, the math is checked against exact answers in
test_guidance.py and test_inverse.py)."""
import os

import numpy as np
import pytest

from experiments import observations, sample, train
from tests.conftest import REPO, TINY, run_main, with_overrides

COND = os.path.join(REPO, "configs", "toy", "8gaussians_vp_cond.py")
CLF = os.path.join(REPO, "configs", "toy", "8gaussians_vp_classifier.py")
STEPS = {"training.num_steps": 20, "training.ckpt_every": 10}  # checkpoints at 10 and 20


def _config(path, **overrides):
  from experiments.config_files import load_config_file
  return with_overrides(load_config_file(path), {**TINY, **STEPS, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cond_sampling")
  cond, clf = str(root / "cond"), str(root / "clf")
  train.train(_config(COND), cond)
  train.train(_config(CLF), clf)
  obs = observations.write(_config(COND), "inpaint", 4, str(root / "obs.npz"), mask="x")
  return {"cond": cond, "clf": clf, "obs": obs, "root": root}


def _sample(runs, **overrides):
  return sample.run(_config(COND, **overrides), runs["cond"])


def _named(out, runs, tag=""):
  """``out`` is samples/<sampler>_n<steps>_<grid>[_<tag>]_step<N>_<hash>
  (experiments/results.py)."""
  head = "heun_n8_karras_" + (f"{tag}_" if tag else "") + "step20_"
  name = os.path.basename(out)
  return (os.path.dirname(out) == os.path.join(runs["cond"], "samples")
          and name.startswith(head) and len(name) == len(head) + 8)


def _npz(out):
  with np.load(os.path.join(out, "samples.npz")) as f:
    return {k: f[k] for k in f.files}


def test_conditional_samples_cycle_through_the_classes(runs):
  r = _sample(runs)
  assert _named(r["out"], runs) and r["batch_multiplier"] == 1
  d = _npz(r["out"])
  assert np.array_equal(d["labels"], np.arange(128) % 8)
  assert 0.0 <= float(d["class_accuracy"]) <= 1.0 and "class_accuracy" in r
  assert os.path.exists(os.path.join(r["out"], "samples.png"))
  one = _sample(runs, **{"guidance.label": 3})
  assert _named(one["out"], runs, "class3") and np.all(_npz(one["out"])["labels"] == 3)


def test_cfg_doubles_the_network_batch_not_the_nfe(runs):
  plain = _sample(runs)
  r = _sample(runs, **{"guidance.kind": "cfg", "guidance.weight": 3.0})
  assert _named(r["out"], runs, "cfg_scale_w3")
  assert r["nfe"] == plain["nfe"] and r["batch_multiplier"] == 2 and not r["network_vjp"]
  d = _npz(r["out"])
  assert list(d["transforms"]) == ["classifier_free"] and int(d["batch_multiplier"]) == 2
  # w = 1 (scale convention) is the plain conditional: the same samples as no guidance.
  w1 = _sample(runs, **{"guidance.kind": "cfg", "guidance.weight": 1.0})
  np.testing.assert_allclose(_npz(w1["out"])["x"], _npz(plain["out"])["x"], atol=1e-5)
  w3 = _npz(r["out"])["x"]
  assert np.max(np.abs(w3 - _npz(plain["out"])["x"])) > 1e-2  # guidance changed them


def test_autoguidance_by_an_earlier_checkpoint(runs):
  plain = _sample(runs)
  guided = {w: _sample(runs, **{"guidance.kind": "autoguidance", "guidance.weight": w,
                                "guidance.guide_workdir": runs["cond"], "guidance.guide_step": 10})
            for w in (1.0, 2.0)}
  r = guided[2.0]
  assert _named(r["out"], runs, "autoguidance_w2") and r["nfe"] == plain["nfe"]
  d = _npz(r["out"])
  assert list(d["transforms"]) == ["autoguidance"] and np.isfinite(d["x"]).all()
  # w = 1 is the sampled model alone; w = 2 moves away from the step-10 guide.
  np.testing.assert_allclose(_npz(guided[1.0]["out"])["x"], _npz(plain["out"])["x"], atol=1e-5)
  assert np.max(np.abs(d["x"] - _npz(plain["out"])["x"])) > 1e-2
  # the guide's step names the results: the step-20 guide (the model itself) is another folder
  same = _sample(runs, **{"guidance.kind": "autoguidance", "guidance.weight": 2.0,
                          "guidance.guide_workdir": runs["cond"]})
  assert same["out"] != r["out"]
  np.testing.assert_allclose(_npz(same["out"])["x"], _npz(plain["out"])["x"], atol=1e-5)


@pytest.mark.parametrize("kind, reduction", [
    ("apg", {"guidance.apg_eta": 1.0, "guidance.apg_norm_threshold": 0.0}),
    ("cfg_rescale", {"guidance.rescale_phi": 0.0}),
    ("cfg_zero_star", {"guidance.zero_star_optimized": False})])
def test_cfg_family_from_the_config(runs, kind, reduction):
  cfg3 = _npz(_sample(runs, **{"guidance.kind": "cfg", "guidance.weight": 3.0})["out"])["x"]
  r = _sample(runs, **{"guidance.kind": kind, "guidance.weight": 3.0})  # the defaults
  assert _named(r["out"], runs, f"{kind}_w3") and r["batch_multiplier"] == 2
  d = _npz(r["out"])
  names = {"apg": "adaptive_projected_guidance", "cfg_rescale": "rescaled_classifier_free",
           "cfg_zero_star": "classifier_free_zero_star"}
  assert list(d["transforms"]) == [names[kind]] and np.isfinite(d["x"]).all()
  # each reduces to plain cfg at the settings where its paper says so: the fields reach it
  same = _sample(runs, **{"guidance.kind": kind, "guidance.weight": 3.0, **reduction})
  assert same["out"] != r["out"]
  np.testing.assert_allclose(_npz(same["out"])["x"], cfg3, rtol=1e-4, atol=1e-4)  # float32 space conversions
  if kind != "cfg_zero_star":  # (its default s* on two classes of 8gaussians is near 1)
    assert np.max(np.abs(d["x"] - cfg3)) > 1e-3


def test_cfgpp_runs_its_own_ddim_loop(runs):
  r = _sample(runs, **{"guidance.kind": "cfgpp", "guidance.weight": 0.6,
                       "sampling.sampler": "ddim"})
  name = os.path.basename(r["out"])
  assert name.startswith("ddim_n8_karras_cfgpp_w0.6_step20_") and r["batch_multiplier"] == 2
  d = _npz(r["out"])
  assert list(d["transforms"]) == ["cfgpp"] and np.isfinite(d["x"]).all()
  assert int(d["nfe"]) == 8


def test_classifier_guidance(runs):
  r = _sample(runs, **{"guidance.kind": "classifier", "guidance.classifier_config": CLF,
                       "guidance.classifier_workdir": runs["clf"],
                       "guidance.classifier_scale": 2.0})
  assert _named(r["out"], runs, "classifier_s2") and r["batch_multiplier"] == 1
  d = _npz(r["out"])
  assert list(d["transforms"]) == ["classifier_guidance"] and np.isfinite(d["x"]).all()


@pytest.mark.parametrize("method", ["replacement", "pigdm"])
def test_inpainting_completions_keep_the_observed_coordinate(runs, method):
  r = _sample(runs, **{"inverse.task": "inpaint", "inverse.observations": runs["obs"],
                       "inverse.method": method, "inverse.samples_per_observation": 3,
                       "inverse.pigdm_t_hi": 0.7,
                       "guidance.label": 8})  # the NULL label: the unconditional model
  assert _named(r["out"], runs, f"null_inpaint_{method}_obs") and r["num_samples"] == 12
  assert r["network_vjp"] == (method == "pigdm")
  d = _npz(r["out"])
  with np.load(runs["obs"]) as f:
    truth = f["images"]
  assert np.array_equal(d["observation_index"], np.arange(12) % 4)
  assert list(d["transforms"]) == [method] and np.isfinite(d["x"]).all()
  if method == "replacement":  # observed by construction, up to the noise left at t_min
    err = np.abs(d["x"][:, 0] - truth[d["observation_index"], 0])
    assert err.max() < 0.1, err
  # (how close Pi-GDM gets depends on the model: test_inverse.py checks it with exact denoisers)
  assert os.path.exists(os.path.join(r["out"], "samples.png"))


def test_completions_conditioned_on_their_observations_classes(runs):
  r = _sample(runs, **{"inverse.task": "inpaint", "inverse.observations": runs["obs"],
                       "inverse.samples_per_observation": 2, "inverse.observation_labels": True,
                       "guidance.kind": "cfg", "guidance.weight": 2.0})
  assert _named(r["out"], runs, "cfg_scale_w2_inpaint_replacement_obs_obslabels")
  d = _npz(r["out"])
  with np.load(runs["obs"]) as f:
    truth = f["labels"]
  assert np.array_equal(d["labels"], truth[d["observation_index"]])
  assert 0.0 <= float(d["class_accuracy"]) <= 1.0  # scored against the observations' classes
  assert list(d["transforms"]) == ["classifier_free", "replacement"]


@pytest.mark.parametrize("method, extra", [
    ("dps", {"inverse.dps_zeta": 0.5}),
    ("ddrm", {}),
    ("daps", {"inverse.daps_tau": 0.05, "inverse.daps_langevin_steps": 10,
              "inverse.daps_ode_steps": 2}),
    ("tds", {"inverse.tds_particles": 4})])
def test_posterior_samplers_from_the_config(runs, method, extra):
  r = _sample(runs, **{"inverse.task": "inpaint", "inverse.observations": runs["obs"],
                       "inverse.method": method, "inverse.samples_per_observation": 2,
                       "guidance.label": 8, **extra})
  name = os.path.basename(r["out"])  # named by the method that sampled, not sampling.sampler
  assert name.startswith(f"{method}_n8_karras_null_inpaint_{method}_obs_step20_"), name
  assert r["network_vjp"] == (method in ("dps", "tds"))
  assert r["batch_multiplier"] == (4 if method == "tds" else 1)  # TDS: K particles per sample
  d = _npz(r["out"])
  assert list(d["transforms"]) == [method] and np.isfinite(d["x"]).all()
  nfe = {"dps": 9, "ddrm": 9, "daps": 9 * 2, "tds": 9}[method]
  assert int(d["nfe"]) == nfe
  if method in ("ddrm", "tds"):  # noiseless DDRM and TDS meet the observation exactly
    with np.load(runs["obs"]) as f:
      truth = f["images"]
    np.testing.assert_allclose(d["x"][:, 0], truth[d["observation_index"], 0], atol=1e-5)


@pytest.mark.slow  # 3 CLI runs (~40 s); the observation file checks: test_conditioning.py (in-process and its CLI), the label range: test_conditioning.py / test_guidance.py
def test_cli_refuses_bad_observations_and_labels_in_one_line(runs):
  bad = str(runs["root"] / "bad_mask.npz")
  np.savez(bad, images=np.zeros((4, 2)), mask=np.ones((4, 3)))
  samples = os.path.join(runs["cond"], "samples")
  listing = lambda: sorted(os.listdir(samples)) if os.path.isdir(samples) else []
  before = listing()  # other tests of this module may have sampled (or not, under xdist)
  for overrides, expected in (
      ({"inverse.task": "inpaint", "inverse.observations": bad},
       "'mask' has shape (4, 3); expected (N, 2)"),
      ({"guidance.label": 9}, "config.guidance.label=9 is out of range"),
      ({"guidance.kind": "cfg", "guidance.label": 8}, "NULL label")):
    r = run_main(runs["cond"], "sample", {**STEPS, **overrides}, config=COND, timeout=180)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and expected in lines[0], r.stderr[-2000:]
  assert listing() == before
