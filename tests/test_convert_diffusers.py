"""diffusers UNet2DModel -> ddpm_unet: outputs against real diffusers, the readers, the mapping's
refusals, and a converted workdir that samples and resumes training. No torch needed: the
fixtures (tests/data/convert/diffusers, made by tests/data/convert/make_diffusers_fixtures.py)
hold random-weight UNet2DModels saved by diffusers and their float64 outputs."""
import json
import os
import pickle
import shutil
import struct
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from diffusion import networks
from diffusion.convert import diffusers_unet as du
from diffusion.convert import files
from diffusion.convert.common import ConversionError
from diffusion.models import get_model

ROOT = os.path.join(os.path.dirname(__file__), "data", "convert", "diffusers")
# The DDPM-settings fixtures, then UNet2DModel's class defaults in the layout of diffusers'
# train_unconditional.py (a saved DDPMPipeline: unet/ + scheduler/), then every other mapped
# number at a non-default value.
FIXTURES = ["ddpm_small", "ddpm_bin_legacy", "ddpm_cifar_layout", "unet2d_train_example",
            "unet2d_options"]


def _model_folder(name, root=ROOT):
  """The UNet2DModel folder of a fixture: its own, or unet/ of a saved pipeline."""
  folder = os.path.join(root, name)
  unet = os.path.join(folder, "unet")
  return unet if os.path.isdir(unet) else folder


def _net_output(conv, ref, dtype):
  """Our network on the reference inputs (NCHW -> NHWC and back), conditioned on diffusers'
  timesteps, which is what the converted schedule feeds it (c = discrete_index(t))."""
  net = get_model("ddpm_unet", **conv.net, dtype=dtype)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), conv.params)
  x = jnp.asarray(ref["x"].transpose(0, 2, 3, 1), dtype)
  out = net.apply({"params": params}, x, jnp.asarray(ref["timesteps"], dtype))
  return np.asarray(out, np.float64).transpose(0, 3, 1, 2)


# ddpm_small (~20 s), ddpm_bin_legacy (~38 s on a loaded host; its .bin reader and legacy
# attention names are tested in the default tier below) and ddpm_cifar_layout (a CIFAR-size
# network, ~60 s; its v-parameterization and pipeline folder are read in the default tier below,
# and unet2d_train_example is a saved pipeline too) are slow: the other two cover every mapped
# setting in under 10 s each.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("ddpm_small", "ddpm_bin_legacy", "ddpm_cifar_layout")
                                  else n for n in FIXTURES])
def test_converted_network_matches_diffusers(name):
  conv = du.convert(_model_folder(name))
  ref = np.load(os.path.join(ROOT, name, "reference.npz"))
  scale = np.abs(ref["out"]).max()
  with jax.enable_x64(True):
    err64 = np.abs(_net_output(conv, ref, jnp.float64) - ref["out"]).max() / scale
  err32 = np.abs(_net_output(conv, ref, jnp.float32) - ref["out"]).max() / scale
  # Measured 1.0e-6 .. 1.7e-6 for both: the sinusoidal embedding is float32 in both codes.
  # unet2d_*: float64 2.0e-8 / 4.3e-8, float32 5.3e-7 / 3.7e-7.
  assert err64 < 1e-5 and err32 < 1e-5, (err64, err32)
  if name.startswith("unet2d_"):
    # With freq_shift=0 at 8 channels our float32 embedding equals diffusers' to 6e-8 (the
    # frequency exponent is divided by 4, exactly, where freq_shift=1 divides by 3), so float64
    # is held to 1e-6: norm_eps 1e-6 instead of UNet2DModel's 1e-5 alone moves
    # unet2d_train_example by 1.1e-5, just above the 1e-5 above.
    assert err64 < 1e-6, err64


