"""experiments.cli: the checks of --config overrides before absl parses them."""
import os

import ml_collections
import pytest

from experiments import cli
from experiments.config_files import load_config_file
from tests.conftest import REPO

CONFIG = os.path.join(REPO, "configs/toy/checkerboard_vp.py")


def _message(keys):
  with pytest.raises(cli.ConfigKeyError) as e:
    cli.check_overrides(load_config_file(CONFIG), keys)
  return str(e.value)


def test_known_keys_pass():
  cli.check_overrides(load_config_file(CONFIG), ["training.num_steps", "sde.fields.beta_max",
                                                 "seed"])


def test_unknown_key_lists_close_matches_and_its_section_only():
  msg = _message(["training.num_stepz"])
  assert "--config.training.num_stepz" in msg and "did you mean: training.num_steps" in msg
  assert "valid keys of training:" in msg and "training.ema_decay" in msg
  assert "sde.name" not in msg and "data.batch_size" not in msg  # other sections: not listed
  config = load_config_file(CONFIG)
  listed = [l.strip() for l in msg.split("valid keys of training:")[1].splitlines() if l.strip()]
  assert listed == [k for k in cli.config_keys(config) if k.startswith("training.")]


def test_nested_key_lists_its_top_level_section():
  msg = _message(["sde.fields.beta_maxx"])
  assert "did you mean: sde.fields.beta_max" in msg
  assert "valid keys of sde:" in msg and "sde.name" in msg and "training." not in msg


def test_unknown_section_lists_the_sections():
  msg = _message(["trainig.num_steps"])
  assert "did you mean: training.num_steps" in msg
  assert "config sections: data, debug, distill, eval, guidance" in msg
  assert "top-level fields: experiment, imports, seed" in msg
  assert "training.num_steps\n" not in msg and "valid keys of" not in msg  # no key listing


def test_several_keys_list_each_section_once():
  msg = _message(["training.a", "training.b", "sde.c", "nope"])
  assert msg.count("valid keys of training:") == 1 and msg.count("valid keys of sde:") == 1
  assert msg.count("config sections:") == 1
  assert msg.index("--config.nope") < msg.index("valid keys of training:")


def test_a_leaf_used_as_a_section_is_an_unknown_section():
  c = ml_collections.ConfigDict({"seed": 0, "a": {"b": 1}})
  with pytest.raises(cli.ConfigKeyError, match="config sections: a; top-level fields: seed"):
    cli.check_overrides(c, ["seed.x"])


def test_override_keys_and_config_spec():
  argv = ["prog", "--config", "f.py", "--config.a.b=1", "--noconfig.c", "--mode=train"]
  assert cli.override_keys(argv) == ["a.b", "c"]
  assert cli.config_spec(argv) == "f.py"
  assert cli.config_spec(["prog", "--config=g.py:x"]) == "g.py:x"
  assert cli.config_spec(["prog"]) is None


PARSE = """
import json, sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.FLAGS(sys.argv)
print(flags.FLAGS.config.to_json())
"""


def test_override_args_run_as_printed_give_the_config_back():
  """The arguments override_args prints, split by a shell and parsed by config_flags as
  experiments.main parses them, turn the config file's config into the run's: tuples, strings
  with spaces, floats, bools, nested fields; None cannot be set and is named instead."""
  import json
  import shlex
  import subprocess
  import sys
  base = load_config_file(CONFIG)
  run = cli.overridden(base, {
      "training.ema_profiles": (0.05, 0.1), "experiment": "my run (2)", "training.t_min": 1e-5,
      "training.ema_warmup": True, "model.net.width": 48, "sde.fields.beta_max": 19.5,
      "eval.sweep_samplers": "euler,heun"})
  args, unsettable = cli.override_args(base, run)
  assert len(args) == 7 and unsettable == []
  assert "'--config.training.ema_profiles=(0.05, 0.1)'" in args  # quoted for the shell
  argv = ["prog", f"--config={CONFIG}", *shlex.split(" ".join(args))]
  done = subprocess.run([sys.executable, "-c", PARSE, *argv[1:]], capture_output=True,
                        text=True, timeout=120, cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout) == json.loads(run.to_json())
  assert cli.override_args(base, base) == ([], [])
  none = cli.overridden(base, {"optim.lr": None})
  assert cli.override_args(base, none) == ([], ["optim.lr"])
