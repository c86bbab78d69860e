"""Results named by everything that made them (experiments/results.py): the name and its key,
two sample runs with other settings keeping both outputs, a second eval with another sampler
evaluating again, and non-finite samples refused (exit 1, one line) with every earlier output
left as it was."""
import json
import os

import numpy as np
import pytest

from experiments import evaluate, results, sample, train
from tests.conftest import run_main, tiny_config, tree_hashes
from tests.test_eval_driver import digits_config

NAN = {"imports": "('tests.user_modules.nan_sampler',)", "sampling.sampler": "nan_every_other"}
EVAL = {"eval.density_grid": 0}


# -- the name ------------------------------------------------------------------------------------


def test_the_name_is_readable_and_pins_its_hash():
  out = results.output(tiny_config(), "sample", 30)
  # Pinned: a change of the key (a field in or out, a default) renames every result folder.
  assert out.name == "heun_n8_karras_step30_9c8db64e"
  assert out.settings() == {"name": out.name, "hash": "9c8db64e", "key": out.key}
  assert out.key["sampling"]["hyperparameters"] == {"final_denoise": True, "variables": "edm"}
  assert results.output(tiny_config(), "eval", 30).name.startswith("heun_n8_karras_")
  bf16 = results.output(tiny_config(**{"sampling.compute_dtype": "bfloat16",
                                       "sampling.grid": "logsnr_power:2"}), "sample", 30)
  assert bf16.readable == "heun_n8_logsnr_power-2_bfloat16_step30"


SAMPLE_CHANGES = [
    {"sampling.sampler": "euler"}, {"sampling.num_steps": 1}, {"sampling.grid": "uniform"},
    {"sampling.rho": 5.0}, {"sampling.t_min": 1e-3}, {"sampling.logsnr_max": 8.0},
    {"sampling.variables": "t"}, {"sampling.compute_dtype": "bfloat16"},
    {"sampling.clip_denoised": True}, {"sampling.num_samples": 64}, {"seed": 1},
    {"guidance.kind": "cfg", "guidance.weight": 3.0},
    {"guidance.kind": "cfg", "guidance.weight": 3.0, "guidance.t_hi": 0.5},
]


def test_every_setting_that_changes_the_samples_changes_the_name():
  base = results.output(tiny_config(), "sample", 30)
  names = [results.output(tiny_config(**o), "sample", 30).name for o in SAMPLE_CHANGES]
  names += [results.output(tiny_config(), "sample", 20).name]
  assert len(set(names + [base.name])) == len(names) + 1
  # Not in the key: the batch size (sample i depends on (key, i) only), an eval field, a
  # hyper-parameter set to its default (resolved against the sampler's signature).
  for same in ({"sampling.batch_size": 7}, {"eval.num_samples": 3},
               {"sampling.variables": "edm"}, {"guidance.weight": 5.0}):  # kind 'none'
    assert results.output(tiny_config(**same), "sample", 30).name == base.name, same


def test_inverse_problem_settings_and_files_are_in_the_sample_name(tmp_path):
  obs = str(tmp_path / "obs.npz")
  np.savez(obs, images=np.zeros((2, 2), np.float32), mask=np.ones((2, 2), np.float32))
  inv = {"inverse.task": "inpaint", "inverse.observations": obs, "inverse.method": "pigdm"}
  a = results.output(tiny_config(**inv), "sample", 30)
  b = results.output(tiny_config(**inv, **{"inverse.pigdm_t_hi": 0.7}), "sample", 30)
  assert a.readable == b.readable == "heun_n8_karras_inpaint_pigdm_obs_step30"
  assert a.name != b.name  # the two Pi-GDM runs
  np.savez(obs, images=np.ones((2, 2), np.float32), mask=np.ones((2, 2), np.float32))
  assert results.output(tiny_config(**inv), "sample", 30).name != a.name  # the file's bytes
  assert "inverse" not in results.output(tiny_config(**inv), "eval", 30).key  # eval: none


