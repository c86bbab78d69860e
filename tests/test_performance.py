"""Performance structure that can regress silently: the train step's compiled size grows linearly
in the number of parameter leaves (a quadratic pattern cost the DDPM U-Net 4 minutes of CPU
compile), and benchmarks/vs_pytorch.py's paired ratio and table."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from diffusion import training
from diffusion.models import get_model
from diffusion.parameterization import Parameterization
from diffusion.schedules import get_schedule

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import vs_pytorch  # noqa: E402


def _compiled_lines(num_blocks: int) -> tuple:
  net = get_model("mlp", width=8, num_blocks=num_blocks, embed_dim=8)
  opt = training.make_optimizer(training.OptimConfig(lr=1e-3, warmup_steps=2))
  step = training.make_train_step(net, get_schedule("vp"), Parameterization(kind="eps"), opt,
                                  training.StepConfig(ema_decay=0.99))
  x = jnp.zeros((4, 2), jnp.float32)
  state = training.init_state(net, opt, jax.random.PRNGKey(0), x[:1])
  text = jax.jit(step).lower(state, {"x": x}).compile().as_text()
  return len(jax.tree_util.tree_leaves(state.params)), text.count("\n")


@pytest.mark.slow  # 12 s cold
def test_train_step_compiled_size_is_linear_in_the_leaves():
  """Quadrupling the parameter leaves at most ~quadruples the optimized HLO. The old per-leaf
  all-finite AND chain, duplicated into every leaf's update by XLA, made it grow with the square
  (ratio ~9 here instead of ~4)."""
  (n1, l1), (n2, l2) = _compiled_lines(4), _compiled_lines(20)
  assert n2 / n1 > 3.5, (n1, n2)
  assert l2 / l1 < 1.5 * n2 / n1, (f"optimized HLO grew from {l1} to {l2} lines for {n1} -> {n2} "
                                  f"leaves: superlinear")


class _FakeWorker:
  def __init__(self, name, times, framework="x"):
    self.name, self.times = name, times
    self.info = {"framework": framework, "params": vs_pytorch.PARAMS, "threads": 2,
                 "compile_s": 1.0}


def test_paired_ratio_cancels_a_drifting_load():
  # The host slows down 3x in round 2; within each round the JAX worker is 2x slower than torch.
  torch = _FakeWorker("torch", [1.0, 1.0, 3.0, 3.0, 1.0, 1.0])
  jax_w = _FakeWorker("jax0", [2.0, 2.0, 6.0, 6.0, 2.0, 2.0])
  assert vs_pytorch.paired_ratio(jax_w, torch, steps=2) == pytest.approx(0.5)
  assert vs_pytorch.paired_ratio(torch, torch, steps=2) == pytest.approx(1.0)


def test_table_rows_name_flags_and_ratio_against_torch():
  torch = _FakeWorker("torch", [1.0, 1.0], "torch 2 + diffusers 0")
  a = _FakeWorker("jax0", [0.5, 0.5], "jax 0.10")
  a.info["xla_flags"] = "--xla_foo=1"
  md = vs_pytorch.table([a, torch], batch=8, rounds=1, steps=2, cmd="python x", load=(0.0, 0.0))
  row = [ln for ln in md.splitlines() if ln.startswith("| jax 0.10")][0]
  assert "`--xla_foo=1`" in row and row.endswith("| 2.00x |"), row
  assert "throughput vs torch" in md


def test_torch_interpreter_refuses_a_missing_path(tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    vs_pytorch.torch_interpreter(str(tmp_path / "nope" / "python"))


def test_step_profile_attributes_the_time_of_a_real_step():
  """benchmarks/step_profile.py on a tiny MLP step: the executed operations are found in the
  optimized HLO and land in the matmul and optimizer categories."""
  import step_profile
  from train_throughput import Case
  case = Case("tiny MLP", "mlp", dict(width=16, num_blocks=1, embed_dim=8), (2,), {})
  r = step_profile.profile(case, batch=8, steps=2)
  cats = r["per_cat"]
  assert r["wall"] > 0 and set(cats) <= set(step_profile.CATEGORIES)
  assert cats[step_profile.CATEGORIES[0]] > 0, cats  # the Dense layers' dots
  assert cats["optimizer, EMA, loss, other"] > 0, cats
  md = step_profile.to_markdown(case.label, 8, 2, r, "python x")
  rows = [ln for ln in md.splitlines() if ln.startswith("| convolutions / matmuls |")]
  assert len(rows) == 1, md
