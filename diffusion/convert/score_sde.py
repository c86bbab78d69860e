"""score SDE's released flax checkpoints (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", github.com/yang-song/score_sde) onto ``ncsnpp`` /
``ddpmpp`` (diffusion/models/ncsnpp.py).

Their checkpoint is ``flax.serialization`` msgpack of their training ``State`` (step, optimizer
{'target': params, 'state': Adam moments}, lr, model_state, ema_rate, params_ema, rng); sampling
uses ``params_ema``. Their module names are flax's automatic ones, ``<Class>_<n>`` with one
counter per class and scope in creation order ('ResnetBlockBigGANpp_3/Conv_1',
'AttnBlockpp_0/NIN_2', 'Combine_0/Conv_0', top-level 'Conv_0' ... 'GroupNorm_1'); the mapping
(:func:`module_map`) replays their model's construction order for the given config, so it needs
the config (pass it as a JSON file of the fields of :data:`CONFIG_FIELDS`, :func:`load_config`).
Both of their architectures map onto our NCSN++ class: 'ncsnpp' (NCSN++ / DDPM++) directly and
'ddpm' (models/ddpm.py, Ho et al. 2020's U-Net) as ``resblock_type='ddpm'`` without FIR,
progressive paths or skip rescaling.

What changes on the way (paper equation numbers of Song et al. 2021):
  * VE (eq. 9, data in [0, 1] when ``centered`` is False): our data is x' = 2 x - 1, so the
    noise levels double (sigma' = 2 sigma); their network maps its input by 2 x - 1 itself, so it
    sees exactly x'. Their Fourier features see log sigma = log sigma' - log 2: the shift p_k =
    2 pi W_k log 2 is folded into the first Dense layer (sin(a - p) = sin a cos p - cos a sin p,
    cos(a - p) = cos a cos p + sin a sin p, per frequency). With ``scale_by_sigma`` their output
    is the score, F / sigma, in their data space; score' = score / 2, so our 'eps' output
    -sigma' score' = -F: the last convolution(s) are negated.
  * VP / sub-VP (eq. 11, 12, continuous, centered data in [-1, 1]): their network sees 999 t
    and outputs eps (score = -F / std): our 'eps' parameterization, ``time_input='t'``,
    ``embedding_scale=999``; no parameter changes. Their time t in [eps, 1] is ours.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from diffusion.convert.common import (ConversionError, Converted, ParamMap, flatten,
                                      unflatten)

WHAT = "score SDE checkpoint"
ARCHITECTURES = ("ncsnpp", "ddpm")
SDES = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}
# Their time ranges (losses.py eps = 1e-5 for training, likelihood.py eps = 1e-5, run_lib.py
# sampling_eps): the schedule spans [1e-5, 1]; the VP / sub-VP samplers stop at 1e-3.
T_MIN = 1e-5
SAMPLING_T_MIN = {"vesde": None, "vpsde": 1e-3, "subvpsde": 1e-3}
PARAMS = ("ema", "raw")
# The fields of their ml_collections config the conversion reads (model.*, then data / training).
CONFIG_FIELDS = (
    "name", "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resblock_type",
    "progressive", "progressive_input", "progressive_combine", "embedding_type",
    "fourier_scale", "fir", "fir_kernel", "skip_rescale", "init_scale", "conditional",
    "scale_by_sigma", "resamp_with_conv", "conv_size", "sigma_min", "sigma_max", "beta_min",
    "beta_max", "num_scales", "nonlinearity", "normalization", "image_size", "num_channels",
    "centered", "sde", "continuous")
# Fields only their 'ncsnpp' model reads (None / absent for 'ddpm').
NCSNPP_ONLY = ("resblock_type", "progressive", "progressive_input", "progressive_combine",
               "embedding_type", "fourier_scale", "fir", "fir_kernel", "skip_rescale",
               "init_scale", "conv_size")

# Their leaf names per kind of module -> ours, and the leaf transform.
_conv1x1 = lambda k: k.reshape(k.shape[2:]) if k.ndim == 4 and k.shape[:2] == (1, 1) else k
LEAVES: Dict[str, Tuple[Tuple[str, str, Optional[Callable]], ...]] = {
    "conv": (("kernel", "kernel", None), ("bias", "bias", None)),
    "conv1x1": (("kernel", "kernel", _conv1x1), ("bias", "bias", None)),
    "fir_conv": (("weight", "kernel", None), ("bias", "bias", None)),
    "nin": (("W", "kernel", None), ("b", "bias", None)),
    "dense": (("kernel", "kernel", None), ("bias", "bias", None)),
    "norm": (("scale", "scale", None), ("bias", "bias", None)),
    "fourier": (("W", "W", None),),
}

Entry = Tuple[str, str, str]  # (their module path, our module path, kind)


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str) -> Dict[str, Any]:
  """Their checkpoint file (``checkpoint_<n>``, flax msgpack of ``State``) as a nested dict of
  numpy arrays. ConversionError if it is not one, naming the keys found."""
  import msgpack
  from flax import serialization
  if not os.path.isfile(path):
    raise ConversionError(f"{WHAT}: {path!r} is not a file (their checkpoints are files "
                          f"'checkpoint_<n>' in <workdir>/checkpoints)")
  with open(path, "rb") as f:
    data = f.read()
  try:
    tree = serialization.msgpack_restore(data)
  except (ValueError, msgpack.exceptions.UnpackException) as e:
    raise ConversionError(f"{WHAT}: {path!r} is not a flax msgpack file ({e})") from None
  found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
  if (not isinstance(tree, dict) or "params_ema" not in tree
      or not isinstance(tree.get("optimizer"), dict) or "target" not in tree["optimizer"]):
    raise ConversionError(f"{WHAT}: {path!r} is not a score SDE training state: expected keys "
                          f"'params_ema' and 'optimizer'/'target', found {found}")
  return tree


RELEASED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "score_sde_released.json")


def released_configs() -> Dict[str, Dict[str, Any]]:
  """{name: config fields} of every config of theirs that uses 'ncsnpp' or 'ddpm'
  ('ve/cifar10_ncsnpp_continuous', 'vp/ddpm/church', ...), read from their configs/ by
  tests/data/convert/make_score_sde_fixtures.py; :func:`check_config` says which convert."""
  with open(RELEASED_CONFIGS) as f:
    return json.load(f)


def load_config(spec: str) -> Dict[str, Any]:
  """Their config fields: a released config by name (:func:`released_configs`, e.g.
  've/cifar10_ncsnpp_deep_continuous', the path of their config file without 'configs/' and
  '.py'), or a JSON file {field: value} of :data:`CONFIG_FIELDS` for a config of one's own."""
  released = released_configs()
  if spec in released:
    return dict(released[spec])
  if not os.path.isfile(spec):
    raise ConversionError(f"score SDE config {spec!r} is neither a released config nor a JSON "
                          f"file; released: {sorted(released)}")
  with open(spec) as f:
    config = json.load(f)
  if not isinstance(config, dict):
    raise ConversionError(f"{spec!r}: expected a JSON object of config fields, got "
                          f"{type(config).__name__}")
  return config



