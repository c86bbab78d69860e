"""EDM2's magnitude-preserving U-Net (diffusion.models.edm2) and its uncertainty-weighted loss.

Ground truths: every MP layer keeps unit expected magnitude (RMS over elements) of unit-variance
random inputs (Karras et al. 2024, App. B); forced weight normalisation keeps the stored weights
at unit-variance output channels after every update; the minimiser of L / e^u + u is u = log L,
checked with the exact denoiser of an analytic Gaussian and by training u alone; the parameter
counts equal the released models' (counted independently here from their module list) and round
to the paper's Table 2 / 3.
"""
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion import analytic, losses, training
from diffusion.models import edm2, get_model
from diffusion.parameterization import Parameterization
from diffusion.schedules import get_schedule

TINY = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
            channels_per_head=16)
# One level (8x8), one block, the bottleneck's attention: the train-step tests (compile time).
MICRO = dict(model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
             channels_per_head=8)


def _rms(a) -> float:
  return float(jnp.sqrt(jnp.mean(jnp.square(jnp.asarray(a, jnp.float32)))))


def _keys(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# ----------------------------------------------------------------------------- MP primitives


def test_mp_conv_and_linear_preserve_magnitude():
  """Unit-norm rows on i.i.d. unit-variance inputs: E[y^2] = ||w_i||^2 = 1 per output channel
  (interior pixels: zero padding removes taps at the border). 0.5M / 0.26M elements: Monte Carlo
  error < 0.5%."""
  k = _keys(4)
  x = jax.random.normal(k[0], (8, 18, 18, 64))
  conv = edm2.MPConv(96, 3)
  y = conv.apply(conv.init(k[1], x), x)[:, 1:-1, 1:-1]
  assert abs(_rms(y) - 1) < 0.01, _rms(y)
  lin = edm2.MPConv(256, 0)
  z = jax.random.normal(k[2], (1024, 512))
  assert abs(_rms(lin.apply(lin.init(k[3], z), z)) - 1) < 0.01
  # The gain scales the output magnitude linearly.
  v = lin.init(k[3], z)
  assert abs(_rms(lin.apply(v, z, gain=0.25)) - 0.25) < 0.0025


def test_mp_silu_sum_cat_pixel_norm_preserve_magnitude():
  k = _keys(3)
  a = jax.random.normal(k[0], (1 << 20,))
  assert abs(_rms(edm2.mp_silu(a)) - 1) < 0.005  # E[silu(z)^2] = 0.596^2 (eq. 81)
  assert abs(_rms(jax.nn.silu(a)) - 1) > 0.3  # the plain SiLU does not
  b = jax.random.normal(k[1], (1 << 20,))
  for t in (0.0, 0.3, 0.5, 0.8):
    assert abs(_rms(edm2.mp_sum(a, b, t)) - 1) < 0.005, t
  xa = jax.random.normal(k[0], (4096, 32))
  xb = jax.random.normal(k[1], (4096, 96))
  for t in (0.3, 0.5, 0.7):
    out = edm2.mp_cat(xa, xb, t)
    assert out.shape == (4096, 128)
    assert abs(_rms(out) - 1) < 0.01, t
    # Each part carries (1 - t)^2 : t^2 of the energy (eq. 103).
    ea, eb = float(jnp.sum(out[:, :32]**2)), float(jnp.sum(out[:, 32:]**2))
    assert abs(ea / (ea + eb) - (1 - t)**2 / ((1 - t)**2 + t**2)) < 0.01
  p = edm2.pixel_norm(3.0 * jax.random.normal(k[2], (4, 8, 8, 64)))
  rms_px = jnp.sqrt(jnp.mean(p**2, axis=-1))
  np.testing.assert_allclose(np.asarray(rms_px), 1.0, atol=1e-3)


def test_mp_fourier_features_have_unit_magnitude_for_every_c():
  """sqrt 2 cos(f c + phi), phi ~ U[0, 2 pi): E[2 cos^2] = 1 at every c. 4096 channels: the
  channel average of cos(2 (f c + phi)) is within ~3 / sqrt(8192) of 0."""
  feats = edm2.MPFourier(4096, seed=3).apply({}, jnp.linspace(-3.0, 3.0, 13))
  per_c = jnp.sqrt(jnp.mean(feats**2, axis=-1))
  np.testing.assert_allclose(np.asarray(per_c), 1.0, atol=0.03)
  assert edm2.MPFourier(8).init(jax.random.PRNGKey(0), jnp.zeros(2)) == {}  # no parameters
  f0, p0 = edm2.fourier_constants(8, 0)
  f1, _ = edm2.fourier_constants(8, 0)
  np.testing.assert_array_equal(f0, f1)  # fixed constants


@pytest.mark.parametrize("flavor", edm2.FLAVORS)
def test_block_at_init_preserves_magnitude(flavor):
  """Without attention: RMS 1 within 3% (zero padding of the 16x16 3x3 convs loses about 1% of
  the residual branch's energy). With attention: the cosine attention over 256 positions averages
  nearly unrelated unit vectors, so its output is small at init, and mp_sum(x, y, 0.3) gives
  0.7 / sqrt(0.58) = 0.919: within 2% of that."""
  k = _keys(4)
  x = jax.random.normal(k[0], (4, 16, 16, 128))
  emb = edm2.mp_silu(jax.random.normal(k[1], (4, 256)))
  plain = edm2.Block(128, flavor)
  assert abs(_rms(plain.apply(plain.init(k[2], x, emb), x, emb)) - 1) < 0.03
  attn = edm2.Block(128, flavor, attention=True)
  out = attn.apply(attn.init(k[3], x, emb), x, emb)
  assert abs(_rms(out) - 0.7 / math.sqrt(0.58)) < 0.02
  # Changing the width (1x1 skip conv) with the U-Net's resampling keeps the magnitude too
  # (encoder: pooling, then pixel norm; decoder: nearest-neighbour upsampling).
  mode, shape = ("down", (4, 8, 8, 96)) if flavor == "enc" else ("up", (4, 32, 32, 96))
  blk = edm2.Block(96, flavor, resample_mode=mode)
  y = blk.apply(blk.init(k[2], x, emb), x, emb)
  assert y.shape == shape and abs(_rms(y) - 1) < 0.03, _rms(y)


# ----------------------------------------------------------------------------- forced weight norm


def _tiny_setup(model, x, lr=0.2):
  sched = get_schedule("edm", t_min=0.002, t_max=80.0)
  param = Parameterization(kind="edm", time_input="c_noise")
  opt = training.make_optimizer(training.OptimConfig(lr=lr, grad_clip=0.0))
  state = training.init_state(model, opt, jax.random.PRNGKey(0), x)
  cfg = training.StepConfig(weighting="edm2", time_sampling="lognormal")
  return sched, param, opt, state, cfg


def _channel_rms(params):
  flat = flax.traverse_util.flatten_dict(params)
  return {k: np.sqrt(np.mean(np.square(np.asarray(v)), axis=tuple(range(v.ndim - 1))))
          for k, v in flat.items() if edm2.is_mp_weight(k)}


@pytest.mark.slow  # ~30 s: compiles the EDM2 U-Net step twice (project_params: its own tests)
def test_forced_weight_normalisation_after_an_update():
  """After a train step every stored MP weight has unit-variance output channels (norm
  sqrt(fan_in)), which the raw Adam update alone leaves; the EMA averages the projected ones."""
  model = get_model("edm2_unet", **MICRO)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  sched, param, opt, state, cfg = _tiny_setup(model, x)
  # On the sphere from init. Tolerance: the stored rms is r / (eps + r), eps = 1e-4 (eq. 66),
  # r the rms before: within 5e-4 of 1 for r > 0.2.
  for v in _channel_rms(state.params).values():
    np.testing.assert_allclose(v, 1.0, atol=5e-4)
  loss = training.make_loss(model, sched, param, cfg)

  @jax.jit
  def step_and_raw(state):
    new, metrics = training.make_train_step(model, sched, param, opt, cfg)(state, {"x": x})
    key = jax.random.fold_in(state.key, state.step)
    grads = jax.grad(lambda p: loss(p, {"x": x}, key)[0])(state.params)
    updates, _ = opt.update(grads, state.opt_state, state.params)
    return new, metrics, optax.apply_updates(state.params, updates)

  new, metrics, raw = step_and_raw(state)
  assert np.isfinite(float(metrics["loss"]))
  for k, v in _channel_rms(new.params).items():
    np.testing.assert_allclose(v, 1.0, atol=5e-4, err_msg=str(k))
  # The unprojected update is off the sphere (so the check above can fail).
  off = max(float(np.max(np.abs(v - 1))) for v in _channel_rms(raw).values())
  assert off > 1e-2, off
  for a, b in zip(jax.tree_util.tree_leaves(new.params),
                  jax.tree_util.tree_leaves(edm2.project_params(raw))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  ema = training.ema_update(state.ema_params, new.params, metrics["ema_decay"])
  for a, b in zip(jax.tree_util.tree_leaves(ema), jax.tree_util.tree_leaves(new.ema_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # Gains are not projected.
  flat = flax.traverse_util.flatten_dict(new.params)
  assert float(flat[("out_gain",)]) != 0.0  # trained away from its zero init


@pytest.mark.slow  # 11 s cold
def test_mlp_train_step_is_unchanged_bit_for_bit():
  """Networks without project_params take exactly the step they took before the hook: the step
  equals one computed by hand from make_loss, the optimizer and ema_update."""
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  assert getattr(net, "project_params", None) is None
  sched = get_schedule("vp")
  param = Parameterization()
  opt = training.make_optimizer(training.OptimConfig(lr=1e-2))
  x = jax.random.normal(jax.random.PRNGKey(2), (16, 2))
  state = training.init_state(net, opt, jax.random.PRNGKey(3), x)
  cfg = training.StepConfig()
  new, m = jax.jit(training.make_train_step(net, sched, param, opt, cfg))(state, {"x": x})

  @jax.jit
  def by_hand(state):
    loss = training.make_loss(net, sched, param, cfg)
    key = jax.random.fold_in(state.key, state.step)
    value, grads = jax.value_and_grad(lambda p: loss(p, {"x": x}, key)[0])(state.params)
    updates, _ = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = training.ema_decay_at(state.step, cfg.ema_decay, cfg.ema_warmup)
    return value, params, training.ema_update(state.ema_params, params, decay)

  value, params, ema = by_hand(state)
  assert float(value) == float(m["loss"])
  for a, b in zip(jax.tree_util.tree_leaves((params, ema)),
                  jax.tree_util.tree_leaves((new.params, new.ema_params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- the network


@pytest.mark.slow  # 16 s cold
def test_forward_shapes_labels_and_logvar():
  model = get_model("edm2_unet", num_classes=10, label_dropout=0.5, **MICRO)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))
  c = jnp.array([-1.0, 0.0, 0.5])
  v = model.init(jax.random.PRNGKey(1), x, c, labels=jnp.array([0, 3, 10]))
  out = model.apply(v, x, c, labels=jnp.array([0, 3, 10]))
  assert out.shape == x.shape and float(jnp.max(jnp.abs(out))) == 0.0  # out_gain starts at 0
  # A non-zero output gain: labels matter, NULL (= num_classes) equals labels=None.
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(v["params"]))
  for key in flat:
    if key[-1] in ("out_gain", "emb_gain"):  # both start at 0: labels would not matter
      flat[key] = jnp.ones(())
  v1 = {"params": flax.traverse_util.unflatten_dict(flat)}

  @jax.jit
  def outputs(v1):
    return (model.apply(v1, x, c, labels=jnp.full((3,), 10)), model.apply(v1, x, c),
            model.apply(v1, x, c, labels=jnp.array([1, 2, 3])),
            model.apply(v1, x, c, return_logvar=True), edm2.apply_logvar(model, v1["params"], c),
            model.apply(v1, x, c, labels=jnp.array([1, 2, 3]), train=True,
                        rngs={"dropout": jax.random.PRNGKey(0)}))  # label dropout: 'dropout' rng

  null, none, labelled, (out, logvar), head, dropped = outputs(v1)
  np.testing.assert_array_equal(np.asarray(null), np.asarray(none))
  assert float(jnp.max(jnp.abs(labelled - null))) > 0
  assert out.shape == dropped.shape == x.shape and logvar.shape == (3,)
  np.testing.assert_allclose(np.asarray(logvar), np.asarray(head), rtol=1e-6)
  # bfloat16 compute, float32 parameters.
  bf = get_model("edm2_unet", dtype=jnp.bfloat16, num_classes=10, **MICRO)
  assert bf.apply(v1, x, c).dtype == x.dtype
  assert {p.dtype for p in jax.tree_util.tree_leaves(v["params"])} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("kwargs,match", [
    (dict(model_channels=0), "model_channels"),
    (dict(num_blocks=0), "num_res_blocks"),
    (dict(dropout=1.5), "dropout"),
    (dict(res_balance=1.5), "res_balance"),
    (dict(channels_per_head=0), "channels_per_head"),
    (dict(clip_act=-1.0), "clip_act"),
    (dict(channel_mult_emb=0), "channel_mult_emb"),
])
def test_bad_hyperparameters_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model("edm2_unet", **{**TINY, **kwargs})


def test_bad_inputs_are_refused():
  model = get_model("edm2_unet", **TINY)
  x, c = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,))
  with pytest.raises(ValueError, match="NHWC"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8)), c)
  with pytest.raises(ValueError, match="divisible"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 7, 7, 1)), c)
  with pytest.raises(ValueError, match="num_classes=0"):
    model.init(jax.random.PRNGKey(0), x, c, labels=jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match="unknown EDM2 preset"):
    edm2.preset("img512_xxxl")


