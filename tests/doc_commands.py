"""The commands and Python snippets of README.md and docs/*.md, found automatically, and what
tests/test_doc_commands.py needs to check and run them.

Commands: every line of a shell block (```bash, ```sh, ```shell, ```console or an unlabelled
fence; backslash continuations joined, a trailing ``# ...`` kept as the command's comment), every
line of an indented code block (4 spaces) that starts with a program (``python``, ``make``,
``pytest``), and every inline code span of the prose that starts with one. Snippets: every ```python block, indented ones in list items included. A new
command or snippet in a page is covered without editing the tests.

Pure helpers (text in, values out); the checks that import or run things are in the test module.
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import glob
import os
import re
import shlex
import textwrap
from typing import Dict, List, Optional, Sequence, Set, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO)
                               for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"),
                                                  recursive=True))
PYTHONS = ("python", "python3", ".venv/bin/python")
PROGRAMS = PYTHONS + ("make", "pytest")
SHELL_LANGS = ("bash", "sh", "shell", "console", "")
MAIN = "experiments.main"

_FENCE = re.compile(r"^( *)```(\w*)[ \t]*\n(.*?)^ *```[ \t]*$", re.S | re.M)
_SPAN = re.compile(r"`([^`]+)`")


# -- finding them --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
  """A fenced block: its page, the line of its opening fence (1-based), language, source."""
  page: str
  line: int
  lang: str
  source: str


@dataclasses.dataclass(frozen=True)
class Command:
  """One shell command of a page: ``text`` (one line, continuations joined, no comment), its
  trailing ``comment``, the line it starts on, and whether it is in a code block (fenced or
  indented: a command to run) or a code span of the prose."""
  page: str
  line: int
  text: str
  comment: str = ""
  in_block: bool = True

  @property
  def id(self) -> str:
    return f"{self.page}:{self.line}"

  @property
  def argv(self) -> List[str]:
    return shlex.split(self.text)

  @property
  def kind(self) -> str:
    """'module' (python -m X), 'script' (python X.py), 'code' (python -c), 'make', 'pytest' or
    'other' (a program of another project: pip, tfds, hf, git, tensorboard)."""
    return program(self.argv)[0]

  @property
  def target(self) -> str:
    """The module, script, make target(s) or program the command runs."""
    return program(self.argv)[1]

  @property
  def args(self) -> List[str]:
    """The arguments after the module, script or program."""
    return program(self.argv)[2]


@dataclasses.dataclass(frozen=True)
class Snippet:
  """A ```python block of a page."""
  page: str
  line: int
  source: str

  @property
  def id(self) -> str:
    return f"{self.page}:{self.line}"


def fenced_blocks(text: str, page: str = "") -> List[Block]:
  """The fenced blocks of ``text`` in order, indented ones (list items) dedented."""
  out = []
  for m in _FENCE.finditer(text):
    line = text.count("\n", 0, m.start()) + 1
    out.append(Block(page, line, m.group(2), textwrap.dedent(m.group(3))))
  return out


def command_lines(source: str) -> List[Tuple[int, str, str]]:
  """(line offset, command, comment) of each command of a shell block: continuation lines
  joined, comment-only and empty lines dropped."""
  out, parts, start = [], [], 0
  for i, raw in enumerate(source.splitlines()):
    if not parts:
      start = i
    line = raw.rstrip()
    if line.endswith("\\"):
      parts.append(line[:-1].strip())
      continue
    parts.append(line.strip())
    joined = " ".join(p for p in parts if p)
    parts = []
    code, _, comment = _split_comment(joined)
    if code:
      out.append((start, code, comment))
  return out


def _split_comment(line: str) -> Tuple[str, str, str]:
  """(code, '#', comment) of a shell line; a '#' starts a comment at the start of the line or
  after whitespace."""
  m = re.search(r"(^|\s)#", line)
  if not m:
    return line.strip(), "", ""
  return line[:m.start()].strip(), "#", line[m.end():].strip()


def _blank_fences(text: str) -> str:
  """``text`` with its fenced blocks blanked (their newlines kept, so line numbers hold)."""
  return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _indented_command_lines(prose: str) -> List[Tuple[int, int]]:
  """(first, last) line index of each command of the indented code blocks of ``prose``: a line
  indented by 4+ spaces whose first word is a program, and its backslash continuations."""
  lines, out, i = prose.splitlines(), [], 0
  while i < len(lines):
    words = lines[i].split()
    if re.match(r"^ {4,}\S", lines[i]) and words[0] in PROGRAMS:
      first = i
      while lines[i].rstrip().endswith("\\") and i + 1 < len(lines):
        i += 1
      out.append((first, i))
    i += 1
  return out


def indented_commands(text: str) -> List[Tuple[int, str, str]]:
  """(line, command, comment) of the commands of the indented code blocks of ``text``."""
  lines = _blank_fences(text).splitlines()
  out = []
  for first, last in _indented_command_lines(_blank_fences(text)):
    for offset, code, comment in command_lines("\n".join(lines[first:last + 1])):
      out.append((first + 1 + offset, code, comment))
  return out


def inline_commands(text: str) -> List[Tuple[int, str]]:
  """(line, command) of each code span of the prose (code blocks left out) whose first word is
  a program of PROGRAMS; a span broken over lines is joined."""
  prose = _blank_fences(text)
  lines = prose.splitlines(keepends=True)
  for first, last in _indented_command_lines(prose):
    for i in range(first, last + 1):
      lines[i] = "\n"
  prose = "".join(lines)
  out = []
  for m in _SPAN.finditer(prose):
    words = m.group(1).split()
    if words and words[0] in PROGRAMS:
      out.append((prose.count("\n", 0, m.start()) + 1, " ".join(words)))
  return out


def page_commands(page: str, text: Optional[str] = None) -> List[Command]:
  """Every command of ``page`` (relative to the repository): fenced, indented, inline ones."""
  text = _read(page) if text is None else text
  out = []
  for b in fenced_blocks(text, page):
    if b.lang in SHELL_LANGS:
      for offset, code, comment in command_lines(b.source):
        out.append(Command(page, b.line + 1 + offset, code, comment, True))
  out += [Command(page, line, code, comment, True)
          for line, code, comment in indented_commands(text)]
  out += [Command(page, line, code, "", False) for line, code in inline_commands(text)]
  return out


def page_snippets(page: str, text: Optional[str] = None) -> List[Snippet]:
  """The ```python blocks of ``page``."""
  text = _read(page) if text is None else text
  return [Snippet(page, b.line, b.source) for b in fenced_blocks(text, page)
          if b.lang == "python"]


def page_items(page: str) -> List[object]:
  """The code-block commands and the snippets of ``page`` in document order (what a reader
  runs)."""
  items = [c for c in page_commands(page) if c.in_block] + page_snippets(page)
  return sorted(items, key=lambda it: it.line)


def _read(page: str) -> str:
  with open(os.path.join(REPO, page)) as f:
    return f.read()


def program(argv: Sequence[str]) -> Tuple[str, str, List[str]]:
  """(kind, target, args) of a command line (``Command.kind``)."""
  argv = list(argv)
  if not argv:
    return "other", "", []
  head = argv[0]
  if head in PYTHONS and len(argv) > 2 and argv[1] == "-m":
    if argv[2] == "pytest":
      return "pytest", "pytest", argv[3:]
    return "module", argv[2], argv[3:]
  if head in PYTHONS and len(argv) > 2 and argv[1] == "-c":
    return "code", argv[2], argv[3:]
  if head in PYTHONS and len(argv) > 1:
    return "script", argv[1], argv[2:]
  if head == "make":
    return "make", " ".join(a for a in argv[1:] if not a.startswith("-") and "=" not in a), \
        argv[1:]
  if head == "pytest":
    return "pytest", "pytest", argv[1:]
  return "other", head, argv[1:]


def inventory() -> Dict[str, Tuple[List[Command], List[Snippet]]]:
  """{page: (commands, snippets)} of every page."""
  return {p: (page_commands(p), page_snippets(p)) for p in PAGES}


# -- templates and placeholders ------------------------------------------------------------------


def template_reason(text: str) -> Optional[str]:
  """Why a command is a template rather than a command to run (None if it is one): elided
  arguments ``...``, a placeholder ``<name>`` or alternatives ``a|b``."""
  if "..." in text:
    return "a template: elided arguments '...'"
  m = re.search(r"<[^<>]*>", text)
  if m:
    return f"a template: placeholder {m.group(0)}"
  m = re.search(r"\S*\|\S*", text)
  if m:
    return f"a template: alternatives {m.group(0)}"
  m = re.search(r"\[-[^\]]*\]", text)
  if m:
    return f"a template: optional arguments {m.group(0)}"
  return None


def flag_value(args: Sequence[str], name: str) -> Optional[str]:
  """The value of ``--name=value`` (or ``--name value``) in ``args``, the last one given, or
  None."""
  value = None
  for i, a in enumerate(args):
    if a.startswith(f"--{name}="):
      value = a.split("=", 1)[1]
    elif a == f"--{name}" and i + 1 < len(args) and not args[i + 1].startswith("-"):
      value = args[i + 1]
  return value


def config_overrides(args: Sequence[str]) -> Dict[str, str]:
  """{key: value} of the ``--config.<key>=<value>`` arguments (the last of each key wins)."""
  out = {}
  for a in args:
    if a.startswith("--config.") and "=" in a:
      key, value = a[len("--config."):].split("=", 1)
      out[key] = value
  return out


def option_names(args: Sequence[str]) -> List[str]:
  """The option names (``--name``, ``-x``) of ``args``, values and positionals left out."""
  return [a.split("=", 1)[0] for a in args if a.startswith("-") and not _is_number(a)]


def _is_number(s: str) -> bool:
  try:
    float(s)
    return True
  except ValueError:
    return False


# -- what a program accepts (read from its source, nothing imported) ------------------------------

ABSL_BUILTIN = {"--help", "--helpshort", "--helpfull", "--helpxml", "--flagfile", "--undefok",
                "--verbosity", "-v", "--logtostderr", "--alsologtostderr", "--log_dir"}
ARGPARSE_BUILTIN = {"--help", "-h"}


def module_path(module: str) -> Optional[str]:
  """The repository file of ``module`` (a .py file or a package's __main__.py), or None."""
  base = os.path.join(REPO, *module.split("."))
  for p in (base + ".py", os.path.join(base, "__main__.py")):
    if os.path.isfile(p):
      return p
  return None


def defined_options(path: str) -> Set[str]:
  """The options a program's source defines: absl ``flags.DEFINE_*("name", ...)`` (``--name``;
  ``--noname`` for booleans; ``--name.<key>`` overrides for a config file flag), argparse
  ``add_argument("--name", ...)``, and experiments/cli.py's flags where it calls
  ``cli.define_flags()``; plus the built-in help and logging options of absl / argparse."""
  with open(path) as f:
    tree = ast.parse(f.read())
  out: Set[str] = set()
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
    strings = [a.value for a in node.args if isinstance(a, ast.Constant)
               and isinstance(a.value, str)]
    if name.startswith("DEFINE") and strings:
      out.add(f"--{strings[0]}")
      if name in ("DEFINE_bool", "DEFINE_boolean"):
        out.add(f"--no{strings[0]}")
      if name == "DEFINE_config_file":
        out.add(f"--{strings[0]}.*")
      out |= ABSL_BUILTIN
    elif name == "add_argument":
      out |= {s for s in strings if s.startswith("-")} | ARGPARSE_BUILTIN
    elif name == "define_flags" and isinstance(fn, ast.Attribute) and \
        getattr(fn.value, "id", "") == "cli":
      out |= defined_options(os.path.join(REPO, "experiments", "cli.py"))
  return out


def runs_as_program(path: str) -> bool:
  """``path`` does something when run: a package's __main__.py, or a module with an
  ``if __name__ == "__main__":`` block."""
  if os.path.basename(path) == "__main__.py":
    return True
  with open(path) as f:
    tree = ast.parse(f.read())
  return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def undefined_options(args: Sequence[str], defined: Set[str]) -> List[str]:
  """The options of ``args`` that ``defined`` (defined_options) does not accept."""
  return [o for o in option_names(args)
          if o not in defined and not any(fnmatch.fnmatchcase(o, d) for d in defined
                                          if d.endswith("*"))]


# -- snippets ------------------------------------------------------------------------------------


def imported_names(source: str) -> List[Tuple[str, Optional[str]]]:
  """(module, name) of each import of ``source``: ('jax.numpy', None) for ``import
  jax.numpy``, ('diffusion', 'guidance') for ``from diffusion import guidance``."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out += [(node.module, a.name) for a in node.names]
  return out


def is_template_snippet(source: str) -> bool:
  """A snippet is a template (compiled and its imports checked, not run) when a statement of it
  is a bare ``...``: the place the reader's code goes."""
  return any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
             and n.value.value is Ellipsis for n in ast.walk(ast.parse(source)))


