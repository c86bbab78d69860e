"""Every command and Python snippet of README.md and docs/*.md works as written
(tests/doc_commands.py finds them; a new one is covered without editing this file).

Fast tier (default suite): each ``python -m experiments.main`` command parses with the entry
point's own parser (experiments/cli.py) and its config validates for its mode and workdir
(experiments/validate.py: what a run checks before anything is built or compiled), inputs that an
earlier command writes (FID statistics, observation files, a classifier's or teacher's workdir)
standing in as empty placeholders; every other module or script named exists, runs as a program
and defines the options the command passes; every make target is a rule of the Makefile (and
``make -n`` accepts it); every pytest command names existing test files; every snippet compiles,
its imports exist, and it ends by printing what it computed.

Slow tier (``-m slow``): each page's code-block commands and snippets run in document order in a
scratch directory, each command shrunk by tests/doc_commands.SHRINK (steps, samples, ODE points)
or given a fixture in place of what this machine does not have (doc_commands.FIXTURES); each
must exit with status 0 and write the files the docs say it writes, each snippet must print.
"""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import importlib
import io
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pytest

from tests import doc_commands as D
from tests.conftest import CACHE, REPO

INVENTORY = D.inventory()
COMMANDS = [c for cs, _ in INVENTORY.values() for c in cs]
SNIPPETS = [s for _, ss in INVENTORY.values() for s in ss]
MAIN_COMMANDS = [c for c in COMMANDS if c.kind == "module" and c.target == D.MAIN]
PROGRAM_COMMANDS = [c for c in COMMANDS if c.kind in ("module", "script") and c.target != D.MAIN]
# Config fields naming an input that an earlier command writes, and what it is: the fast tier
# puts an empty placeholder there (validation checks that it exists, a run reads it).
INPUTS = {"eval.fid_stats": "file", "inverse.observations": "file",
          "guidance.classifier_workdir": "dir", "guidance.guide_workdir": "dir",
          "distill.teacher_workdir": "dir"}
# The programs of other projects in the docs, which the tests do not run.
OTHER_PROGRAMS = {"pip": "installs packages (network)", "tfds": "prepares tfds datasets (network)",
                  "hf": "downloads from the Hugging Face hub (network)",
                  "tensorboard": "a server, not a computation"}


def _ids(items):
  return [it.id for it in items]


def _mention_reason(cmd: D.Command) -> Optional[str]:
  """Why ``cmd`` is a mention in the prose, not a command line to check (None if it is one): a
  template, or an inline experiments.main span naming neither --config nor --workdir."""
  reason = D.template_reason(cmd.text)
  if reason:
    return reason
  if not cmd.in_block and cmd.target == D.MAIN and not (
      D.flag_value(cmd.args, "config") or D.flag_value(cmd.args, "workdir")):
    return "names the program (and a flag) in the prose, not a command line"
  return None


def _writer(cmd: D.Command, path: str) -> Optional[D.Command]:
  """The command before ``cmd`` on its page that the docs say writes ``path``, or None."""
  for other in INVENTORY[cmd.page][0]:
    if other.line >= cmd.line or not other.in_block:
      continue
    if any(fnmatch.fnmatch(os.path.normpath(path), os.path.normpath(p))
           for p in D.expected_outputs(other, other.args) if p):
      return other
  return None


# -- fast tier: the inventory and the helpers ------------------------------------------------------


def test_every_fence_of_every_page_is_found():
  for page in D.PAGES:
    with open(os.path.join(REPO, page)) as f:
      text = f.read()
    fences = [l for l in text.splitlines() if l.lstrip().startswith("```")]
    assert len(fences) == 2 * len(D.fenced_blocks(text)), page


def test_the_inventory_holds_the_docs_commands_and_snippets():
  assert len(MAIN_COMMANDS) >= 30 and len(SNIPPETS) >= 10
  pages = {c.page for c in MAIN_COMMANDS if c.in_block}
  assert {"README.md", "docs/guidance.md", "docs/inverse.md", "docs/images.md"} <= pages


