"""Noise-conditional classifiers: the networks (shapes, registry, refusals), classifier_loss
against the exact class posterior of the 8gaussians mixture under VP, the train step,
build.classifier_log_prob, and the held-out accuracy per noise level
(diffusion.metrics.classifier_eval)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import losses as L
from diffusion import training
from diffusion.data import toy2d
from diffusion.metrics import classifier_eval
from diffusion.models import get_model, registered_models
from diffusion.parameterization import Parameterization
from diffusion.schedules import get_schedule

VP = get_schedule("vp", beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0)
TINY_MLP = dict(width=32, num_blocks=1, embed_dim=16)
TINY_UNET = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)


# -- the exact class posterior of 8gaussians under a schedule --------------------------------


def _mixture():
  w, mu, cov = toy2d.gaussian_mixture_params("8gaussians")
  return w, mu, float(cov[0, 0, 0])  # isotropic, equal variances


def exact_logits(x, t, xp=jnp):
  """log w_k + log N(x; alpha mu_k, (alpha^2 s^2 + sigma^2) I) up to a constant in k: the
  logits of p(k | x_t) (x_t | k is Gaussian: the marginal of a Gaussian component)."""
  w, mu, s2 = _mixture()
  t = xp.broadcast_to(xp.asarray(t, x.dtype), (x.shape[0],))
  a, sg = VP.alpha(t)[:, None, None], VP.sigma(t)[:, None, None]
  var = a[:, :, 0] ** 2 * s2 + sg[:, :, 0] ** 2
  d2 = xp.sum((x[:, None, :] - a * xp.asarray(mu)[None]) ** 2, axis=-1)
  return xp.log(xp.asarray(w))[None] - d2 / (2 * var)


def conditional_entropy(t: float, n: int = 500) -> float:
  """H(K | X_t) in nats of 8gaussians under VP at time t, by quadrature on an n x n grid:
  -sum_k w_k int N_k(x) log p(k | x) dx (float64 numpy, independent of classifier_loss)."""
  w, mu, s2 = _mixture()
  a, sg = float(VP.alpha(np.float64(t))), float(VP.sigma(np.float64(t)))
  var = a * a * s2 + sg * sg
  r = a * np.max(np.abs(mu)) + 9 * np.sqrt(var)
  u = np.linspace(-r, r, n)
  xx, yy = np.meshgrid(u, u)
  x = np.stack([xx.ravel(), yy.ravel()], -1)
  d2 = np.sum((x[:, None] - a * mu[None]) ** 2, -1)
  log_joint = np.log(w)[None] - d2 / (2 * var) - np.log(2 * np.pi * var)  # log w_k N_k(x)
  log_post = log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True)
  cell = (u[1] - u[0]) ** 2
  return float(-np.sum(np.exp(log_joint) * log_post) * cell)


def _labelled(n: int, seed: int = 0):
  """(x0 (n, 2), labels (n,)) of 8gaussians; float64 inside enable_x64."""
  x, y = toy2d.sample("8gaussians", n, np.random.default_rng(seed), with_labels=True)
  return jnp.asarray(x, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32), jnp.asarray(y)


@pytest.mark.parametrize("t", [0.05, 0.25, 0.4, 1.0])
def test_loss_of_the_bayes_classifier_is_the_conditional_entropy(t):
  """At a fixed t, the cross-entropy of the exact posterior p(k | x_t) on labelled draws is a
  Monte Carlo estimate of H(K | X_t) (computed here by quadrature): within 4 standard errors."""
  h = conditional_entropy(t)
  with jax.enable_x64(True):
    x0, y = _labelled(20_000)
    loss, aux = L.classifier_loss(exact_logits, x0, y, jax.random.PRNGKey(1), VP,
                                  time_sampling=L.TimeSampling(t_min=t, t_max=t))
    per = np.asarray(aux["per_example"])
  np.testing.assert_allclose(np.asarray(aux["t"]), t)
  se = per.std() / np.sqrt(len(per))
  assert abs(float(loss) - h) < 4 * se + 1e-4, (float(loss), h, se)
  assert float(loss) == pytest.approx(per.mean())
  assert 0 <= float(aux["accuracy"]) <= 1


def test_conditional_entropy_ends():
  """The quadrature itself: H(K | X_t) is about ln 8 when x_t forgets x0, small when the components
  barely overlap (8 sigma apart at t = 0), increasing in t."""
  assert conditional_entropy(1.0) == pytest.approx(np.log(8), abs=1e-3)  # alpha(1) = 0.0066
  hs = [conditional_entropy(t) for t in (1e-3, 0.1, 0.3, 0.5)]
  assert hs[0] < 0.02 and np.all(np.diff(hs) > 0)


def test_uniform_time_loss_is_the_time_averaged_conditional_entropy():
  """With t ~ U[t_min, 1] the loss of the Bayes classifier estimates int H(K | X_t) dt / (1 -
  t_min); stratified times make it a low-variance estimate."""
  nodes, weights = np.polynomial.legendre.leggauss(24)
  lo, hi = 1e-3, 1.0
  ts = lo + (hi - lo) * (nodes + 1) / 2
  h_avg = float(np.sum(weights / 2 * np.array([conditional_entropy(t, 300) for t in ts])))
  with jax.enable_x64(True):
    x0, y = _labelled(20_000, seed=1)
    loss, aux = L.classifier_loss(exact_logits, x0, y, jax.random.PRNGKey(2), VP,
                                  time_sampling="stratified")
    per = np.asarray(aux["per_example"])
  se = per.std() / np.sqrt(len(per))
  assert abs(float(loss) - h_avg) < 4 * se + 2e-3, (float(loss), h_avg, se)


def test_bayes_classifier_minimises_the_loss():
  """Cross-entropy is a proper scoring rule: tempering or biasing the exact logits raises the
  loss (same draws: the same key)."""
  with jax.enable_x64(True):
    x0, y = _labelled(8_000, seed=2)
    bias = jnp.asarray(np.linspace(-1, 1, 8))

    def loss_of(scale, shift):
      fn = lambda x, t: scale * exact_logits(x, t) + shift * bias
      return float(L.classifier_loss(fn, x0, y, jax.random.PRNGKey(3), VP)[0])

    best = loss_of(1.0, 0.0)
    for scale, shift in [(0.8, 0.0), (1.25, 0.0), (1.0, 0.2), (1.0, -0.2)]:
      assert loss_of(scale, shift) > best, (scale, shift)


def test_classifier_loss_refuses_bad_inputs():
  x0, y = _labelled(16)
  fn = lambda x, t: jnp.zeros((x.shape[0], 8))
  with pytest.raises(ValueError, match=r"labels must have shape \(16,\)"):
    L.classifier_loss(fn, x0, y[:8], jax.random.PRNGKey(0), VP)
  with pytest.raises(TypeError, match="labels must be integers"):
    L.classifier_loss(fn, x0, y.astype(jnp.float32), jax.random.PRNGKey(0), VP)
  with pytest.raises(ValueError, match=r"logits of shape \(16, num_classes\)"):
    L.classifier_loss(lambda x, t: jnp.zeros((16,)), x0, y, jax.random.PRNGKey(0), VP)
  with pytest.raises(ValueError, match="unknown time sampling 'beta'"):
    L.classifier_loss(fn, x0, y, jax.random.PRNGKey(0), VP, time_sampling="beta")
  loss, aux = L.classifier_loss(fn, x0, y, jax.random.PRNGKey(0), VP)
  assert float(loss) == pytest.approx(np.log(8), rel=1e-6)  # uniform logits: ln C


# -- the networks ---------------------------------------------------------------------------------


@pytest.mark.slow  # 25 s cold (the U-Net classifier's conv init); the MLP path: below
def test_classifiers_are_registered_and_give_logits():
  assert {"mlp_classifier", "unet_classifier"} <= set(registered_models())
  net = get_model("mlp_classifier", num_classes=8, **TINY_MLP)
  x, c = jnp.ones((5, 2)), jnp.linspace(0, 1, 5)
  v = net.init(jax.random.PRNGKey(0), x, c)
  out = net.apply(v, x, c, labels=None, train=False)
  assert out.shape == (5, 8) and out.dtype == jnp.float32
  unet = get_model("unet_classifier", num_classes=10, **TINY_UNET)
  xi = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  vu = jax.jit(unet.init)(jax.random.PRNGKey(0), xi, jnp.ones((3,)))
  apply = jax.jit(lambda v, x, c, key: (unet.apply(v, x, c), unet.apply(
      v, x, c, train=True, rngs={"dropout": key})))
  out, out_train = apply(vu, xi, jnp.ones((3,)), jax.random.PRNGKey(2))
  assert out.shape == out_train.shape == (3, 10) and np.all(np.isfinite(out_train))
  assert not np.allclose(out, out_train)  # dropout in training only
  names = set(vu["params"])
  assert {"conv_in", "down0_block0", "down0_downsample", "mid_block0", "mid_attn", "logits",
          "noise_embedding"} <= names
  assert not any(n.startswith("up") for n in names)  # the encoder only: no decoder
  # Logits depend on the noise level: the time input is used.
  assert not np.allclose(apply(vu, xi, jnp.full((3,), 900.0), jax.random.PRNGKey(2))[0], out)


def test_mlp_classifier_shares_the_score_networks_trunk():
  """mlp_classifier = the mlp's parameters but the output layer (same names and shapes)."""
  score = get_model("mlp", **TINY_MLP)
  clf = get_model("mlp_classifier", num_classes=8, **TINY_MLP)
  x, c = jnp.ones((2, 2)), jnp.ones((2,))
  ps = jax.tree_util.tree_map(jnp.shape, score.init(jax.random.PRNGKey(0), x, c)["params"])
  pc = jax.tree_util.tree_map(jnp.shape, clf.init(jax.random.PRNGKey(0), x, c)["params"])
  head = ps.pop("Dense_3")
  assert pc.pop("logits") == {"kernel": (32, 8), "bias": (8,)} and head["kernel"] == (32, 2)
  assert ps == pc