def ends_by_printing(source: str) -> bool:
  """The last statement of ``source`` calls print (anywhere inside it)."""
  body = ast.parse(source).body
  return bool(body) and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"
                            for n in ast.walk(body[-1]))


# -- the slow tier: the smallest runs ------------------------------------------------------------

# Overrides appended (last, so they win) to each ``python -m experiments.main`` command of the
# slow tier, by --mode. They shrink what a command computes (steps, samples, ODE points), never
# what it is (config, network, sampler, guidance, inverse problem): a doc command runs in
# seconds to a minute of compilation and checks its plumbing, not its numbers.
SHRINK: Dict[str, Dict[str, object]] = {
    "train": {"training.num_steps": 20, "training.log_every": 10, "training.ckpt_every": 10,
              "training.sample_every": 0, "training.async_checkpoints": False,
              "optim.warmup_steps": 2, "data.batch_size": 32, "eval.plot_samples": 16},
    "sample": {"sampling.num_samples": 16, "sampling.batch_size": 16,
               "inverse.samples_per_observation": 2},
    "eval": {"eval.num_samples": 32, "eval.fid_num_samples": 32, "eval.shard_size": 32,
             "eval.nll_points": 4, "eval.nll_batch_size": 4, "eval.mmd_points": 32,
             "eval.plot_samples": 32, "eval.density_grid": 6, "eval.sw_projections": 32,
             "eval.rtol": 1e-2, "eval.atol": 1e-2, "eval.density_rtol": 1e-2,
             "eval.density_atol": 1e-2, "eval.kid_subsets": 2, "eval.kid_subset_size": 16,
             "data.num_heldout": 64},
    "sweep": {"eval.sweep_num_samples": 16, "eval.kid_subsets": 2, "eval.kid_subset_size": 8},
    "pairs": {"distill.num_pairs": 64, "distill.pairs_shard_size": 32},
}
# Arguments appended to the other programs of the slow tier.
MODULE_SHRINK: Dict[str, List[str]] = {
    "experiments.reference_stats": ["--num_images=32"],
    "experiments.observations": ["--num=2"],
}
# Doc values that name what the shrunk runs made under another name: a checkpoint step of the
# full run (the shrunk one stops at SHRINK['train']['training.num_steps']), a statistics file
# named by its image count (reference_stats --num_images). And a sweep keeps every sampler of
# its list at the first NFE budget only (each cell compiles a sampler of the network).
REWRITES: List[Tuple[str, str]] = [
    (r"^(--config\.eval\.step=)\d+$", rf"\g<1>{SHRINK['train']['training.num_steps']}"),
    (r"(\w+_\w+_\d+px_)\d+(\.npz)", r"\g<1>32\2"),
    (r"^(--config\.eval\.sweep_nfe=)([^,]+),.*$", r"\g<1>\2"),
]
# Released checkpoints are not on this machine: the slow tier converts the small fixtures of
# tests/data/convert in their place (the same formats and layouts, random weights; 8x8 and
# 16x16 images fit no dataset by shape, hence --dataset).
_FIX = os.path.join(REPO, "tests", "data", "convert")
FIXTURES: Dict[str, List[str]] = {
    "--source=ddpm-cifar10-32": [f"--source={_FIX}/diffusers/ddpm_cifar_layout",
                                 "--dataset=cifar10"],
    "--source=ddpm-model-64/unet": [f"--source={_FIX}/diffusers/unet2d_train_example/unet",
                                    "--dataset=cifar10"],
    "--source=path/to/checkpoint_<n>": [f"--source={_FIX}/score_sde/ncsnpp_ve/checkpoint_1",
                                        "--dataset=cifar10"],
    "--score_sde_config=ve/cifar10_ncsnpp_deep_continuous": [
        f"--score_sde_config={_FIX}/score_sde/ncsnpp_ve/config.json"],
}
# make targets the slow tier does not run, and why.
MAKE_SKIPS: Dict[str, str] = {
    "test": "the default test suite itself", "test-slow": "the slow test suite itself",
    "test-all": "the whole test suite itself", "venv": "builds .venv (pip, network)",
    "clean": "deletes .venv and the compilation cache",
    "bench": "the CPU benchmarks (about 20 minutes)",
    "bench-accel": "needs a GPU or TPU (refuses on a CPU)",
    "doctor": "builds .venv first where it is missing (tests/test_install.py runs the doctor)",
}