def test_commands_are_found_in_blocks_and_prose():
  text = ("Run `python benchmarks/x.py --a 1`.\n\n```bash\n# a comment\npython -m experiments.main "
          "--config=c.py \\\n    --workdir=W   # writes W/x.json\nmake demo\n```\n"
          "and `python -m experiments.main\n--mode=eval` and `jax.jit`\n\n"
          "    python -m experiments.x --a=1 \\\n      --b=2   # out.npz\n    x = y + 1\n")
  cmds = D.page_commands("p.md", text)
  assert [(c.line, c.text, c.comment, c.in_block) for c in cmds] == [
      (5, "python -m experiments.main --config=c.py --workdir=W", "writes W/x.json", True),
      (7, "make demo", "", True),
      (12, "python -m experiments.x --a=1 --b=2", "out.npz", True),
      (1, "python benchmarks/x.py --a 1", "", False),
      (9, "python -m experiments.main --mode=eval", "", False)]
  assert [(c.kind, c.target, c.args) for c in cmds[:2] + cmds[3:4]] == [
      ("module", "experiments.main", ["--config=c.py", "--workdir=W"]),
      ("make", "demo", ["demo"]), ("script", "benchmarks/x.py", ["--a", "1"])]


def test_snippets_are_found_indented_and_classified():
  text = "1. Write:\n\n   ```python\n   def f():\n     ...\n   ```\n\n```python\nprint(1)\n```\n"
  snips = D.page_snippets("p.md", text)
  assert [(s.line, s.source) for s in snips] == [(3, "def f():\n  ...\n"), (8, "print(1)\n")]
  assert D.is_template_snippet(snips[0].source) and not D.is_template_snippet(snips[1].source)
  assert D.ends_by_printing("x = 1\nfor i in range(2):\n  print(i)\n")
  assert not D.ends_by_printing("print(1)\nx = 2\n") and not D.ends_by_printing("x\n")
  assert D.imported_names("import jax.numpy as jnp\nfrom a.b import c, d\n") == [
      ("jax.numpy", None), ("a.b", "c"), ("a.b", "d")]


def test_templates_and_values_are_recognised():
  assert D.template_reason("python x.py --a=... --b") == "a template: elided arguments '...'"
  assert D.template_reason("python x.py --config=configs/<config>") == \
      "a template: placeholder <config>"
  assert "alternatives" in D.template_reason("python -m m --mode=train|sample")
  assert "optional arguments [--step=N]" in D.template_reason("python -m m --w=W [--step=N]")
  assert D.template_reason("python -m m --workdir=W --config.eval.fid_stats=STATS.npz") is None
  args = ["--mode=eval", "--workdir", "W", "--config.a.b=1", "--config.a.b=2", "-n", "-3"]
  assert D.flag_value(args, "workdir") == "W" and D.mode_of(args) == "eval"
  assert D.mode_of([]) == "train" and D.config_overrides(args) == {"a.b": "2"}
  assert D.option_names(args) == ["--mode", "--workdir", "--config.a.b", "--config.a.b", "-n"]


def test_defined_options_are_read_from_the_source(tmp_path):
  src = tmp_path / "prog.py"
  src.write_text("import argparse\nfrom absl import flags\nfrom experiments import cli\n"
                 "flags.DEFINE_bool('fast', False, 'x')\nflags.DEFINE_string('out', None, 'x')\n"
                 "ap = argparse.ArgumentParser()\nap.add_argument('--nets', nargs='+')\n"
                 "cli.define_flags()\n")
  defined = D.defined_options(str(src))
  assert {"--fast", "--nofast", "--out", "--nets", "--config", "--config.*", "--workdir",
          "--mode", "--help"} <= defined
  assert D.undefined_options(["--out=x", "--nofast", "--config.a.b=1", "--nets", "a", "b"],
                             defined) == []
  assert D.undefined_options(["--outt=x", "--net", "a"], defined) == ["--outt", "--net"]
  assert not D.runs_as_program(str(src))
  src.write_text("def main():\n  pass\n\nif __name__ == '__main__':\n  main()\n")
  assert D.runs_as_program(str(src))


def test_makefile_targets_are_read_from_its_rules():
  text = "X := 1\nY ?= 2\n.PHONY: a b\n$(STAMP): req.txt\n\tcmd: x\na: $(STAMP)\nb c:\n"
  assert D.makefile_targets(text) == {".PHONY", "$(STAMP)", "a", "b", "c"}


