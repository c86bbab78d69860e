"""Class-conditional training: label dropout of the mlp, labelled toy data (8gaussians), the
driver's labelled batches, validation of conditional / classifier configs, and tiny conditional
and classifier runs through the driver (train, resume, eval, refusals)."""
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import checkpoint
from diffusion.data import toy2d
from diffusion.models import get_model
from experiments import build, evaluate, train
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests.conftest import REPO, TINY, run_main, with_overrides

COND = os.path.join(REPO, "configs", "toy", "8gaussians_vp_cond.py")
CLF = os.path.join(REPO, "configs", "toy", "8gaussians_vp_classifier.py")


def _config(path, **overrides):
  from experiments.config_files import load_config_file
  return with_overrides(load_config_file(path), {**TINY, **overrides})


def _refused(config, mode="train") -> str:
  with pytest.raises(ConfigError) as e:
    validate(config, mode, device_count=1, process_count=1)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


# -- label dropout -------------------------------------------------------------------------------


def _class_embeddings(net, variables, labels, train, key, n):
  _, state = net.apply(variables, jnp.zeros((n, 2)), jnp.full((n,), 0.5),
                       labels=labels, train=train, rngs={"dropout": key},
                       capture_intermediates=True)
  return state["intermediates"]["ClassEmbedding_0"]["__call__"][0]


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_mlp_label_dropout_rate(rate):
  """With train=True a fraction ~rate of the class embeddings is the NULL class's (binomial,
  4 sigma); with train=False none is; labels=None is NULL throughout."""
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8, num_classes=8,
                  label_dropout=rate)
  n = 8000
  labels = jnp.asarray(np.arange(n) % 8, jnp.int32)
  v = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
  null = v["params"]["ClassEmbedding_0"]["embed"]["embedding"][8]
  is_null = lambda e: np.all(np.isclose(np.asarray(e), np.asarray(null)[None]), axis=1)
  frac = is_null(_class_embeddings(net, v, labels, True, jax.random.PRNGKey(1), n)).mean()
  assert abs(frac - rate) < 4 * np.sqrt(rate * (1 - rate) / n), frac
  assert not is_null(_class_embeddings(net, v, labels, False, jax.random.PRNGKey(1), n)).any()
  assert is_null(_class_embeddings(net, v, None, True, jax.random.PRNGKey(1), n)).all()
  # Another dropout key drops other labels.
  a = is_null(_class_embeddings(net, v, labels, True, jax.random.PRNGKey(1), n))
  b = is_null(_class_embeddings(net, v, labels, True, jax.random.PRNGKey(2), n))
  assert np.any(a != b)


def test_mlp_labels_are_checked():
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8, num_classes=8)
  x, c = jnp.zeros((4, 2)), jnp.zeros((4,))
  v = net.init(jax.random.PRNGKey(0), x, c)
  net.apply(v, x, c, labels=jnp.array([0, 7, 8, 3]))  # 8 is the NULL label
  with pytest.raises(ValueError, match=r"labels must be in \[0, 8\].*\[0, 9\]"):
    net.apply(v, x, c, labels=jnp.array([0, 9, 1, 1]))
  with pytest.raises(ValueError, match=r"labels must be in \[0, 8\].*\[-1, 1\]"):
    net.apply(v, x, c, labels=jnp.array([0, -1, 1, 1]))
  with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
    net.apply(v, x, c, labels=jnp.array([0, 1]))
  with pytest.raises(TypeError, match="labels must be integers"):
    net.apply(v, x, c, labels=jnp.zeros((4,)))
  plain = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  vp = plain.init(jax.random.PRNGKey(0), x, c)
  with pytest.raises(ValueError, match="num_classes=0"):
    plain.apply(vp, x, c, labels=jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match=r"label_dropout=1.0: accepted range \[0, 1\)"):
    get_model("mlp", num_classes=8, label_dropout=1.0)


# -- labelled toy data ----------------------------------------------------------------------------

