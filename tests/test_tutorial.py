"""docs/tutorial.md runs: its ```python blocks, executed in order in one namespace from a scratch
working directory, print the output the page shows after each of them (the same lines, numbers
within 0.02 + 20%), and what that output shows holds: the exact denoiser beats a naive guess,
training lowers the loss towards the exact denoiser's, the samples are close to the mixture and
far closer than an untrained network's, the PF-ODE likelihood is close to the exact density,
guidance moves the samples into the target class, and a trained workdir restores from Python."""
import contextlib
import io
import os
import re
import time

import numpy as np
import pytest

from tests.conftest import REPO

TUTORIAL = os.path.join(REPO, "docs", "tutorial.md")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?")


def fenced_blocks(text: str):
  """[(language, source)] of the fenced blocks of ``text``, in order."""
  return _FENCE.findall(text)


def python_blocks(text: str):
  """The source of each ```python block of ``text``, in order."""
  return [src for lang, src in fenced_blocks(text) if lang == "python"]


def documented_outputs(text: str):
  """For each ```python block, the ```text block right after it (its documented output), or
  None when the next block is another python block or there is none."""
  out, blocks = [], fenced_blocks(text)
  for i, (lang, _) in enumerate(blocks):
    if lang == "python":
      nxt = blocks[i + 1] if i + 1 < len(blocks) else None
      out.append(nxt[1] if nxt is not None and nxt[0] == "text" else None)
  return out


def skeleton(line: str) -> str:
  """The line with every number replaced by '#'."""
  return _NUMBER.sub("#", line.strip())


def numbers(line: str):
  return [float(x.replace(",", "")) for x in _NUMBER.findall(line)]


def output_mismatches(documented: str, printed: str, rtol: float = 0.2, atol: float = 0.02):
  """Documented lines (a line '...' stands for any lines) not found, in order, among the printed
  lines with the same text and numbers within atol + rtol |documented|."""
  lines = [l for l in printed.splitlines() if l.strip()]
  pos, bad = 0, []
  for want in documented.splitlines():
    if not want.strip() or want.strip() == "...":
      continue
    for j in range(pos, len(lines)):
      if skeleton(lines[j]) == skeleton(want) and all(
          abs(a - b) <= atol + rtol * abs(b) for a, b in zip(numbers(lines[j]), numbers(want))):
        pos = j + 1
        break
    else:
      bad.append(want)
  return bad


def test_blocks_and_their_documented_outputs_are_found_in_order():
  text = ("a\n```python\nx = 1\n```\n```text\nx 1\n```\n```bash\nls\n```\n"
          "```python\ny = x\n```\n```python\nz = y\n```\n")
  assert python_blocks(text) == ["x = 1\n", "y = x\n", "z = y\n"]
  assert documented_outputs(text) == ["x 1\n", None, None]


def test_output_comparison_tolerates_small_differences_only():
  doc = "loss 2.4995\n...\nSW 0.110, NFE 20\n"
  assert output_mismatches(doc, "loss 2.51\nstep 3/4 12.0 steps/s\nSW 0.118, NFE 20\n") == []
  assert output_mismatches(doc, "loss 2.51\nSW 0.160, NFE 20\n") == ["SW 0.110, NFE 20"]
  assert output_mismatches(doc, "SW 0.110, NFE 20\nloss 2.4995\n") == ["SW 0.110, NFE 20"]
  assert output_mismatches("a 1,938 b\n", "a 1,938 b\n") == []


