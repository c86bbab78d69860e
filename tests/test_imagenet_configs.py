"""The ImageNet latent configs (configs/imagenet: DiT-XL/2, SiT-XL/2, EDM2-XS ... XXL at 512):
every key is one the drivers read, every name resolves, the networks are the papers' with their
parameter counts, and the paper settings. (tests/test_image_configs.py's checks minus the
dataset's registration, which its CONFIG_DIRS needs: 'imagenet2012' is registered by the
ImageNet data path.)"""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, with_overrides

CONFIGS = ("configs/imagenet/dit_xl2_256.py", "configs/imagenet/sit_xl2_256.py")
EDM2_SIZES = ("xs", "s", "m", "l", "xl", "xxl")
EDM2_CONFIGS = tuple(f"configs/imagenet/edm2_img512_{s}.py" for s in EDM2_SIZES)


def _load(path):
  from experiments.config_files import load_config_file
  return load_config_file(os.path.join(REPO, path))


@pytest.mark.parametrize("path", CONFIGS + EDM2_CONFIGS)
def test_keys_names_and_docstring(path):
  from configs.base import get_base_config
  from diffusion import losses, objectives, training
  from diffusion.models import get_model
  from diffusion.parameterization import Parameterization
  from experiments import build
  from experiments.cli import config_keys

  c = _load(path)
  free = ("model.net.", "sde.fields.", "training.loss_opts.")
  keys = lambda cfg: {k for k in config_keys(cfg) if not k.startswith(free)}
  assert not keys(c) - keys(get_base_config())
  get_model(c.model.name, **c.model.net.to_dict())
  sched = build.schedule(c)
  assert set(c.training.loss_opts.to_dict()) <= set(
      objectives.of_config(c).loss_option_names())
  Parameterization(kind=c.model.parameterization, time_input=c.model.time_input,
                   sigma_data=c.model.sigma_data, scale_input=c.model.scale_input)
  assert c.training.weighting in losses.WEIGHTINGS
  assert c.training.time_sampling in losses.TIME_SAMPLINGS
  training.make_optimizer(build.optim_config(c))
  build.step_config(c)
  build.sampler(c, sched)
  spec = importlib.util.spec_from_file_location("_cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert f"--config={path}" in mod.__doc__ and "THE PAPER'S RESULTS" in mod.__doc__


def test_network_is_dit_xl2_with_the_papers_count():
  from diffusion.models import dit, get_model, layers
  nets = [_load(p).model.net.to_dict() for p in CONFIGS]
  assert nets[0] == nets[1]  # SiT keeps DiT's network
  assert nets[0] == dict(dit.preset("XL/2"), learn_sigma=True, num_classes=1000,
                         label_dropout=0.1, embedding_convention="adm", pos_embed_axes="wh",
                         reference_init=True, embedding_scale=1.0)
  m = get_model("dit", **nets[0])
  p = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 4)),
                                    jnp.zeros((1,))))
  n = layers.count_params(p)
  assert n == 674_834_720 and n + 256 * 1152 == 675_129_632  # the release counts pos_embed


def test_paper_settings():
  dit_c, sit_c = (_load(p) for p in CONFIGS)
  for c in (dit_c, sit_c):
    assert c.data.name == "imagenet2012" and c.data.image_size == 256
    assert c.latent.dataset == "workdirs/imagenet256_latents"
    assert c.latent.normalization == "scale"
    assert c.latent.scale_factor == 0.18215 and c.latent.posterior == "sample"
    assert c.model.conditional and c.model.net.num_classes == 1000
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps,
            c.optim.grad_clip) == ("adamw", 1e-4, 0.0, 0, 0.0)
    assert (c.data.batch_size, c.training.ema_decay, c.training.num_steps) == (
        256, 0.9999, 400_000)
  assert (dit_c.sde.name, dit_c.model.parameterization, dit_c.model.time_input) == (
      "vp_discrete", "eps", "index")
  assert dict(dit_c.sde.fields) == dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", t_min=1e-3, t_max=1.0)
  assert (dit_c.sampling.sampler, dit_c.sampling.num_steps) == ("ddpm", 250)
  assert (sit_c.sde.name, sit_c.model.parameterization, sit_c.training.weighting) == (
      "rectified_flow", "flow", "flow")
  assert (sit_c.sampling.sampler, sit_c.sampling.solver) == ("ode_adaptive", "dopri5")
  # The time conventions: DiT's network sees the step index 0..999, SiT's t in [0, 1].
  from experiments import build
  from diffusion.parameterization import Parameterization
  for c, want in ((dit_c, 999.0), (sit_c, 0.999)):
    param = Parameterization(kind=c.model.parameterization, time_input=c.model.time_input)
    sched = build.schedule(c)
    _, got = param.net_inputs(jnp.zeros((1, 2)), jnp.asarray([sched.t_max]), sched)
    got = float(got[0]) * c.model.net.embedding_scale
    assert abs(got - want) < 1e-3, (c.experiment, got)