# sha256 prefixes of toy2d.batch(name, 64, seed=0, step=3) and heldout(name, 100, seed=1) before
# labels existed: the unlabelled streams are unchanged.
STREAMS = {
    "8gaussians": ("302ddd96510c9d7de1a5622679d7a547", "a31678b20e1db64f78d85fd7713b854c"),
    "checkerboard": ("743778d368145240b62a77e6e544acae", "d7d790b5e35e6c1a5c7d417ad0fb0c84"),
}


def _sha(a) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:32]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_unlabelled_streams_are_unchanged(name):
  assert (_sha(toy2d.batch(name, 64, 0, 3)), _sha(toy2d.heldout(name, 100, 1))) == STREAMS[name]


def test_8gaussians_draws_are_the_former_sampler_bit_for_bit():
  """The former sampler (component, then the Gaussian noise, from one generator) gives the
  points; the labels are its components."""
  rng = np.random.default_rng(7)
  k = rng.integers(0, 8, size=500)
  _, mu, cov = toy2d.gaussian_mixture_params("8gaussians")
  want = (mu[k] + np.sqrt(cov[0, 0, 0]) * rng.standard_normal((500, 2))).astype(np.float32)
  x, y = toy2d.sample("8gaussians", 500, np.random.default_rng(7), with_labels=True)
  np.testing.assert_array_equal(x, want)
  np.testing.assert_array_equal(y, k)
  assert y.dtype == np.int32


def test_labels_are_the_generating_component():
  """The label is the component that drew the point: where the exact posterior p(k | x) is
  near-certain (> 1 - 1e-6: expected disagreements < 0.01 over the set) the label is its
  argmax, and overall the argmax agrees with the label as often as the posterior says (the
  Bayes accuracy E max_k p(k | x), within 4 standard errors). The classes are balanced."""
  x, y = toy2d.heldout("8gaussians", 20_000, 3, with_labels=True)
  w, mu, cov = toy2d.gaussian_mixture_params("8gaussians")
  log_post = np.log(w) - np.sum((x[:, None].astype(np.float64) - mu) ** 2, -1) / (
      2 * cov[0, 0, 0])
  log_post -= np.logaddexp.reduce(log_post, axis=1, keepdims=True)
  p_max = np.exp(log_post.max(1))
  sure = p_max > 1 - 1e-6
  assert sure.mean() > 0.3 and np.sum(1 - p_max[sure]) < 0.01  # expected disagreements
  np.testing.assert_array_equal(y[sure], log_post.argmax(1)[sure])
  agree = (y == log_post.argmax(1)).mean()
  assert abs(agree - p_max.mean()) < 4 * np.sqrt(np.mean(p_max * (1 - p_max)) / len(y)) + 1e-4
  counts = np.bincount(y, minlength=8)
  assert len(counts) == 8 and np.all(np.abs(counts / len(y) - 1 / 8) < 0.01)