def test_unet2d_fields_are_mapped():
  # UNet2DModel's class defaults (train_unconditional.py's model) and the other mapped numbers.
  conv = du.convert(_model_folder("unet2d_train_example"))
  want = dict(norm_eps=1e-5, downsample_padding="symmetric", flip_sin_to_cos=True,
              freq_shift=0.0, attn_head_dim=8, mid_block_scale=1.0, temb_dim=None,
              mid_attn_norm_groups=None, center_input=False, ch=8, ch_mult=(1, 1, 2, 2),
              num_res_blocks=2, attn_resolutions=(4,), norm_groups=4)
  assert {k: conv.net[k] for k in want} == want and "num_heads" not in conv.net
  opts = du.convert(_model_folder("unet2d_options"))
  want = dict(norm_eps=1e-3, downsample_padding="symmetric", flip_sin_to_cos=False,
              freq_shift=0.0, attn_head_dim=4, mid_block_scale=2**0.5, temb_dim=24,
              mid_attn_norm_groups=2, center_input=True, attn_resolutions=(8, 4))
  assert {k: opts.net[k] for k in want} == want
  assert opts.parameterization == "x0" and opts.sde[1]["beta_schedule"] == "squaredcos_cap_v2"


def test_saved_pipeline_finds_its_scheduler():
  # train_unconditional.py saves a DDPMPipeline: the scheduler sits in ../scheduler/, with
  # DDPMScheduler's defaults (1000 linear betas 1e-4..0.02, epsilon, clip_sample).
  conv = du.convert(_model_folder("unet2d_train_example"))
  assert conv.source["scheduler_config"] == os.path.join(
      ROOT, "unet2d_train_example", "scheduler", "scheduler_config.json")
  assert conv.sde == ("vp_discrete", dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                          beta_schedule="linear", t_min=1e-3, t_max=1.0))
  assert (conv.parameterization, conv.time_input, conv.clip_denoised) == ("eps", "index", True)


def test_converted_time_and_schedule_are_ddpms():
  conv = du.convert(os.path.join(ROOT, "ddpm_small"))
  assert conv.sde == ("vp_discrete", dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                          beta_schedule="linear", t_min=1e-3, t_max=1.0))
  assert (conv.parameterization, conv.time_input) == ("eps", "index")
  assert du.convert(os.path.join(ROOT, "ddpm_cifar_layout")).parameterization == "v"
  cont = du.convert(os.path.join(ROOT, "ddpm_small"), schedule="continuous")
  assert cont.sde == ("vp", dict(beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0))
  assert (cont.time_input, cont.net["embedding_scale"]) == ("t", 999.0)


def test_legacy_attention_names_are_mapped():
  state = files.read_weights(os.path.join(ROOT, "ddpm_bin_legacy",
                                          "diffusion_pytorch_model.bin"))
  assert du.is_legacy_attention(state)
  assert any(k.endswith(".proj_attn.weight") for k in state)


# -- readers ----------------------------------------------------------------------------------


def _write_safetensors(path, tensors, dtypes):
  header, blobs, off = {}, [], 0
  for name, a in tensors.items():
    b = a.tobytes()
    header[name] = dict(dtype=dtypes[name], shape=list(a.shape), data_offsets=[off, off + len(b)])
    blobs.append(b)
    off += len(b)
  h = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_reader_dtypes_and_corruption(tmp_path):
  rng = np.random.default_rng(0)
  t = {"a": rng.normal(size=(3, 4)).astype(np.float32),
       "b": rng.normal(size=(5,)).astype(np.float16),
       "c": rng.normal(size=(2, 2)).astype(ml_dtypes.bfloat16),
       "d": np.arange(6, dtype=np.int64).reshape(2, 3)}
  path = str(tmp_path / "w.safetensors")
  _write_safetensors(path, t, dict(a="F32", b="F16", c="BF16", d="I64"))
  got = files.read_weights(path)
  for k in t:
    assert got[k].dtype == t[k].dtype and np.array_equal(got[k], t[k])
  with open(path, "rb") as f:
    blob = f.read()
  with open(path, "wb") as f:
    f.write(blob[:-8])  # truncated
  with pytest.raises(ConversionError, match="does not fit its bytes"):
    files.read_weights(path)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 1 << 40) + b"{}")
  with pytest.raises(ConversionError, match="exceeds the file size"):
    files.read_weights(path)


def test_torch_reader_refuses_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = str(tmp_path / "evil.bin")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(ConversionError, match="refused"):
    files.read_weights(path)
  other = tmp_path / "legacy.bin"
  other.write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(ConversionError, match="neither a .safetensors file nor a torch checkpoint"):
    files.read_weights(str(other))


LEGACY = os.path.join(os.path.dirname(__file__), "data", "convert", "legacy", "state_dict.pth")


