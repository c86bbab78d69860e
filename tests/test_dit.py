"""DiT (Peebles & Xie 2023): shapes, adaLN-Zero initialisation, conditioning, equivariance,
parameter counts against the paper and the released model, FSDP specs of DiT-XL/2, bfloat16,
refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from diffusion import parallel, training
from diffusion.models import dit, get_model, layers, registered_models

TINY = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4)


def _init(model, x, labels=None):
  c = jnp.linspace(0.1, 0.9, x.shape[0])
  return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, c,
                    labels)


def _perturb(params, scale=0.1, seed=3):
  """Adds N(0, scale^2) noise to every leaf (a net whose zero-initialised layers are not 0)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def _x(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_registered_and_output_shapes():
  assert "dit" in registered_models()
  def out_shape(m, shape):
    x = jnp.zeros(shape)
    v = jax.eval_shape(lambda: _init(m, x))
    return jax.eval_shape(lambda v: m.apply(v, x, jnp.ones((shape[0],))), v)

  for shape, p in (((2, 8, 8, 1), 2), ((3, 8, 12, 3), 2), ((1, 16, 16, 4), 4)):
    out = out_shape(get_model("dit", **{**TINY, "patch_size": p}), shape)
    assert out.shape == shape and out.dtype == jnp.float32
  assert out_shape(get_model("dit", out_ch=2, **TINY), (2, 8, 8, 1)).shape == (2, 8, 8, 2)


def test_fresh_net_outputs_zero_and_every_block_is_the_identity():
  """adaLN-Zero: the gates and the final linear start at 0, so a fresh DiT outputs exactly 0
  and every block returns its input unchanged."""
  m = get_model("dit", num_classes=5, **TINY)
  x = _x((2, 8, 8, 3))
  v = _init(m, x)
  c = jnp.array([0.3, 0.7])
  out, inter = m.apply(v, x, c, jnp.array([1, 4]), capture_intermediates=True)
  assert np.all(np.asarray(out) == 0.0)
  tokens = inter["intermediates"]["patch_embed"]["__call__"][0]
  assert np.abs(np.asarray(tokens)).max() > 0.1  # the blocks' input is not trivially zero
  pos = dit.sincos_2d(TINY["hidden_size"], 4, 4)
  h = np.asarray(tokens) + pos[None]
  for i in range(TINY["depth"]):
    np.testing.assert_array_equal(np.asarray(inter["intermediates"][f"block{i}"]["__call__"][0]),
                                  h.astype(np.float32))
  # ... and not once the modulation is trained (the check can fail).
  out = m.apply({"params": _perturb(v["params"])}, x, c, jnp.array([1, 4]))
  assert np.abs(np.asarray(out)).max() > 1e-3


def test_learn_sigma_has_2c_channels_and_returns_the_first_c():
  m = get_model("dit", learn_sigma=True, **TINY)
  x = _x((2, 8, 8, 3))
  v = _init(m, x)
  assert v["params"]["final_layer"]["linear"]["kernel"].shape == (32, 2 * 2 * 6)
  params = _perturb(v["params"])
  c = jnp.array([0.2, 0.5])
  mean = m.apply({"params": params}, x, c)
  full = m.apply({"params": params}, x, c, with_variance=True)
  assert mean.shape == (2, 8, 8, 3) and full.shape == (2, 8, 8, 6)
  np.testing.assert_array_equal(np.asarray(full[..., :3]), np.asarray(mean))
  assert not np.allclose(full[..., 3:], full[..., :3])
  plain = get_model("dit", **TINY)
  with pytest.raises(ValueError, match="learn_sigma"):
    plain.apply(_init(plain, x), x, c, with_variance=True)


def test_class_conditioning_and_null_class():
  m = get_model("dit", num_classes=10, label_dropout=0.1, **TINY)
  x = _x((3, 8, 8, 1))
  params = _perturb(_init(m, x)["params"])
  c = jnp.array([0.1, 0.5, 0.9])
  f = lambda labels: np.asarray(m.apply({"params": params}, x, c, labels))
  a, b = f(jnp.array([0, 1, 2])), f(jnp.array([3, 4, 5]))
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(f(None), f(jnp.full((3,), 10)))
  # Label dropout only in training, from the 'dropout' rng: at rate ~1 every label is NULL.
  m1 = get_model("dit", num_classes=10, label_dropout=0.999999, **TINY)
  dropped = m1.apply({"params": params}, x, c, jnp.array([0, 1, 2]), train=True,
                     rngs={"dropout": jax.random.PRNGKey(5)})
  np.testing.assert_allclose(np.asarray(dropped), f(None), rtol=1e-6, atol=1e-6)
  unc = get_model("dit", **TINY)
  with pytest.raises(ValueError, match="num_classes=0"):
    unc.apply(_init(unc, x), x, c, jnp.array([0, 1, 2]))


def test_block_is_permutation_equivariant():
  """Without the positional embedding a DiT block treats tokens as a set: permuting its input
  tokens permutes its output."""
  blk = dit.DiTBlock(num_heads=4)
  x, cond = _x((2, 16, 32)), _x((2, 32), seed=1)
  params = _perturb(blk.init(jax.random.PRNGKey(0), x, cond)["params"], 0.2)
  perm = np.random.default_rng(0).permutation(16)
  out = blk.apply({"params": params}, x, cond)
  out_p = blk.apply({"params": params}, x[:, perm], cond)
  np.testing.assert_allclose(np.asarray(out_p), np.asarray(out)[:, perm], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out - x)).max() > 1e-2  # not the identity


