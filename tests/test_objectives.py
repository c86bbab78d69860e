"""The objective registry (diffusion.objectives): what each objective tells the driver, the loss
it builds, and a user's objective registered from a file of its own."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion import losses, objectives, training
from diffusion.analytic import GaussianMixture
from diffusion.config_checks import ConfigError
from diffusion.models import capabilities, get_model, model_outputs
from diffusion.parameterization import Parameterization, make_denoiser
from diffusion.schedules import get_schedule

VP = get_schedule("vp")
EDM2_MICRO = dict(model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
                  channels_per_head=8)
BUILT_IN = ("dsm", "classifier", "reflow", "progressive_distillation",
            "consistency_distillation", "consistency_training")


def test_the_built_in_objectives_are_registered_with_consistent_facts():
  assert set(BUILT_IN) <= set(objectives.names())
  for name in BUILT_IN:
    o = objectives.get(name)
    assert o.name == name and o.network in objectives.NETWORKS
    assert o.batch_source in objectives.BATCH_SOURCES
    assert not (o.teacher_in_state and o.teacher_per_step)
  assert objectives.get("classifier").aux_metrics == ("accuracy",)
  assert objectives.get("consistency_training").aux_metrics == ("num_scales",)
  assert objectives.get("reflow").batch_source == "pairs"
  teachers = {n for n in BUILT_IN if objectives.get(n).can_teach}
  assert teachers == {"dsm", "reflow", "progressive_distillation"}
  consistency = {n for n in BUILT_IN if objectives.get(n).network == "consistency"}
  assert consistency == {"consistency_distillation", "consistency_training"}


def test_unknown_and_duplicate_objectives_are_refused_by_name():
  with pytest.raises(ValueError, match=r"unknown objective 'gan'; registered: \['dsm'"):
    objectives.get("gan")
  config = ml_collections.ConfigDict({"training": {"objective": "gan"}})
  with pytest.raises(ConfigError, match=r"config\.training\.objective='gan' is not accepted"):
    objectives.of_config(config)
  with pytest.raises(ValueError, match="registered twice"):
    @objectives.register
    class Again(objectives.Objective):  # noqa: F811
      name = "dsm"


def _pd_config(num_steps=12, rounds=3):
  return ml_collections.ConfigDict({
      "training": {"num_steps": num_steps, "steps_per_call": 1, "compute_dtype": "float32"},
      "optim": {"warmup_steps": 0},
      "distill": {"rounds": rounds, "student_steps": 8, "weighting": None,
                  "init_from_teacher": True}})


def test_progressive_distillation_rounds_come_from_the_objective():
  pd, cfg = objectives.get("progressive_distillation"), _pd_config()
  assert pd.round_boundaries(cfg) == [4, 8]
  assert [pd.round_of(cfg, s) for s in (0, 3, 4, 11, 12)] == [0, 0, 1, 2, 2]
  assert pd.keep_period(cfg) == 4 and pd.lr_schedule_steps(cfg) == 4
  assert "students of [8, 4, 2] DDIM steps from a teacher of 16" in pd.describe(cfg)
  assert objectives.get("dsm").round_boundaries(cfg) == ()
  assert objectives.get("dsm").lr_schedule_steps(cfg) == 12
  with pytest.raises(ConfigError, match=r"num_steps=13 must be a positive multiple"):
    pd.check(_pd_config(num_steps=13), "train")


def test_loss_options_are_read_from_each_objectives_library_loss():
  assert "t_min" in objectives.get("dsm").loss_option_names()
  assert "weighting" not in objectives.get("dsm").loss_option_names()
  assert "sigma_data" not in objectives.get("classifier").loss_option_names()


def test_the_dsm_objective_is_dsm_loss_on_the_networks_denoiser():
  """The train step's loss equals dsm_loss called directly on the same network, key and data;
  with the exact denoiser of a Gaussian mixture (a "network" ignoring its parameters) the loss
  is lower than with a biased one (a factor 1.1 on x0_hat): the loss sees the denoiser."""
  gm = GaussianMixture.create([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.1, 0.2])
  param = Parameterization("x0")

  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
  cfg = training.StepConfig(weighting="edm", time_sampling="uniform")
  loss = training.make_loss(net, VP, param, cfg)
  x0 = gm.sample0(jax.random.PRNGKey(1), 64)
  key = jax.random.PRNGKey(2)
  got, _ = loss(params, {"x": x0}, key)
  noise_key, dropout_key = jax.random.split(key)

  def apply_fn(x_in, c, cond=None):
    return net.apply({"params": params}, x_in, c, labels=cond, train=True,
                     rngs={"dropout": dropout_key})

  want, _ = losses.dsm_loss(make_denoiser(apply_fn, VP, param), x0, noise_key, VP,
                            weighting="edm", time_sampling="uniform")
  assert float(got) == float(want)
  exact, biased = gm.denoiser(VP), lambda x, t, cond=None: 1.1 * gm.denoiser(VP)(x, t)
  l_exact = losses.dsm_loss(exact, x0, noise_key, VP, weighting="x0")[0]
  l_biased = losses.dsm_loss(biased, x0, noise_key, VP, weighting="x0")[0]
  assert float(l_exact) < float(l_biased)


def test_objectives_that_read_the_config_say_so_when_built_without_one():
  net = get_model("mlp", width=16, num_blocks=1, embed_dim=8)
  cfg = training.StepConfig(objective="consistency_training")
  with pytest.raises(ValueError, match="reads the run's config"):
    training.make_loss(net, VP, Parameterization("consistency"), cfg)


def test_network_contracts_are_answered_in_one_place():
  mlp = capabilities(get_model("mlp", width=16, num_blocks=1, embed_dim=8))
  assert mlp.outputs == "denoiser" and mlp.dtype and not mlp.return_logvar
  assert not mlp.project_params and mlp.num_classes == 0
  clf = capabilities(get_model("mlp_classifier", num_classes=8, width=16, num_blocks=1,
                               embed_dim=8))
  assert clf.outputs == "logits" and clf.num_classes == 8
  assert model_outputs("unet_classifier") == "logits" and model_outputs("dit") == "denoiser"
  edm2 = capabilities(get_model("edm2_unet", **EDM2_MICRO))
  assert edm2.return_logvar and edm2.project_params and edm2.dtype
