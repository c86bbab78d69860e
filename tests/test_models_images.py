"""Tests of the image networks: DDPM U-Net, NCSN++ / DDPM++ and their layers.

Parameter counts use ``jax.eval_shape`` (no real initialisation). Forward passes use tiny
configurations, and keys of the 'unsafe_rbg' PRNG implementation for initialisation (threefry
init of ~100 tensors compiles slowly on CPU); this is local to the keys, not a global setting.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import get_model, layers, ncsnpp, registered_models, unet


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="unsafe_rbg")


def _abstract_params(model, shape, labels=False):
  x = jnp.zeros(shape)
  c = jnp.ones(shape[:1])
  lab = jnp.zeros(shape[:1], jnp.int32) if labels else None
  return jax.eval_shape(lambda k: model.init({"params": k}, x, c, lab), _key(0))["params"]


def _random_variables(model, x, c, labels=None, seed=0):
  """Random variables of the right structure without compiling ``init`` (slow on CPU):
  kernels N(0, 1/fan_in), GroupNorm scales 1, other vectors N(0, 0.1^2)."""
  shapes = jax.eval_shape(lambda k: model.init({"params": k}, x, c, labels), _key(0))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if len(s.shape) >= 2:
      w = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    elif "scale" in name:
      w = np.ones(s.shape)
    else:
      w = 0.1 * rng.normal(size=s.shape)
    return jnp.asarray(w, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _forward(model, x, c, labels=None, train=False):
  variables = _random_variables(model, x, c, labels)
  apply = jax.jit(lambda v, x, c, labels: model.apply(v, x, c, labels, train=train,
                                                      rngs={"dropout": _key(7)}))
  return apply(variables, x, c, labels)


def _inputs(shape, seed=0):
  x = jax.random.normal(jax.random.key(seed), shape)
  c = jnp.linspace(0.1, 1.0, shape[0])
  return x, c


TINY_UNET = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)
TINY_NCSNPP = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


# ----------------------------------------------------------------------------- registry


def test_registered():
  names = registered_models()
  assert {"ddpm_unet", "ncsnpp", "ddpmpp"} <= set(names)
  assert isinstance(get_model("ddpmpp"), ncsnpp.NCSNpp)
  m = get_model("ddpmpp")
  assert (m.fir, m.progressive_input, m.embedding_type) == (False, "none", "positional")
  m = get_model("ncsnpp")
  assert (m.fir, m.progressive_input, m.embedding_type) == (True, "residual", "fourier")


@pytest.mark.parametrize("name,kwargs", [
    ("ncsnpp", dict(progressive="skip")),
    ("ncsnpp", dict(progressive_input="output_skip")),
    ("ncsnpp", dict(resblock_type="resnet")),
    ("ncsnpp", dict(progressive_combine="mean")),
    ("ncsnpp", dict(embedding_type="learned")),
    ("ncsnpp", dict(fir_kernel=())),
    ("ddpm_unet", dict(embedding_type="sinusoid")),
    ("ddpm_unet", dict(num_res_blocks=0)),
    ("ddpm_unet", dict(dropout=1.5)),
])
def test_bad_options_raise(name, kwargs):
  with pytest.raises(ValueError):
    get_model(name, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(downsample_padding="same"), "downsample_padding='same'; accepted"),
    (dict(downsample_padding="symmetric", resamp_with_conv=False), "resamp_with_conv=True"),
    (dict(attn_head_dim=4, num_heads=2), "not both"),
    (dict(attn_head_dim=0), "attn_head_dim must be None or an int >= 1"),
    (dict(temb_dim=2.5), "temb_dim must be None or an int >= 1"),
    (dict(mid_attn_norm_groups=0), "mid_attn_norm_groups must be None"),
    (dict(norm_eps=0.0), "norm_eps must be > 0"),
    (dict(mid_block_scale=-1.0), "mid_block_scale must be > 0"),
])
def test_ddpm_unet_diffusers_options_are_validated(kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model("ddpm_unet", **kwargs)


# ----------------------------------------------------------------------------- parameter counts


def test_ddpm_unet_cifar10_param_count():
  """Ho et al. 2020's CIFAR-10 model: 35,746,307 parameters (the released model's count)."""
  params = _abstract_params(get_model("ddpm_unet", **unet.preset("cifar10")), (1, 32, 32, 3))
  assert layers.count_params(params) == 35_746_307


def test_ddpm_unet_lsun256_param_count():
  """Ho et al. 2020: "our LSUN and CelebA-HQ models have 114 million parameters"."""
  params = _abstract_params(get_model("ddpm_unet", **unet.preset("lsun256")),
                            (1, 256, 256, 3))
  assert round(layers.count_params(params) / 1e6) == 114


# Counts of the released score_sde architectures (Song et al. 2021), 32x32x3. They were
# cross-checked by building the released code's configs (configs/ve/cifar10_ncsnpp_continuous,
# ..._deep_continuous, configs/vp/cifar10_ddpmpp_continuous, ..._deep_continuous) under
# jax.eval_shape, as were 144 combinations of the progressive / block / FIR / embedding options
# at small size (all equal).
@pytest.mark.parametrize("name,preset,expected", [
    ("ncsnpp", "cifar10", 62_758_915),
    ("ddpmpp", "cifar10", 61_804_419),
    ("ncsnpp", "cifar10_deep", 107_587_075),
    ("ddpmpp", "cifar10_deep", 106_632_579),
])
def test_ncsnpp_param_counts(name, preset, expected):
  params = _abstract_params(get_model(name, **ncsnpp.preset(preset)), (1, 32, 32, 3))
  assert layers.count_params(params) == expected


def test_class_embedding_has_null_class():
  params = _abstract_params(get_model("ddpm_unet", num_classes=10, **TINY_UNET), (2, 8, 8, 1),
                            labels=True)
  assert params["class_embedding"]["embed"]["embedding"].shape == (11, 4 * 16)


def test_params_float32_with_bfloat16_compute():
  params = _abstract_params(get_model("ncsnpp", dtype=jnp.bfloat16, **TINY_NCSNPP),
                            (2, 8, 8, 1))
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------- structure


# Every (progressive, progressive_input) pair, cycling through block types and combiners.
_OPTION_GRID = [
    (p, q, ncsnpp.RESBLOCK_TYPES[i % 2], ncsnpp.COMBINE[(i // 2) % 2])
    for i, (p, q) in enumerate(itertools.product(ncsnpp.PROGRESSIVE,
                                                 ncsnpp.PROGRESSIVE_INPUT))]


@pytest.mark.parametrize("progressive,progressive_input,resblock_type,combine", _OPTION_GRID)
def test_ncsnpp_options_trace(progressive, progressive_input, resblock_type, combine):
  """The option combinations build and map (B, H, W, C) to (B, H, W, C) (abstractly)."""
  model = get_model("ncsnpp", progressive=progressive, progressive_input=progressive_input,
                    resblock_type=resblock_type, progressive_combine=combine,
                    ch_mult=(1, 2, 2), nf=8, num_res_blocks=1, attn_resolutions=(4,))
  x = jax.ShapeDtypeStruct((2, 16, 8, 3), jnp.float32)
  c = jax.ShapeDtypeStruct((2,), jnp.float32)
  out = jax.eval_shape(lambda x, c: model.init_with_output(_key(0), x, c)[0], x, c)
  assert out.shape == (2, 16, 8, 3) and out.dtype == jnp.float32


def test_deep_variant_has_more_blocks():
  shallow = _abstract_params(get_model("ncsnpp", **ncsnpp.preset("digits")), (1, 8, 8, 1))
  deep = _abstract_params(get_model("ncsnpp", **ncsnpp.preset("digits", num_res_blocks=4)),
                          (1, 8, 8, 1))
  blocks = lambda p: sum(1 for k in p if "_block" in k)
  assert blocks(deep) - blocks(shallow) == 2 * 3 * 2  # +2 per level, 3 levels, enc + dec
  assert layers.count_params(deep) > layers.count_params(shallow)


def test_input_validation():
  model = get_model("ddpm_unet", **TINY_UNET)
  x = jnp.zeros((2, 8, 8, 1))
  with pytest.raises(ValueError, match="c must have shape"):
    jax.eval_shape(lambda: model.init(_key(0), x, jnp.zeros((3,))))
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(lambda: model.init(_key(0), jnp.zeros((2, 7, 7, 1)), jnp.zeros((2,))))
  with pytest.raises(ValueError, match="num_classes=0"):
    jax.eval_shape(lambda: model.init(_key(0), x, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32)))


# ----------------------------------------------------------------------------- forward passes


def test_ddpm_unet_forward_class_conditional():
  model = get_model("ddpm_unet", num_classes=10, label_dropout=0.5, **TINY_UNET)
  x, c = _inputs((4, 8, 8, 1))
  out = _forward(model, x, c, jnp.array([0, 3, 9, 10]), train=True)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3


def test_ncsnpp_forward_default():
  model = get_model("ncsnpp", **TINY_NCSNPP)
  x, c = _inputs((2, 8, 8, 1))
  out = _forward(model, x, c, train=True)
  assert out.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3


def test_ncsnpp_forward_skip_variants():
  model = get_model("ncsnpp", progressive="output_skip", progressive_input="input_skip",
                    progressive_combine="cat", resblock_type="ddpm",
                    embedding_type="positional", embedding_scale=999.0, **TINY_NCSNPP)
  x, c = _inputs((2, 8, 8, 3))
  out = _forward(model, x, c)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_ddpmpp_forward_bfloat16_residual_output():
  model = get_model("ddpmpp", progressive="residual", dtype=jnp.bfloat16, num_classes=3,
                    **TINY_NCSNPP)
  x, c = _inputs((2, 8, 8, 3))
  out = _forward(model, x, c, jnp.array([1, 2]))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_real_init_starts_at_zero_output():
  """DDPM init: the last conv of the net (and of every residual branch) starts at ~0."""
  model = get_model("ddpm_unet", **TINY_UNET)
  x, c = _inputs((2, 8, 8, 1))
  out = jax.jit(lambda k: model.init_with_output(k, x, c)[0])(_key(0))
  assert out.shape == x.shape and float(jnp.abs(out).max()) < 1e-3


@pytest.mark.slow
def test_ddpm_unet_dropout_is_train_only():
  model = get_model("ddpm_unet", **{**TINY_UNET, "dropout": 0.5})
  x, c = _inputs((2, 8, 8, 1))
  variables = jax.jit(lambda k: model.init(k, x, c))(_key(0))
  variables = jax.tree.map(lambda p: p + 0.05, variables)  # leave the zero-init regime
  apply = jax.jit(lambda r, train: model.apply(variables, x, c, train=train,
                                               rngs={"dropout": r}), static_argnums=1)
  np.testing.assert_array_equal(apply(_key(1), False), apply(_key(2), False))
  assert not np.allclose(apply(_key(1), True), apply(_key(2), True))


# ----------------------------------------------------------------------------- layers


def test_positional_embedding():
  c = jnp.array([0.0, 1.0, 250.0])
  emb = layers.positional_embedding(c, 8)
  assert emb.shape == (3, 8)
  np.testing.assert_allclose(emb[:, 0], jnp.sin(c), atol=1e-5)  # frequency 1
  np.testing.assert_allclose(emb[:, 4], jnp.cos(c), atol=1e-5)
  np.testing.assert_allclose(emb[:, 3], jnp.sin(c * 1e-4), atol=1e-6)  # lowest frequency
  assert layers.positional_embedding(c, 7).shape == (3, 7)
  # diffusers' UNet2DModel defaults: [cos, sin], w_i = 10000^(-i / half): lowest 10000^(-3/4).
  flipped = layers.positional_embedding(c, 8, freq_shift=0, flip_sin_to_cos=True)
  np.testing.assert_allclose(flipped[:, 0], jnp.cos(c), atol=1e-5)
  np.testing.assert_allclose(flipped[:, 4], jnp.sin(c), atol=1e-5)
  np.testing.assert_allclose(flipped[:, 7], jnp.sin(c * 1e-3), atol=1e-6)
  unflipped = layers.positional_embedding(c, 8, freq_shift=0)
  np.testing.assert_array_equal(flipped[:, 4:], unflipped[:, :4])
  with pytest.raises(ValueError, match="freq_shift=4 must be < dim // 2 = 4"):
    layers.positional_embedding(c, 8, freq_shift=4)


def test_downsample_paddings():
  # 'asymmetric' pads (0, 1) (TF SAME: output (i, j) reads rows 2i .. 2i + 2), 'symmetric'
  # (1, 1) (torch Conv2d(padding=1): rows 2i - 1 .. 2i + 1), with the same kernel.
  x = jax.random.normal(_key(0), (1, 4, 4, 1))
  kernel = jax.random.normal(_key(1), (3, 3, 1, 1))
  xp = np.pad(np.asarray(x[0, :, :, 0]), 1)  # xp[r + 1] = x[r]
  k = np.asarray(kernel[:, :, 0, 0])
  for padding, start in (("asymmetric", 1), ("symmetric", 0)):
    d = layers.Downsample(padding=padding)
    variables = {"params": {"conv": {"kernel": kernel, "bias": jnp.zeros(1)}}}
    out = np.asarray(d.apply(variables, x))[0, :, :, 0]
    want = np.array([[np.sum(k * xp[start + 2 * i:start + 2 * i + 3,
                                    start + 2 * j:start + 2 * j + 3]) for j in range(2)]
                     for i in range(2)])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="plain stride-2 conv only"):
    layers.Downsample(padding="symmetric", with_conv=False).init(_key(0), x)


def test_fourier_features_receive_no_gradient():
  mod = layers.GaussianFourierProjection(4, 16.0)
  c = jnp.array([0.3, -1.2])
  variables = mod.init(_key(0), c)
  assert variables["params"]["W"].shape == (4,)
  grads = jax.grad(lambda v: mod.apply(v, c).sum())(variables)
  assert float(jnp.abs(grads["params"]["W"]).max()) == 0.0


def test_fir_resampling_preserves_constants_and_shapes():
  x = jnp.ones((1, 8, 8, 2))
  up = layers.upsample_fir(x)
  down = layers.downsample_fir(x)
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, atol=1e-6)  # interior (zero padding)
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, atol=1e-6)
  np.testing.assert_allclose(layers.fir_kernel_2d((1, 3, 3, 1)).sum(), 1.0, atol=1e-6)
  for fir in (True, False):
    for with_conv in (True, False):
      u = layers.Upsample(out_ch=None, with_conv=with_conv, fir=fir)
      d = layers.Downsample(out_ch=None, with_conv=with_conv, fir=fir)
      assert jax.eval_shape(lambda: u.init_with_output(_key(0), x)[0]).shape == (1, 16, 16, 2)
      assert jax.eval_shape(lambda: d.init_with_output(_key(0), x)[0]).shape == (1, 4, 4, 2)


def test_fir_upsampling_is_linear_interpolation_like():
  """upsample_fir of a ramp is a ramp (binomial (1,3,3,1) = linear interpolation) inside."""
  ramp = jnp.arange(8.0)[None, :, None, None] * jnp.ones((1, 8, 8, 1))
  up = layers.upsample_fir(ramp)[0, 2:-2, 4, 0]
  np.testing.assert_allclose(jnp.diff(up), 0.5, atol=1e-5)


def test_num_groups():
  assert layers.num_groups(128) == 32 and layers.num_groups(256) == 32
  assert layers.num_groups(16) == 4 and layers.num_groups(3) == 1
  assert 24 % layers.num_groups(24) == 0


def test_attention_is_permutation_equivariant():
  att = layers.AttentionBlock(num_heads=2, init_scale=1.0)
  x = jax.random.normal(jax.random.key(0), (1, 2, 4, 8))
  perm = np.array([3, 1, 7, 0, 2, 6, 5, 4])
  flat = lambda t: t.reshape(1, 8, 8)
  x_p = flat(x)[:, perm].reshape(x.shape)

  @jax.jit
  def f(x, x_p):
    variables = att.init(_key(0), x)
    return att.apply(variables, x), att.apply(variables, x_p)

  out, out_p = map(flat, f(x, x_p))
  np.testing.assert_allclose(out[:, perm], out_p, atol=1e-5)
