"""The exact latent pipeline (diffusion/latent.py).

An invertible affine autoencoder maps a Gaussian mixture of images onto a Gaussian mixture of
latents, so every latent quantity has a pixel-space answer: the pushed mixture's density through
the change of variables, the exact latent denoiser decoded (EDM: alpha = 1, the noise level
scales with the map), deterministic samples decoded, and the PF-ODE likelihood. A wrong scale
factor, a shift applied twice or a channel permutation shows up in one of these.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, latent
from diffusion.likelihood import log_likelihood
from diffusion.samplers import build_sampler
from diffusion.schedules import get_schedule

IMAGE = (4, 4, 1)  # images; latents (2, 2, 4) with f = 2
D = 16


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _mixture(seed=0, k=3):
  """A non-symmetric mixture of 4x4x1 images (full covariances: channel order matters)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(0, 1.0, (k, D))
  a = rng.normal(0, 0.4, (k, D, D))
  covs = a @ np.swapaxes(a, 1, 2) + 0.05 * np.eye(D)
  return analytic.GaussianMixture.create(np.array([0.5, 0.3, 0.2]), means, covs)


def _flat(x):
  return x.reshape(len(x), -1)


def test_space_to_depth_round_trip_and_layout():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float64).reshape(2, 4, 6, 3)
  z = latent.space_to_depth(x, 2)
  assert z.shape == (2, 2, 3, 12)
  np.testing.assert_array_equal(latent.depth_to_space(z, 2), x)
  # the first latent position holds the top-left 2x2 block, row-major, channels last
  np.testing.assert_array_equal(z[0, 0, 0], np.concatenate([x[0, 0, 0], x[0, 0, 1], x[0, 1, 0],
                                                            x[0, 1, 1]]))
  with pytest.raises(ValueError, match="not divisible by f=2"):
    latent.space_to_depth(np.zeros((1, 3, 4, 1)), 2)


def test_norms_closed_forms_and_errors():
  z = np.random.default_rng(0).normal(size=(3, 2, 2, 4))
  s = latent.scale_norm(0.18215, 4)
  np.testing.assert_allclose(s.normalize(z), z * 0.18215)
  c = latent.channel_norm(latent.EDM2_CHANNEL_MEAN, latent.EDM2_CHANNEL_STD, 0.5)
  want = (z - np.array(latent.EDM2_CHANNEL_MEAN)) / np.array(latent.EDM2_CHANNEL_STD) * 0.5
  np.testing.assert_allclose(c.normalize(z), want)
  np.testing.assert_allclose(c.denormalize(c.normalize(z)), z, atol=1e-12)
  assert c.log_abs_det((2, 2, 4)) == pytest.approx(
      4 * np.sum(np.log(0.5 / np.array(latent.EDM2_CHANNEL_STD))))
  got = latent.latent_norm("channel", 4, dataset_stats=([1., 2., 3., 4.], [1., 1., 2., 2.]),
                           final_std=1.0)
  np.testing.assert_allclose(got.normalize(np.ones((1, 4)) * 3), [[2., 1., 0., -0.5]])
  with pytest.raises(ValueError, match="accepted"):
    latent.latent_norm("affine", 4)
  with pytest.raises(ValueError, match="3 channels"):
    latent.latent_norm("channel", 3, channel_mean=(0., 0., 0., 0.), channel_std=(1., 1., 1., 1.))
  with pytest.raises(ValueError, match="scale_factor"):
    latent.scale_norm(0.0, 4)
  with pytest.raises(ValueError, match="channels"):
    s.normalize(np.zeros((1, 3)))


def test_channel_stats_of_posterior_samples():
  rng = np.random.default_rng(1)
  mean = rng.normal([1.0, -2.0], [0.5, 2.0], size=(4000, 2))
  std = np.abs(rng.normal(0.3, 0.1, size=(4000, 2)))
  m, s = latent.channel_stats(mean.sum(0), (mean ** 2 + std ** 2).sum(0), 4000)
  z = mean + std * rng.standard_normal(mean.shape)  # what training reads
  np.testing.assert_allclose(m, z.mean(0), atol=0.05)
  np.testing.assert_allclose(s, z.std(0), rtol=0.03)


@pytest.mark.parametrize("normalization", ["scale", "channel"])
def test_pushed_mixture_density_is_the_change_of_variables(normalization):
  gm = _mixture()
  ae = latent.random_linear_autoencoder(0, IMAGE, 2, orthogonal=False)
  norm = (latent.scale_norm(0.7, 4) if normalization == "scale" else
          latent.channel_norm([0.3, -1.0, 0.5, 2.0], [1.5, 0.5, 2.0, 1.0], 0.5))
  gz = ae.push_mixture(gm, norm)
  x = np.asarray(gm.sample0(jax.random.PRNGKey(0), 64, jnp.float64))
  z = norm.normalize(ae.encode(x.reshape((-1,) + IMAGE)))
  # log p_x(x) = log p_z(z) + log |det dz/dx|
  log_det = ae.log_abs_det_encode() + norm.log_abs_det(ae.latent_shape)
  np.testing.assert_allclose(gm.log_prob0(jnp.asarray(x)),
                             gz.log_prob0(jnp.asarray(_flat(z))) + log_det, rtol=1e-9)
  # and the pushed means / covariances are the moments of the encoded samples
  np.testing.assert_allclose(gz.mean(), _flat(norm.normalize(ae.encode(
      gm.means.reshape((-1,) + IMAGE)))).T @ gm.weights, atol=1e-10)


