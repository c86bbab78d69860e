"""Start-up validation (experiments/validate.py): every bad input is refused in one line naming
the field, before anything is built; and the CLI reports it as one ``error:`` line, exit != 0,
leaving the workdir as it was."""
import glob
import os
import re

import pytest

from diffusion import training
from diffusion.config_checks import ConfigError
from experiments.config_files import load_config_file
from experiments.validate import check_writable, ema_warning, validate
from tests.conftest import REPO, run_main, tiny_config


def _refused(overrides, mode="train", **kw) -> str:
  """The one-line ConfigError message validate() raises for the tiny config + overrides."""
  kw.setdefault("device_count", 1)
  kw.setdefault("process_count", 1)
  with pytest.raises(ConfigError) as e:
    validate(tiny_config(**overrides), mode, **kw)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_tiny_config_passes_in_every_mode(tmp_path):
  for mode in ("train", "sample", "eval"):
    validate(tiny_config(), mode, str(tmp_path), device_count=1, process_count=1)
  assert os.listdir(tmp_path) == []


# (override, substrings the message must contain: the field and the bad value).
BAD_FIELDS = [
    ({"data.batch_size": 0}, ["config.data.batch_size=0", ">= 1"]),
    ({"data.name": "nope"}, ["config.data.name", "'nope'", "checkerboard"]),
    ({"data.num_heldout": 0}, ["config.data.num_heldout=0"]),
    ({"sde.name": "vpp"}, ["config.sde.name='vpp'", "'vp'"]),
    ({"sde.fields.beta_maxx": 1.0}, ["config.sde.fields", "beta_maxx", "beta_max"]),
    ({"sde.fields.t_min": 2.0}, ["config.sde.fields", "t_min"]),
    ({"model.name": "resnet"}, ["config.model.name='resnet'", "mlp"]),
    ({"model.net.widht": 3}, ["config.model.net", "widht"]),
    ({"model.parameterization": "noise"}, ["config.model.parameterization='noise'", "eps"]),
    ({"model.time_input": "sigma"}, ["config.model.time_input='sigma'", "log_sigma"]),
    ({"model.sigma_data": 0.0}, ["config.model.sigma_data=0.0"]),
    ({"model.conditional": True}, ["config.model.conditional=True", "labels"]),
    ({"training.num_steps": 0}, ["config.training.num_steps=0", ">= 1"]),
    ({"training.log_every": 0}, ["config.training.log_every=0"]),
    ({"training.ckpt_every": -1}, ["config.training.ckpt_every=-1", ">= 0"]),
    ({"training.sample_every": -5}, ["config.training.sample_every=-5"]),
    ({"training.max_to_keep": 0}, ["config.training.max_to_keep=0"]),
    ({"training.weighting": "snr"}, ["config.training.weighting='snr'", "min_snr"]),
    ({"training.time_sampling": "beta"}, ["config.training.time_sampling='beta'", "lognormal"]),
    ({"training.loss_opts.pmean": 1.0}, ["config.training.loss_opts", "pmean", "p_mean"]),
    ({"training.ema_decay": 1.0}, ["config.training.ema_decay=1.0", "[0.0, 1.0)"]),
    ({"training.ema_decay": -0.1}, ["config.training.ema_decay=-0.1"]),
    ({"training.nonfinite": "ignore"}, ["config.training.nonfinite='ignore'", "skip"]),
    ({"training.grad_accum_steps": 0}, ["config.training.grad_accum_steps=0"]),
    ({"training.steps_per_call": 0}, ["config.training.steps_per_call=0"]),
    ({"training.compute_dtype": "float16"}, ["config.training.compute_dtype='float16'",
                                             "bfloat16"]),
    ({"optim.name": "sgd"}, ["config.optim.name='sgd'", "adamw"]),
    ({"optim.decay": "linear"}, ["config.optim.decay='linear'", "cosine"]),
    ({"optim.lr": 0.0}, ["config.optim.lr=0.0"]),
    ({"optim.lr": float("nan")}, ["config.optim.lr=nan"]),
    ({"optim.warmup_steps": -1}, ["config.optim.warmup_steps=-1"]),
    ({"optim.warmup_steps": 30}, ["config.optim.warmup_steps=30", "training.num_steps=30"]),
    ({"optim.warmup_steps": 50, "optim.decay": "cosine"}, ["config.optim.warmup_steps=50"]),
    ({"optim.grad_clip": -1.0}, ["config.optim.grad_clip=-1.0"]),
    ({"optim.b2": 1.0}, ["config.optim.b2=1.0"]),
    ({"optim.eps": 0.0}, ["config.optim.eps=0.0"]),
    ({"optim.end_lr_factor": 2.0}, ["config.optim.end_lr_factor=2.0"]),
    ({"sampling.sampler": "nope"}, ["config.sampling.sampler", "'nope'", "heun"]),
    ({"sampling.snr": 0.1}, ["config.sampling", "'heun'", "snr", "accepted"]),
    ({"sampling.num_steps": 0}, ["config.sampling.num_steps=0"]),
    ({"sampling.num_samples": 0}, ["config.sampling.num_samples=0"]),
    ({"sampling.batch_size": 0}, ["config.sampling.batch_size=0"]),
    ({"sampling.rho": 0.0}, ["config.sampling.rho=0.0"]),
    ({"sampling.grid": "linear"}, ["config.sampling.grid", "'linear'", "karras"]),
    ({"sampling.grid": "logsnr_power:-1"}, ["config.sampling.grid", "logsnr_power:-1"]),
    ({"sampling.t_min": 2.0}, ["config.sampling.t_min", "t_min=2.0"]),
    ({"sampling.grid": "uniform", "sampling.t_min": 1.0 - 1e-15, "sampling.num_steps": 100},
     ["config.sampling.grid='uniform'", "strictly decreasing"]),
    ({"eval.num_samples": 0}, ["config.eval.num_samples=0"]),
    ({"eval.nll_points": 0}, ["config.eval.nll_points=0"]),
    ({"eval.nll_batch_size": 0}, ["config.eval.nll_batch_size=0"]),
    ({"eval.mmd_points": 1}, ["config.eval.mmd_points=1", ">= 2"]),
    ({"eval.sw_projections": 0}, ["config.eval.sw_projections=0"]),
    ({"eval.density_grid": -1}, ["config.eval.density_grid=-1"]),
    ({"eval.divergence": "skilling"}, ["config.eval.divergence='skilling'", "hutchinson"]),
    ({"eval.rtol": 0.0}, ["config.eval.rtol=0.0"]),
    ({"eval.density_extent": -1.0}, ["config.eval.density_extent=-1.0"]),
    ({"eval.step": -1}, ["config.eval.step=-1", ">= 0"]),
    ({"eval.step": 10, "eval.all_checkpoints": True}, ["config.eval.step=10",
                                                       "config.eval.all_checkpoints=True"]),
    ({"eval.shard_size": 0}, ["config.eval.shard_size=0", ">= 1"]),
    ({"eval.dequantization_draws": 0}, ["config.eval.dequantization_draws=0"]),
    ({"eval.elbo_time_samples": 0}, ["config.eval.elbo_time_samples=0"]),
    ({"eval.elbo_time_sampling": "sobol"}, ["config.eval.elbo_time_sampling='sobol'",
                                            "stratified"]),
    ({"eval.probe": "normal"}, ["config.eval.probe='normal'", "rademacher", "gaussian"]),
    ({"eval.solver": "rk45"}, ["config.eval.solver='rk45'", "dopri5"]),
    ({"eval.t_min": 0.0}, ["config.eval.t_min=0.0", "[0.001, 1.0)"]),
    ({"eval.t_min": 1.0}, ["config.eval.t_min=1.0"]),
    ({"training.t_min": 2.0}, ["config.training.t_min=2.0", "[0.001, 1.0)"]),
    ({"training.t_min": 0.01, "training.loss_opts.t_min": 0.02},
     ["config.training.t_min=0.01", "loss_opts.t_min=0.02"]),
    ({"parallel.model_axis": 0}, ["config.parallel.model_axis=0"]),
    ({"parallel.fsdp_min_size": -1}, ["config.parallel.fsdp_min_size=-1"]),
    ({"parallel.num_processes": 2, "parallel.process_id": 2},
     ["config.parallel.process_id=2", "num_processes=2"]),
    ({"training.max_consecutive_skips": -1}, ["config.training.max_consecutive_skips=-1"]),
    ({"debug.nan_at_step": -2}, ["config.debug.nan_at_step=-2"]),
    ({"debug.nan_num_steps": 0}, ["config.debug.nan_num_steps=0"]),
    ({"debug.setup_delay_s": -1.0}, ["config.debug.setup_delay_s=-1.0"]),
    ({"seed": -1}, ["config.seed=-1"]),
]


