"""score SDE checkpoints (Song et al. 2021) onto ncsnpp / ddpmpp: the name mapping of every
released config, and numerical agreement with their own model's outputs on small random
checkpoints (tests/data/convert/score_sde, made by make_score_sde_fixtures.py from their code).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.convert import score_sde as S
from diffusion.convert.common import ConversionError, flatten, unflatten
from diffusion.models import get_model
from diffusion.parameterization import Parameterization, eps_from_x0, make_denoiser, \
    score_from_x0
from diffusion.schedules import get_schedule

DATA = os.path.join(os.path.dirname(__file__), "data", "convert", "score_sde")
FIXTURES = ("ncsnpp_ve", "ddpmpp_vp", "ncsnpp_ve_skip", "ncsnpp_subvp_ddpmblocks",
            "ncsnpp_ve_fir_convs")
with open(os.path.join(DATA, "layouts.json")) as _f:
  LAYOUTS = json.load(_f)


def _zeros_tree(shapes):
  # Zero-stride views: the 100M-parameter layouts cost no memory.
  return unflatten({k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()})


def _numbered_tree(shapes):
  """Every leaf filled with its own index, so a value tells which source leaf it came from."""
  return unflatten({k: np.full(v, i, np.float32) for i, (k, v) in enumerate(sorted(
      shapes.items()))})


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_released_layout_maps_completely(name):
  """Every released ncsnpp / ddpm config: each parameter is used once, the target is filled
  with its shapes (ParamMap.finish), and the counts are equal."""
  lay = LAYOUTS[name]
  config = lay["config"]
  if not config["conditional"]:
    with pytest.raises(ConversionError, match="conditional"):
      S.map_params(_zeros_tree(lay["params"]), config)
    return
  params, model, net = S.map_params(_zeros_tree(lay["params"]), config)
  n = sum(int(np.prod(v.shape)) for v in flatten(params).values())
  assert n == lay["num_params"]
  if config["continuous"]:
    assert S.check_config(config) == config["name"]
  else:
    with pytest.raises(ConversionError, match="discrete checkpoints are not supported"):
      S.check_config(config)


@pytest.mark.parametrize("name", ["ve/cifar10_ncsnpp_continuous",
                                  "ve/ffhq_256_ncsnpp_continuous"])
def test_released_layout_round_trips(name):
  """convert then to_score_sde gives back the same tree (names, shapes and values), also through
  the VE changes (fold and negation are inverted)."""
  lay = LAYOUTS[name]
  rs = np.random.RandomState(0)  # a random vector per leaf, broadcast (no memory)
  src = {k: np.broadcast_to(rs.randn(v[-1]).astype(np.float32), v)
         for k, v in sorted(lay["params"].items())}
  conv = S.convert({"params_ema": unflatten(src), "optimizer": {"target": {}}}, lay["config"])
  back = flatten(S.to_score_sde(conv.params, lay["config"]))
  assert sorted(back) == sorted(src)
  for k in src:
    np.testing.assert_allclose(back[k], src[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_named_leaves_land_at_their_targets():
  """Without semantic changes each source leaf's values appear at its mapped target."""
  lay = LAYOUTS["ve/cifar10_ncsnpp_continuous"]
  src = _numbered_tree(lay["params"])
  params, _, _ = S.map_params({"params_ema": src, "optimizer": {"target": {}}}, lay["config"])
  flat_src, flat = flatten(src), flatten(params)
  pairs = {"Dense_0/kernel": "noise_embedding/dense0/kernel", "Conv_0/kernel": "conv_in/kernel",
           "ResnetBlockBigGANpp_4/Conv_2/kernel": "down0_downsample/shortcut/kernel",
           "AttnBlockpp_0/NIN_3/W": "down1_attn0/proj_out/kernel",
           "Downsample_0/Conv2d_0/weight": "down0_pyramid/conv/kernel",
           "GroupNorm_0/scale": "out_norm/scale", "Conv_1/bias": "out_conv/bias"}
  for theirs, ours in pairs.items():
    assert np.unique(flat[ours]).tolist() == [flat_src[theirs].flat[0]], (theirs, ours)
  ours_ids = sorted(int(v.flat[0]) for v in flat.values())
  assert ours_ids == list(range(len(flat_src)))  # a bijection of leaves


def _their_score_and_ours(name, dtype):
  """(ours, theirs): the score (VE) or eps (VP / sub-VP) of our converted network through the
  codebase's parameterization, and the one implied by their model's output."""
  config = S.load_config(os.path.join(DATA, name, "config.json"))
  conv = S.convert_checkpoint(os.path.join(DATA, name, "checkpoint_1"), config)
  ref = np.load(os.path.join(DATA, name, "reference.npz"))
  sched = get_schedule(conv.sde[0], **conv.sde[1])
  param = Parameterization(conv.parameterization, conv.time_input)
  model = get_model(conv.model, **conv.net, dtype=jnp.dtype(dtype))
  p = jax.tree.map(lambda a: jnp.asarray(a, dtype), conv.params)
  denoise = make_denoiser(lambda x, c, cond: model.apply({"params": p}, x, c), sched, param)
  x, t = jnp.asarray(ref["x"], dtype), jnp.asarray(ref["t"], dtype)
  theirs = ref[f"out_{dtype}"]
  if config["sde"] == "vesde":
    x = 2 * x - 1  # their [0, 1] data as ours
    ours = score_from_x0(denoise(x, t), x, t, sched)
    theirs = theirs / 2  # their output is their score (scale_by_sigma); d/dx' = d/dx / 2
  else:
    ours = eps_from_x0(denoise(x, t), x, t, sched)
  return np.asarray(ours, np.float64), theirs