# ----------------------------------------------------------------------------- EDM2, ImageNet-512

# The release's presets (NVlabs/edm2 train_edm2.py, edm2-img512-<size>): channels, dropout,
# lr_ref, training length in Mi = 2^20 images; the paper's Table 2 parameters in millions.
EDM2_RELEASE = {
    "xs": (128, 0.0, 0.0120, 2048, 125), "s": (192, 0.0, 0.0100, 2048, 280),
    "m": (256, 0.1, 0.0090, 2048, 498), "l": (320, 0.1, 0.0080, 1792, 777),
    "xl": (384, 0.1, 0.0070, 1280, 1119), "xxl": (448, 0.1, 0.0065, 896, 1523),
}


def _edm2_params(net: dict) -> int:
  from diffusion.models import get_model, layers
  m = get_model("edm2_unet", **net)
  p = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 4)),
                                    jnp.zeros((1,))))
  return layers.count_params(p)


def test_edm2_networks_are_the_release_presets_with_the_papers_counts():
  """Each size's network is edm2.PRESETS['img512_<size>'] without label dropout (the literal
  tables of configs/imagenet/common.py equal the presets), whose count is the release's
  (diffusion.models.edm2.PARAM_COUNTS, tests/test_edm2.py) and rounds to the paper's Table 2;
  the XS count by jax.eval_shape here (all sizes: the slow test below)."""
  from configs.imagenet import common
  from diffusion.models import edm2
  for size, path in zip(EDM2_SIZES, EDM2_CONFIGS):
    ch, dropout, _, _, mparams = EDM2_RELEASE[size]
    net = _load(path).model.net.to_dict()
    assert net == edm2.preset(f"img512_{size}", label_dropout=0.0), size
    assert net == common.edm2_net(size), size
    assert (net["model_channels"], net["dropout"]) == (ch, dropout), size
    assert round(edm2.PARAM_COUNTS[f"img512_{size}"] / 1e6) == mparams, size
  assert _edm2_params(_load(EDM2_CONFIGS[0]).model.net.to_dict()) == 124_713_253
  with pytest.raises(ValueError, match="unknown EDM2 size 'xxxl'"):
    common.edm2_img512_config("xxxl")


@pytest.mark.slow
def test_edm2_eval_shape_counts_of_every_size():
  from diffusion.models import edm2
  for size, path in zip(EDM2_SIZES, EDM2_CONFIGS):
    assert _edm2_params(_load(path).model.net.to_dict()) == edm2.PARAM_COUNTS[
        f"img512_{size}"], size


def _release_lr(step: int, ref_lr: float, batch: int = 2048, ref_batches: int = 70_000,
                rampup_mimg: float = 10.0) -> float:
  """NVlabs/edm2 training_loop.learning_rate_schedule at cur_nimg = step * batch (restated)."""
  nimg = step * batch
  lr = ref_lr / np.sqrt(max(nimg / (ref_batches * batch), 1.0))
  return lr * min(nimg / (rampup_mimg * 1e6), 1.0)