def _official_count(mc, mult=(1, 2, 3, 4), nb=3, attn=(16, 8), res=64, img_ch=4,
                    label_dim=1000, logvar=128):
  """Parameters of the released EDM2 Precond(UNet) (NVlabs/edm2 training/networks_edm2.py),
  counted from its module list: MPConv weights out * in * k^2, a gain per block and the output
  gain, the 128 -> 1 logvar layer; Fourier frequencies and phases are buffers."""
  cb = [mc * m for m in mult]
  ce = max(cb)
  n = 1 + cb[0] * ce + label_dim * ce + logvar

  def block(cin, cout, flavor, att):
    p = 1 + (cout if flavor == "enc" else cin) * cout * 9 + ce * cout + cout * cout * 9
    return p + (cin * cout if cin != cout else 0) + (4 * cout * cout if att else 0)

  skips, cout = [], img_ch + 1
  for lvl, ch in enumerate(cb):
    r = res >> lvl
    if lvl == 0:
      n, cout = n + cout * ch * 9, ch
    else:
      n += block(cout, cout, "enc", False)
    skips.append(cout)
    for _ in range(nb):
      n, cout = n + block(cout, ch, "enc", r in attn), ch
      skips.append(cout)
  for lvl, ch in reversed(list(enumerate(cb))):
    r = res >> lvl
    if lvl == len(cb) - 1:
      n += block(cout, cout, "dec", True) + block(cout, cout, "dec", False)
    else:
      n += block(cout, cout, "dec", False)
    for _ in range(nb + 1):
      n, cout = n + block(cout + skips.pop(), ch, "dec", r in attn), ch
  return n + cout * img_ch * 9