def _rel(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ncsnpp_ve (~34 s on a loaded host) is slow too: its mapping is checked leaf by leaf below, and
# ddpmpp_vp's parity stays in the default tier.
@pytest.mark.parametrize("name", FIXTURES[1:2] + tuple(pytest.param(n, marks=pytest.mark.slow)
                                                      for n in FIXTURES[:1] + FIXTURES[2:]))
def test_fixture_matches_their_model(name):
  """float64: <= 1e-5 relative (measured 4.5e-8 .. 8.3e-7); float32: <= 1e-4 (measured
  2.1e-6 .. 6.1e-5; the sub-VP one at sigma(t) = 3e-4 loses digits in x0 -> eps)."""
  with jax.enable_x64(True):
    ours, theirs = _their_score_and_ours(name, "float64")
  assert _rel(ours, theirs) <= 1e-5
  ours, theirs = _their_score_and_ours(name, "float32")
  assert _rel(ours, theirs) <= 1e-4


def test_ve_converted_fields():
  config = S.load_config(os.path.join(DATA, "ncsnpp_ve", "config.json"))
  conv = S.convert_checkpoint(os.path.join(DATA, "ncsnpp_ve", "checkpoint_1"), config)
  assert conv.sde == ("ve", dict(t_min=1e-5, t_max=1.0, sigma_min=0.02, sigma_max=100.0))
  assert (conv.parameterization, conv.time_input, conv.model) == ("eps", "log_sigma", "ncsnpp")
  assert conv.image_shape == (8, 8, 3) and conv.source["step"] == 1000
  assert len(conv.source["sha256"]) == 64 and len(conv.notes) == 3
  vp = S.convert_checkpoint(os.path.join(DATA, "ddpmpp_vp", "checkpoint_1"),
                            S.load_config(os.path.join(DATA, "ddpmpp_vp", "config.json")))
  assert vp.sde == ("vp", dict(t_min=1e-5, t_max=1.0, beta_min=0.1, beta_max=20.0))
  assert (conv.sampling_t_min, vp.sampling_t_min) == (None, 1e-3)
  assert (vp.time_input, vp.net["embedding_scale"], vp.model) == ("t", 999.0, "ddpmpp")


def test_raw_and_ema_are_different_trees():
  path = os.path.join(DATA, "ncsnpp_ve", "checkpoint_1")
  config = S.load_config(os.path.join(DATA, "ncsnpp_ve", "config.json"))
  tree = S.read_checkpoint(path)
  ema, raw = S.convert(tree, config, "ema"), S.convert(tree, config, "raw")
  a, b = flatten(ema.params), flatten(raw.params)
  np.testing.assert_array_equal(a["conv_in/kernel"], tree["params_ema"]["Conv_0"]["kernel"])
  np.testing.assert_array_equal(b["conv_in/kernel"],
                                tree["optimizer"]["target"]["Conv_0"]["kernel"])
  assert not np.allclose(a["conv_in/kernel"], b["conv_in/kernel"])
  with pytest.raises(ConversionError, match="params='best'"):
    S.convert(tree, config, "best")


def _small():
  config = S.load_config(os.path.join(DATA, "ncsnpp_ve", "config.json"))
  tree = S.read_checkpoint(os.path.join(DATA, "ncsnpp_ve", "checkpoint_1"))
  return config, flatten(tree["params_ema"])


def test_errors_name_the_problem(tmp_path):
  config, flat = _small()
  with pytest.raises(ConversionError, match="name='ncsnv2'.*accepted"):
    S.convert({"params_ema": unflatten(flat)}, dict(config, name="ncsnv2"))
  missing = dict(flat)
  del missing["AttnBlockpp_1/NIN_2/W"]
  with pytest.raises(ConversionError, match="AttnBlockpp_1/NIN_2/W"):
    S.convert({"params_ema": unflatten(missing)}, config)
  extra = dict(flat, **{"ResnetBlockBigGANpp_99/Conv_0/kernel": np.zeros((3, 3, 8, 8))})
  with pytest.raises(ConversionError, match="ResnetBlockBigGANpp_99/Conv_0/kernel"):
    S.convert({"params_ema": unflatten(extra)}, config)
  bad = dict(flat, **{"Conv_0/kernel": np.zeros((3, 3, 3, 9), np.float32)})
  with pytest.raises(ConversionError, match="shape mismatch at 'conv_in/kernel'"):
    S.convert({"params_ema": unflatten(bad)}, config)
  junk = tmp_path / "checkpoint_5"
  junk.write_bytes(b"\xc1 not msgpack at all")
  with pytest.raises(ConversionError, match="not a flax msgpack file"):
    S.read_checkpoint(str(junk))
  from flax import serialization
  other = tmp_path / "other.msgpack"
  other.write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(2)}}))
  with pytest.raises(ConversionError, match=r"found \['params'\]"):
    S.read_checkpoint(str(other))
  # A config that does not describe the checkpoint: the first module it lacks is named.
  with pytest.raises(ConversionError, match="missing parameter .Upsample_0/Conv2d_0/weight"):
    S.convert({"params_ema": unflatten(flat)}, dict(config, progressive="residual"))
  with pytest.raises(ConversionError, match="embedding_type='positional' with sde='vesde'"):
    S.convert({"params_ema": unflatten(flat)}, dict(config, embedding_type="positional"))


def test_released_configs_by_name():
  # The package's table of their configs equals what their config files say (layouts.json).
  with open(os.path.join(DATA, "layouts.json")) as f:
    layouts = json.load(f)
  released = S.released_configs()
  assert sorted(released) == sorted(layouts)
  for name in layouts:
    assert S.load_config(name) == layouts[name]["config"], name
  with pytest.raises(ConversionError, match="neither a released config nor a JSON file"):
    S.load_config("ve/cifar10_ncsnpp_continous")