def test_patchify_tokens_and_round_trip():
  x = _x((2, 8, 12, 3))
  t = dit.patchify(x, 4)
  assert t.shape == (2, 6, 48)
  # Token k is the raster-order patch (k // 3, k % 3), flattened as (p, p, C).
  np.testing.assert_array_equal(np.asarray(t[:, 4]), np.asarray(x[:, 4:8, 4:8].reshape(2, -1)))
  np.testing.assert_array_equal(np.asarray(dit.unpatchify(t, 4, 8, 12)), np.asarray(x))
  with pytest.raises(ValueError, match="8x8"):
    dit.unpatchify(t, 4, 8, 8)


def test_sincos_2d_embedding():
  emb = dit.sincos_2d(8, 2, 3)
  assert emb.shape == (6, 8) and emb.dtype == np.float32
  # Token (i, j): [sin(i w), cos(i w), sin(j w), cos(j w)] with w = (1, 1/100) for width 8.
  i, j, w = 1, 2, np.array([1.0, 0.01])
  want = np.concatenate([np.sin(i * w), np.cos(i * w), np.sin(j * w), np.cos(j * w)])
  np.testing.assert_allclose(emb[i * 3 + j], want, rtol=1e-6)
  assert len({tuple(r) for r in emb.round(6)}) == 6  # every position is distinct
  with pytest.raises(ValueError, match="divisible by 4"):
    dit.sincos_2d(6, 2, 2)


# ----------------------------------------------------------------------------- parameter counts

# Paper Table 1 ("Params (M)"), 256x256 ImageNet: latents 32x32x4, 1000 classes, learn_sigma.
PAPER_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


def _released_count(depth: int, d: int, p: int, c: int = 4, size: int = 32,
                    classes: int = 1000) -> int:
  """Parameter count of the released DiT (facebookresearch/DiT models.py, read and counted by
  hand): patch embed p*p*C*D + D; frozen pos_embed T*D (a torch Parameter, included in its
  ``sum(p.numel() for p in model.parameters())``); timestep MLP 256*D + D + D*D + D; class
  table (classes + 1)*D (the null row since class_dropout_prob = 0.1 > 0); per block qkv
  3D^2 + 3D, proj D^2 + D, MLP 8D^2 + 5D, adaLN 6D^2 + 6D; final adaLN 2D^2 + 2D and linear
  D*p*p*2C + p*p*2C."""
  t = (size // p)**2
  out = p * p * 2 * c
  return (p * p * c * d + d + t * d + 256 * d + d + d * d + d + (classes + 1) * d
          + depth * (18 * d * d + 15 * d) + 2 * d * d + 2 * d + d * out + out)


def _abstract_params(name, **kw):
  m = get_model("dit", **dit.preset(name, learn_sigma=True, num_classes=1000, label_dropout=0.1,
                                    **kw))
  return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 4)),
                                       jnp.zeros((1,))))["params"]