def run_tutorial(path: str = TUTORIAL):
  """(namespace, [(stdout, seconds) per block]) of the page's python blocks run in order."""
  with open(path) as f:
    blocks = python_blocks(f.read())
  ns = {"__name__": "__tutorial__"}
  out = []
  for i, src in enumerate(blocks):
    buf, t0 = io.StringIO(), time.time()
    with contextlib.redirect_stdout(buf):
      exec(compile(src, f"{os.path.basename(path)}:block{i + 1}", "exec"), ns)
    out.append((buf.getvalue(), time.time() - t0))
  return ns, out


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
  """The tutorial run once from a scratch working directory in which only ``configs`` (the
  config file the page loads by its repository path) is visible."""
  cwd = tmp_path_factory.mktemp("tutorial_cwd")
  os.symlink(os.path.join(REPO, "configs"), cwd / "configs")
  old = os.getcwd()
  os.chdir(cwd)
  try:
    ns, out = run_tutorial()
  finally:
    os.chdir(old)
  for i, (text, secs) in enumerate(out):
    print(f"--- block {i + 1} ({secs:.1f} s)\n{text}")
  return ns, out, sorted(os.listdir(cwd))


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_each_block_prints_its_documented_output(tutorial):
  _, out, _ = tutorial
  with open(TUTORIAL) as f:
    documented = documented_outputs(f.read())
  assert len(out) == len(documented) == 6
  for i, ((printed, _), want) in enumerate(zip(out, documented)):
    assert want is not None, f"block {i + 1} has no documented output (a ```text block after it)"
    assert re.search(r"\d\.\d{3}", printed), f"block {i + 1} prints no number: {printed!r}"
    missing = output_mismatches(want, printed)
    assert not missing, f"block {i + 1}: documented lines not printed:\n{missing}\n" \
                        f"printed:\n{printed}"


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_it_writes_nothing_into_the_working_directory(tutorial):
  ns, _, cwd_files = tutorial
  assert cwd_files == ["configs"]
  assert not os.path.exists(ns["workdir"])  # the temporary workdir is cleaned up


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_the_exact_denoiser_beats_the_naive_guess(tutorial):
  ns = tutorial[0]
  assert ns["err_exact"] < 0.7 * ns["err_naive"]


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_training_lowers_the_loss(tutorial):
  losses = tutorial[0]["losses"]
  loss_min = tutorial[0]["loss_min"]
  assert losses.shape == (1000,) and np.all(np.isfinite(losses))
  first, last = losses[:200].mean(), losses[-200:].mean()
  assert last < first and last - loss_min < 0.35 * (first - loss_min), (first, last, loss_min)


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_the_trained_network_samples_the_mixture(tutorial):
  ns = tutorial[0]
  sw, floor = ns["sw"], ns["sw_floor"]
  assert ns["nfe"] == {"euler": 20, "dpmpp_2m": 20}
  assert sw["dpmpp_2m/exact"] < 1.3 * floor, sw  # a 2nd-order sampler: at the floor in 20 NFE
  assert sw["dpmpp_2m/exact"] < sw["euler/exact"], sw  # Euler is not yet, at the same NFE
  for name in ("euler", "dpmpp_2m"):
    assert sw[name] < sw[name + "/exact"] + 0.5 * floor, (name, sw, floor)
    assert ns["gap"][name] < 0.25, ns["gap"]  # the network's share, from the same x_T
    assert sw[name] < 0.25 * sw["untrained"], (name, sw)


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_the_pf_ode_likelihood_is_close_to_the_exact_density(tutorial):
  ns = tutorial[0]
  assert abs(ns["logp_ode"] - ns["logp_true"]) < 0.02  # the ODE solver with the exact denoiser
  assert abs(ns["logp_net"] - ns["logp_true"]) < 0.15  # the trained network


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_guidance_moves_the_samples_into_the_target_class(tutorial):
  ns = tutorial[0]
  p_target = ns["mixture"].class_weights()[ns["target"]]
  assert abs(ns["frac_before"] - p_target) < 0.05  # unguided: the class's share of the mass
  assert ns["frac_after"] > 0.97 and ns["frac_after"] > ns["frac_before"] + 0.5
  assert ns["sw_class"] < 2.0 * ns["sw_floor"]


@pytest.mark.slow  # the tutorial runs once per module: ~100 s cold on 2 cores
def test_a_trained_workdir_restores_from_python(tutorial):
  ns = tutorial[0]
  config = ns["run_config"]
  assert ns["summary"]["status"] == "done" and ns["summary"]["step"] == 1000
  assert ns["step"] == 1000 and config.training.num_steps == 1000 and config.model.net.width == 64
  assert config.model.parameterization == "v" and ns["s"].param.kind == "v"
  assert ns["info"]["nfe"] == 20 and np.all(np.isfinite(np.asarray(ns["x_restored"])))
  assert ns["sw_restored"] < 0.4 * ns["sw_initial"], (ns["sw_restored"], ns["sw_initial"])