def makefile_targets(text: str) -> Set[str]:
  """The explicit targets of a Makefile's rules (``name: ...``; not variables ``X := ...``)."""
  return {t for m in re.finditer(r"^([\w.$()/-]+(?:[ \t]+[\w.$()/-]+)*)[ \t]*:(?![=:])", text,
                                 re.M) for t in m.group(1).split()}


def mode_of(args: Sequence[str]) -> str:
  """The --mode of an experiments.main command (its default: train)."""
  return flag_value(args, "mode") or "train"


def shrink_overrides(mode: str) -> List[str]:
  """SHRINK[mode] as ``--config.<key>=<value>`` arguments."""
  return [f"--config.{k}={v}" for k, v in SHRINK[mode].items()]


def rewrite(args: Sequence[str]) -> List[str]:
  """``args`` with FIXTURES substituted and REWRITES applied."""
  out = []
  for a in args:
    if a in FIXTURES:
      out += FIXTURES[a]
      continue
    for pattern, repl in REWRITES:
      a = re.sub(pattern, repl, a)
    out.append(a)
  return out


def shrunk_args(cmd: Command) -> List[str]:
  """The arguments the slow tier runs ``cmd`` with: rewritten, then its shrink appended."""
  args = rewrite(cmd.args)
  if cmd.kind == "module" and cmd.target == MAIN:
    return args + shrink_overrides(mode_of(args))
  return args + MODULE_SHRINK.get(cmd.target, [])