# The paper's Table 2 (ImageNet-512) and Table 3 (ImageNet-64), parameters in millions.
PAPER_MPARAMS = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1100, "xxl": 1500}


def test_param_counts_equal_the_released_models_and_the_paper():
  for name, count in edm2.PARAM_COUNTS.items():
    size = name.split("_")[1]
    mc = edm2.PRESETS[name]["model_channels"]
    img_ch = edm2.PRESET_SHAPES[name][-1]
    assert _official_count(mc, img_ch=img_ch) == count, name
    paper = PAPER_MPARAMS[size]
    digits = 2 if paper >= 1000 else 3  # 1.1B, 1.5B vs 125M ...
    assert round(count / 1e6, digits - len(str(paper))) == paper, (name, count)


@pytest.mark.parametrize("name", ["img512_xs", "img64_s", "cifar10", "digits"])
def test_eval_shape_param_counts(name):
  model = get_model("edm2_unet", **edm2.preset(name))
  shape = (1,) + edm2.PRESET_SHAPES[name]
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                             jnp.zeros((1,))))["params"]
  expected = {"cifar10": 36_610_076, "digits": 1_007_599}.get(name, edm2.PARAM_COUNTS.get(name))
  assert training.count_params(params) == expected


@pytest.mark.slow
def test_eval_shape_param_counts_all_presets():
  for name, count in edm2.PARAM_COUNTS.items():
    model = get_model("edm2_unet", **edm2.preset(name))
    shape = (1,) + edm2.PRESET_SHAPES[name]
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                               jnp.zeros((1,))))["params"]
    assert training.count_params(params) == count, name