# ----------------------------------------------------------------------------- validation


def _need(config: Mapping[str, Any], field: str):
  if field not in config or config[field] is None:
    raise ConversionError(f"score SDE config: field {field!r} is missing; needed fields: "
                          f"{list(CONFIG_FIELDS)}")
  return config[field]


def _accept(config: Mapping[str, Any], field: str, accepted: Tuple, why: str = ""):
  value = _need(config, field)
  low = lambda v: v.lower() if isinstance(v, str) else v
  if low(value) not in [low(a) for a in accepted]:
    raise ConversionError(f"score SDE config: {field}={value!r} is not supported; accepted: "
                          f"{list(accepted)}{why}")
  return value


def check_architecture(config: Mapping[str, Any]) -> str:
  """Validates the network fields the name mapping needs; returns the architecture name."""
  if not isinstance(config, Mapping):
    raise ConversionError(f"score SDE config must be a dict of fields, got "
                          f"{type(config).__name__}")
  arch = _accept(config, "name", ARCHITECTURES,
                 " (their 'ncsn' / 'ncsnv2' RefineNets have no counterpart here)")
  _accept(config, "conditional", (True,), " (a network without noise conditioning)")
  _accept(config, "nonlinearity", ("swish",))
  if arch == "ddpm":
    _accept(config, "normalization", ("GroupNorm",))
    _check_ddpm_groups(config)
  else:
    _accept(config, "resblock_type", ("biggan", "ddpm"))
    _accept(config, "progressive", ("none", "output_skip", "residual"))
    _accept(config, "progressive_input", ("none", "input_skip", "residual"))
    _accept(config, "progressive_combine", ("sum", "cat"))
    _accept(config, "embedding_type", ("fourier", "positional"))
    if config.get("conv_size") not in (None, 3):
      raise ConversionError(f"score SDE config: conv_size={config['conv_size']!r}; accepted: "
                            f"[3] (their model always uses 3x3 convolutions)")
  return arch