def test_eval_and_sweep_keys(tmp_path):
  base = results.output(tiny_config(), "eval", 30).name
  for change in ({"sampling.sampler": "euler"}, {"eval.num_samples": 64},
                 {"eval.nll_points": 32}, {"eval.rtol": 1e-4}, {"eval.shard_size": 10},
                 {"data.heldout_seed": 1}, {"seed": 2}):
    assert results.output(tiny_config(**change), "eval", 30).name != base, change
  for same in ({"sampling.num_samples": 3}, {"eval.density_grid": 0}, {"eval.step": 30},
               {"eval.all_checkpoints": True}, {"eval.elbo": False}):  # toy: no ELBO
    assert results.output(tiny_config(**same), "eval", 30).name == base, same
  stats = str(tmp_path / "stats.npz")
  np.savez(stats, mu=np.zeros(2))
  fid = {"eval.fid_stats": stats}
  sweep = results.output(digits_config(**fid), "sweep", 30)
  assert sweep.readable == "karras" and "sampler" not in sweep.key["sampling"]
  assert set(sweep.key["sweep"]) == {"fid_stats_sha256", "fid_rounding", "kid_subsets",
                                     "kid_subset_size", "sweep_num_samples"}
  assert "data" not in sweep.key  # images: FID / KID only, as before toy sweeps
  # The cells' samplers and steps are keyed inside the sweep's file, not in its name.
  assert results.output(digits_config(**fid, **{"sampling.sampler": "euler",
                                                "eval.sweep_samplers": "heun"}), "sweep",
                        30).name == sweep.name
  for change in ({"eval.sweep_num_samples": 9}, {"eval.kid_subsets": 3}):
    assert results.output(digits_config(**fid, **change), "sweep", 30).name != sweep.name
  eval_fid = results.output(tiny_config(**fid), "eval", 30)
  np.savez(stats, mu=np.ones(2))
  assert results.output(tiny_config(**fid), "eval", 30).name != eval_fid.name
  assert results.output(digits_config(**fid), "sweep", 30).name != sweep.name


def test_toy_sweep_key_holds_what_scores_its_cells():
  """A toy sweep's cells are SW / MMD against held-out points (experiments/sweep.py)."""
  base = results.output(tiny_config(), "sweep", 30)
  assert base.readable == "karras"
  for change in ({"data.num_heldout": 100}, {"data.heldout_seed": 1}, {"eval.mmd_points": 64},
                 {"eval.sw_projections": 16}, {"eval.sweep_num_samples": 9}, {"seed": 1},
                 {"sampling.grid": "uniform"}):
    assert results.output(tiny_config(**change), "sweep", 30).name != base.name, change
  # Not read by a toy sweep: eval's sample count, its likelihood, FID / KID; the lists.
  for same in ({"eval.num_samples": 64}, {"eval.nll_points": 32}, {"eval.rtol": 1e-4},
               {"eval.kid_subsets": 3}, {"eval.sweep_samplers": "heun"},
               {"eval.sweep_nfe": "7"}, {"sampling.sampler": "euler"}):
    assert results.output(tiny_config(**same), "sweep", 30).name == base.name, same


def test_classifier_and_autoguidance_need_the_second_networks_step():
  cfg = tiny_config(**{"guidance.kind": "classifier", "guidance.classifier_config": "c.py",
                       "guidance.classifier_workdir": "clf"})
  with pytest.raises(ValueError, match="restored step of its second network"):
    results.output(cfg, "sample", 30)
  a, b = (results.output(cfg, "sample", 30, guide_step=s).key["guidance"] for s in (10, 20))
  assert a != b and a["classifier_workdir"] == os.path.abspath("clf")
  cfg = tiny_config(**{"guidance.kind": "autoguidance", "guidance.guide_workdir": "weak"})
  with pytest.raises(ValueError, match="restored step of its second network"):
    results.output(cfg, "sample", 30)
  a, b = (results.output(cfg, "sample", 30, guide_step=s) for s in (10, 20))
  assert a.name != b.name and a.key["guidance"]["guide_workdir"] == os.path.abspath("weak")
  assert a.key["guidance"]["guide_step"] == 10


def test_a_folder_holding_other_settings_is_refused(tmp_path):
  out = results.output(tiny_config(), "sample", 30)
  d = str(tmp_path / out.name)
  assert results.claim(d, out) is False and results.claim(d, out) is True
  other = results.output(tiny_config(**{"seed": 5}), "sample", 30)
  before = tree_hashes(d)
  with pytest.raises(results.OutputConflictError, match="differ in seed"):
    results.claim(d, other)
  assert tree_hashes(d) == before


# -- the driver ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("results") / "run")
  train.train(tiny_config(**EVAL), wd)  # checkpoints at 10, 20, 30
  return wd