def test_labelled_batches_heldout_and_iterator_keep_the_points():
  for step in (0, 5):
    x, y = toy2d.batch("8gaussians", 48, 2, step, with_labels=True)
    np.testing.assert_array_equal(x, toy2d.batch("8gaussians", 48, 2, step))
    assert y.shape == (48,)
    parts = [toy2d.batch("8gaussians", 48, 2, step, process_index=i, process_count=3,
                         with_labels=True) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
  it = toy2d.iterator("8gaussians", 48, 2, start_step=5, with_labels=True)
  xb, yb = next(it)
  np.testing.assert_array_equal(yb, toy2d.batch("8gaussians", 48, 2, 5, with_labels=True)[1])
  xh, yh = toy2d.heldout("8gaussians", 100, 1, with_labels=True)
  np.testing.assert_array_equal(xh, toy2d.heldout("8gaussians", 100, 1))


def test_which_toy_datasets_have_labels():
  assert toy2d.has_labels("8gaussians") and toy2d.num_classes("8gaussians") == 8
  assert not toy2d.has_labels("checkerboard") and toy2d.num_classes("checkerboard") == 0
  assert toy2d.labelled() == ("8gaussians",)
  for call in (lambda: toy2d.batch("rings", 8, 0, 0, with_labels=True),
               lambda: toy2d.heldout("moons", 8, 0, with_labels=True),
               lambda: toy2d.iterator("checkerboard", 8, 0, with_labels=True)):
    with pytest.raises(ValueError, match=r"has no labels; datasets with labels: \['8gaussians'\]"):
      call()


def test_driver_batches_carry_labels_only_when_the_step_reads_them():
  cond = _config(COND)
  b = next(build.train_batches(cond, 4, 0, 1))
  x, y = toy2d.batch("8gaussians", 64, cond.seed, 4, with_labels=True)
  np.testing.assert_array_equal(b["x"], x)
  np.testing.assert_array_equal(b["label"], y)
  assert set(next(build.train_batches(_config(CLF), 0, 0, 1))) == {"x", "label"}
  plain = _config(COND, **{"model.conditional": False})
  b = next(build.train_batches(plain, 4, 0, 1))
  assert set(b) == {"x"}
  np.testing.assert_array_equal(b["x"], x)
  assert build.dataset_num_classes(cond) == 8
  assert {"8gaussians", "digits", "mnist", "cifar10"} <= set(build.labelled_datasets())


# -- validation -----------------------------------------------------------------------------------


def test_the_new_configs_pass_validation():
  for path in (COND, CLF):
    validate(_config(path), "train", device_count=1, process_count=1)
    validate(_config(path), "eval", device_count=1, process_count=1)
  validate(_config(COND), "sample", device_count=1, process_count=1)


@pytest.mark.parametrize("path,overrides,expected", [
    (COND, {"data.name": "checkerboard"},
     ["config.model.conditional=True", "'checkerboard' has no labels", "'8gaussians'", "'digits'"]),
    (COND, {"model.net.num_classes": 5},
     ["config.model.net.num_classes=5", "'8gaussians'", "8"]),
    (COND, {"model.net.label_dropout": 1.0}, ["config.model.net.label_dropout=1.0", "[0.0, 1.0)"]),
    (COND, {"model.net.label_dropout": -0.1}, ["config.model.net.label_dropout=-0.1"]),
    (CLF, {"model.name": "mlp"},
     ["config.training.objective='classifier'", "config.model.name='mlp'", "_classifier"]),
    (COND, {"model.conditional": False, "training.objective": "classifier"},
     ["config.training.objective='classifier'", "config.model.name='mlp'"]),
    (CLF, {"training.objective": "dsm"}, ["config.model.name='mlp_classifier'", "'dsm'"]),
    (CLF, {"training.objective": "gan"}, ["config.training.objective='gan'", "'classifier'"]),
    (CLF, {"data.name": "rings"}, ["config.training.objective='classifier'", "'rings'",
                                   "'8gaussians'"]),
    (CLF, {"model.net.num_classes": 10}, ["config.model.net.num_classes=10", "8"]),
    (CLF, {"model.conditional": True}, ["config.model.conditional=True", "'mlp_classifier'"]),
    (CLF, {"training.loss_opts.sigma_data": 0.5},
     ["config.training.loss_opts", "sigma_data", "'classifier'", "p_mean"]),
])
def test_bad_conditional_and_classifier_configs_are_refused(path, overrides, expected):
  msg = _refused(_config(path, **overrides))
  for s in expected:
    assert s in msg, msg


def test_image_datasets_give_their_classes():
  from configs.digits.cond import get_config
  c = get_config()
  validate(c, "train", device_count=1, process_count=1)
  c.model.net.num_classes = 8
  msg = _refused(c)
  assert "config.model.net.num_classes=8" in msg and "'digits'" in msg and "10" in msg


def test_sample_and_sweep_modes_refuse_a_classifier():
  for mode in ("sample", "sweep"):
    msg = _refused(_config(CLF), mode)
    assert f"--mode={mode}" in msg and "config.training.objective='classifier'" in msg


def test_classifier_configs_match_their_score_models():
  """The classifier sees exactly what the score model sees: the same process, time input and
  network inputs, training times and time embedding (the sampling driver checks the schedule)."""
  from configs.digits import classifier, cond, vp
  from configs.toy import common
  from experiments.config_files import load_config_file
  toy_clf = load_config_file(CLF)
  pairs = [(load_config_file(COND), toy_clf), (common.toy_config("8gaussians", "vp"), toy_clf),
           (vp.get_config(), classifier.get_config()), (cond.get_config(), classifier.get_config())]
  for score, clf in pairs:
    assert clf.sde.to_dict() == score.sde.to_dict()
    for f in ("parameterization", "time_input", "scale_input", "sigma_data"):
      assert clf.model[f] == score.model[f], f
    assert clf.training.t_min == score.training.t_min
    assert clf.training.time_sampling == score.training.time_sampling
    for f in ("embedding_type", "embedding_scale", "embed_dim"):
      assert clf.model.net.get(f) == score.model.net.get(f), f


def test_identity_keeps_objectives_apart_and_old_workdirs_resumable():
  """training.objective is an identity field: a classifier workdir refuses a 'dsm' config and
  back; a workdir saved before the field existed (no training.objective) is a 'dsm' one."""
  dsm = build.identity_dict(_config(COND), {})
  clf = build.identity_dict(_config(CLF), {})
  assert "objective" not in dsm["training"] and clf["training"]["objective"] == "classifier"
  old = json.loads(json.dumps(dsm))  # as written before: no training.objective
  assert checkpoint.config_diff(old, dsm, build.IDENTITY_FIELDS) == []
  diffs = checkpoint.config_diff(clf, dsm, build.IDENTITY_FIELDS)
  assert ("training.objective", "classifier", None) in diffs


# -- the driver -----------------------------------------------------------------------------------


def test_conditional_toy_run_trains_and_resumes(tmp_path, capsys):
  wd = str(tmp_path)
  out = train.train(_config(COND, **{"training.num_steps": 20}), wd)
  assert out["step"] == 20 and out["status"] == "done"
  capsys.readouterr()
  out = train.train(_config(COND), wd)
  assert out["step"] == 30 and "resumed from the checkpoint at step 20" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20, 30] and all(np.isfinite(r["loss"]) for r in rows)
  saved = json.load(open(os.path.join(wd, "config.json")))
  assert saved["model"]["conditional"] and saved["model"]["net"]["label_dropout"] == 0.1
  from experiments import setup
  _, params, step = setup.restore_params(_config(COND), wd)
  assert step == 30 and params["ClassEmbedding_0"]["embed"]["embedding"].shape == (9, 32)