def comment_paths(comment: str) -> List[str]:
  """Glob patterns of the output files a command's comment names (``# eval/metrics.json``,
  ``samples/<name>/samples.npz``): each <placeholder> becomes '*', REWRITES applied."""
  out = []
  for token in re.findall(r"[\w<>.\-]+(?:/[\w<>.\-]+)+\.\w+", comment):
    for pattern, repl in REWRITES:
      token = re.sub(pattern, repl, token)
    out.append(re.sub(r"<[^<>]*>", "*", token))
  return out


def expected_outputs(cmd: Command, args: Sequence[str]) -> List[str]:
  """Glob patterns (relative to the run's directory) of what the docs say ``cmd`` writes, for
  the shrunk ``args``: README / architecture.md for the modes of experiments.main, the module
  docstrings for the other programs."""
  if cmd.kind == "module" and cmd.target == MAIN:
    w, mode = flag_value(args, "workdir"), mode_of(args)
    if mode == "train":
      steps = config_overrides(args).get("training.num_steps")
      return [f"{w}/config.json", f"{w}/metrics.jsonl", f"{w}/checkpoints/{steps}"]
    if mode == "sample":
      return [f"{w}/samples/*/{f}" for f in ("samples.npz", "samples.png", "settings.json")]
    if mode == "eval":
      return [f"{w}/eval/metrics.json", f"{w}/eval/step_*/*/metrics.json"]
    if mode == "sweep":
      return [f"{w}/eval/sweep_step_*.json", f"{w}/eval/sweep_step_*.md"]
    return [f"{w}/pairs"]
  if cmd.target in ("experiments.observations", "experiments.encode"):
    return [flag_value(args, "out")]
  if cmd.target == "experiments.reference_stats":
    return [f"{flag_value(args, 'out')}/*.npz"]
  if cmd.target == "experiments.convert":
    w = flag_value(args, "workdir")
    return [f"{w}/config.py", f"{w}/conversion.json", f"{w}/checkpoints/0"]
  return []
