"""Train state, optimizer, EMA, non-finite policies, gradient accumulation, multi-step calls."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import training
from diffusion.data import toy2d
from diffusion.models import get_model
from diffusion.parameterization import Parameterization
from diffusion.schedules import get_schedule

SCHED = get_schedule("vp")
PARAM = Parameterization("eps")
NET = get_model("mlp", width=32, num_blocks=1, embed_dim=16)
# A tiny DiT (Peebles & Xie 2023) on the 8x8x1 digits: every image network runs through the
# train-step tests parametrized by NETS.
DIT = get_model("dit", patch_size=2, hidden_size=16, depth=1, num_heads=2,
                embedding_scale=999.0)
NETS = {"mlp": NET, "dit": DIT}


def _state(optimizer, seed=0, net=NET):
  example = jnp.zeros((1, 2)) if net is NET else jnp.zeros((1, 8, 8, 1))
  return training.init_state(net, optimizer, jax.random.PRNGKey(seed), example)


def _batch(i, n=128, name="8gaussians", net=NET):
  if net is NET:
    return {"x": jnp.asarray(toy2d.batch(name, n, 0, i))}
  from diffusion.data.digits import load_digits
  images = load_digits("train")[0]
  idx = np.random.default_rng(i).choice(len(images), min(n, 32), replace=False)
  return {"x": jnp.asarray(images[idx] / 8.0 - 1.0, jnp.float32)}


def _det_loss(denoise, x0, key, schedule, **kw):
  """A noise-free loss: its value does not depend on the key (for exactness tests)."""
  del key, schedule, kw
  err = denoise(0.5 * x0, 0.5) - x0
  return jnp.mean(err**2), {}


# The DiT case (~18 s of compile) is slow; the mlp case runs by default.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "dit" else n
                                  for n in sorted(NETS)])
def test_train_step_decreases_loss(name):
  net = NETS[name]
  oc = training.OptimConfig(lr=3e-3, warmup_steps=10)
  opt = training.make_optimizer(oc)
  step = jax.jit(training.make_train_step(net, SCHED, PARAM, opt, training.StepConfig()))
  state = _state(opt, net=net)
  losses = []
  n = 200 if net is NET else 100
  for i in range(n):
    state, m = step(state, _batch(i, net=net))
    losses.append(m["loss"])
  losses = np.asarray(jax.device_get(losses))
  assert int(state.step) == n
  assert np.all(np.isfinite(losses))
  assert losses[-40:].mean() < 0.75 * losses[:20].mean(), (losses[:20].mean(), losses[-40:].mean())


def test_ema_math():
  ema = {"w": jnp.array([1.0, 2.0])}
  p = {"w": jnp.array([3.0, -2.0])}
  out = training.ema_update(ema, p, jnp.float32(0.9))
  np.testing.assert_allclose(out["w"], 0.9 * np.array([1.0, 2.0]) + 0.1 * np.array([3.0, -2.0]),
                             rtol=1e-6)
  assert float(training.ema_decay_at(0, 0.999, warmup=False)) == pytest.approx(0.999)
  assert float(training.ema_decay_at(0, 0.999, warmup=True)) == pytest.approx(0.1)
  assert float(training.ema_decay_at(90, 0.999, warmup=True)) == pytest.approx(0.91)
  assert float(training.ema_decay_at(10**7, 0.999, warmup=True)) == pytest.approx(0.999)


def _ema_of(trajectory, num_steps, decay, warmup, start):
  """The run's EMA (ema_decay_at and ema_update, float64) of theta_0 = trajectory(0) and
  theta_{k+1} = trajectory(k + 1) after updates start .. start + num_steps - 1."""
  ema = np.float64(trajectory(0))
  for i in range(num_steps):
    d = np.float64(training.ema_decay_at(start + i, decay, warmup))
    ema = training.ema_update(ema, np.float64(trajectory(i + 1)), d)
  return float(ema)


@pytest.mark.parametrize("num_steps,decay,warmup,start", [
    (2000, 0.999, False, 0), (300, 0.99, True, 0), (250, 0.995, True, 750), (40, 0.0, False, 0),
    (500, 0.9, True, 0)])
def test_ema_reach_is_the_weight_and_the_age_of_the_train_steps_ema(num_steps, decay, warmup,
                                                                     start):
  weight, age = training.ema_reach(num_steps, decay, warmup, start)
  # theta = 1 at the start, 0 after: the EMA is the initial weight; theta_k = k: it is n - age.
  assert weight == pytest.approx(_ema_of(lambda k: k == 0, num_steps, decay, warmup, start),
                                 rel=1e-4, abs=1e-12)
  assert age == pytest.approx(num_steps - _ema_of(float, num_steps, decay, warmup, start),
                              rel=1e-4, abs=1e-9)


def test_ema_fits_a_run_and_the_fitting_decay_is_the_largest_printed_one():
  assert not training.ema_fits(2000, 0.999, False)  # the run: lags 43% of it
  assert training.ema_fits(2000, 0.999, True)  # warm-up: a tenth of the run
  assert training.ema_fits(10_000, 0.999, False)
  for n in (1, 30, 800, 2000, 5000, 1_300_000):
    d = training.fitting_ema_decay(n)
    assert training.ema_fits(n, d, False) and training.ema_fits(n, d, True), (n, d)
    unit = 10.0 ** (math.floor(math.log10(1.0 - d)) - 1)  # its last printed digit
    assert not training.ema_fits(n, d + unit, False), (n, d)
    assert len(repr(d)) <= len(repr(1.0 - unit)) + 1, d  # prints as a short number
    # At the bound about e^-5 = 0.7% of the weight is on the initial parameters (docstring).
    assert n < 30 or training.ema_reach(n, d, False)[0] < 0.01, (n, d)
  assert training.fitting_ema_decay(2000) == 0.9975


def test_ema_follows_params_in_step():
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  cfg = training.StepConfig(ema_decay=0.75)
  step = jax.jit(training.make_train_step(NET, SCHED, PARAM, opt, cfg, loss_fn=_det_loss))
  s0 = _state(opt)
  s1, _ = step(s0, _batch(0))
  s2, _ = step(s1, _batch(1))
  expect = jax.tree_util.tree_map(lambda e0, p1, p2: 0.75 * (0.75 * e0 + 0.25 * p1) + 0.25 * p2,
                                  s0.ema_params, s1.params, s2.params)
  for a, b in zip(jax.tree_util.tree_leaves(expect), jax.tree_util.tree_leaves(s2.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_lr_schedules():
  warm = training.lr_schedule(training.OptimConfig(lr=1.0, warmup_steps=10))
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.5)
  assert float(warm(10)) == pytest.approx(1.0) and float(warm(1000)) == pytest.approx(1.0)
  cos = training.lr_schedule(training.OptimConfig(lr=1.0, warmup_steps=10, decay="cosine",
                                                  decay_steps=110))
  assert float(cos(10)) == pytest.approx(1.0)
  assert float(cos(60)) == pytest.approx(0.5, abs=1e-3)
  assert float(cos(110)) == pytest.approx(0.0, abs=1e-6)


def test_bad_hyperparameters_are_named():
  with pytest.raises(ValueError, match="'sgd'.*adam"):
    training.OptimConfig(name="sgd")
  with pytest.raises(ValueError, match="'ignore'.*stop"):
    training.StepConfig(nonfinite="ignore")
  with pytest.raises(ValueError, match="cosine"):
    training.OptimConfig(decay="cosine", decay_steps=0)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_policy(policy):
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  step = jax.jit(training.make_train_step(NET, SCHED, PARAM, opt,
                                          training.StepConfig(nonfinite=policy)))
  s, _ = step(_state(opt), _batch(0))
  nan = {"x": jnp.full((128, 2), jnp.nan)}
  s_bad, m = step(s, nan)
  assert float(m["finite"]) == 0.0
  for a, b in zip(jax.tree_util.tree_leaves((s.params, s.ema_params, s.opt_state)),
                  jax.tree_util.tree_leaves((s_bad.params, s_bad.ema_params, s_bad.opt_state))):
    np.testing.assert_array_equal(a, b)
  s_next, _ = step(s_bad, _batch(2))
  if policy == "skip":
    assert int(s_bad.step) == 2 and int(s_bad.num_skipped) == 1
    training.check_finite(s_next)  # no error
    assert int(s_next.step) == 3
  else:
    assert int(s_bad.bad_step) == 1 and int(s_bad.step) == 1
    assert int(s_next.step) == 1  # frozen
    with pytest.raises(training.NonFiniteError, match="step 1"):
      training.check_finite(s_next)


@pytest.mark.parametrize("name", ["mlp", pytest.param("dit", marks=pytest.mark.slow)])
def test_grad_accumulation_matches_full_batch(name):
  net = NETS[name]
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  mk = lambda k: jax.jit(training.make_train_step(
      net, SCHED, PARAM, opt, training.StepConfig(grad_accum_steps=k), loss_fn=_det_loss))
  s = _state(opt, net=net)
  a, ma = mk(1)(s, _batch(0, net=net))
  b, mb = mk(4)(s, _batch(0, net=net))
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
  np.testing.assert_allclose(ma["grad_norm"], mb["grad_norm"], rtol=1e-4)
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", pytest.param("dit", marks=pytest.mark.slow)])
def test_scan_of_steps_matches_single_steps(name):
  net = NETS[name]
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  one = training.make_train_step(net, SCHED, PARAM, opt, training.StepConfig())
  many = jax.jit(training.multi_step(one, 3))
  one = jax.jit(one)
  s = _state(opt, net=net)
  batches = [_batch(i, net=net) for i in range(3)]
  a = s
  for b in batches:
    a, _ = one(a, b)
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batches)
  c, m = many(s, stacked)
  assert m["loss"].shape == (3,) and int(c.step) == 3
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _operand_types(net, compute_dtype, x, op):
  """Element types of the operands of every ``op`` (dot_general / convolution) in the lowered
  train step (forward and backward pass); and the abstract state."""
  import re
  opt = training.make_optimizer(training.OptimConfig(lr=1e-3))
  step = jax.jit(training.make_train_step(net, SCHED, PARAM, opt,
                                          training.StepConfig(compute_dtype=compute_dtype)))
  state = jax.eval_shape(lambda k: training.init_state(net, opt, k, x[:1]),
                         jax.random.PRNGKey(0))
  text = step.lower(state, {"x": x}).as_text()
  ops = [l for l in text.splitlines() if re.search(rf"stablehlo\.{op}\b", l)]
  assert ops, f"no {op} found"
  types = set()
  for l in ops:
    if "lhs_precision_type = bf16, rhs_precision_type = bf16" in l:
      # An explicit bf16 x bf16 (-> f32) algorithm: bfloat16 compute whatever the operands'
      # storage type (dot_product_attention's backward pass gets float32 logit cotangents).
      types.add("bf16")
      continue
    operands = l.rsplit(":", 1)[1].split("->")[0]  # "(tensor<AxBxbf16>, tensor<...>)"
    types |= set(re.findall(r"x(bf16|f32|f16)>", operands))
  return types, state


# The MLP: every matmul. The U-Net: every convolution (its attention logits are float32 by
# design, diffusion.models.layers). DiT: every matmul (jax.nn.dot_product_attention multiplies
# bfloat16 operands with float32 accumulation and logits).
@pytest.mark.parametrize("name,x,op", [
    ("mlp", jnp.zeros((8, 2)), "dot_general"),
    ("ddpm_unet", jnp.zeros((2, 8, 8, 1)), "convolution"),
    ("dit", jnp.zeros((2, 8, 8, 1)), "dot_general"),
    ("edm2_unet", jnp.zeros((2, 8, 8, 1)), "convolution"),
])
def test_bfloat16_compute_runs_in_bfloat16(name, x, op):
  net = {**NETS,
         "ddpm_unet": get_model("ddpm_unet", ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                attn_resolutions=(), dropout=0.0),
         "edm2_unet": get_model("edm2_unet", model_channels=8, channel_mult=(1,), num_blocks=1,
                                attn_resolutions=(), channels_per_head=8)}[name]
  types, state = _operand_types(net, "bfloat16", x, op)
  assert types == {"bf16"}, types
  assert {p.dtype for p in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype(jnp.float32)}
  types32, _ = _operand_types(net, "float32", x, op)
  assert types32 == {"f32"}, types32  # the check tells the two apart


def test_bfloat16_step_is_finite_and_keeps_float32_master_params():
  opt = training.make_optimizer(training.OptimConfig(lr=1e-3))
  step = jax.jit(training.make_train_step(NET, SCHED, PARAM, opt,
                                          training.StepConfig(compute_dtype="bfloat16")))
  s, m = step(_state(opt), _batch(0))
  assert np.isfinite(float(m["loss"]))
  assert {p.dtype for p in jax.tree_util.tree_leaves(s.params)} == {jnp.dtype(jnp.float32)}


def test_skip_monitor_counts_runs_across_calls_and_stops_past_the_limit():
  mon = training.SkipMonitor(3, "training.max_consecutive_skips")
  mon.update(0, np.array([1, 0, 0, 1, 0], np.float32))  # runs of 2, then 1 (still open)
  assert (mon.skipped, mon.run) == (3, 1)
  mon.update(5, np.array([0, 0], np.float32))  # the open run reaches 3 = the limit: allowed
  assert (mon.skipped, mon.run, mon.run_start) == (5, 3, 4)
  with pytest.raises(training.NonFiniteError,
                     match=r"4 consecutive .*steps 4-7.*training.max_consecutive_skips=3"):
    mon.update(7, np.array([0, 1], np.float32))


def test_skip_monitor_without_limit():
  mon = training.SkipMonitor(0)
  mon.update(0, np.zeros(1000, np.float32))
  assert mon.skipped == 1000
  with pytest.raises(ValueError, match="max_consecutive_skips"):
    training.SkipMonitor(-1)
