"""The KL-regularised autoencoder objective ('autoencoder'; diffusion/autoencoding.py,
diffusion/objectives/autoencoder.py): the loss against closed forms and a hand-computed case, the
objective's registry facts, and runs through the real driver on the digits (train, resume
exactly, eval's reconstruction metrics, sampling modes refused)."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import autoencoding, objectives, training
from diffusion.config_checks import ConfigError
from diffusion.models import get_model
from diffusion.parameterization import Parameterization
from diffusion.schedules import get_schedule
from experiments import evaluate, results, sample, train
from experiments.validate import validate
from tests.conftest import with_overrides
from tests.golden import flatten, leaf_record, read_state

AE_CONFIG = "configs/digits/autoencoder.py"
# A tiny autoencoder_kl (8 / 16 channels, f = 2: 8x8x1 -> 4x4x2) and a short run.
TINY_AE = {
    "model.net.channels": (8,), "model.net.norm_groups": 4, "model.net.latent_channels": 2,
    "data.batch_size": 16, "data.num_heldout": 40, "training.num_steps": 20,
    "training.log_every": 10, "training.ckpt_every": 10, "training.sample_every": 0,
    "training.async_checkpoints": False, "optim.warmup_steps": 2, "optim.decay": "none",
    "eval.nll_batch_size": 16,
}


def _config(**overrides):
  from experiments.config_files import load_config_file
  return with_overrides(load_config_file(AE_CONFIG), {**TINY_AE, **overrides})


# -- the loss ------------------------------------------------------------------------------------


def _kl_full_covariance(mu, var):
  """KL(N(mu, diag(var)) || N(0, I)) by the general formula for two Gaussians,
  1/2 (tr(S1) + mu^T mu - k - log det S1) with S1 as a full matrix (float64)."""
  s1 = np.diag(var)
  return 0.5 * (np.trace(s1) + mu @ mu - len(mu) - np.linalg.slogdet(s1)[1])


def test_kl_matches_the_closed_form_of_two_gaussians():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 2, 2, 3)).astype(np.float32)
  logvar = rng.normal(scale=1.5, size=(3, 2, 2, 3)).astype(np.float32)
  got = np.asarray(autoencoding.gaussian_kl(mean, logvar))
  want = [_kl_full_covariance(m.ravel().astype(np.float64), np.exp(lv.ravel().astype(np.float64)))
          for m, lv in zip(mean, logvar)]
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  zero = autoencoding.gaussian_kl(np.zeros((2, 4)), np.zeros((2, 4)))  # q = the prior
  np.testing.assert_array_equal(np.asarray(zero), [0.0, 0.0])
  with pytest.raises(ValueError, match="one shape"):
    autoencoding.gaussian_kl(np.zeros((2, 4)), np.zeros((2, 3)))


def _tiny_case():
  """Two 2x2x1 images (0.5 and -0.5 everywhere), posteriors N(1, 1) and N(-2, 4) per image (one
  latent dimension), a decoder that ignores z and returns 0.25 everywhere."""
  x = jnp.concatenate([jnp.full((1, 2, 2, 1), 0.5), jnp.full((1, 2, 2, 1), -0.5)])
  mean = jnp.array([1.0, -2.0]).reshape(2, 1, 1, 1)
  logvar = jnp.array([0.0, math.log(4.0)]).reshape(2, 1, 1, 1)
  return x, (lambda _: (mean, logvar)), (lambda z: jnp.full((z.shape[0], 2, 2, 1), 0.25))


def test_the_loss_on_a_hand_computed_case():
  """L1: |0.25 - 0.5| = 0.25 and |0.25 + 0.5| = 0.75 (mean 0.5); L2: 0.0625 and 0.5625; KL:
  1/2 (1 + 1 - 1 - 0) = 0.5 and 1/2 (4 + 4 - 1 - log 4) (nats per image); D = 4 pixel values.
  'mean': rec + w KL / D per image; 'sum': D times it (LDM's scale)."""
  x, encode, decode = _tiny_case()
  kl = np.array([0.5, 0.5 * (7.0 - math.log(4.0))])
  key = jax.random.PRNGKey(0)
  loss, aux = autoencoding.autoencoder_loss(encode, decode, x, key, recon="l1", kl_weight=0.4)
  assert float(loss) == pytest.approx(0.5 + 0.4 * kl.mean() / 4, rel=1e-6)
  assert float(aux["recon"]) == pytest.approx(0.5) and float(aux["kl"]) == pytest.approx(
      kl.mean(), rel=1e-6)
  assert float(aux["mse"]) == pytest.approx(0.3125) and float(aux["perceptual"]) == 0.0
  np.testing.assert_allclose(aux["per_example"], [0.25 + 0.1 * kl[0], 0.75 + 0.1 * kl[1]],
                             rtol=1e-6)
  l2, _ = autoencoding.autoencoder_loss(encode, decode, x, key, recon="l2", kl_weight=0.4)
  assert float(l2) == pytest.approx(0.3125 + 0.1 * kl.mean(), rel=1e-6)
  total, _ = autoencoding.autoencoder_loss(encode, decode, x, key, kl_weight=0.4,
                                           reduction="sum")
  assert float(total) == pytest.approx(4 * 0.5 + 0.4 * kl.mean(), rel=1e-6)


def test_the_decoder_sees_a_posterior_sample_with_std_exp_logvar_over_2():
  """z = mean + exp(logvar / 2) eps: a decoder returning z shows mean 1 and std 2 for
  logvar = log 4 over 4096 images (a wrong factor, exp(logvar) or none, gives std 4 or 1)."""
  n = 4096
  mean, logvar = jnp.ones((n, 1, 1, 1)), jnp.full((n, 1, 1, 1), math.log(4.0))
  seen = {}

  def decode(z):
    seen["z"] = z
    return jnp.broadcast_to(z, (n, 1, 1, 1))

  autoencoding.autoencoder_loss(lambda _: (mean, logvar), decode, jnp.zeros((n, 1, 1, 1)),
                                jax.random.PRNGKey(1))
  z = np.asarray(seen["z"]).ravel()
  assert abs(z.mean() - 1.0) < 0.1 and abs(z.std() - 2.0) < 0.1  # s.e. 0.03 and 0.02


FEATURES = "test_identity_features"
if FEATURES not in autoencoding.feature_names():
  autoencoding.register_features(FEATURES)(lambda x: [x])  # the pixels' channels as features


def test_the_perceptual_term_is_lpips_without_learned_weights():
  """Identity features on 2-channel pixels: (1, 0) against (0, 1) is |e1 - e2|^2 = 2 per
  position; one position of four differing gives 2 / 4. Added as perceptual_weight * P."""
  x = jnp.zeros((1, 2, 2, 2)).at[..., 0].set(1.0)
  other = x.at[0, 0, 0].set(jnp.array([0.0, 1.0]))
  features = autoencoding.get_features(FEATURES)
  d = autoencoding.perceptual_distance(features, x, other)
  assert float(d[0]) == pytest.approx(0.5, rel=1e-6)
  assert float(autoencoding.perceptual_distance(features, x, x)[0]) == pytest.approx(0.0)
  latent = (jnp.zeros((1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1)))
  loss, aux = autoencoding.autoencoder_loss(
      lambda _: latent, lambda z: other, x, jax.random.PRNGKey(0), kl_weight=0.0,
      perceptual=FEATURES, perceptual_weight=0.3)
  assert float(aux["perceptual"]) == pytest.approx(0.5)
  assert float(loss) == pytest.approx(float(aux["recon"]) + 0.3 * 0.5, rel=1e-6)


@pytest.mark.parametrize("opts,match", [
    (dict(recon="l3"), r"recon='l3' is not accepted"),
    (dict(reduction="avg"), r"reduction='avg' is not accepted"),
    (dict(kl_weight=-1.0), r"kl_weight=-1.0 must be a finite number >= 0"),
    (dict(perceptual_weight=0.1), r"needs a perceptual feature function.*LPIPS"),
    (dict(perceptual="vgg", perceptual_weight=0.1), r"unknown perceptual feature function 'vgg'"),
    (dict(perceptual=FEATURES), r"perceptual_weight=0 has no effect"),
])
def test_bad_loss_options_are_refused_by_name(opts, match):
  x, encode, decode = _tiny_case()
  with pytest.raises(ValueError, match=match):
    autoencoding.autoencoder_loss(encode, decode, x, jax.random.PRNGKey(0), **opts)


def test_reconstruction_stats_and_psnr_convention():
  """PSNR on levels with peak L - 1: an error of one level everywhere at L = 17 is
  10 log10(16^2) = 24.08 dB; the mean image of {0, 2} levels is 1 (error 1 everywhere)."""
  levels = np.stack([np.zeros((2, 2, 1), np.int32), np.full((2, 2, 1), 2, np.int32)])
  x = levels / 8.0 - 1.0
  stats = autoencoding.ReconstructionStats()
  stats.update(levels, x, x + 0.1, levels + 1)
  m = stats.result(17)
  assert m["psnr"] == pytest.approx(10 * math.log10(256.0)) and m["heldout_images"] == 2
  assert m["mse"] == pytest.approx(0.01) and m["mse_levels"] == 1.0
  assert m["psnr_mean_image"] == pytest.approx(10 * math.log10(256.0))
  assert m["mse_mean_image"] == pytest.approx(0.125 ** 2)
  assert autoencoding.psnr(0.0, 255.0) == math.inf


def test_reconstruction_stats_over_batches_equal_the_direct_formulas():
  rng = np.random.default_rng(0)
  levels = rng.integers(0, 256, size=(10, 3, 3, 2))
  rec_levels = np.clip(levels + rng.integers(-3, 4, size=levels.shape), 0, 255)
  x, x_rec = levels / 127.5 - 1.0, rec_levels / 127.5 - 1.0 + 1e-3
  stats = autoencoding.ReconstructionStats()
  for i, j in ((0, 4), (4, 7), (7, 10)):
    stats.update(levels[i:j], x[i:j], x_rec[i:j], rec_levels[i:j])
  m = stats.result(256)
  mse_levels = np.mean((rec_levels - levels) ** 2.0)
  assert m["mse"] == pytest.approx(np.mean((x_rec - x) ** 2)) and m["heldout_images"] == 10
  assert m["psnr"] == pytest.approx(10 * np.log10(255.0 ** 2 / mse_levels))
  assert m["mse_mean_image"] == pytest.approx(np.mean((x.mean(0) - x) ** 2))
  mean_levels = np.rint(levels.mean(0))
  assert m["psnr_mean_image"] == pytest.approx(
      10 * np.log10(255.0 ** 2 / np.mean((mean_levels - levels) ** 2)))


# -- the objective -------------------------------------------------------------------------------


def test_the_objective_is_registered_with_an_autoencoders_facts():
  o = objectives.get("autoencoder")
  assert o.network == "autoencoder" and o.required_outputs == "autoencoder"
  assert o.reconstructs and not o.draws_samples
  assert not o.has_likelihood and not o.predicts_labels and not o.supports_conditional
  assert o.aux_metrics == ("recon", "kl", "mse") and o.batch_source == "data"
  assert o.loss_option_names() == ["kl_weight", "perceptual", "perceptual_weight", "recon",
                                   "reduction"]
  assert "autoencoder" in objectives.NETWORKS
  others = [objectives.get(n) for n in objectives.names() if n != "autoencoder"]
  assert not any(x.reconstructs for x in others)
  assert not objectives.get("classifier").draws_samples and objectives.get("dsm").draws_samples
  assert objectives.get("consistency_training").draws_samples


def test_the_train_steps_loss_is_autoencoder_loss_on_the_networks_encoder_and_decoder():
  net = get_model("autoencoder_kl", out_channels=1, latent_channels=2, channels=(8,),
                  norm_groups=4, mid_attention=False)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
  # Random parameters of the network's shapes (its initializer's compile is slow on CPU).
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype),
      jax.eval_shape(net.init, jax.random.PRNGKey(0), x)["params"])
  cfg = training.StepConfig(objective="autoencoder", loss_opts=(("kl_weight", 0.01),))
  loss = training.make_loss(net, get_schedule("vp"), Parameterization("eps"), cfg)
  key = jax.random.PRNGKey(2)
  got, aux = jax.jit(loss)(params, {"x": x}, key)
  noise_key, _ = jax.random.split(key)

  @jax.jit
  def direct(p):
    return autoencoding.autoencoder_loss(
        lambda v: net.apply({"params": p}, v, method="encode"),
        lambda z: net.apply({"params": p}, z, method="decode"), x, noise_key, kl_weight=0.01)[0]

  want = direct(params)
  assert float(got) == float(want) and set(aux) >= {"recon", "kl", "mse"}