def _isometric_setup(factor_scale=2.5, s=0.18215):
  """An orthogonal mixing times factor_scale and the 'scale' normalisation s: latent noise
  sigma_z is pixel noise sigma_z / c, c = s / factor_scale."""
  ae = latent.random_linear_autoencoder(3, IMAGE, 2, orthogonal=True, scale=factor_scale)
  return ae, latent.scale_norm(s, 4), s / factor_scale


def _decode(ae, norm, z_flat):
  return _flat(ae.decode(norm.denormalize(z_flat.reshape((-1,) + ae.latent_shape))))


def test_exact_latent_denoiser_decodes_to_the_pixel_denoiser():
  gm = _mixture(1)
  ae, norm, c = _isometric_setup()
  gz = ae.push_mixture(gm, norm)
  edm = get_schedule("edm", t_min=0.002, t_max=80.0)
  rng = np.random.default_rng(2)
  for sigma_z in (0.01, 0.3, 2.0, 20.0):
    z_t = jnp.asarray(rng.normal(0, 1 + sigma_z, (8, D)))
    got = _decode(ae, norm, gz.denoise(z_t, jnp.full((8,), sigma_z), schedule=edm))
    want = gm.denoise(jnp.asarray(_decode(ae, norm, z_t)), jnp.full((8,), sigma_z / c),
                      schedule=edm)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)


def test_decoded_latent_samples_are_the_pixel_samples():
  """Heun on the Karras grid is equivariant to scaling sigma: the latent run from z_T, decoded,
  is the pixel run from decode(z_T) on the grid sigma / c (same steps), to float64 rounding."""
  gm = _mixture(2)
  ae, norm, c = _isometric_setup()
  gz = ae.push_mixture(gm, norm)
  lat = get_schedule("edm", t_min=0.002 * c, t_max=80.0 * c)
  pix = get_schedule("edm", t_min=0.002, t_max=80.0)
  z_T = 80.0 * c * jax.random.normal(jax.random.PRNGKey(1), (16, D), jnp.float64)
  key = jax.random.PRNGKey(0)
  zs, _ = build_sampler("heun", lat, num_steps=12, grid="karras")(gz.denoiser(lat), key, z_T)
  xs, _ = build_sampler("heun", pix, num_steps=12, grid="karras")(
      gm.denoiser(pix), key, jnp.asarray(_decode(ae, norm, z_T)))
  np.testing.assert_allclose(_decode(ae, norm, zs), xs, rtol=1e-7, atol=1e-7)


def test_latent_likelihood_through_the_change_of_variables():
  """The latent model's PF-ODE likelihood plus log |det dz/dx| is the pixel density (the prior
  term taken exactly, log p_T of the pushed mixture, not the schedule's N(0, sigma_max^2): that
  approximation alone is 1e-2 nats here)."""
  gm = _mixture(3)
  ae = latent.random_linear_autoencoder(4, IMAGE, 2, orthogonal=False)
  norm = latent.channel_norm([0.3, -1.0, 0.5, 2.0], [1.5, 0.5, 2.0, 1.0], 0.5)
  gz = ae.push_mixture(gm, norm)
  edm = get_schedule("edm", t_min=1e-4, t_max=80.0)  # p at sigma = 1e-4: p_0 to ~1e-5 nats
  x = np.asarray(gm.sample0(jax.random.PRNGKey(5), 4, jnp.float64))
  z = jnp.asarray(_flat(norm.normalize(ae.encode(x.reshape((-1,) + IMAGE)))))
  out = log_likelihood(gz.denoiser(edm), edm, z, rtol=1e-7, atol=1e-7)
  prior = gz.log_prob(out["z"], jnp.full((4,), edm.t_max), edm)
  log_det = ae.log_abs_det_encode() + norm.log_abs_det(ae.latent_shape)
  np.testing.assert_allclose(out["logp"] - out["prior_logp"] + prior + log_det,
                             gm.log_prob0(jnp.asarray(x)), atol=1e-4)


def test_posterior_sample():
  m, s, n = np.ones((2, 3)), np.full((2, 3), 0.5), np.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(latent.posterior_sample(m, s, n), 1 + 0.5 * n)
  assert latent.posterior_sample(m, s, None) is m