@pytest.mark.slow  # ~20 s of driver runs (the golden case "classifier" trains it by default)
def test_classifier_run_trains_resumes_evaluates_and_refuses_sampling(tmp_path, capsys):
  wd = str(tmp_path)
  r = run_main(wd, "train", {"training.num_steps": 20}, config=CLF, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "accuracy" in r.stdout and not os.path.exists(os.path.join(wd, "plots"))
  capsys.readouterr()
  out = train.train(_config(CLF), wd)
  assert out["step"] == 30 and "resumed from the checkpoint at step 20" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20, 30]
  assert all(0 <= r["accuracy"] <= 1 for r in rows)
  assert not os.path.exists(os.path.join(wd, "plots"))  # a classifier draws no samples
  m = evaluate.run(_config(CLF), wd)
  assert m["step"] == 30 and m["heldout_points"] == 256 and m["num_classes"] == 8
  assert m["eval_times"][0] == pytest.approx(1e-3) and m["eval_times"][-1] == 1.0
  assert np.all(np.diff(m["eval_logsnrs"]) < 0)
  np.testing.assert_allclose(np.diff(m["eval_logsnrs"]), np.diff(m["eval_logsnrs"])[0])
  accs = [m[f"accuracy_at_t={t:.4g}"] for t in m["eval_times"]]
  assert all(0 <= a <= 1 for a in accs) and m["accuracy_mean"] == pytest.approx(np.mean(accs))
  assert m["name"].startswith("classifier_heldout_")
  assert json.load(open(os.path.join(wd, "eval", "step_30", m["name"], "metrics.json"))) == m
  # A score-model config is refused in the classifier's workdir, naming the objective.
  with pytest.raises(checkpoint.WorkdirMismatchError, match="training.objective"):
    train.train(_config(COND), wd)
  r = run_main(wd, "sample", config=CLF, timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(lines) == 1, r.stderr[-2000:]
  assert "--mode=sample" in lines[0] and "training.objective='classifier'" in lines[0]