@pytest.mark.parametrize("overrides,expected", BAD_FIELDS,
                         ids=[",".join(o) for o, _ in BAD_FIELDS])
def test_bad_field_is_refused_naming_it(overrides, expected):
  msg = _refused(overrides)
  for s in expected:
    assert s in msg, msg


def test_each_sampler_accepts_only_its_own_hyperparameters():
  validate(tiny_config(**{"sampling.sampler": "pc", "sampling.snr": 0.1}), "sample",
           device_count=1, process_count=1)
  msg = _refused({"sampling.sampler": "ddim", "sampling.snr": 0.1}, mode="sample")
  assert "'ddim'" in msg and "snr" in msg and "eta" in msg


def test_conditional_needs_a_class_embedding():
  from configs.digits.vp import get_config
  c = get_config()
  c.model.conditional = True
  with pytest.raises(ConfigError, match=r"conditional=True needs config\.model\.net\.num_classes"):
    validate(c, "train", device_count=1, process_count=1)
  c.model.net.num_classes = 10
  validate(c, "train", device_count=1, process_count=1)


def test_zero_terminal_snr_needs_a_v_or_x0_network():
  import ml_collections
  c = tiny_config()
  c.sde.name = "vp_discrete"
  c.sde.fields = ml_collections.ConfigDict(dict(zero_terminal_snr=True))
  c.model.time_input = "index"
  c.sampling.sampler = "ddim"
  c.sampling.grid = "trailing"
  with pytest.raises(ConfigError, match=r"config\.model\.parameterization: parameterization 'eps' "
                                        r"cannot be evaluated at zero terminal SNR"):
    validate(c, "train", device_count=1, process_count=1)
  c.model.parameterization = "v"
  validate(c, "train", device_count=1, process_count=1)


