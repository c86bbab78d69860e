"""autoencoder_kl (Stable Diffusion's KL VAE) and the diffusers AutoencoderKL converter: outputs
against real diffusers, parameter counts, shape errors, and the mapping's refusals. No torch
needed: the fixtures (tests/data/convert/diffusers_vae, made by
tests/data/convert/make_vae_fixtures.py) hold random-weight AutoencoderKLs saved by diffusers and
their float64 / float32 outputs."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.convert import diffusers_vae as dv
from diffusion.convert import files
from diffusion.convert.common import ConversionError
from diffusion.models import autoencoder, capabilities, get_model, layers, model_outputs

ROOT = os.path.join(os.path.dirname(__file__), "data", "convert", "diffusers_vae")
FIXTURES = ["vae_small", "vae_three_levels", "vae_bin_legacy", "vae_no_attention"]
SD_PARAMS = 83_653_863  # diffusers AutoencoderKL with SD's config (torch count)


def _nhwc(a, dtype):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1), dtype)


def _nchw(a):
  return np.asarray(a, np.float64).transpose(0, 3, 1, 2)


def _outputs(conv, ref, dtype):
  """Our network's counterparts of reference.npz's arrays, computed in ``dtype`` (eagerly:
  quicker than compiling these tiny networks)."""
  net = get_model(conv.model, **conv.net, dtype=dtype)
  v = {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), conv.params)}
  x = _nhwc(ref["x"], dtype)
  rec, mean, logvar = net.apply(v, x)
  rec_noise, _, _ = net.apply(v, x, noise=_nhwc(ref["noise"], dtype))
  dec = net.apply(v, _nhwc(ref["z"], dtype), method="decode")
  return dict(mean=_nchw(mean), std=_nchw(jnp.exp(0.5 * logvar)), logvar=_nchw(logvar),
              dec=_nchw(dec), rec=_nchw(rec), rec_noise=_nchw(rec_noise))


def _rel(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


# float64 parity is slow on 2 cores (a fresh float64 compile each, ~40 s): the default suite
# checks float32 on every fixture, `pytest -m slow` float64 too.
PARITY_CASES = [pytest.param(n, f64, marks=() if not f64 else pytest.mark.slow)
                for n in FIXTURES for f64 in (False, True)]


@pytest.mark.parametrize("name,float64", PARITY_CASES)
def test_converted_autoencoder_matches_diffusers(name, float64):
  folder = os.path.join(ROOT, name)
  conv = dv.convert(folder)
  ref = np.load(os.path.join(folder, "reference.npz"))
  # Measured: float64 <= 3.4e-15, float32 <= 1.3e-6 relative to the largest |value|.
  if float64:
    with jax.enable_x64(True):
      out64 = _outputs(conv, ref, jnp.float64)
    for k in ("mean", "std", "logvar", "dec", "rec", "rec_noise"):
      assert _rel(out64[k], ref[k]) < 1e-12, (k, _rel(out64[k], ref[k]))
    return
  out32 = _outputs(conv, ref, jnp.float32)
  for k in ("mean", "std", "logvar", "dec", "rec", "rec_noise"):
    assert _rel(out32[k], ref[k]) < 1e-5, (k, _rel(out32[k], ref[k]))
  for k in ("mean", "std", "dec", "rec"):  # and diffusers' own float32 forward
    assert _rel(out32[k], ref[f"{k}_f32"]) < 1e-5, k


def test_converted_metadata():
  small = dv.convert(os.path.join(ROOT, "vae_small"))
  assert small.model == "autoencoder_kl" and small.image_channels == 3
  assert small.net == dict(out_channels=3, latent_channels=4, channels=(8, 16),
                           num_res_blocks=1, norm_groups=4, norm_eps=1e-6, mid_attention=True,
                           use_quant_conv=True, use_post_quant_conv=True)
  assert (small.scaling_factor, small.shift_factor, small.latents_mean) == (0.18215, None, None)
  xl = dv.convert(os.path.join(ROOT, "vae_three_levels"))
  assert xl.scaling_factor == 0.13025 and xl.force_upcast
  assert xl.latents_mean == (0.1, -0.2, 0.3, -0.4) and xl.latents_std == (1.5, 0.5, 2.0, 1.0)
  legacy = dv.convert(os.path.join(ROOT, "vae_bin_legacy"))
  assert (legacy.scaling_factor, legacy.shift_factor, legacy.image_channels) == (0.3611, 0.1159, 1)
  assert not legacy.net["use_quant_conv"] and not legacy.net["use_post_quant_conv"]
  assert "quant_conv" not in legacy.params and "post_quant_conv" not in legacy.params
  assert any("deprecated attention names" in n for n in legacy.notes)
  assert legacy.source["weights"].endswith(".bin") and len(legacy.source["sha256"]) == 64
  assert not dv.convert(os.path.join(ROOT, "vae_no_attention")).net["mid_attention"]


# -- the network ------------------------------------------------------------------------------


def _count(preset, image_shape):
  net = get_model("autoencoder_kl", **autoencoder.preset(preset))
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1,) + image_shape)))["params"]
  return layers.count_params(shapes), {k: layers.count_params(v) for k, v in shapes.items()}


def test_parameter_counts():
  total, parts = _count("sd", (64, 64, 3))
  assert total == SD_PARAMS  # diffusers' AutoencoderKL(SD config), counted with torch
  assert parts == dict(encoder=34_163_592, decoder=49_490_179, quant_conv=72,
                       post_quant_conv=20)
  assert _count("small", (8, 8, 3))[0] == 658_375
  assert _count("small_f4", (28, 28, 3))[0] == 954_567


def test_registry_and_presets():
  assert model_outputs("autoencoder_kl") == "autoencoder"
  caps = capabilities(get_model("autoencoder_kl", **autoencoder.preset("small")))
  assert caps.outputs == "autoencoder" and caps.dtype and caps.num_classes == 0
  assert autoencoder.preset("sd") == dict(channels=(128, 256, 512, 512), num_res_blocks=2,
                                          norm_groups=32, latent_channels=4, out_channels=3)
  assert autoencoder.preset("small", latent_channels=1)["latent_channels"] == 1
  with pytest.raises(ValueError, match="unknown autoencoder preset 'xl'"):
    autoencoder.preset("xl")


def test_latent_shape_and_factor():
  assert autoencoder.downsample_factor((128, 256, 512, 512)) == 8
  assert autoencoder.latent_shape((256, 256, 3), (128, 256, 512, 512), 4) == (32, 32, 4)
  assert autoencoder.latent_shape((28, 28, 1), (32, 64, 64), 2) == (7, 7, 2)
  assert autoencoder.latent_shape((8, 8, 1), (32,), 3) == (8, 8, 3)
  with pytest.raises(ValueError, match=r"28x30 is not divisible .* f = 4"):
    autoencoder.latent_shape((28, 30, 1), (32, 64, 64), 4)
  with pytest.raises(ValueError, match=r"must be \(H, W, C\)"):
    autoencoder.latent_shape((28, 28), (32, 64), 4)
  with pytest.raises(ValueError, match="latent_channels must be >= 1"):
    autoencoder.latent_shape((28, 28, 1), (32, 64), 0)
  with pytest.raises(ValueError, match="at least one level"):
    autoencoder.downsample_factor(())


@pytest.fixture(scope="module")
def tiny():
  """(net, variables, x) of the converted vae_small fixture (16x16x3 -> 8x8x4): a network
  with parameters, without the cost of an init."""
  conv = dv.convert(os.path.join(ROOT, "vae_small"))
  x = _nhwc(np.load(os.path.join(ROOT, "vae_small", "reference.npz"))["x"], jnp.float32)
  return get_model(conv.model, **conv.net), {"params": conv.params}, x


def test_shapes_and_shape_errors(tiny):
  net, v, x = tiny
  rec, mean, logvar = net.apply(v, x)
  assert rec.shape == (3, 16, 16, 3) and mean.shape == logvar.shape == (3, 8, 8, 4)
  assert rec.dtype == mean.dtype == jnp.float32
  assert net.apply(v, jnp.zeros((1, 4, 6, 3)), method="encode")[0].shape == (1, 2, 3, 4)
  with pytest.raises(ValueError, match="not divisible by the autoencoder's downsampling"):
    net.apply(v, jnp.zeros((1, 6, 7, 3)), method="encode")
  with pytest.raises(ValueError, match="NHWC"):
    net.apply(v, jnp.zeros((8, 8, 3)), method="encode")
  with pytest.raises(ValueError, match=r"z must have shape \(B, h, w, 4\)"):
    net.apply(v, jnp.zeros((1, 4, 4, 3)), method="decode")
  with pytest.raises(ValueError, match="noise must have the latent's shape"):
    net.apply(v, x, noise=jnp.zeros((3, 8, 8, 1)))
  with pytest.raises(ValueError, match="not class-conditional"):
    net.apply(v, x, labels=jnp.zeros((3,), jnp.int32))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=()), "non-empty sequence"),
    (dict(channels=(32, 48), norm_groups=32), "does not divide"),
    (dict(latent_channels=0), "latent_channels must be an int >= 1"),
    (dict(num_res_blocks=0), "num_res_blocks must be an int >= 1"),
    (dict(norm_eps=0.0), "norm_eps must be > 0"),
])
def test_constructor_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model("autoencoder_kl", **kwargs)


def test_logvar_is_clipped_like_diffusers(tiny):
  """quant_conv's logvar bias pushed to +-1000: logvar lands on diffusers' clamp [-30, 20]."""
  net, v, x = tiny
  for bias, want in ((1000.0, 20.0), (-1000.0, -30.0)):
    p = jax.tree_util.tree_map(np.copy, v["params"])
    p["quant_conv"]["bias"] = np.concatenate([p["quant_conv"]["bias"][:4],
                                              np.full((4,), bias, np.float32)])
    _, logvar = net.apply({"params": p}, x, method="encode")
    assert np.all(np.asarray(logvar) == want)


def test_reparameterised_sample(tiny):
  """__call__ with noise decodes mean + exp(logvar / 2) * noise."""
  net, v, x = tiny
  mean, logvar = net.apply(v, x, method="encode")
  noise = jax.random.normal(jax.random.PRNGKey(2), mean.shape)
  rec, _, _ = net.apply(v, x, noise=noise)
  want = net.apply(v, mean + jnp.exp(0.5 * logvar) * noise, method="decode")
  np.testing.assert_allclose(rec, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_is_close():
  conv = dv.convert(os.path.join(ROOT, "vae_small"))
  ref = np.load(os.path.join(ROOT, "vae_small", "reference.npz"))
  net = get_model(conv.model, **conv.net, dtype=jnp.bfloat16)
  rec, mean, _ = net.apply({"params": conv.params}, _nhwc(ref["x"], jnp.float32))
  assert mean.dtype == rec.dtype == jnp.float32  # outputs in float32, params stay float32
  # Measured 1.6e-2 (mean) and 2.9e-2 (rec); above 1e-4: the layers did compute in bfloat16.
  for got, want in ((mean, ref["mean"]), (rec, ref["rec"])):
    assert 1e-4 < _rel(_nchw(got), want) < 5e-2


# -- the mapping's refusals -------------------------------------------------------------------


def _state_and_config(name):
  folder = os.path.join(ROOT, name)
  cfg, _ = dv.vae_config(dv.read_json(os.path.join(folder, "config.json")))
  return files.read_weights(dv.find_weights(folder)), cfg


def test_every_tensor_is_used_exactly_once():
  state, cfg = _state_and_config("vae_small")
  shapes = dv.target_shapes(dv.net_kwargs(cfg), cfg["in_channels"])
  params = dv.map_parameters(state, cfg, shapes)
  assert layers.count_params(params) == sum(a.size for a in state.values())
  extra = dict(state, **{"decoder.extra_layer.weight": np.zeros((3,), np.float32)})
  with pytest.raises(ConversionError, match="not used by the mapping.*decoder.extra_layer"):
    dv.map_parameters(extra, cfg, shapes)
  missing = {k: v for k, v in state.items() if k != "encoder.mid_block.attentions.0.to_k.bias"}
  with pytest.raises(ConversionError,
                     match="missing parameter 'encoder.mid_block.attentions.0.to_k.bias'"):
    dv.map_parameters(missing, cfg, shapes)
  wrong = dict(state, **{"quant_conv.weight": np.zeros((8, 8, 3, 3), np.float32)})
  with pytest.raises(ConversionError, match=r"1x1 conv weight must have shape \(O, I, 1, 1\)"):
    dv.map_parameters(wrong, cfg, shapes)
  bigger = dict(state, **{"decoder.conv_out.bias": np.zeros((4,), np.float32)})
  with pytest.raises(ConversionError, match="shape mismatch at 'decoder/conv_out/bias'"):
    dv.map_parameters(bigger, cfg, shapes)


def test_mixed_attention_names_are_refused():
  """A block with deprecated names is read by them only: a leftover current name is unused."""
  state, cfg = _state_and_config("vae_bin_legacy")
  assert dv.legacy_attention_paths(state) == {"encoder.mid_block.attentions.0": True,
                                              "decoder.mid_block.attentions.0": True}
  shapes = dv.target_shapes(dv.net_kwargs(cfg), cfg["in_channels"])
  dv.map_parameters(state, cfg, shapes)
  mixed = dict(state)
  mixed["decoder.mid_block.attentions.0.to_q.weight"] = mixed.pop(
      "decoder.mid_block.attentions.0.query.weight")
  with pytest.raises(ConversionError, match="attentions.0.query.weight"):
    dv.map_parameters(mixed, cfg, shapes)


def test_compvis_layout_is_refused():
  state = {"encoder.down.0.block.0.norm1.weight": np.ones((8,), np.float32)}
  _, cfg = _state_and_config("vae_small")
  with pytest.raises(ConversionError, match="CompVis / ldm layout.*from_single_file"):
    dv.map_parameters(state, cfg, {})


@pytest.mark.parametrize("change,match", [
    (dict(act_fn="gelu"), "act_fn='gelu'"),
    (dict(_class_name="VQModel"), "_class_name='VQModel'"),
    (dict(down_block_types=["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]),
     "down_block_types \\['AttnDownEncoderBlock2D'\\] unsupported"),
    (dict(up_block_types=["UpDecoderBlock2D"]), "1 up_block_types for 2 block_out_channels"),
    (dict(norm_num_groups=3), "norm_num_groups=3 does not divide"),
    (dict(latents_mean=[0.0, 1.0]), "latents_mean=.* latent_channels=4"),
    (dict(scaling_factor=0), "scaling_factor=0 must be a finite number > 0"),
    (dict(use_quant_conv="yes"), "use_quant_conv='yes' must be true or false"),
])
def test_config_refusals(change, match):
  raw = dv.read_json(os.path.join(ROOT, "vae_small", "config.json"))
  with pytest.raises(ConversionError, match=match):
    dv.vae_config({**raw, **change})


def test_config_defaults_and_ignored_keys(tmp_path):
  """A config.json of an older diffusers lacks keys (diffusers' defaults apply); keys
  AutoencoderKL does not take are noted and ignored, as diffusers does."""
  folder = tmp_path / "vae"
  shutil.copytree(os.path.join(ROOT, "vae_small"), folder)
  raw = json.loads((folder / "config.json").read_text())
  for k in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", "force_upcast",
            "shift_factor", "latents_mean", "latents_std", "scaling_factor"):
    del raw[k]
  raw["double_z"] = True
  (folder / "config.json").write_text(json.dumps(raw))
  conv = dv.convert(str(folder))
  assert conv.scaling_factor == 0.18215 and conv.net["use_quant_conv"]
  assert any("ignored as diffusers does: ['double_z']" in n for n in conv.notes)