@pytest.mark.parametrize("size", EDM2_SIZES)
def test_edm2_paper_settings(size):
  from diffusion import training
  from diffusion.data import images
  from experiments import build
  path = f"configs/imagenet/edm2_img512_{size}.py"
  c = _load(path)
  _, _, lr, mi_images, _ = EDM2_RELEASE[size]
  assert c.experiment == f"imagenet/edm2_img512_{size}"
  # Data: class-conditional ImageNet-512, ADM's crop, 64x64x4 SD-VAE latents sampled from the
  # posterior, normalised per channel to std 0.5 (the folder's statistics: common.py).
  assert (c.data.name, c.data.image_size, c.data.random_flip) == ("imagenet2012", 512, False)
  assert images.resolve_crop(c.data.name, c.data.crop) == "adm"
  assert c.latent.dataset == "workdirs/imagenet512_latents"
  assert (c.latent.normalization, tuple(c.latent.channel_mean), tuple(c.latent.channel_std),
          c.latent.final_std, c.latent.posterior) == ("channel", (), (), 0.5, "sample")
  assert c.model.conditional and c.model.net.num_classes == 1000
  # EDM's preconditioning and schedule, EDM2's loss at ImageNet-512.
  assert (c.sde.name, c.sde.fields.t_min, c.sde.fields.t_max) == ("edm", 0.002, 80.0)
  assert (c.model.parameterization, c.model.time_input, c.model.sigma_data) == (
      "edm", "c_noise", 0.5)
  assert (c.training.weighting, c.training.time_sampling) == ("edm2", "lognormal")
  assert dict(c.training.loss_opts) == dict(p_mean=-0.4, p_std=1.0, sigma_data=0.5)
  # Optimiser: Adam (0.9, 0.99, 1e-8), no decay / clipping, batch 2048, t_ref 70K steps.
  assert (c.optim.name, c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay,
          c.optim.grad_clip) == ("adam", 0.9, 0.99, 1e-8, 0.0, 0.0)
  assert (c.optim.lr, c.optim.decay, c.optim.rsqrt_ref_steps) == (lr, "rsqrt", 70_000)
  assert c.data.batch_size == 2048 and c.training.grad_accum_steps == 1
  assert c.training.num_steps == mi_images * 2**20 // 2048
  sched = training.lr_schedule(build.optim_config(c))
  for step in (1, 1_000, 4_882, 4_883, 70_000, 123_457, 280_000, c.training.num_steps):
    np.testing.assert_allclose(float(sched(step)), _release_lr(step, lr), rtol=1e-4,
                               err_msg=f"{size} step {step}")
  # Post-hoc EMA: the release's two power EMAs, snapshots every 8 Mi images.
  assert tuple(c.training.ema_profiles) == (0.05, 0.1)
  assert c.training.ema_snapshot_every * 2048 == 8 * 2**20
  # Sampling: Heun, 32 noise levels on EDM's rho = 7 grid (63 NFE), unguided.
  assert (c.sampling.sampler, c.sampling.grid, c.sampling.rho, c.sampling.num_steps) == (
      "heun", "karras", 7.0, 31)
  from diffusion.samplers import sampler_info
  from diffusion.samplers.grids import time_grid
  info = sampler_info(c.sampling.sampler)
  hparams = {k: v for k, v in build.sampler_kwargs(c).items() if k in info.defaults()}
  assert info.nfe(c.sampling.num_steps, info.resolve(hparams)) == 63
  sched = build.schedule(c)
  sigmas = np.asarray(sched.sigma(time_grid(sched, c.sampling.num_steps, c.sampling.grid,
                                            rho=c.sampling.rho)))
  i = np.arange(32)  # the release's edm_sampler: num_steps=32, then 0 (our final denoise)
  edm2_grid = (80**(1 / 7) + i / 31 * (0.002**(1 / 7) - 80**(1 / 7)))**7
  np.testing.assert_allclose(sigmas, edm2_grid, rtol=1e-6)
  assert c.guidance.kind == "none" and c.guidance.label == -1
  assert (c.sampling.num_samples, c.eval.fid_num_samples) == (50_000, 50_000)