def test_the_slow_tier_shrinks_rewrites_and_expects():
  cmd = D.Command("p.md", 1, "python -m experiments.main --config=c.py --workdir=W --mode=eval "
                  "--config.eval.step=1000 --config.eval.fid_stats=stats/digits_train_8px_1500.npz",
                  "eval/step_<N>/<name>/metrics.json (copied to eval/metrics.json)")
  args = D.shrunk_args(cmd)
  assert args[:5] == ["--config=c.py", "--workdir=W", "--mode=eval", "--config.eval.step=20",
                      "--config.eval.fid_stats=stats/digits_train_8px_32.npz"]
  assert args[5:] == D.shrink_overrides("eval") and "--config.eval.num_samples=32" in args
  assert D.expected_outputs(cmd, args) == ["W/eval/metrics.json", "W/eval/step_*/*/metrics.json"]
  assert D.comment_paths(cmd.comment) == ["eval/step_*/*/metrics.json", "eval/metrics.json"]
  train = D.Command("p.md", 1, "python -m experiments.main --config=c.py --workdir=W "
                    "--config.training.num_steps=600")
  assert "W/checkpoints/20" in D.expected_outputs(train, D.shrunk_args(train))
  conv = D.Command("p.md", 1, "python -m experiments.convert --format=diffusers "
                   "--source=ddpm-cifar10-32 --workdir=w")
  assert D.shrunk_args(conv)[1:3] == [
      f"--source={REPO}/tests/data/convert/diffusers/ddpm_cifar_layout", "--dataset=cifar10"]
  sweep = D.Command("p.md", 1, "python -m experiments.main --config=c.py --workdir=W --mode=sweep "
                    "--config.eval.sweep_samplers=euler,heun --config.eval.sweep_nfe=5,10,20")
  assert D.shrunk_args(sweep)[3:5] == ["--config.eval.sweep_samplers=euler,heun",
                                       "--config.eval.sweep_nfe=5"]
  stats = D.Command("p.md", 1, "python -m experiments.reference_stats --dataset=digits --out=s")
  assert D.shrunk_args(stats)[-1] == "--num_images=32"


# -- fast tier: every command ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  """A scratch working directory in which ``configs`` is the repository's (the docs name config
  files by their repository path); commands' workdirs and placeholders go here."""
  cwd = tmp_path_factory.mktemp("doc_commands")
  os.symlink(os.path.join(REPO, "configs"), cwd / "configs")
  return cwd


def place_inputs(config, cwd) -> None:
  """Empty placeholders for the INPUTS that ``config`` names (paths relative to ``cwd``)."""
  for key, kind in INPUTS.items():
    section, field = key.split(".")
    value = config[section][field]
    if not value:
      continue
    path = os.path.join(str(cwd), value)
    if kind == "dir":
      os.makedirs(path, exist_ok=True)
    elif not os.path.exists(path):
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      open(path, "wb").close()


def parse_main(args: List[str]):
  """(config, workdir, mode) of ``python -m experiments.main ARGS`` parsed by the entry point's
  parser on fresh flags (experiments/cli.py); AssertionError with the program's error message
  otherwise."""
  from absl import app, flags
  from experiments import cli
  argv = [D.MAIN, *args]
  fv = flags.FlagValues()
  parsed = cli.define_flags(fv, sys_argv=argv)
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      rest = cli.parse_flags(argv, fv)
      cli.check_command(parsed, rest)
  except SystemExit as e:
    raise AssertionError(f"exit status {e.code}: {err.getvalue().strip()}") from None
  except app.UsageError as e:
    raise AssertionError(f"usage error: {e}") from None
  return parsed.config.value, parsed.workdir.value, parsed.mode.value


def validated(config, mode: str, workdir: str) -> None:
  """What a run of ``mode`` checks before any work (experiments/validate.py); AssertionError
  with its one-line error otherwise."""
  from diffusion.config_checks import ConfigError
  from experiments import validate
  try:
    validate.validate(config, mode, workdir)
  except ConfigError as e:
    raise AssertionError(f"error: {e}") from None