def test_legacy_torch_reader_values_views_and_dtypes():
  # torch.save(..., _use_new_zipfile_serialization=False) of make_legacy_fixture.py's formulas.
  got = files.read_weights(LEGACY)
  base = np.arange(24, dtype=np.float32).reshape(4, 6) / 8 - 1
  shared = np.arange(10, dtype=np.float32) * 0.5
  want = {"conv.weight": base, "conv.weight_t": base.T, "head": shared[:4], "tail": shared[6:],
          "double": np.linspace(-2, 2, 5), "steps": np.array(7, np.int64),
          "half": np.array([0.5, -1.25, 3.0], np.float16)}
  assert list(got) == list(want)
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_legacy_torch_reader_takes_a_checkpoints_state_dict():
  # make_legacy_fixture.py: torch.save({'epoch': 3, 'state_dict': {'w': base[:2]}}) (legacy).
  got = files.read_weights(LEGACY.replace("state_dict.pth", "checkpoint.pth"))
  base = np.arange(24, dtype=np.float32).reshape(4, 6) / 8 - 1
  assert list(got) == ["w"]
  np.testing.assert_array_equal(got["w"], base[:2])


def test_legacy_torch_reader_refuses_truncation_and_code(tmp_path):
  blob = open(LEGACY, "rb").read()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(blob[:-10])
  with pytest.raises(ConversionError, match="truncated"):
    files.read_weights(str(cut))

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  evil = tmp_path / "evil.pth"
  evil.write_bytes(b"".join(pickle.dumps(o, protocol=2) for o in (
      files.LEGACY_MAGIC, files.LEGACY_PROTOCOL, {"little_endian": True}, {"w": Evil()}, [])))
  with pytest.raises(ConversionError, match="refused"):
    files.read_weights(str(evil))


def test_torch_reader_matches_safetensors_of_the_same_state(tmp_path):
  # The .bin fixture re-saved as safetensors (by this test) reads back identically.
  state = files.read_weights(os.path.join(ROOT, "ddpm_bin_legacy",
                                          "diffusion_pytorch_model.bin"))
  assert len(state) > 50 and all(v.dtype == np.float32 for v in state.values())
  path = str(tmp_path / "w.safetensors")
  _write_safetensors(path, state, {k: "F32" for k in state})
  again = files.read_weights(path)
  assert all(np.array_equal(again[k], state[k]) for k in state)


# -- refusals ---------------------------------------------------------------------------------


def _copy(tmp_path, name="ddpm_small"):
  """A writable copy of a fixture; returns its model folder."""
  dst = tmp_path / name
  shutil.copytree(os.path.join(ROOT, name), dst)
  return _model_folder(name, str(tmp_path))


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    c = json.load(f)
  c.update(changes)
  with open(path, "w") as f:
    json.dump(c, f)


@pytest.mark.parametrize("changes,match", [
    # Another architecture: the field, its value, why, and what is accepted.
    (dict(resnet_time_scale_shift="scale_shift"),
     r"resnet_time_scale_shift='scale_shift' is not converted: .*AdaGN.*accepted: 'default'"),
    (dict(time_embedding_type="fourier"),
     r"time_embedding_type='fourier' is not converted: .*accepted: 'positional'"),
    (dict(time_embedding_type="learned"), r"time_embedding_type='learned' is not converted"),
    (dict(class_embed_type="timestep"), r"class_embed_type='timestep' is not converted"),
    (dict(num_class_embeds=10), r"num_class_embeds=10 is not converted: .*accepted: None"),
    (dict(add_attention=False), r"add_attention=False is not converted: .*accepted: True"),
    (dict(mid_block_type=None), r"mid_block_type=None is not converted"),
    (dict(act_fn="gelu"), r"act_fn='gelu' is not converted: .*accepted: 'silu', 'swish'"),
    (dict(downsample_padding=2), r"downsample_padding=2 is not converted: .*accepted: 0, 1"),
    (dict(downsample_type="resnet"), r"downsample_type='resnet' is not converted"),
    (dict(upsample_type="resnet"), r"upsample_type='resnet' is not converted"),
    (dict(out_channels=6), "out_channels=6"),
    (dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
     "CrossAttnDownBlock2D"),
    (dict(up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]), "do not mirror"),
    (dict(_class_name="UNet2DConditionModel"), "UNet2DConditionModel"),
    # Mapped numbers out of range.
    (dict(attention_head_dim=3), r"attention_head_dim=3; accepted: null \(one head\) or an int "
                                 r"dividing the attention widths \[16\]"),
    (dict(norm_eps=0), r"norm_eps=0; accepted: a number > 0"),
    (dict(mid_block_scale_factor=-1), r"mid_block_scale_factor=-1; accepted: a number > 0"),
    (dict(freq_shift=4), r"freq_shift=4; accepted: a number < block_out_channels\[0\] // 2 = 4"),
    (dict(norm_num_groups=3), r"norm_num_groups=3; accepted: an int dividing"),
    (dict(attn_norm_num_groups=3), r"attn_norm_num_groups=3; accepted: null or an int"),
    (dict(time_embedding_dim=0), r"time_embedding_dim=0; accepted: null or an int >= 1"),
    (dict(flip_sin_to_cos="yes"), r"flip_sin_to_cos='yes'; accepted: true or false"),
])
def test_unsupported_configs_are_named(tmp_path, changes, match):
  folder = _copy(tmp_path)
  _edit_config(folder, **changes)
  with pytest.raises(ConversionError, match=match):
    du.convert(folder)