# ----------------------------------------------------------------------------- uncertainty loss


def test_uncertainty_head_trained_alone_reaches_log_of_the_error():
  """u(sigma) (the MP Fourier + MP linear head) trained on fixed errors L_k at four noise levels
  by L_k / e^u + u: the minimiser is u_k = log L_k."""
  c = jnp.array([-1.5, -0.5, 0.3, 1.0])
  target = jnp.array([0.05, 0.4, 1.0, 3.0])
  head = edm2.LogvarHead()
  params = head.init(jax.random.PRNGKey(0), c)["params"]
  opt = optax.adam(0.05)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    loss = lambda p: jnp.mean(losses.uncertainty_weighted(target, head.apply({"params": p}, c)))
    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state, params)
    return edm2.project_params(optax.apply_updates(params, upd)), state

  for _ in range(400):
    params, state = step(params, state)
  u = head.apply({"params": params}, c)
  np.testing.assert_allclose(np.asarray(u), np.log(np.asarray(target)), atol=0.02)


def test_edm2_loss_with_the_exact_denoiser_is_minimised_at_log_of_the_expected_error():
  """A Gaussian x0 ~ N(mu, diag(lam)) (a one-component analytic mixture): at a fixed sigma the
  exact denoiser's error is lam s^2 / (lam + s^2) per coordinate, so L = lambda(sigma) * mean_d
  of it, and the 'edm2' loss in u is minimised at log L: at u = log L its derivative 1 - L_MC / L
  is within Monte Carlo error of 0, and the loss there is below u = log L +- 0.2."""
  with jax.enable_x64(True):
    lam = np.array([0.3, 0.05, 1.2, 0.6])
    gm = analytic.GaussianMixture.create([1.0], np.array([[0.2, -0.4, 0.0, 0.5]]), lam[None])
    sched = get_schedule("edm", t_min=0.002, t_max=80.0)
    sd = 0.5
    x0 = gm.sample0(jax.random.PRNGKey(0), 40_000, jnp.float64)
    for s in (0.1, 0.7, 3.0):
      w = (s * s + sd * sd) / (s * sd)**2
      exact = w * float(np.mean(lam * s * s / (lam + s * s)))

      def loss_at(u, key=jax.random.PRNGKey(1)):
        den = lambda x, t, cond=None: (gm.denoise(x, t, schedule=sched),
                                       jnp.full((x.shape[0],), u, x.dtype))
        return losses.dsm_loss(den, x0, key, sched, weighting="edm2",
                               time_sampling=losses.TimeSampling(t_min=s, t_max=s),
                               sigma_data=sd)

      value, aux = loss_at(math.log(exact))
      weighted = (aux["per_example"] - math.log(exact)) * exact  # w * err per example
      se = float(jnp.std(weighted)) / math.sqrt(x0.shape[0])
      assert abs(float(jnp.mean(weighted)) - exact) < 4 * se, (s, exact, se)
      grad = jax.grad(lambda u: loss_at(u)[0])(math.log(exact))
      assert abs(float(grad)) < 4 * se / exact, (s, float(grad))
      assert float(value) < float(loss_at(math.log(exact) + 0.2)[0])
      assert float(value) < float(loss_at(math.log(exact) - 0.2)[0])


