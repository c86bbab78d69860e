"""The ImageNet latent configs (configs/imagenet: DiT-XL/2, SiT-XL/2): every key is one the drivers
read, every name resolves, the network is DiT-XL/2 with the papers' parameter count, and the
paper settings. (tests/test_image_configs.py's checks minus the dataset's registration, which
its CONFIG_DIRS needs: 'imagenet2012' is registered by the ImageNet data path.)"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from tests.conftest import REPO

CONFIGS = ("configs/imagenet/dit_xl2_256.py", "configs/imagenet/sit_xl2_256.py")


def _load(path):
  from experiments.config_files import load_config_file
  return load_config_file(os.path.join(REPO, path))


@pytest.mark.parametrize("path", CONFIGS)
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