@pytest.mark.parametrize("name,kwargs,match", [
    ("mlp_classifier", dict(num_classes=1), "num_classes >= 2"),
    ("mlp_classifier", dict(), "num_classes >= 2"),
    ("unet_classifier", dict(num_classes=0), "num_classes >= 2"),
    ("unet_classifier", dict(num_classes=10, embedding_type="sinusoid"), "embedding_type"),
    ("unet_classifier", dict(num_classes=10, dropout=1.0), "dropout=1.0"),
])
def test_bad_classifier_options_raise(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model(name, **kwargs)


def test_classifiers_take_no_labels():
  net = get_model("mlp_classifier", num_classes=8, **TINY_MLP)
  x, c = jnp.ones((2, 2)), jnp.ones((2,))
  v = net.init(jax.random.PRNGKey(0), x, c)
  with pytest.raises(ValueError, match="takes no labels"):
    net.apply(v, x, c, labels=jnp.zeros((2,), jnp.int32))


# -- training and the restored classifier ---------------------------------------------------------


@pytest.mark.slow  # ~12 s; the classifier's training run is the golden 'classifier' case, its loss and log-prob are tested above
def test_train_step_decreases_the_classifier_loss_and_reports_accuracy():
  net = get_model("mlp_classifier", num_classes=8, **TINY_MLP)
  opt = training.make_optimizer(training.OptimConfig(lr=3e-3, warmup_steps=10))
  cfg = training.StepConfig(objective="classifier", time_sampling="stratified")
  step = jax.jit(training.make_train_step(net, VP, Parameterization("eps"), opt, cfg))
  state = training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  losses, accs = [], []
  for i in range(150):
    x, y = toy2d.batch("8gaussians", 256, 0, i, with_labels=True)
    state, m = step(state, {"x": jnp.asarray(x), "label": jnp.asarray(y)})
    losses.append(float(m["loss"]))
    accs.append(float(m["accuracy"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[:10]) > 2.0  # about ln 8 = 2.08 at the start
  assert np.mean(losses[-20:]) < np.mean(losses[:10]) - 0.5, (losses[:10], losses[-20:])
  assert np.mean(accs[-20:]) > np.mean(accs[:10]) + 0.2
  with pytest.raises(ValueError, match=r"needs the class labels batch\['label'\]"):
    jax.eval_shape(step, state, {"x": jnp.zeros((8, 2))})


def test_grad_accumulation_averages_the_accuracy():
  """Micro-batches: the reported accuracy is the mean of the micro-batches' (equal sizes)."""
  net = get_model("mlp_classifier", num_classes=8, **TINY_MLP)
  opt = training.make_optimizer(training.OptimConfig(lr=1e-3))
  loss = training.make_loss(net, VP, Parameterization("eps"),
                            training.StepConfig(objective="classifier"))
  state = training.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  x, y = toy2d.batch("8gaussians", 64, 0, 0, with_labels=True)
  batch = {"x": jnp.asarray(x), "label": jnp.asarray(y)}
  key = jax.random.PRNGKey(5)
  _, _, aux = training._accumulated_grads(loss, state.params, batch, key, 4, ("accuracy",))
  want = np.mean([float(loss(state.params, {"x": batch["x"][16 * i:16 * (i + 1)],
                                            "label": batch["label"][16 * i:16 * (i + 1)]},
                             jax.random.fold_in(key, i))[1]["accuracy"]) for i in range(4)])
  assert float(aux["accuracy"]) == pytest.approx(want, abs=1e-6)


def test_step_config_refuses_a_conditional_classifier_and_unknown_objectives():
  with pytest.raises(ValueError, match="conditional must be False"):
    training.StepConfig(objective="classifier", conditional=True)
  with pytest.raises(ValueError, match="unknown objective 'gan'"):
    training.StepConfig(objective="gan")


def test_classifier_log_prob_is_the_log_softmax_on_the_configs_net_inputs():
  """build.classifier_log_prob: log p(y | x_t, t) of the network on param.net_inputs of the
  classifier's own config (scale_input here, so the scaling matters), normalised over y and
  differentiable in x_t."""
  from configs.toy import common
  from experiments import build
  c = common.toy_config("8gaussians", "vp")
  c.model.name, c.training.objective = "mlp_classifier", "classifier"
  c.model.net = dict(num_classes=8, **TINY_MLP)
  c.model.scale_input, c.model.sigma_data = True, 2.0
  net, sched = build.model(c), build.schedule(c)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
  log_prob = build.classifier_log_prob(c, params)
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 2)) * 2
  t = jnp.linspace(0.1, 0.9, 6)
  y = jnp.arange(6) % 8
  x_in = x / jnp.sqrt(sched.alpha(t)[:, None] ** 2 * 4.0 + sched.sigma(t)[:, None] ** 2)
  want = jax.nn.log_softmax(net.apply({"params": params}, x_in, t))[jnp.arange(6), y]
  np.testing.assert_allclose(log_prob(x, t, y), want, rtol=1e-5, atol=1e-6)
  total = jax.nn.logsumexp(jnp.stack([log_prob(x, t, jnp.full((6,), k)) for k in range(8)]), 0)
  np.testing.assert_allclose(total, 0.0, atol=1e-5)
  assert log_prob(x, 0.5, y).shape == (6,)  # a scalar t is broadcast
  g = jax.grad(lambda z: jnp.sum(log_prob(z, t, y)))(x)
  assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)
  c.training.objective = "dsm"
  with pytest.raises(ValueError, match="needs a classifier config"):
    build.classifier_log_prob(c, params)


def test_classifier_accuracy_of_the_bayes_classifier():
  """classifier_eval.classifier_accuracy with the exact posterior: the cross-entropy at each
  level is H(K | X_t) (quadrature) within Monte Carlo error; the accuracy falls from ~1 to ~1/8."""
  sched = VP
  times = classifier_eval.classifier_eval_times(sched, 1e-3, 1.0)
  assert times[0] == 1e-3 and times[-1] == 1.0
  np.testing.assert_allclose(np.diff(sched.logsnr(times)), np.diff(sched.logsnr(times))[0])
  x0, y = toy2d.heldout("8gaussians", 20_000, 0, with_labels=True)
  out = classifier_eval.classifier_accuracy(lambda x, t: exact_logits(x, t, np),
                                            x0.astype(np.float64), y, sched, times,
                                            jax.random.PRNGKey(0))
  for t, ce in zip(times, out["cross_entropy"]):
    assert ce == pytest.approx(conditional_entropy(t), abs=0.03), t
  assert out["accuracy"][0] > 0.99 and abs(out["accuracy"][-1] - 1 / 8) < 0.02