def test_edm2_weighting_refuses_a_network_without_logvar_and_a_plain_denoiser():
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  cfg = training.StepConfig(weighting="edm2")
  with pytest.raises(ValueError, match="return_logvar"):
    training.make_loss(net, get_schedule("vp"), Parameterization(), cfg)
  with pytest.raises(ValueError, match=r"\(x0_hat, logvar\)"):
    losses.dsm_loss(lambda x, t, c=None: x, jnp.zeros((2, 2)), jax.random.PRNGKey(0),
                    get_schedule("vp"), weighting="edm2")


# ----------------------------------------------------------------------------- lr schedule


def test_rsqrt_lr_schedule():
  cfg = training.OptimConfig(lr=0.01, decay="rsqrt", rsqrt_ref_steps=100, warmup_steps=10)
  sched = training.lr_schedule(cfg)
  for step, want in ((0, 0.0), (5, 0.005), (10, 0.01), (100, 0.01), (400, 0.005),
                     (10_000, 0.001)):
    assert abs(float(sched(step)) - want) < 1e-8, step
  with pytest.raises(ValueError, match="rsqrt_ref_steps"):
    training.OptimConfig(decay="rsqrt")


def test_configs_use_the_presets():
  from configs.cifar10 import edm2 as cifar_cfg
  from configs.digits import edm2 as digits_cfg
  assert cifar_cfg.EDM2_UNET == {k: v for k, v in edm2.preset("cifar10").items()}
  assert digits_cfg.NET == edm2.preset("digits", num_blocks=1)