def check_config(config: Mapping[str, Any]) -> str:
  """Validates everything :func:`convert` supports (network and semantics); returns the
  architecture name."""
  arch = check_architecture(config)
  sde = _accept(config, "sde", tuple(SDES))
  _accept(config, "continuous", (True,),
          ": discrete checkpoints are not supported: their network is conditioned on an "
          "integer index into num_scales discrete noise levels (VE: a geometric grid of sigmas; "
          "VP: DDPM's discrete alphas_cumprod, which differ from the continuous VP marginals), "
          "which no continuous schedule and time input of ours reproduces exactly")
  if sde == "vesde":
    _accept(config, "scale_by_sigma", (True,),
            " (a VE network that outputs the score without 1/sigma: no released config)")
    emb = "positional" if arch == "ddpm" else config["embedding_type"].lower()
    if emb != "fourier":
      raise ConversionError(f"score SDE config: embedding_type={emb!r} with sde='vesde' is not "
                            f"supported; accepted: ['fourier'] (continuous VE feeds sigma "
                            f"itself to the embedding; only log sigma features are mapped)")
  else:
    _accept(config, "scale_by_sigma", (False,),
            f" (their {sde} networks output eps; scale_by_sigma would divide it by sigma_t "
            f"of the VE grid)")
    _accept(config, "centered", (True,),
            f" ({sde} with data in [0, 1] is a different process in our [-1, 1] convention)")
    if arch == "ncsnpp" and config["embedding_type"].lower() != "positional":
      raise ConversionError(f"score SDE config: embedding_type="
                            f"{config['embedding_type']!r} with sde={sde!r} is not supported; "
                            f"accepted: ['positional'] (their network would see log(999 t))")
  return arch


def _check_ddpm_groups(config: Mapping[str, Any]):
  """Their 'ddpm' uses flax's GroupNorm default of 32 groups everywhere; ours uses
  min(32, C // 4) groups, equal only when every channel count is a multiple of 32 and >= 128."""
  nf, ch_mult = _need(config, "nf"), _need(config, "ch_mult")
  bad = [nf * m for m in ch_mult if nf * m < 128 or (nf * m) % 32]
  if bad:
    raise ConversionError(f"score SDE config: name='ddpm' with nf={nf}, ch_mult={list(ch_mult)}: "
                          f"channel counts {bad} would get other GroupNorm groups here than "
                          f"their 32; accepted: every nf * ch_mult >= 128 and divisible by 32")


# ----------------------------------------------------------------------------- the mapping


class _Names:
  """flax's automatic naming: '<Class>_<n>', one counter per class in creation order."""

  def __init__(self):
    self.counts: Dict[str, int] = {}

  def __call__(self, cls: str) -> str:
    n = self.counts.get(cls, 0)
    self.counts[cls] = n + 1
    return f"{cls}_{n}"