def test_resample_types_are_refused_only_where_they_act():
  # Only AttnDownBlock2D / AttnUpBlock2D read downsample_type / upsample_type, and only where
  # they resample: attention at the deepest level has no downsampler (but an upsampler),
  # attention at the top level no upsampler (but a downsampler).
  base = du.read_json(os.path.join(ROOT, "ddpm_small", "config.json"))
  deepest = dict(base, down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                 up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
  top = dict(base, down_block_types=["AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
             up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"])
  assert du.unet_config(dict(deepest, downsample_type="resnet"))
  assert du.unet_config(dict(top, upsample_type="resnet"))
  for config, key in ((top, "downsample_type"), (deepest, "upsample_type")):
    with pytest.raises(ConversionError, match=f"{key}='resnet' is not converted"):
      du.unet_config(dict(config, **{key: "resnet"}))
  aliased = dict(base, down_block_types=["UNetResDownBlock2D", "UNetResAttnDownBlock2D",
                                         "DownBlock2D"])
  assert du.unet_config(aliased)["down_block_types"] == base["down_block_types"]


def _state_and_shapes(folder):
  from diffusion.convert.common import flatten
  cfg = du.unet_config(du.read_json(os.path.join(folder, "config.json")))
  net = get_model("ddpm_unet", **du.net_kwargs(cfg))
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                                           jnp.zeros((1,))))
  state = files.read_weights(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
  return cfg, state, {k: v.shape for k, v in flatten(shapes["params"]).items()}


def test_missing_extra_and_misshaped_parameters_are_named():
  cfg, state, target = _state_and_shapes(os.path.join(ROOT, "ddpm_small"))
  assert du.map_parameters(state, cfg, target)  # complete as saved
  gone = dict(state)
  del gone["down_blocks.1.attentions.0.to_k.weight"]
  with pytest.raises(ConversionError, match="missing parameter 'down_blocks.1.attentions.0.to_k"):
    du.map_parameters(gone, cfg, target)
  extra = dict(state, **{"mid_block.attentions.1.to_q.weight": np.zeros((8, 8), np.float32)})
  with pytest.raises(ConversionError, match="not used by the mapping.*mid_block.attentions.1"):
    du.map_parameters(extra, cfg, target)
  bad = dict(state, **{"conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)})
  with pytest.raises(ConversionError, match="shape mismatch at 'conv_in/kernel'"):
    du.map_parameters(bad, cfg, target)


def test_missing_scheduler_config_is_an_error(tmp_path):
  folder = _copy(tmp_path)
  os.remove(os.path.join(folder, "scheduler_config.json"))
  with pytest.raises(ConversionError, match="no scheduler_config.json"):
    du.convert(folder)
  with pytest.raises(ConversionError, match="schedule='exact'"):
    du.convert(os.path.join(ROOT, "ddpm_small"), schedule="exact")
  folder = _copy(tmp_path, "ddpm_cifar_layout")
  path = os.path.join(folder, "scheduler_config.json")
  with open(path) as f:
    sched = json.load(f)
  for changes, match in ((dict(clip_sample_range=2.0), "clip_sample_range=2.0"),
                         (dict(prediction_type="flow"), "prediction_type='flow'"),
                         (dict(trained_betas=[0.1] * 1000), "trained_betas"),
                         (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'")):
    with open(path, "w") as f:
      json.dump({**sched, **changes}, f)
    with pytest.raises(ConversionError, match=match):
      du.convert(folder)


# -- the converted workdir --------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted_workdir(tmp_path_factory):
  """ddpm_bin_legacy (8x8x1, the deprecated attention names, a torch .bin) converted into a
  digits workdir by the command line's code."""
  from experiments import convert
  conv = du.convert(os.path.join(ROOT, "ddpm_bin_legacy"))
  w = str(tmp_path_factory.mktemp("converted") / "w")
  summary = convert.write_workdir(conv, w)
  return conv, w, summary


@pytest.mark.slow  # builds the converted workdir, 36 s cold; tests/test_convert_cli.py restores one in the fast suite
def test_workdir_restores_the_converted_weights_exactly(converted_workdir):
  from experiments import convert, setup
  from experiments.config_files import load_config_file
  conv, w, summary = converted_workdir
  assert summary["dataset"] == "digits" and summary["num_params"] > 0
  assert set(os.listdir(w)) >= {"config.py", "config.json", "conversion.json", "checkpoints"}
  config = load_config_file(os.path.join(w, "config.py"))
  assert (config.sde.name, config.model.time_input) == ("vp_discrete", "index")
  assert config.sampling.clip_denoised  # the scheduler's clip_sample
  s, params, step = setup.restore_params(config, w)
  assert step == 0
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), b)), params,
                                conv.params)
  assert all(jax.tree_util.tree_leaves(same))
  with pytest.raises(ConversionError, match="already holds"):
    convert.write_workdir(conv, w)


def _run_samplers(converted_workdir, names):
  """Each sampler with the converted denoiser (2 steps): finite samples of the data's shape
  and, where it is known in advance, the registered NFE."""
  from diffusion.samplers import registry
  from experiments import build, setup
  from experiments.config_files import load_config_file
  _, w, _ = converted_workdir
  config = load_config_file(os.path.join(w, "config.py"))
  s, params, _ = setup.restore_params(config, w)
  denoise = networks.eval_denoiser(s.net, params, s.schedule, s.param)
  x_T = s.schedule.prior_sample(jax.random.PRNGKey(0), (2, 8, 8, 1))
  ran = []
  for name in names:
    info = registry.sampler_info(name)
    fn = registry.build_sampler(name, s.schedule, num_steps=2, grid="uniform")
    x0, out = fn(denoise, jax.random.PRNGKey(1), x_T)
    assert x0.shape == (2, 8, 8, 1) and bool(jnp.all(jnp.isfinite(x0))), name
    if info.nfe is not None:
      assert int(out["nfe"]) == info.nfe(2, info.resolve({})), name
    ran.append(name)
  return ran


@pytest.mark.slow  # driver-level, 12-133 s cold
def test_converted_model_samples(converted_workdir):
  # One ODE solver, one multistep solver, one ancestral sampler, on the vp_discrete schedule.
  assert len(_run_samplers(converted_workdir, ["heun", "dpmpp_2m", "ddpm"])) == 3


@pytest.mark.slow
def test_converted_model_runs_every_registered_sampler(converted_workdir):
  # Every registered sampler but the consistency and flow-map ones (they need a consistency
  # function or a flow map, which a DDPM network is not). 78 s on 2 cores.
  from diffusion.samplers import registry
  names = [n for n in registry.registered_samplers()
           if registry.sampler_info(n).kind not in ("consistency", "flow_map")]
  assert len(_run_samplers(converted_workdir, names)) >= 20


@pytest.mark.slow  # driver-level, 12-133 s cold
def test_converted_workdir_fine_tunes(converted_workdir, tmp_path):
  # --mode=train on a copy continues from the converted step 0 (digits are shipped by sklearn).
  from experiments import train
  from experiments.config_files import load_config_file
  from experiments.cli import overridden
  _, w, _ = converted_workdir
  w2 = str(tmp_path / "w2")
  shutil.copytree(w, w2)
  config = overridden(load_config_file(os.path.join(w, "config.py")),
                      {"training.num_steps": 2, "optim.warmup_steps": 0, "data.batch_size": 4,
                       "training.log_every": 1,
                       "training.ckpt_every": 2, "training.sample_every": 0,
                       "eval.plot_samples": 4, "sampling.num_steps": 2})
  train.train(config, w2)
  assert sorted(int(d) for d in os.listdir(os.path.join(w2, "checkpoints"))
                if d.isdigit()) == [0, 2]


@pytest.mark.slow  # driver-level, 12-133 s cold
def test_clip_denoised_keeps_samples_in_the_data_range(converted_workdir):
  # The random converted network predicts x0 far outside [-1, 1]; with sampling.clip_denoised
  # (DDPM's clip_denoised) every x0_hat, so the final sample, is clipped.
  from experiments import generate, setup
  from experiments.config_files import load_config_file
  from experiments.cli import overridden
  from diffusion.config_checks import ConfigError
  from experiments.validate import validate_config
  _, w, _ = converted_workdir
  base = overridden(load_config_file(os.path.join(w, "config.py")),
                    {"sampling.sampler": "ddpm", "sampling.num_steps": 3,
                     "sampling.grid": "uniform", "sampling.variance": "beta"})
  ranges = {}
  for clip in (False, True):
    config = overridden(base, {"sampling.clip_denoised": clip})
    validate_config(config, "sample")
    s, params, _ = setup.restore_params(config, w)
    x, _ = generate.generate(s, params, 4, jax.random.PRNGKey(0))
    ranges[clip] = float(np.abs(np.asarray(x)).max())
  assert ranges[False] > 1.5 and ranges[True] <= 1.0, ranges
  from configs.toy.checkerboard_vp import get_config
  toy = overridden(get_config(), {"sampling.clip_denoised": True})
  with pytest.raises(ConfigError, match="clip_denoised=True clips"):
    validate_config(toy, "sample")


RELEASED_CIFAR10 = dict(  # google/ddpm-cifar10-32's config.json (diffusers 0.16 copy)
    _class_name="UNet2DModel", act_fn="silu", attention_head_dim=None,
    block_out_channels=[128, 256, 256, 256], center_input_sample=False,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, in_channels=3,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-06, norm_num_groups=32,
    out_channels=3, resnet_time_scale_shift="default", sample_size=32,
    time_embedding_type="positional",
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])


def test_unet2d_class_defaults_and_train_example_give_diffusers_counts():
  # UNet2DModel's class defaults (attention_head_dim 8: 56, 84 and 112 heads at three levels)
  # and train_unconditional.py's model (its UNet2DModel call verbatim, at its default 64x64):
  # parameter counts of diffusers 0.42.1's own models.
  from diffusion.models import layers
  example = dict(_class_name="UNet2DModel", sample_size=64, in_channels=3, out_channels=3,
                 layers_per_block=2, block_out_channels=[128, 128, 256, 256, 512, 512],
                 down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4)
  for config, size, count in ((dict(sample_size=32), 32, 274_056_163),
                              (example, 64, 113_673_219)):
    cfg = du.unet_config(config)
    net = get_model("ddpm_unet", **du.net_kwargs(cfg))
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3)), jnp.zeros((1,))))
    assert layers.count_params(shapes["params"]) == count