@pytest.mark.parametrize("cmd", MAIN_COMMANDS, ids=_ids(MAIN_COMMANDS))
def test_main_command_parses_and_validates(cmd, scratch, monkeypatch):
  reason = _mention_reason(cmd)
  if reason:
    pytest.skip(reason)
  config_file = D.flag_value(cmd.args, "config")
  if config_file and not os.path.exists(os.path.join(REPO, config_file)):
    writer = _writer(cmd, config_file)
    assert writer is not None, f"{cmd.id}: --config={config_file} does not exist"
    pytest.skip(f"its config is written by {writer.id} ({writer.target}); the slow tier runs both")
  monkeypatch.chdir(scratch)
  try:
    config, workdir, mode = parse_main(cmd.args)
    folder = config.latent.dataset
    if folder and not os.path.exists(os.path.join(str(scratch), folder)):
      writer = _writer(cmd, folder)
      assert writer is not None, f"latent.dataset={folder} is written by no command before it"
      pytest.skip(f"its latents are written by {writer.id} ({writer.target}); the slow tier "
                  f"runs both")
    place_inputs(config, scratch)
    validated(config, mode, workdir)
  except AssertionError as e:
    raise AssertionError(f"{cmd.id}: {cmd.text}\n{e}") from None


@pytest.mark.parametrize("cmd", PROGRAM_COMMANDS, ids=_ids(PROGRAM_COMMANDS))
def test_program_exists_and_defines_the_options_passed(cmd):
  path = D.module_path(cmd.target) if cmd.kind == "module" else os.path.join(REPO, cmd.target)
  assert path and os.path.isfile(path), f"{cmd.id}: {cmd.target} is not in the repository"
  assert D.runs_as_program(path), f"{cmd.id}: {cmd.target} has no __main__ block: it runs nothing"
  missing = D.undefined_options(cmd.args, D.defined_options(path))
  assert not missing, f"{cmd.id}: {cmd.target} defines no option {missing}"


MAKE_COMMANDS = [c for c in COMMANDS if c.kind == "make"]


@pytest.mark.parametrize("cmd", MAKE_COMMANDS, ids=_ids(MAKE_COMMANDS))
def test_make_target_exists(cmd):
  if not cmd.target:
    pytest.skip("names the program in the prose, no target")
  with open(os.path.join(REPO, "Makefile")) as f:
    targets = D.makefile_targets(f.read())
  missing = [t for t in cmd.target.split() if t not in targets]
  assert not missing, f"{cmd.id}: the Makefile has no target {missing}"
  r = subprocess.run(["make", "-n", "-C", REPO, *cmd.target.split()], capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 0, f"{cmd.id}: make {cmd.target}: {r.stderr.strip()}"


PYTEST_COMMANDS = [c for c in COMMANDS if c.kind == "pytest"]


@pytest.mark.parametrize("cmd", PYTEST_COMMANDS, ids=_ids(PYTEST_COMMANDS))
def test_pytest_command_names_existing_tests(cmd):
  files = [a.split("::")[0] for a in cmd.args if a.startswith("tests/")]
  missing = [f for f in files if not os.path.isfile(os.path.join(REPO, f))]
  assert not missing, f"{cmd.id}: no such test file {missing}"


CODE_COMMANDS = [c for c in COMMANDS if c.kind == "code"]


@pytest.mark.parametrize("cmd", CODE_COMMANDS, ids=_ids(CODE_COMMANDS))
def test_python_c_code_compiles(cmd):
  compile(cmd.target, cmd.id, "exec")


OTHER_COMMANDS = [c for c in COMMANDS if c.kind == "other"]


@pytest.mark.parametrize("cmd", OTHER_COMMANDS, ids=_ids(OTHER_COMMANDS))
def test_other_programs_are_known(cmd):
  assert cmd.target in OTHER_PROGRAMS, f"{cmd.id}: a command of an unknown program: {cmd.text}"
  pytest.skip(f"{cmd.target}: {OTHER_PROGRAMS[cmd.target]}")


@pytest.mark.parametrize("snippet", SNIPPETS, ids=_ids(SNIPPETS))
def test_snippet_compiles_and_its_imports_exist(snippet):
  compile(snippet.source, snippet.id, "exec")
  missing = []
  for module, name in D.imported_names(snippet.source):
    mod = importlib.import_module(module)
    if name is not None and not hasattr(mod, name):
      try:
        importlib.import_module(f"{module}.{name}")
      except ImportError:
        missing.append(f"{module}.{name}")
  assert not missing, f"{snippet.id}: imports that do not exist: {missing}"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=_ids(SNIPPETS))