def module_map(config: Mapping[str, Any]) -> List[Entry]:
  """[(their module, our module, kind)] in their creation order, for their model of ``config``
  (models/ncsnpp.py or models/ddpm.py). Residual-block shortcuts are listed with kind
  'shortcut?' (present only where the channel count or the resolution changes)."""
  arch = check_architecture(config)
  ddpm_arch = arch == "ddpm"
  resblock = "ddpm" if ddpm_arch else config["resblock_type"].lower()
  progressive = "none" if ddpm_arch else config["progressive"].lower()
  progressive_input = "none" if ddpm_arch else config["progressive_input"].lower()
  fir = False if ddpm_arch else bool(config["fir"])
  resamp_conv = bool(_need(config, "resamp_with_conv"))
  ch_mult = list(_need(config, "ch_mult"))
  num_res_blocks = int(_need(config, "num_res_blocks"))
  attn_res = set(_need(config, "attn_resolutions"))
  res = int(_need(config, "image_size"))
  top = _Names()
  out: List[Entry] = []
  if ddpm_arch:
    block_cls, attn_cls = "ResnetBlockDDPM", "AttnBlock"
  else:
    block_cls = "ResnetBlockDDPMpp" if resblock == "ddpm" else "ResnetBlockBigGANpp"
    attn_cls = "AttnBlockpp"
  resample_kind = "fir_conv" if fir else "conv"

  def block(ours: str):
    theirs = top(block_cls)
    sub = _Names()
    out.extend([(f"{theirs}/{sub('GroupNorm')}", f"{ours}/norm0", "norm"),
                (f"{theirs}/{sub('Conv')}", f"{ours}/conv0", "conv"),
                (f"{theirs}/{sub('Dense')}", f"{ours}/temb_proj", "dense"),
                (f"{theirs}/{sub('GroupNorm')}", f"{ours}/norm1", "norm"),
                (f"{theirs}/{sub('Conv')}", f"{ours}/conv1", "conv")])
    if resblock == "ddpm":  # NIN (W, b) shortcut
      out.append((f"{theirs}/{sub('NIN')}", f"{ours}/shortcut", "shortcut?nin"))
    else:  # conv1x1 shortcut
      out.append((f"{theirs}/{sub('Conv')}", f"{ours}/shortcut", "shortcut?conv1x1"))

  def attn(ours: str):
    theirs = top(attn_cls)
    sub = _Names()
    out.append((f"{theirs}/{sub('GroupNorm')}", f"{ours}/norm", "norm"))
    for name in ("q", "k", "v", "proj_out"):
      out.append((f"{theirs}/{sub('NIN')}", f"{ours}/{name}", "nin"))

  def resample(cls: str, ours: str, with_conv: bool):
    theirs = top(cls)  # the counter advances even when the module has no parameters
    if with_conv:
      sub = "Conv2d_0" if fir else "Conv_0"
      out.append((f"{theirs}/{sub}", f"{ours}/conv", resample_kind))

  def to_image(ours: str):
    out.extend([(top("GroupNorm"), f"{ours}_norm", "norm"), (top("Conv"), f"{ours}_conv",
                                                             "conv")])

  if not ddpm_arch and config["embedding_type"].lower() == "fourier":
    out.append((f"{top('GaussianFourierProjection')}", "noise_embedding/fourier", "fourier"))
  out.append((top("Dense"), "noise_embedding/dense0", "dense"))
  out.append((top("Dense"), "noise_embedding/dense1", "dense"))
  out.append((top("Conv"), "conv_in", "conv"))
  last = len(ch_mult) - 1
  for i in range(len(ch_mult)):
    for j in range(num_res_blocks):
      block(f"down{i}_block{j}")
      if res in attn_res:
        attn(f"down{i}_attn{j}")
    if i == last:
      continue
    if resblock == "ddpm":
      resample("Downsample", f"down{i}_downsample", resamp_conv)
    else:
      block(f"down{i}_downsample")
    if progressive_input == "input_skip":
      resample("Downsample", f"down{i}_pyramid", False)
      out.append((f"{top('Combine')}/Conv_0", f"down{i}_combine", "conv1x1"))
    elif progressive_input == "residual":
      resample("Downsample", f"down{i}_pyramid", True)
    res //= 2
  block("mid_block0")
  attn("mid_attn")
  block("mid_block1")
  for i in reversed(range(len(ch_mult))):
    for j in range(num_res_blocks + 1):
      block(f"up{i}_block{j}")
    if res in attn_res:
      attn(f"up{i}_attn")
    if progressive != "none":
      if i == last:
        to_image(f"up{i}_pyramid")
      elif progressive == "output_skip":
        resample("Upsample", f"up{i}_pyramid_up", False)
        to_image(f"up{i}_pyramid")
      else:
        resample("Upsample", f"up{i}_pyramid_up", True)
    if i != 0:
      if resblock == "ddpm":
        resample("Upsample", f"up{i}_upsample", resamp_conv)
      else:
        block(f"up{i}_upsample")
      res *= 2
  if progressive != "output_skip":
    to_image("out")
  return out