def test_image_size_is_checked_against_the_dataset():
  from configs.digits.vp import get_config
  c = get_config()
  c.data.image_size = 16
  with pytest.raises(ConfigError, match=r"config\.data\.image_size.*8x8"):
    validate(c, "train", device_count=1, process_count=1)


def test_batch_must_split_over_processes_devices_and_micro_batches():
  assert "process count 3" in _refused({}, process_count=3, device_count=3)
  msg = _refused({}, device_count=3)
  assert "config.data.batch_size=64" in msg and "device count 3" in msg
  msg = _refused({"training.grad_accum_steps": 3}, device_count=2)
  assert "config.training.grad_accum_steps=3" in msg and "per-device batch 32" in msg
  msg = _refused({"parallel.model_axis": 3}, device_count=4)
  assert "config.parallel.model_axis=3" in msg and "device count 4" in msg
  validate(tiny_config(**{"training.grad_accum_steps": 4, "parallel.model_axis": 2}), "train",
           device_count=8, process_count=2)


def test_unknown_mode_and_empty_workdir():
  with pytest.raises(ConfigError, match="--mode='fit'"):
    validate(tiny_config(), "fit", device_count=1, process_count=1)
  assert "--workdir" in _refused({}, workdir="")


# -- the workdir probe ---------------------------------------------------------------------------


def test_writable_probe_leaves_nothing_and_creates_nothing(tmp_path):
  os.utime(tmp_path, (1_000_000_000, 1_000_000_000))
  check_writable(str(tmp_path), "--workdir")
  check_writable(str(tmp_path / "a" / "b"), "--workdir")  # probes tmp_path, creates no a/
  assert os.listdir(tmp_path) == []
  assert os.stat(tmp_path).st_mtime == 1_000_000_000  # the refusal checks compare mtimes