def test_snippet_ends_by_printing(snippet):
  if D.is_template_snippet(snippet.source):
    pytest.skip("a template ('...' marks the reader's code): compiled, not run")
  assert D.ends_by_printing(snippet.source), \
      f"{snippet.id}: the last statement prints nothing; run as a script it shows nothing"


# -- slow tier: run each page ----------------------------------------------------------------------

SLOW_PAGE_SKIPS = {"docs/tutorial.md": "tests/test_tutorial.py runs it (default suite) and "
                                       "checks its printed numbers"}
RUN_PAGES = [p for p in D.PAGES if D.page_items(p)]


def _env() -> Dict[str, str]:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _data_name(args: List[str], cwd: str) -> Optional[str]:
  """The dataset a command reads: --dataset, or its config's data.name (with overrides)."""
  from experiments.config_files import load_config_file
  if D.flag_value(args, "dataset"):
    return D.flag_value(args, "dataset")
  config = D.flag_value(args, "config")
  if not config or not os.path.exists(os.path.join(cwd, config)):
    return None
  return D.config_overrides(args).get("data.name") or \
      load_config_file(os.path.join(cwd, config)).data.name


def _not_prepared(name: Optional[str]) -> Optional[str]:
  """Why dataset ``name`` cannot be read here (None if it can): a tfds dataset not prepared."""
  from diffusion.data import images, toy2d
  if name is None or name == "digits" or name in toy2d.available():
    return None
  try:
    images._open_source(name, "train", None)
  except Exception as e:  # noqa: BLE001 -- DatasetNotPreparedError, or tfds not installed
    return f"the tfds dataset {name!r} is not prepared on this machine ({type(e).__name__}: " \
           f"{str(e)[:80]})"
  return None


def _missing(patterns: List[str], bases: List[str]) -> List[str]:
  """The glob ``patterns`` that match nothing under any of ``bases``."""
  return [p for p in patterns if not any(glob.glob(os.path.join(b, p)) for b in bases)]


