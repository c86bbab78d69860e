"""LPIPS against the reference (lpips.LPIPS, torch) on fixed pairs: seeded random trunks, the
wheel's real v0.1 channel weights (tests/data/make_lpips_fixture.py), and its refusals."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.convert.files import read_weights
from diffusion.metrics import lpips

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "lpips_fixture.npz")
SEEDS = {"alex": 0, "vgg": 1}  # make_lpips_fixture.SEED


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def params():
  return {net: lpips.params_from_state_dicts(
      net, lpips.random_trunk(net, SEEDS[net]), read_weights(lpips.channel_weights_path(net)))
      for net in lpips.NETS}


def _float(u):  # make_lpips_fixture.to_float
  return u.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _cases(fixture):
  return sorted(k[2:] for k in fixture if k.startswith("d/"))


def test_seeded_trunks_and_the_wheels_channel_weights_are_the_references(fixture):
  for net in lpips.NETS:
    for k, v in lpips.random_trunk(net, SEEDS[net]).items():
      if k.endswith(".weight"):
        want = float(fixture[f"trunk_sum/{net}/{k}"])
        assert abs(float(v.astype(np.float64).sum()) - want) < 1e-6 * max(1.0, abs(want)), k
    lin = read_weights(lpips.channel_weights_path(net))  # legacy torch pickles, no torch
    for l in range(5):
      np.testing.assert_array_equal(lin[f"lin{l}.model.1.weight"], fixture[f"lin/{net}/lin{l}"])


def test_distance_and_each_layer_match_the_reference(fixture, params):
  names = _cases(fixture)
  assert len(names) == 6
  for name in names:
    net, resize = str(fixture[f"net/{name}"]), int(fixture[f"resize/{name}"]) or None
    x, y = _float(fixture[f"x/{name}"]), _float(fixture[f"y/{name}"])
    fn = jax.jit(lpips.layer_distances, static_argnums=(3, 4))
    layers = np.asarray(fn(params[net], jnp.asarray(x), jnp.asarray(y), net, resize))
    # Per layer first (a wrong tap or channel weight shows here), then the sum.
    np.testing.assert_allclose(layers, fixture[f"layers/{name}"], rtol=1e-5, atol=1e-9,
                               err_msg=name)
    np.testing.assert_allclose(layers.sum(1), fixture[f"d/{name}"], rtol=1e-5, err_msg=name)
  got = lpips.distance(params[net], jnp.asarray(x[:1]), jnp.asarray(y[:1]), net, resize)
  np.testing.assert_allclose(np.asarray(got), fixture[f"d/{name}"][:1], rtol=1e-5)


def test_distance_is_zero_on_equal_images_symmetric_and_differentiable(params):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  d = jax.jit(lambda a, b: lpips.distance(params["alex"], a, b, "alex", resize=32))
  np.testing.assert_allclose(np.asarray(d(x, x)), 0.0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(d(x, y)), np.asarray(d(y, x)), rtol=1e-6)
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(d(a, b))))
  g_same, g = grad(x, x), grad(x, y)
  assert float(jnp.max(jnp.abs(g_same))) < 1e-6 < float(jnp.max(jnp.abs(g)))
  assert bool(jnp.all(jnp.isfinite(g)))
  # First-order check of the gradient along a random direction.
  v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  h = 1e-2
  fd = (jnp.sum(d(x + h * v, y)) - jnp.sum(d(x - h * v, y))) / (2 * h)
  np.testing.assert_allclose(float(fd), float(jnp.sum(g * v)), rtol=2e-2)


def test_bilinear_matrix_is_torchs_upsampling():
  m = lpips.bilinear_matrix(2, 4)  # torch: [[1, 0], [.75, .25], [.25, .75], [0, 1]]
  np.testing.assert_allclose(m, [[1, 0], [.75, .25], [.25, .75], [0, 1]])
  np.testing.assert_allclose(lpips.bilinear_matrix(8, 224).sum(1), 1.0)
  np.testing.assert_allclose(lpips.bilinear_matrix(5, 5), np.eye(5))


def test_refusals_name_the_bad_value(tmp_path, params):
  x = jnp.zeros((1, 40, 40, 3))
  with pytest.raises(ValueError, match=r"net='squeeze'.*accepted: \['alex', 'vgg'\]"):
    lpips.distance(params["alex"], x, x, "squeeze")
  with pytest.raises(ValueError, match="one shape"):
    lpips.distance(params["alex"], x, jnp.zeros((1, 40, 41, 3)), "alex")
  with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
    lpips.distance(params["alex"], jnp.zeros((1, 40, 40, 2)), jnp.zeros((1, 40, 40, 2)))
  with pytest.raises(ValueError, match="8x8 are smaller.*resize=224"):
    lpips.distance(params["alex"], jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="resize=16 must be None or an int >= 31"):
    lpips.distance(params["alex"], x, x, "alex", resize=16)
  with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
    lpips.load_params("alex", str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match="features.0.weight has shape .*vgg16-397923af.pth"):
    lpips.params_from_state_dicts("vgg", lpips.random_trunk("alex"),
                                  read_weights(lpips.channel_weights_path("vgg")))
  with pytest.raises(ValueError, match="lin0.model.1.weight: got \\(1, 64, 1, 1\\), net='vgg'"
                                       "|lin1.model.1.weight"):
    lpips.params_from_state_dicts("vgg", lpips.random_trunk("vgg"),
                                  read_weights(lpips.channel_weights_path("alex")))
  with pytest.raises(FileNotFoundError, match="channel-weight file"):
    lpips.channel_weights_path("alex", str(tmp_path / "nope.pth"))