def test_workdir_under_a_file_is_refused(tmp_path):
  (tmp_path / "f").write_text("x")
  msg = _refused({}, workdir=str(tmp_path / "f" / "wd"))
  assert "--workdir=" in msg and "not a directory" in msg
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_sample_output_folder_must_be_creatable(tmp_path):
  (tmp_path / "samples").write_text("not a folder")
  msg = _refused({}, mode="sample", workdir=str(tmp_path))
  assert "samples/" in msg and "--mode=sample" in msg
  validate(tiny_config(), "eval", str(tmp_path), device_count=1, process_count=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_workdir_is_refused(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  wd.chmod(0o555)
  try:
    for mode in ("train", "sample", "eval"):
      assert "not writable" in _refused({}, mode=mode, workdir=str(wd))
    assert os.listdir(wd) == []
  finally:
    wd.chmod(0o755)


# -- the CLI: one `error:` line, exit != 0, before any compile, nothing left -----------------------

UNWRITABLE = "/sys/kernel/no_such_workdir"  # sysfs refuses new files, even to root


def _one_error_line(r) -> str:
  assert r.returncode != 0, r.stdout[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  return lines[0]


@pytest.mark.parametrize("overrides", [False, True])
def test_cli_missing_config_file(tmp_path, overrides):
  r = run_main(str(tmp_path), "train", config="missing.py",
               extra=["--config.seed=1"] if overrides else [], timeout=60)
  assert r.returncode == 2
  assert _one_error_line(r) == "error: config file 'missing.py' does not exist"
  assert os.listdir(tmp_path) == []


def test_cli_config_with_an_error_is_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return 1 / 0\n")
  wd = tmp_path / "wd"
  r = run_main(str(wd), "train", config=str(bad), timeout=60)
  assert r.returncode == 2 and "ZeroDivisionError" in _one_error_line(r)
  assert not wd.exists()


@pytest.mark.parametrize("mode", ["train", "sample", "eval"])
def test_cli_unwritable_workdir(mode):
  line = _one_error_line(run_main(UNWRITABLE, mode, timeout=120))
  assert "--workdir=" in line and "not writable" in line


# Observed before validation: a NaN loss at step 0, a raw sharding error, an error after all
# training steps, an error naming decay_steps (not a config field).
CLI_CASES = [
    ({"data.batch_size": 0}, {}, "config.data.batch_size=0"),
    ({"data.batch_size": 30}, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
     "config.data.batch_size=30 must be divisible by the device count 4"),
    ({"sampling.sampler": "nope"}, {}, "config.sampling.sampler: unknown sampler 'nope'"),
    ({"training.num_steps": 0}, {}, "config.training.num_steps=0"),
    ({"optim.warmup_steps": 100, "optim.decay": "cosine"}, {},
     "config.optim.warmup_steps=100 must be smaller than config.training.num_steps=30"),
]


@pytest.mark.parametrize("overrides,env,expected", CLI_CASES,
                         ids=[",".join(o) for o, _, _ in CLI_CASES])
def test_cli_bad_config_fails_before_work(tmp_path, overrides, env, expected):
  r = run_main(str(tmp_path), "train", overrides, env=env, timeout=120)
  line = _one_error_line(r)
  assert expected in line and "decay_steps" not in line
  assert "starting" not in r.stdout and "step" not in r.stdout  # nothing was built or run
  assert os.listdir(tmp_path) == []  # nothing left for the next run to trip on


# -- the EMA's length against the run's ----------------------------------------------------------


def _suggested_decay(msg: str) -> float:
  return float(re.search(r"--config\.training\.ema_decay=([0-9.]+)$", msg).group(1))


def test_ema_warning_fires_for_a_short_run_and_its_fixes_fit():
  msg = ema_warning(tiny_config(**{"training.num_steps": 2000}))  # decay 0.999, no warm-up
  assert "\n" not in msg and msg.startswith("warning: config.training.ema_decay=0.999 (no warm-up)")
  assert "config.training.num_steps=2000" in msg and "lags 864 steps (43% of the run" in msg
  assert "13.5% of its weight on the initial parameters" in msg
  assert "--config.training.ema_warmup=True or --config.training.ema_decay=" in msg
  d = _suggested_decay(msg)
  assert d == 0.9975 and training.ema_fits(2000, d, False)
  for fix in ({"training.ema_decay": d}, {"training.ema_warmup": True}):
    assert ema_warning(tiny_config(**{"training.num_steps": 2000, **fix})) is None, fix
  assert ema_warning(tiny_config(**{"training.num_steps": 10_000})) is None  # lags 10%


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_warning_of_a_run_with_rounds_is_about_its_last_round(warmup):
  c = load_config_file(os.path.join(REPO, "configs", "toy", "checkerboard_pd.py"))
  c.training.ema_decay, c.training.ema_warmup = 0.999, warmup
  msg = ema_warning(c)
  assert "the last round's 2500 steps (of config.training.num_steps=10000)" in msg, msg
  assert "ema_warmup" not in msg.split("; set ")[1]  # a warm-up ends long before step 7,500
  c.training.ema_decay = _suggested_decay(msg)
  assert ema_warning(c) is None and training.ema_fits(2500, c.training.ema_decay, warmup, 7500)


@pytest.mark.parametrize("path", sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py", "few_step.py")))
def test_no_shipped_config_has_an_ema_too_long_for_its_run(path):
  assert ema_warning(load_config_file(os.path.join(REPO, path))) is None