class PageRun:
  """Runs a page's commands and snippets in order in ``cwd``; records (id, seconds, status)."""

  def __init__(self, cwd: str, scripts: str):
    self.cwd, self.scripts, self.log = cwd, scripts, []

  def _run(self, argv: List[str], timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=self.cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)

  def _check(self, label: str, argv: List[str], expected: List[str], bases: List[str]) -> None:
    t0 = time.time()
    r = self._run(argv)
    secs = time.time() - t0
    missing = _missing(expected, bases) if r.returncode == 0 else []
    self.log.append((label, secs, "ok" if r.returncode == 0 and not missing else "FAILED"))
    assert r.returncode == 0, (f"{label}: exit status {r.returncode}\n$ {' '.join(argv)}\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    assert not missing, f"{label}: ran, but wrote none of {missing}\n$ {' '.join(argv)}"

  def skip(self, label: str, reason: str) -> None:
    self.log.append((label, 0.0, f"skipped: {reason}"))

  def command(self, cmd: D.Command) -> None:
    if cmd.kind == "other":
      return self.skip(cmd.id, f"{cmd.target}: {OTHER_PROGRAMS.get(cmd.target, 'not ours')}")
    if cmd.kind == "make":
      for target in cmd.target.split():
        if target in D.MAKE_SKIPS:
          self.skip(f"{cmd.id} make {target}", D.MAKE_SKIPS[target])
        else:
          self.make(cmd, target)
      return
    reason = D.template_reason(" ".join(D.rewrite(cmd.args)))
    if reason:
      return self.skip(cmd.id, reason)
    if cmd.kind == "script" and cmd.target.startswith("benchmarks/"):
      return self.skip(cmd.id, "a benchmark (minutes to hours); the fast tier checks its options")
    args = D.shrunk_args(cmd)
    if cmd.target == D.MAIN and D.mode_of(args) != "train":
      reason = self.train_first(cmd, args)
      if reason:
        return self.skip(cmd.id, f"its workdir is trained first, and {reason}")
    reads_data = cmd.target == "experiments.reference_stats" or (
        cmd.target == D.MAIN and D.mode_of(args) in ("train", "eval"))
    reason = _not_prepared(_data_name(args, self.cwd)) if reads_data else None
    if reason:
      return self.skip(cmd.id, reason)
    bases = [self.cwd] + ([os.path.join(self.cwd, D.flag_value(args, "workdir"))]
                          if D.flag_value(args, "workdir") else [])
    expected = D.expected_outputs(cmd, args) + D.comment_paths(cmd.comment)
    argv = [sys.executable] + (["-m", cmd.target] if cmd.kind == "module" else [cmd.target])
    self._check(cmd.id, argv + args, expected, bases)

  def train_first(self, cmd: D.Command, args: List[str]) -> Optional[str]:
    """A sample / eval / sweep command on a workdir no earlier command trained: train it first
    (its config and its experiment-defining overrides, shrunk). Returns why it cannot be trained
    here, or None."""
    workdir = D.flag_value(args, "workdir")
    if os.path.isdir(os.path.join(self.cwd, workdir, "checkpoints")):
      return None
    keep = ("--config.model.", "--config.sde.", "--config.data.", "--config.training.",
            "--config.optim.", "--config.distill.")
    train = [a for a in cmd.args if a.startswith(keep) or a.startswith(("--config=",
                                                                         "--workdir="))]
    pre = D.Command(cmd.page, cmd.line, " ".join(["python", "-m", D.MAIN, *train,
                                                  "--mode=train"]))
    reason = _not_prepared(_data_name(train, self.cwd))
    if reason:
      return reason
    args_pre = D.shrunk_args(pre)
    self._check(f"{cmd.id} (trains {workdir} first)", [sys.executable, "-m", D.MAIN, *args_pre],
                D.expected_outputs(pre, args_pre), [self.cwd])
    return None

  def make(self, cmd: D.Command, target: str) -> None:
    """make demo with the venv running the tests, a workdir here and the shrunk modes."""
    assert target == "demo", f"{cmd.id}: no way to run make {target} in the slow tier"
    flags = D.shrink_overrides("train") + D.shrink_overrides("eval")
    workdir = os.path.join(self.cwd, "demo")
    argv = ["make", "-C", REPO, "demo", f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed",
            f"WORKDIR={workdir}", f"JAX_CACHE={CACHE}", "DEMO_FLAGS=" + " ".join(flags)]
    expected = ["config.json", "metrics.jsonl", "tb", "plots", "eval/metrics.json",
                "eval/samples.png", "eval/density.png", "checkpoints/20"]
    self._check(f"{cmd.id} make demo", argv, expected, [workdir])

  def snippet(self, snip: D.Snippet) -> None:
    if D.is_template_snippet(snip.source):
      return self.skip(snip.id, "a template: compiled by the fast tier")
    path = os.path.join(self.scripts, f"{snip.page.replace('/', '_')}_{snip.line}.py")
    with open(path, "w") as f:
      f.write(snip.source)
    t0 = time.time()
    r = self._run([sys.executable, path])
    self.log.append((snip.id, time.time() - t0, "ok" if r.returncode == 0 and r.stdout.strip()
                     else "FAILED"))
    assert r.returncode == 0, f"{snip.id}: exit status {r.returncode}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{snip.id}: ran as a script, it printed nothing"
    print(f"--- {snip.id} printed:\n{r.stdout.strip()[-1000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_runs(page, tmp_path):
  if page in SLOW_PAGE_SKIPS:
    pytest.skip(SLOW_PAGE_SKIPS[page])
  cwd, scripts = tmp_path / "run", tmp_path / "scripts"
  cwd.mkdir()
  scripts.mkdir()
  os.symlink(os.path.join(REPO, "configs"), cwd / "configs")
  run = PageRun(str(cwd), str(scripts))
  t0 = time.time()
  try:
    for item in D.page_items(page):
      if isinstance(item, D.Snippet):
        run.snippet(item)
      else:
        run.command(item)
  finally:
    print(f"=== {page}: {time.time() - t0:.0f} s")
    for label, secs, status in run.log:
      print(f"  {label:60s} {secs:7.1f} s  {status}")
