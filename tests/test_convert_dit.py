"""DiT checkpoints (facebookresearch/DiT) -> dit: outputs against DiT's own model code, the release
conventions the network needed, the mapping's refusals, the released DiT-XL/2 shapes and count,
and the converted config. No torch needed: the fixture (tests/data/convert/dit, made by
tests/data/convert/make_dit_fixtures.py) holds a random-weight DiT saved as the releases are,
with the outputs of DiT's forward and forward_with_cfg."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.convert import dit as cd
from diffusion.convert import files
from diffusion.convert.common import ConversionError, flatten
from diffusion.models import dit, get_model, layers

from tests.test_dit import _released_count

ROOT = os.path.join(os.path.dirname(__file__), "data", "convert", "dit")
CKPT = os.path.join(ROOT, "dit_tiny.pt")
HEADS = 2  # the fixture's (not visible in any shape)


@pytest.fixture(scope="module")
def ref():
  return dict(np.load(os.path.join(ROOT, "reference.npz")))


@pytest.fixture(scope="module")
def conv():
  return cd.convert(CKPT, num_heads=HEADS)


def _ours(conv, x_nchw, t, y, dtype=jnp.float32, with_variance=True, **net_overrides):
  """Our converted network on DiT's inputs (NCHW -> NHWC and back), fed DiT's timesteps, which
  is what the converted schedule feeds it (time_input 'index': c = 1000 t - 1)."""
  net = get_model("dit", **{**conv.net, **net_overrides}, dtype=dtype)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), conv.params)
  x = jnp.asarray(np.asarray(x_nchw).transpose(0, 2, 3, 1), dtype)
  out = net.apply({"params": params}, x, jnp.asarray(t, dtype), jnp.asarray(y),
                  with_variance=with_variance)
  return np.asarray(out, np.float64).transpose(0, 3, 1, 2)


def _rel(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


def test_converted_network_matches_dits_own_outputs(conv, ref):
  """All 8 output channels (eps and the variance interpolation) against DiT's forward, for
  t = 0, 1, 17, 500.5, 998, 999 and labels including the NULL class."""
  out32 = _ours(conv, ref["x"], ref["t"], ref["y"])
  # Measured 2.4e-6 (float32) against both DiT's float32 and float64 forwards: the sinusoidal
  # features are float32 in both codes and differ by up to 3e-5 at t = 999 (next test).
  assert _rel(out32, ref["out_f32"]) < 1e-5 and _rel(out32, ref["out"]) < 1e-5
  with jax.enable_x64(True):
    out64 = _ours(conv, ref["x"], ref["t"], ref["y"], jnp.float64)
  assert _rel(out64, ref["out"]) < 1e-5
  # At t = 0 the features are exact (cos 0, sin 0) in both codes: measured 3.7e-8, the float32
  # logits of jax.nn.dot_product_attention (which keeps them float32 for float64 inputs).
  assert np.abs(out64[0] - ref["out"][0]).max() / np.abs(ref["out"]).max() < 1e-6
  # Without with_variance: the first C = 4 channels (eps).
  eps = _ours(conv, ref["x"], ref["t"], ref["y"], with_variance=False)
  np.testing.assert_array_equal(eps, out32[:, :4])


@pytest.mark.parametrize("override", [
    dict(embedding_convention="ddpm"), dict(pos_embed_axes="hw"), dict(num_heads=1),
    dict(num_heads=4)])
def test_each_release_convention_is_needed(conv, ref, override):
  """The options the converter sets (and the head count it cannot read from the shapes) change
  the output far beyond the parity tolerance: the parity test can fail."""
  out = _ours(conv, ref["x"], ref["t"], ref["y"], **override)
  assert _rel(out, ref["out_f32"]) > 1e-2, override


def test_timestep_features_are_dits(ref):
  """layers.positional_embedding(convention='adm') = DiT's TimestepEmbedder features, both
  float32: equal at t = 0, within float32 rounding of t w_i (up to 3e-5 at t = 999)."""
  ours = np.asarray(layers.positional_embedding(jnp.asarray(ref["t"], jnp.float32), 256,
                                                convention="adm"))
  err = np.abs(ours - ref["temb_dit"]).max(axis=1)
  assert err[0] == 0 and err.max() < 1e-4, err
  ddpm = np.asarray(layers.positional_embedding(jnp.asarray(ref["t"], jnp.float32), 256))
  assert np.abs(ddpm - ref["temb_dit"]).max() > 0.5  # the default is another convention


def test_positional_embedding_is_the_checkpoints(ref):
  """The checkpoint's frozen pos_embed is dit.sincos_2d with the column index first ('wh'),
  bit for bit; our default ('hw') is the same table with the halves swapped."""
  wh = dit.sincos_2d(32, 4, 4, "wh")
  np.testing.assert_array_equal(wh, ref["pos_embed"])
  hw = dit.sincos_2d(32, 4, 4, "hw")
  np.testing.assert_array_equal(hw, np.concatenate([wh[:, 16:], wh[:, :16]], axis=1))
  axes, errors = cd.pos_embed_axes(ref["pos_embed"][None], 4)
  assert axes == "wh" and errors["wh"] == 0 and errors["hw"] > 1


def test_dits_guidance_is_reproduced_on_its_three_channels(conv, ref):
  """DiT's forward_with_cfg = eps_u + s (eps_c - eps_u) on the first 3 channels only, the rest
  unguided; guiding all 4 (what config.guidance 'cfg' does) changes the 4th channel."""
  out = _ours(conv, ref["cfg_x"], ref["cfg_t"], ref["cfg_y"])
  half, s = len(out) // 2, float(ref["cfg_scale"])
  cond, uncond = out[:half], out[half:]
  guided = uncond + s * (cond - uncond)
  want = np.concatenate([np.concatenate([guided[:, :3]] * 2), out[:, 3:]], axis=1)
  assert _rel(want, ref["cfg_out_f32"]) < 1e-5
  assert np.abs(guided[:, 3] - cond[:, 3]).max() > 1e-2


def test_architecture_and_schedule_of_the_conversion(conv):
  arch = cd.Architecture(**conv.source["architecture"])
  assert arch == cd.Architecture(depth=2, hidden_size=32, num_heads=2, patch_size=2,
                                 mlp_ratio=4.0, in_channels=4, input_size=8, num_classes=10,
                                 learn_sigma=True, frequency_dim=256, name=None)
  assert conv.model == "dit" and conv.image_shape == (8, 8, 4)
  assert conv.net["embedding_convention"] == "adm" and conv.net["pos_embed_axes"] == "wh"
  assert conv.latent == dict(image_size=64, normalization="scale", scale_factor=0.18215)
  assert conv.sde == ("vp_discrete", dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                          beta_schedule="linear", t_min=1e-3, t_max=1.0))
  assert (conv.parameterization, conv.time_input, conv.net["embedding_scale"]) == (
      "eps", "index", 1.0)
  assert conv.clip_denoised is False
  cont = cd.convert(CKPT, num_heads=HEADS, schedule="continuous")
  assert cont.sde == ("vp", dict(beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0))
  assert (cont.time_input, cont.net["embedding_scale"]) == ("t", 999.0)
  with pytest.raises(ConversionError, match="schedule='exact'"):
    cd.convert(CKPT, num_heads=HEADS, schedule="exact")


def _state():
  return files.read_weights(CKPT)


def test_architecture_checks_name_the_field():
  state = _state()
  with pytest.raises(ConversionError, match="attention heads is not stored.*pass num_heads"):
    cd.infer_architecture(state)
  with pytest.raises(ConversionError, match="not DiT-XL/2: depth 2 in the checkpoint, 28"):
    cd.infer_architecture(state, "DiT-XL/2")
  with pytest.raises(ConversionError, match="model='DiT-XXL/2'; accepted"):
    cd.infer_architecture(state, "DiT-XXL/2")
  with pytest.raises(ConversionError, match="11 rows; num_classes=11 needs 12"):
    cd.infer_architecture(state, num_heads=2, num_classes=11)
  with pytest.raises(ConversionError, match="num_heads=3 does not divide the width 32"):
    cd.infer_architecture(state, num_heads=3)
  assert cd.infer_architecture(state, num_heads=2, num_classes=10).num_classes == 10
  bad = dict(state, **{"final_layer.linear.weight": np.zeros((40, 32), np.float32)})
  with pytest.raises(ConversionError, match="40 outputs"):
    cd.infer_architecture(bad, num_heads=2)


@pytest.mark.parametrize("change,match", [
    (lambda s: s.pop("blocks.1.mlp.fc2.bias"), r"missing parameter 'blocks.1.mlp.fc2.bias'"),
    (lambda s: s.update({"blocks.0.attn.q_norm.weight": np.ones(16, np.float32)}),
     r"not used by the mapping.*blocks.0.attn.q_norm.weight"),
    (lambda s: s.update({"blocks.1.attn.proj.weight": np.zeros((32, 16), np.float32)}),
     r"shape mismatch at 'block1/attn/proj/kernel' \(from blocks.1.attn.proj.weight\)"),
    (lambda s: s.update({"pos_embed": s["pos_embed"] + 0.01}), "not the fixed 2-D sine-cosine"),
])
def test_mapping_refusals_name_the_parameter(change, match):
  state = _state()
  change(state)
  with pytest.raises(ConversionError, match=match):
    cd.convert_state_dict(state, num_heads=HEADS)


def test_a_released_file_name_is_checked_against_its_model(tmp_path):
  path = tmp_path / "DiT-XL-2-256x256.pt"
  path.write_bytes(open(CKPT, "rb").read())
  with pytest.raises(ConversionError, match="not DiT-XL/2: depth 2 in the checkpoint, 28"):
    cd.convert(str(path))


def test_every_tensor_is_mapped_once():
  rows = cd.module_table(2)
  sources = [r[0] for r in rows]
  assert len(set(sources)) == len(sources) and len({r[1] for r in rows}) == len(rows)
  state = _state()
  leaves = {f"{m}.{leaf}" for m, _, kind in rows
            for leaf in (("weight",) if kind == "embedding" else ("weight", "bias"))}
  assert leaves | {"pos_embed"} == set(state)


def test_patch_kernel_order(ref):
  """The conv's (D, C, p, p) weight as the linear map of dit.patchify's (p, p, C) patches:
  one token of the patch embedding against the convolution written out."""
  state = _state()
  w, b = state["x_embedder.proj.weight"], state["x_embedder.proj.bias"]
  x = ref["x"][0].astype(np.float32)  # (C, H, W)
  conv_token = np.einsum("dcij,cij->d", w, x[:, 2:4, 4:6]) + b  # token (row 1, col 2)
  tokens = np.asarray(dit.patchify(jnp.asarray(x.transpose(1, 2, 0))[None], 2))[0]
  ours = tokens @ cd.patch_kernel(w) + b
  np.testing.assert_allclose(ours[1 * 4 + 2], conv_token, rtol=1e-5, atol=1e-5)


def _released_state_shapes(depth=28, d=1152, p=2, c=4, size=32, classes=1000):
  """The state dict of the released DiT (models.py, read by hand: module names and torch
  shapes), as zero-memory arrays of the right shapes."""
  shapes = {"pos_embed": (1, (size // p)**2, d), "x_embedder.proj.weight": (d, c, p, p),
            "x_embedder.proj.bias": (d,), "t_embedder.mlp.0.weight": (d, 256),
            "t_embedder.mlp.0.bias": (d,), "t_embedder.mlp.2.weight": (d, d),
            "t_embedder.mlp.2.bias": (d,), "y_embedder.embedding_table.weight": (classes + 1, d),
            "final_layer.linear.weight": (p * p * 2 * c, d),
            "final_layer.linear.bias": (p * p * 2 * c,),
            "final_layer.adaLN_modulation.1.weight": (2 * d, d),
            "final_layer.adaLN_modulation.1.bias": (2 * d,)}
  for i in range(depth):
    for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.fc1", (4 * d, d)),
                        ("mlp.fc2", (d, 4 * d)), ("adaLN_modulation.1", (6 * d, d))):
      shapes[f"blocks.{i}.{name}.weight"] = shape
      shapes[f"blocks.{i}.{name}.bias"] = (shape[0],)
  return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.mark.slow  # two state dicts of 675M float32 parameters (2.7 GB each)
@pytest.mark.parametrize("size", [32, 64])  # DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt
def test_released_xl2_shapes_convert_with_the_released_count(size):
  state = _released_state_shapes(size=size)
  n_release = sum(int(np.prod(v.shape)) for v in state.values())
  assert n_release == _released_count(28, 1152, 2, size=size)
  if size == 32:
    assert n_release == 675_129_632  # the release's printed count (pos_embed included)
  state["pos_embed"] = dit.sincos_2d(1152, size // 2, size // 2, "wh")[None]
  arch, kw, params = cd.convert_state_dict(state, "DiT-XL/2")
  assert (arch.name, arch.num_heads, arch.input_size, arch.num_classes, arch.learn_sigma) == (
      "DiT-XL/2", 16, size, 1000, True)
  assert kw == dict(dit.preset("XL/2"), mlp_ratio=4.0, learn_sigma=True, num_classes=1000,
                    label_dropout=0.1, frequency_dim=256, embedding_type="positional",
                    embedding_scale=1.0, embedding_convention="adm", pos_embed_axes="wh",
                    reference_init=True)
  n = sum(int(np.prod(v.shape)) for v in flatten(params).values())
  assert n == 674_834_720 == n_release - (size // 2)**2 * 1152  # pos_embed: a constant here
  # The heads come from the paper's size of (depth, width) when no name is given.
  assert cd.infer_architecture(state).name == "DiT-XL/2"


@pytest.mark.slow  # ~16 s; the conversion itself: test_converted_network_matches_dits_own_outputs
def test_reference_init_draws_the_releases_stds():
  x = jnp.zeros((1, 8, 8, 4))
  kw = dict(patch_size=2, hidden_size=64, depth=1, num_heads=2, num_classes=1000)

  def stds(**extra):
    v = get_model("dit", **kw, **extra).init(jax.random.PRNGKey(0), x, jnp.zeros((1,)))["params"]
    return (float(np.std(v["noise_embedding"]["dense0"]["kernel"])),
            float(np.std(v["class_embedding"]["embed"]["embedding"])))

  t_ref, y_ref = stds(reference_init=True)
  t_def, y_def = stds()
  assert abs(t_ref - 0.02) < 2e-3 and abs(y_ref - 0.02) < 2e-3
  assert abs(y_def - 1.0) < 0.05 and abs(t_def - np.sqrt(2 / (256 + 64))) < 0.01  # xavier


def test_bad_conventions_are_refused():
  with pytest.raises(ValueError, match="embedding_convention='glide'; accepted"):
    get_model("dit", embedding_convention="glide")
  with pytest.raises(ValueError, match="applies to embedding_type='positional' only"):
    get_model("dit", embedding_convention="adm", embedding_type="fourier")
  with pytest.raises(ValueError, match="pos_embed_axes='xy'; accepted"):
    get_model("dit", pos_embed_axes="xy")
  with pytest.raises(ValueError, match="convention='x'; accepted"):
    layers.positional_embedding(jnp.zeros((2,)), 8, convention="x")


def test_converted_config_is_a_latent_dit_config(conv):
  from experiments import convert
  from experiments.config_files import load_config_file
  text = convert.config_text(conv, "imagenet2012", "converted/dit_tiny", "/x/vae")
  path = os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), f"dit_cfg_{os.getpid()}.py")
  with open(path, "w") as f:
    f.write(text)
  try:
    c = load_config_file(path)
  finally:
    os.remove(path)
  assert c.data.name == "imagenet2012" and c.data.image_size == 64
  assert c.latent.dataset is None and c.latent.normalization == "scale"
  assert c.latent.scale_factor == 0.18215 and c.latent.posterior == "sample"
  assert (c.latent.autoencoder, c.latent.autoencoder_config) == ("/x/vae", "/x/vae/config.py")
  assert c.model.net.to_dict() == conv.net and c.model.conditional
  assert (c.sde.name, c.model.time_input, c.model.parameterization) == (
      "vp_discrete", "index", "eps")
  assert (c.sampling.sampler, c.sampling.num_steps, c.sampling.clip_denoised) == (
      "ddpm", 250, False)
  assert (c.optim.name, c.optim.lr, c.data.batch_size) == ("adamw", 1e-4, 256)


@pytest.mark.slow  # a CLI run (~10 s); the in-process conversion errors are tested above
def test_command_line_names_what_a_dit_conversion_lacks(tmp_path):
  """--format=dit reaches the converter: without a head count (the fixture's size is none of
  the paper's) it stops with the converter's message and writes nothing."""
  import subprocess
  import sys
  from tests.conftest import REPO
  w = tmp_path / "w"
  r = subprocess.run([sys.executable, "-m", "experiments.convert", "--format=dit",
                      f"--source={CKPT}", f"--workdir={w}"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1 and "pass num_heads" in r.stderr, r.stderr[-2000:]
  assert not w.exists()