def test_two_sample_runs_with_other_settings_keep_both_outputs(trained, capsys):
  """The issue's scenario: the default sampler, then euler with 1 step: two folders."""
  first = sample.run(tiny_config(**EVAL), trained)
  kept = tree_hashes(first["out"])
  second = sample.run(tiny_config(**EVAL, **{"sampling.sampler": "euler",
                                              "sampling.num_steps": 1}), trained)
  assert first["out"] != second["out"]
  assert os.path.basename(first["out"]).startswith("heun_n8_karras_step30_")
  assert os.path.basename(second["out"]).startswith("euler_n1_karras_step30_")
  assert tree_hashes(first["out"]) == kept  # untouched by the second run
  for r in (first, second):
    assert sorted(os.listdir(r["out"])) == ["samples.npz", "samples.png", "settings.json"]
    saved = json.load(open(os.path.join(r["out"], "settings.json")))
    assert saved["name"] == os.path.basename(r["out"])
  assert json.load(open(os.path.join(second["out"], "settings.json")))["key"]["sampling"][
      "sampler"] == "euler"
  with np.load(os.path.join(first["out"], "samples.npz")) as a, \
      np.load(os.path.join(second["out"], "samples.npz")) as b:
    assert int(a["nfe"]) == 17 and int(b["nfe"]) == 1 and not np.array_equal(a["x"], b["x"])
  # The same settings again: the folder is reused, nothing written.
  capsys.readouterr()
  assert sample.run(tiny_config(**EVAL), trained) == first
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-1].startswith("samples with these settings are already in " + first["out"])
  assert tree_hashes(first["out"]) == kept


def test_a_second_eval_with_another_sampler_evaluates_again(trained, capsys):
  m1 = evaluate.run(tiny_config(**EVAL, **{"eval.step": 20}), trained)
  capsys.readouterr()
  m2 = evaluate.run(tiny_config(**EVAL, **{"eval.step": 20, "sampling.sampler": "euler",
                                           "sampling.num_steps": 1}), trained)
  out = capsys.readouterr().out
  assert "already evaluated" not in out and m2["step"] == m1["step"] == 20
  assert (m1["sampler"], m2["sampler"], m2["nfe"]) == ("heun", "euler", 1)
  assert m1["name"] != m2["name"] and m2["nll_nats"] == pytest.approx(m1["nll_nats"])
  step_dir = os.path.join(trained, "eval", "step_20")
  assert sorted(os.listdir(step_dir)) == sorted([m1["name"], m2["name"]])
  for m in (m1, m2):
    here = os.path.join(step_dir, m["name"])
    assert json.load(open(os.path.join(here, "metrics.json"))) == m
    assert json.load(open(os.path.join(here, "settings.json")))["name"] == m["name"]
  assert out.strip().splitlines()[-1].endswith(f"written to {os.path.join(step_dir, m2['name'])}")
  # eval/metrics.json: a copy of the latest evaluation, whatever its settings.
  assert json.load(open(os.path.join(trained, "eval", "metrics.json"))) == m2
  # The first settings again: the same key, so skipped.
  assert evaluate.run(tiny_config(**EVAL, **{"eval.step": 20}), trained) == m1
  assert "step 20 already evaluated with these settings" in capsys.readouterr().out


@pytest.mark.slow  # ~30 s: a NaN run through the CLI (non-finite policies: test_training.py)
def test_nan_samples_exit_1_in_one_line_and_leave_earlier_outputs_intact(trained):
  good = sample.run(tiny_config(**EVAL), trained)
  evaluate.run(tiny_config(**EVAL), trained)
  before = tree_hashes(os.path.join(trained, "samples"), rel_to=trained)
  before.update(tree_hashes(os.path.join(trained, "eval"), rel_to=trained))

  r = run_main(trained, "sample", {**EVAL, **NAN}, timeout=300)
  assert r.returncode == 1, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: 64 of 128 samples are not finite, so "
                                                 "nothing was written to "), r.stderr[-3000:]
  name = lines[0].split("nothing was written to ")[1].split(";")[0]
  assert os.path.basename(name).startswith("nan_every_other_n8_karras_step30_")
  assert "config.sampling.sampler" in lines[0]  # the fix
  assert not os.path.exists(name)

  r = run_main(trained, "eval", {**EVAL, **NAN}, timeout=300)
  assert r.returncode == 1, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "error: 64 of 128 samples of step 30 are not finite, so no metrics were written to "), \
      r.stderr[-3000:]
  here = lines[0].split("no metrics were written to ")[1].split(" (")[0]
  assert os.path.basename(here).startswith("nan_every_other_n8_karras_")
  assert os.listdir(here) == ["settings.json"]  # no metrics, no plots, no shard of NaN

  after = tree_hashes(os.path.join(trained, "samples"), rel_to=trained)
  after.update(tree_hashes(os.path.join(trained, "eval"), rel_to=trained))
  new = set(after) - set(before)
  assert {k: after[k] for k in before} == before  # every earlier output as it was
  assert new == {os.path.relpath(os.path.join(here, "settings.json"), trained)}
  assert os.path.exists(os.path.join(good["out"], "samples.npz"))