@pytest.mark.parametrize("name", [f"{s}/{p}" for s in dit.SIZES for p in dit.PATCH_SIZES])
def test_param_counts_equal_the_released_model_and_the_paper(name):
  size, p = name.split("/")
  kw = dit.PRESETS[name]
  n = layers.count_params(_abstract_params(name))
  pos = (32 // int(p))**2 * kw["hidden_size"]  # a constant here, a frozen parameter there
  assert n + pos == _released_count(kw["depth"], kw["hidden_size"], int(p)), f"{n:,}"
  # Table 1 gives one count per size: the trainable parameters of the /2 and /4 models round
  # to it (with the frozen pos_embed B/2 would be 130.51M -> 131M); the /8 models are up to
  # 0.9M larger (a wider patch embedding and final linear).
  if p in ("2", "4"):
    assert round(n / 1e6) == PAPER_M[size], f"{n:,}"
  else:
    assert 0 < n / 1e6 - PAPER_M[size] < 1.0, f"{n:,}"


def test_dit_xl2_count_is_the_commonly_cited_figure():
  n = layers.count_params(_abstract_params("XL/2"))
  assert n == 674_834_720
  assert n + 256 * 1152 == 675_129_632  # the released code's printed count (with pos_embed)


def test_fsdp_shards_every_large_leaf_of_dit_xl2():
  """state_sharding (FSDP over a model axis of 8, min_size 2^14) gives every leaf of DiT-XL/2's
  train state (params, EMA, Adam moments) with >= 2^14 elements a spec on 'model'; the
  generic rule suffices (every large DiT weight has an axis of D = 1152 = 8 * 144)."""
  m = get_model("dit", **dit.preset("XL/2", learn_sigma=True, num_classes=1000))
  opt = training.make_optimizer(training.OptimConfig(lr=1e-4, name="adamw"))
  state = jax.eval_shape(lambda k: training.init_state(m, opt, k, jnp.zeros((1, 32, 32, 4))),
                         jax.random.PRNGKey(0))
  mesh = AbstractMesh((1, 8), (parallel.DATA, parallel.MODEL))
  shardings = parallel.state_sharding(mesh, state, fsdp=True, min_size=2**14)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  specs = jax.tree_util.tree_leaves(shardings)
  assert len(leaves) == len(specs)
  big = 0
  for (path, leaf), sh in zip(leaves, specs):
    if int(np.prod(leaf.shape)) >= 2**14:
      big += 1
      assert parallel.MODEL in tuple(sh.spec), (jax.tree_util.keystr(path), leaf.shape, sh.spec)
      axis = tuple(sh.spec).index(parallel.MODEL)
      assert leaf.shape[axis] % 8 == 0
    else:
      assert sh.spec == P()
  # Large leaves of the params: patch embed, timestep MLP (2), class table; per block adaLN,
  # qkv, proj, fc1, fc2; final adaLN and linear. Four copies: params, EMA, Adam's mu and nu.
  assert big == 4 * (4 + 5 * 28 + 2)


# ----------------------------------------------------------------------------- dtype, refusals


@pytest.mark.slow  # 7 s cold; tests/test_training.py checks DiT in bfloat16
def test_bfloat16_compute_with_float32_params():
  x = _x((2, 8, 8, 3))
  m32 = get_model("dit", num_classes=4, **TINY)
  m16 = get_model("dit", num_classes=4, dtype=jnp.bfloat16, **TINY)
  v = _init(m16, x)
  assert {p.dtype for p in jax.tree_util.tree_leaves(v)} == {jnp.dtype(jnp.float32)}
  params = _perturb(v["params"])
  c, y = jnp.array([0.2, 0.8]), jnp.array([0, 3])
  out16 = m16.apply({"params": params}, x, c, y)
  out32 = m32.apply({"params": params}, x, c, y)
  assert out16.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out16)))
  err = np.abs(np.asarray(out16 - out32)).max() / np.abs(np.asarray(out32)).max()
  assert 0 < err < 0.05, err  # bfloat16 differs, within its precision
  jaxpr = str(jax.make_jaxpr(lambda p: m16.apply({"params": p}, x, c, y))(params))
  assert "bf16" in jaxpr


@pytest.mark.parametrize("kw,match", [
    (dict(hidden_size=100, num_heads=3), "hidden_size=100 is not divisible by num_heads=3"),
    (dict(hidden_size=30, num_heads=3), "hidden_size=30 must be divisible by 4"),
    (dict(patch_size=0), "patch_size must be an int >= 1, got 0"),
    (dict(depth=0), "depth must be an int >= 1, got 0"),
    (dict(label_dropout=1.0), "label_dropout=1.0"),
    (dict(num_classes=-1), "num_classes must be >= 0, got -1"),
    (dict(embedding_type="learned"), "embedding_type='learned'"),
])
def test_bad_hyperparameters_are_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    get_model("dit", **{**TINY, **kw})


def test_bad_inputs_are_refused():
  m = get_model("dit", **TINY)
  v = _init(m, _x((1, 8, 8, 1)))
  with pytest.raises(ValueError, match=r"spatial size \(7, 8\) is not divisible by patch_size=2"):
    m.apply(v, jnp.zeros((1, 7, 8, 1)), jnp.zeros((1,)))
  with pytest.raises(ValueError, match="NHWC"):
    m.apply(v, jnp.zeros((1, 8, 8)), jnp.zeros((1,)))
  with pytest.raises(ValueError, match=r"c must have shape \(1,\)"):
    m.apply(v, jnp.zeros((1, 8, 8, 1)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match="unknown DiT preset 'XXL/2'"):
    dit.preset("XXL/2")
  assert dit.preset("XL/2", learn_sigma=True) == dict(depth=28, hidden_size=1152, num_heads=16,
                                                       patch_size=2, learn_sigma=True)
