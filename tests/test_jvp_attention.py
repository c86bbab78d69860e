"""sCM differentiates the network in (x, t) by ``jax.jvp``: forward-mode through every network
with attention (dit: ``jax.nn.dot_product_attention(implementation=None)``, XLA's; ddpm_unet,
ncsnpp, edm2_unet: einsum + softmax) equals central finite differences (float64). The cuDNN
kernel (implementation='cudnn') has no jvp rule, so the models keep implementation=None
(docs/consistency.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import get_model

MODELS = {
    "dit": dict(patch_size=2, hidden_size=16, depth=1, num_heads=2),
    "ddpm_unet": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                      norm_groups=4),
    "ncsnpp": dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    "edm2_unet": dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                      channels_per_head=4),
}


def _random_params(model, x, c):
  """Random parameters of ``model``'s structure (no compiled init)."""
  shapes = jax.eval_shape(lambda k: model.init({"params": k}, x, c), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def fill(s):
    scale = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) >= 2 else 0.3
    return jnp.asarray(rng.normal(size=s.shape) * scale + (1.0 if len(s.shape) < 2 else 0.0),
                       jnp.float64)

  return jax.tree_util.tree_map(fill, shapes)["params"]


def _check(name):
  # float64 network and inputs; the noise embeddings round c to float32 (relative 6e-8), so the
  # central difference with h = 1e-4 carries an error of about 1e-4 of the c-derivative; a wrong
  # jvp rule is O(1).
  with jax.enable_x64(True):
    model = get_model(name, **MODELS[name], dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3), jnp.float64)
    c = jnp.array([0.3, 0.9], jnp.float64)
    params = _random_params(model, x, c)
    f = jax.jit(lambda x_, c_: model.apply({"params": params}, x_, c_))
    vx = jax.random.normal(jax.random.PRNGKey(2), x.shape, jnp.float64)
    vc = jnp.ones_like(c)
    _, tangent = jax.jit(lambda a, b: jax.jvp(f, (a, b), (vx, vc)))(x, c)
    h = 1e-4
    fd = (f(x + h * vx, c + h * vc) - f(x - h * vx, c - h * vc)) / (2 * h)
    scale = float(jnp.max(jnp.abs(fd)))
    assert tangent.dtype == jnp.float64 and scale > 1e-2
    err = float(jnp.max(jnp.abs(tangent - fd))) / scale
  assert err < 1e-3, f"{name}: jvp vs finite differences, max error {err:.2e} of max |fd|"


@pytest.mark.parametrize("name", ["dit"])
def test_jvp_through_attention_equals_finite_differences(name):
  _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddpm_unet", "ncsnpp", "edm2_unet"])
def test_jvp_through_attention_equals_finite_differences_slow(name):
  _check(name)