# -- the driver ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_digits_autoencoder_trains_resumes_exactly_and_evaluates(tmp_path, capsys):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  out = train.train(_config(), straight)
  assert out["status"] == "done" and out["step"] == 20 and np.isfinite(out["loss"])
  assert "a KL-regularised autoencoder: l1 reconstruction" in capsys.readouterr().out
  train.train(_config(**{"training.num_steps": 10}), resumed)
  train.train(_config(), resumed)
  assert "resumed from the checkpoint at step 10" in capsys.readouterr().out
  a, b = flatten(read_state(straight)), flatten(read_state(resumed))
  assert sorted(a) == sorted(b) and int(a["step"]) == 20
  for name in a:
    assert leaf_record(a[name]) == leaf_record(b[name]), name
  rows = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20]
  assert all(np.isfinite(r["recon"]) and r["kl"] >= 0 and r["mse"] > 0 for r in rows)
  assert os.listdir(os.path.join(straight, "plots")) == ["reconstructions_00000020.png"]

  m = evaluate.run(_config(), straight)
  assert m["step"] == 20 and m["heldout_images"] == 40 and m["num_levels"] == 17
  assert m["latent_shape"] == [8, 8, 2] and m["kl"] > 0 and m["latent_std"] > 0
  assert m["psnr"] == pytest.approx(10 * math.log10(16 ** 2 / m["mse_levels"]))
  assert 0 < m["mse"] and 0 < m["mse_mean_image"]
  assert m["name"].startswith("autoencoder_heldout_")
  here = os.path.join(straight, "eval", "step_20", m["name"])
  assert json.load(open(os.path.join(here, "metrics.json"))) == m
  assert os.path.exists(os.path.join(here, "reconstructions.png"))
  assert os.path.exists(os.path.join(straight, "eval", "reconstructions.png"))
  key = results.key(_config(), "eval", 20)
  assert set(key) == {"mode", "checkpoint_step", "seed", "data", "eval"}

  for mode in ("sample", "sweep", "pairs"):
    with pytest.raises(ConfigError, match=rf"--mode={mode}: .*'autoencoder' trains an "
                                          rf"autoencoder, which draws no samples"):
      validate(_config(), mode, device_count=1, process_count=1)
  with pytest.raises(ConfigError, match="draws no samples"):
    sample.run(_config(), straight)


@pytest.mark.parametrize("overrides,match", [
    ({"training.objective": "dsm"}, r"outputs='autoencoder', trained by .*\['autoencoder'\]"),
    ({"model.name": "ddpm_unet", "model.net": {"ch": 8}},
     r"objective='autoencoder' trains a network registered with outputs='autoencoder'"),
    ({"model.conditional": True}, r"takes no labels"),
    ({"training.t_min": 0.01}, r"config.training.t_min=0.01 .* has no times"),
    ({"training.loss_opts.perceptual_weight": 0.5}, r"loss_opts: perceptual_weight=0.5 needs"),
])
def test_bad_autoencoder_configs_are_refused_in_one_line(overrides, match):
  with pytest.raises(ConfigError, match=match):
    validate(_config(**overrides), "train", device_count=1, process_count=1)


def test_posthoc_emas_hint_evaluates_an_autoencoder():
  from experiments import posthoc_ema
  line = posthoc_ema.sample_hint(AE_CONFIG, _config(), "/tmp/o")
  assert line.startswith(f"evaluate with: python -m experiments.main --config={AE_CONFIG} ")
  assert line.endswith("--workdir=/tmp/o --mode=eval")