@pytest.mark.parametrize("size,chans,attn_level,count", [
    (32, [128, 256, 256, 256], 1, 35_746_307),  # Ho et al. 2020, CIFAR-10
    (256, [128, 128, 256, 256, 512, 512], 4, 113_673_219),  # LSUN / CelebA-HQ 256
])
def test_released_configs_give_the_papers_networks(size, chans, attn_level, count):
  # The DDPM configs map onto ddpm_unet's presets with the released parameter counts.
  from diffusion.models import layers, unet
  n = len(chans)
  down = ["AttnDownBlock2D" if i == attn_level else "DownBlock2D" for i in range(n)]
  up = ["AttnUpBlock2D" if n - 1 - k == attn_level else "UpBlock2D" for k in range(n)]
  cfg = du.unet_config(dict(RELEASED_CIFAR10, sample_size=size, block_out_channels=chans,
                            down_block_types=down, up_block_types=up))
  kw = du.net_kwargs(cfg)
  preset = unet.preset("cifar10" if size == 32 else "lsun256", dropout=0.0)
  assert {k: kw[k] for k in preset} == {**preset, "ch_mult": tuple(preset["ch_mult"])}
  net = get_model("ddpm_unet", **kw)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                           jnp.zeros((1,))))
  assert layers.count_params(shapes["params"]) == count
  rows = du.module_table(cfg)
  assert len({r[1] for r in rows}) == len(rows)  # each of our modules filled once