def _output_convs(config: Mapping[str, Any]) -> List[str]:
  """Our modules whose (linear) outputs sum to the network output."""
  if config["name"] == "ncsnpp" and config["progressive"].lower() == "output_skip":
    return [f"up{i}_pyramid_conv" for i in range(len(config["ch_mult"]))]
  return ["out_conv"]


def _data_scale(config: Mapping[str, Any]) -> float:
  """x_ours = k x_theirs + b: k = 2 for their [0, 1] data, 1 for centered data."""
  return 1.0 if config["centered"] else 2.0


def _fold_shift(kernel: np.ndarray, w: np.ndarray, shift: float, sign: float = 1.0):
  """The Dense kernel (2n, D) after Fourier features [sin a, cos a] (a = 2 pi W c) whose input c
  is shifted: features of c - shift, expressed in those of c (sign=-1: the inverse)."""
  n = w.shape[0]
  if kernel.shape[0] != 2 * n:
    raise ConversionError(f"{WHAT}: the first Dense layer has {kernel.shape[0]} inputs, the "
                          f"Fourier projection gives {2 * n}")
  p = sign * 2 * math.pi * w.astype(np.float64) * shift
  cp, sp = np.cos(p)[:, None], np.sin(p)[:, None]
  ks, kc = kernel[:n].astype(np.float64), kernel[n:].astype(np.float64)
  return np.concatenate([cp * ks + sp * kc, -sp * ks + cp * kc], 0).astype(kernel.dtype)


def _target_shapes(model: str, net: Mapping[str, Any], image_shape) -> Dict[str, tuple]:
  import jax
  import jax.numpy as jnp
  from diffusion.models import get_model
  m = get_model(model, **net)
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  var = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.float32)))
  return {k: tuple(v.shape) for k, v in flatten(dict(var["params"])).items()}