# ----------------------------------------------------------------------------- the drivers

DRIVER = {"model.net.model_channels": 8, "model.net.channel_mult": (1, 2),
          "model.net.channels_per_head": 8, "data.batch_size": 16, "training.ckpt_every": 2,
          "training.log_every": 2, "training.sample_every": 0,
          "training.async_checkpoints": False, "optim.warmup_steps": 1,
          "sampling.num_steps": 2, "eval.plot_samples": 4}


def _digits_edm2(**overrides):
  from configs.digits.edm2 import get_config
  from tests.conftest import with_overrides
  return with_overrides(get_config(), {**DRIVER, **overrides})


@pytest.mark.slow
def test_digits_edm2_exact_resume(tmp_path):
  """configs/digits/edm2.py (shrunk) through the train driver: 4 steps straight equal 2 steps,
  then a resume to 4, bit for bit (params, EMA, optimizer state), and the stored MP weights are
  on the sphere. The 'rsqrt' schedule does not depend on num_steps, so the two runs share it."""
  from diffusion import checkpoint
  from experiments import setup, train
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train(_digits_edm2(**{"training.num_steps": 4}), straight)
  train.train(_digits_edm2(**{"training.num_steps": 2}), resumed)
  train.train(_digits_edm2(**{"training.num_steps": 4}), resumed)
  states = []
  for wd in (straight, resumed):
    s = setup.setup(_digits_edm2(**{"training.num_steps": 4}))
    ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False)
    state, _, step = ck.restore(s.abstract_state)
    ck.close()
    assert step == 4
    states.append(jax.device_get(state))
  la, lb = jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1])
  assert len(la) == len(lb)
  for a, b in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for v in _channel_rms(states[0].params).values():
    np.testing.assert_allclose(v, 1.0, atol=5e-4)


_SHARDED = """
import json, sys, jax
from tests.test_edm2 import _digits_edm2
from experiments import setup, train
assert jax.device_count() == 2, jax.devices()
train.train(_digits_edm2(**json.loads(sys.argv[2])), sys.argv[1])
"""


@pytest.mark.slow
def test_digits_edm2_fsdp_on_two_devices_matches_one(tmp_path):
  """2 simulated CPU devices with the parameters FSDP-sharded (the projection then normalises
  sharded weights) give the 1-device run's parameters (float tolerance: reductions are ordered
  differently)."""
  import json
  import os
  import subprocess
  import sys
  from diffusion import checkpoint
  from experiments import setup, train
  from tests.conftest import REPO
  steps = {"training.num_steps": 2}
  fsdp = {**steps, "parallel.model_axis": 2, "parallel.fsdp": True, "parallel.fsdp_min_size": 0}
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", _SHARDED, two, json.dumps(fsdp)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  train.train(_digits_edm2(**steps), one)
  states = []
  for wd in (two, one):
    s = setup.setup(_digits_edm2(**steps))
    ck = checkpoint.Checkpointer(wd, max_to_keep=None, async_save=False)
    state, _, step = ck.restore(s.abstract_state)
    ck.close()
    assert step == 2
    states.append(jax.device_get(state))
  for a, b in zip(jax.tree_util.tree_leaves(states[0].params),
                  jax.tree_util.tree_leaves(states[1].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_edm2_weighting_is_refused_at_start_up_for_a_network_without_u():
  from experiments.config_files import load_config_file
  from experiments.cli import overridden
  from diffusion.config_checks import ConfigError
  from experiments.validate import validate_config
  config = overridden(load_config_file("configs/digits/edm.py"), {"training.weighting": "edm2"})
  with pytest.raises(ConfigError, match="model.name='ddpm_unet' has no such output"):
    validate_config(config, "train")