@pytest.mark.parametrize("size", EDM2_SIZES)
def test_edm2_docstring_states_its_own_settings(size):
  """The docstring's numbers are the config's (a copy-paste between sizes fails here): its
  channels, parameters, lr_ref and steps, and the post-hoc EMA workdir its eval command names
  is the one experiments.posthoc_ema writes for the --sigma_rel it names."""
  import re
  from diffusion.models import edm2
  from experiments.posthoc_ema import default_out_workdir
  path = f"configs/imagenet/edm2_img512_{size}.py"
  c = _load(path)
  spec = importlib.util.spec_from_file_location("_cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  doc = " ".join(mod.__doc__.split())
  steps = c.training.num_steps
  for want in (f"EDM2-{size.upper()} on", f"edm2-img512-{size}-fid",
               f"model_channels {c.model.net.model_channels} ",
               f"{edm2.PARAM_COUNTS[f'img512_{size}']:,} parameters",
               f"lr_ref {c.optim.lr:.4f};", f"= {steps:,} steps"):
    assert want in doc, (size, want)
  sigma = float(re.search(r"--sigma_rel=([0-9.]+)", doc).group(1))
  out = default_out_workdir(f"workdirs/imagenet_edm2_img512_{size}", sigma, steps)
  assert f"--workdir={out} --mode=eval" in doc, (size, out)


# -- slow: every ImageNet latent config trains a few steps and samples on mock data ---------------

ALL_CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(
    os.path.join(REPO, "configs", "imagenet", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py"))
# A stand-in SD-VAE geometry (f = 8, 4 latent channels) at a width a CPU trains in seconds.
TINY_VAE = dict(out_channels=3, latent_channels=4, channels=(8, 8, 8, 8), num_res_blocks=1,
                norm_groups=4, mid_attention=False)
# The networks shrunk (the full ones need an accelerator: EDM2-XXL's Adam state alone is 18 GB).
SHRINK = {"dit": {"model.net.depth": 1, "model.net.hidden_size": 32, "model.net.num_heads": 2},
          "edm2_unet": {"model.net.model_channels": 8, "model.net.num_blocks": 1,
                        "model.net.channel_mult": (1, 2), "model.net.attn_resolutions": (32,),
                        "model.net.channels_per_head": 8}}
MOCK = {"data.batch_size": 2, "training.num_steps": 2, "training.log_every": 1,
        "training.ckpt_every": 2, "training.sample_every": 0, "training.async_checkpoints": False,
        "optim.warmup_steps": 1, "sampling.num_steps": 2, "sampling.num_samples": 2,
        "sampling.batch_size": 2, "eval.plot_samples": 2, "training.ema_profiles": (),
        "training.ema_snapshot_every": 0}


@pytest.fixture(scope="module")
def mock_latents(tmp_path_factory):
  """(folders by image size) of tfds mock imagenet2012 encoded by a stand-in f8 autoencoder
  trained one step (its own workdir and config file)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from configs.images import image_config
  from experiments import encode, latents, train
  root = tmp_path_factory.mktemp("imagenet_latents")
  cfg_file = root / "vae.py"
  cfg_file.write_text(
      "from configs.images import image_config\n\n\ndef get_config():\n"
      f"  c = image_config('imagenet2012', 'vp', model='autoencoder_kl', net={TINY_VAE!r})\n"
      "  c.training.objective = 'autoencoder'\n  return c\n")
  out = {}
  with tfds.testing.mock_data(num_examples=4):
    for size in (256, 512):
      c = image_config("imagenet2012", "vp", model="autoencoder_kl", net=TINY_VAE)
      c.training.objective = "autoencoder"
      with_overrides(c, {**{k: v for k, v in MOCK.items() if not k.startswith("sampling")},
                         "training.num_steps": 1, "training.ckpt_every": 1, "optim.warmup_steps": 0,
                         "data.image_size": size})
      w = str(root / f"vae{size}")
      assert train.train(c, w)["status"] == "done"
      ae = latents.load_autoencoder(str(cfg_file), w)
      out[size] = str(root / f"latents{size}")
      encode.encode_dataset(ae, str(cfg_file), w, "imagenet2012", "train", out[size],
                            image_size=size, batch_size=2, shard_size=2)
  return out


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_imagenet_config_trains_and_samples_on_mock_latents(path, mock_latents, tmp_path):
  """The config as written (schedule, loss, optimizer, EMA, sampler, latent normalisation) with
  its network shrunk, on mock ImageNet latents: 2 steps, then 2 samples decoded to images."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from experiments import sample, train
  c = _load(path)
  with_overrides(c, {**MOCK, **SHRINK[c.model.name],
                     "latent.dataset": mock_latents[c.data.image_size]})
  with tfds.testing.mock_data(num_examples=4):
    out = train.train(c, str(tmp_path))
    assert out["status"] == "done" and out["step"] == 2 and np.isfinite(out["loss"])
    res = sample.run(c, str(tmp_path))
  x = np.load(os.path.join(res["out"], "samples.npz"))["x"]
  size = c.data.image_size
  assert x.shape == (2, size, size, 3) and np.all(np.isfinite(x))  # decoded images