def net_kwargs(config: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
  """(our model name, its constructor kwargs) for their config."""
  arch = check_architecture(config)
  sde = config.get("sde")
  common = dict(nf=int(config["nf"]), ch_mult=tuple(int(m) for m in config["ch_mult"]),
                num_res_blocks=int(config["num_res_blocks"]),
                attn_resolutions=tuple(int(r) for r in config["attn_resolutions"]),
                dropout=float(config["dropout"]),
                resamp_with_conv=bool(config["resamp_with_conv"]))
  emb_scale = 1.0 if sde == "vesde" else 999.0
  if arch == "ddpm":
    net = dict(common, resblock_type="ddpm", fir=False, fir_kernel=(1, 3, 3, 1),
               skip_rescale=False, progressive="none", progressive_input="none",
               progressive_combine="sum", embedding_type="positional",
               embedding_scale=emb_scale, fourier_scale=16.0, init_scale=0.0)
    return "ddpmpp", net
  net = dict(common, resblock_type=config["resblock_type"].lower(), fir=bool(config["fir"]),
             fir_kernel=tuple(int(k) for k in config["fir_kernel"]),
             skip_rescale=bool(config["skip_rescale"]),
             progressive=config["progressive"].lower(),
             progressive_input=config["progressive_input"].lower(),
             progressive_combine=config["progressive_combine"].lower(),
             embedding_type=config["embedding_type"].lower(), embedding_scale=emb_scale,
             fourier_scale=float(config.get("fourier_scale") or 16.0),
             init_scale=float(config["init_scale"]))
  plain = (not net["fir"] and net["progressive"] == "none"
           and net["progressive_input"] == "none" and net["embedding_type"] == "positional")
  return ("ddpmpp" if plain else "ncsnpp"), net


def sde_fields(config: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
  """Our schedule (name, fields) for their SDE; VE noise levels scaled with the data."""
  sde = config["sde"]
  fields: Dict[str, Any] = dict(t_min=T_MIN, t_max=1.0)
  if sde == "vesde":
    k = _data_scale(config)
    fields.update(sigma_min=k * float(_need(config, "sigma_min")),
                  sigma_max=k * float(_need(config, "sigma_max")))
  else:
    fields.update(beta_min=float(_need(config, "beta_min")),
                  beta_max=float(_need(config, "beta_max")))
  return SDES[sde], fields


def _select(tree: Mapping[str, Any], params: str) -> Mapping[str, Any]:
  if params not in PARAMS:
    raise ConversionError(f"params={params!r}; accepted: {list(PARAMS)} ('ema': params_ema, "
                          f"what their sampling uses; 'raw': the optimizer's target)")
  if "params_ema" not in tree and "optimizer" not in tree:
    return tree  # already a bare parameter tree
  if params == "ema":
    if "params_ema" not in tree:
      raise ConversionError(f"{WHAT}: no 'params_ema'; found {sorted(tree)}")
    return tree["params_ema"]
  opt = tree.get("optimizer")
  if not isinstance(opt, Mapping) or "target" not in opt:
    raise ConversionError(f"{WHAT}: no 'optimizer'/'target'; found {sorted(tree)}")
  return opt["target"]


def _map(src: Mapping[str, Any], config: Mapping[str, Any]) -> ParamMap:
  """The name-by-name mapping (no semantic changes), not yet finished."""
  pm = ParamMap(src, WHAT)
  for theirs, ours, kind in module_map(config):
    if kind.startswith("shortcut?"):
      kind = kind[len("shortcut?"):]
      if not any(pm.has(f"{theirs}/{leaf}") for leaf, _, _ in LEAVES[kind]):
        continue  # no shortcut in this block; finish() reports it if ours has one
    for leaf, our_leaf, fn in LEAVES[kind]:
      pm.move(f"{theirs}/{leaf}", f"{ours}/{our_leaf}", fn)
  return pm


def _image_shape(config: Mapping[str, Any]) -> Tuple[int, int, int]:
  s = int(_need(config, "image_size"))
  return (s, s, int(_need(config, "num_channels")))


def map_params(tree: Mapping[str, Any], config: Mapping[str, Any],
               params: str = "ema") -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
  """(our params, model, net): the names and layouts only, without :func:`convert`'s semantic
  checks and changes (so also for their discrete configs). Complete and exact (finish())."""
  check_architecture(config)
  pm = _map(flatten(_select(tree, params)), config)
  model, net = net_kwargs(config)
  return pm.finish(_target_shapes(model, net, _image_shape(config))), model, net


def convert(tree: Mapping[str, Any], config: Mapping[str, Any],
            params: str = "ema") -> Converted:
  """Their State dict (or a bare parameter tree) onto our network. See the module docstring
  for what changes; every source parameter is used exactly once (ParamMap.finish).

  Args:
    tree: :func:`read_checkpoint`'s dict.
    config: their config fields (:data:`CONFIG_FIELDS`).
    params: 'ema' (params_ema, what their sampling uses) or 'raw' (the optimizer's target).
  """
  check_config(config)
  pm = _map(flatten(_select(tree, params)), config)
  model, net = net_kwargs(config)
  notes: List[str] = []
  if config["sde"] == "vesde":
    k = _data_scale(config)
    if k != 1.0:
      notes.append(f"VE noise levels doubled with the data range [0, 1] -> [-1, 1]: sigma_min "
                   f"{config['sigma_min']} -> {k * config['sigma_min']}, sigma_max "
                   f"{config['sigma_max']} -> {k * config['sigma_max']}")
      w = pm.target["noise_embedding/fourier/W"]
      d0 = "noise_embedding/dense0/kernel"
      pm.target[d0] = _fold_shift(pm.target[d0], w, math.log(k))
      notes.append(f"log {k:g} shift of the Fourier features' input (log sigma) folded into "
                   f"noise_embedding/dense0")
    for conv in _output_convs(config):
      for leaf in ("kernel", "bias"):
        pm.target[f"{conv}/{leaf}"] = -pm.target[f"{conv}/{leaf}"]
    notes.append(f"output negated ({', '.join(_output_convs(config))}): their F = sigma * "
                 f"score, our eps = -F")
  if config["name"] == "ddpm":
    notes.append("their 'ddpm' U-Net as NCSN++ with resblock_type='ddpm', no FIR / progressive "
                 "paths / skip rescaling")
  image_shape = _image_shape(config)
  out = pm.finish(_target_shapes(model, net, image_shape))
  return Converted(params=out, model=model, net=net, sde=sde_fields(config),
                   parameterization="eps",
                   time_input="log_sigma" if config["sde"] == "vesde" else "t",
                   image_shape=image_shape, source={"format": "score_sde", "params": params},
                   notes=notes, sampling_t_min=SAMPLING_T_MIN[config["sde"]])


def convert_checkpoint(path: str, config: Mapping[str, Any], params: str = "ema") -> Converted:
  """:func:`read_checkpoint` + :func:`convert`, with the file and its sha256 in ``source``."""
  tree = read_checkpoint(path)
  conv = convert(tree, config, params)
  from diffusion.checkpoint import sha256_file
  sha = sha256_file(path)
  step = tree.get("step")
  conv.source.update(file=os.path.abspath(path), sha256=sha,
                     step=None if step is None else int(np.asarray(step)))
  return conv


def to_score_sde(params: Mapping[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
  """The inverse of :func:`convert`: our parameters as their nested parameter tree."""
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  if config["sde"] == "vesde":
    for conv in _output_convs(config):
      for leaf in ("kernel", "bias"):
        flat[f"{conv}/{leaf}"] = -flat[f"{conv}/{leaf}"]
    k = _data_scale(config)
    if k != 1.0:
      d0 = "noise_embedding/dense0/kernel"
      flat[d0] = _fold_shift(flat[d0], flat["noise_embedding/fourier/W"], math.log(k), -1.0)
  out: Dict[str, Any] = {}
  used = set()
  for theirs, ours, kind in module_map(config):
    if kind.startswith("shortcut?"):
      kind = kind[len("shortcut?"):]
      if f"{ours}/kernel" not in flat:
        continue
    for leaf, our_leaf, _ in LEAVES[kind]:
      v = flat[f"{ours}/{our_leaf}"]
      if kind == "conv1x1" and leaf == "kernel":
        v = v.reshape((1, 1) + v.shape)
      out[f"{theirs}/{leaf}"] = v
      used.add(f"{ours}/{our_leaf}")
  left = sorted(set(flat) - used)
  if left:
    raise ConversionError(f"to_score_sde: parameters without a score SDE name: {left[:12]}")
  return unflatten(out)
