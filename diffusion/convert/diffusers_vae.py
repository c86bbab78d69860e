"""diffusers ``AutoencoderKL`` checkpoints onto ``autoencoder_kl`` (diffusion.models.autoencoder).

Covers the KL autoencoders of latent diffusion (Rombach et al. 2022) as diffusers saves them:
Stable Diffusion 1.x / 2.x's VAE (stabilityai/sd-vae-ft-mse, sd-vae-ft-ema, the 'vae/' folder
of the SD pipelines; f = 8, 4 latent channels, scaling_factor 0.18215), SDXL's (the same
architecture and parameter count, other weights, scaling_factor 0.13025, ``force_upcast``: it
overflows in float16) and any other AutoencoderKL built from ``DownEncoderBlock2D`` /
``UpDecoderBlock2D`` with SiLU (e.g. the 16-channel SD3 / FLUX VAEs, which switch the quant convs
off and carry a ``shift_factor``).

The mapping (:func:`module_table`, one row per diffusers module) renames every tensor and moves
torch layouts to flax ones; every tensor of the file is used exactly once and every parameter of
the network is filled with its shape, or a ConversionError names the tensor. Attention tensors
may carry the names of diffusers' deprecated ``AttentionBlock`` (query / key / value /
proj_attn for to_q / to_k / to_v / to_out.0; group_norm unchanged), which diffusers still renames
on load (``ModelMixin._fix_state_dict_keys_on_load``) and which the released SD VAE files use in
some revisions. The original CompVis / ldm layout (``encoder.down.0.block.0...``, single-file
``.ckpt``) is not read: load it with diffusers' ``AutoencoderKL.from_single_file`` and
``save_pretrained`` it first.

Usage::

    from diffusion.convert import diffusers_vae
    conv = diffusers_vae.convert("sd-vae-ft-mse/")        # config.json + weights
    vae = get_model(conv.model, **conv.net)
    mean, logvar = vae.apply({"params": conv.params}, x, method="encode")
    latents = conv.scaling_factor * (mean - (conv.shift_factor or 0.0))   # what LDM trains on
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from diffusion.convert.common import ConversionError, ParamMap, conv_kernel, linear_kernel
from diffusion.convert.diffusers_unet import find_weights, read_json

# AutoencoderKL's constructor defaults (diffusers 0.42.1): a config.json written by an older
# diffusers may lack a key, and diffusers itself then uses these.
AUTOENCODER_KL_DEFAULTS: Dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=32,
    scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None,
    force_upcast=True, use_quant_conv=True, use_post_quant_conv=True,
    mid_block_add_attention=True)

ACTIVATIONS = ("silu", "swish")  # the same nn.SiLU in diffusers' get_activation
DOWN_TYPE, UP_TYPE = "DownEncoderBlock2D", "UpDecoderBlock2D"
MODEL = "autoencoder_kl"

# Inside a ResnetBlock2D -> autoencoder.ResnetBlock. conv_shortcut is a 1x1 conv -> a Dense.
RESNET_TABLE = [("norm1", "norm0", "norm"), ("conv1", "conv0", "conv"),
                ("norm2", "norm1", "norm"), ("conv2", "conv1", "conv"),
                ("conv_shortcut", "shortcut", "linear")]
# Inside the mid block's Attention -> autoencoder.Attention: current names, then those of
# diffusers' deprecated AttentionBlock (renamed on load by diffusers).
ATTENTION_TABLE = [("group_norm", "norm", "norm"), ("to_q", "q", "linear"),
                   ("to_k", "k", "linear"), ("to_v", "v", "linear"),
                   ("to_out.0", "proj_out", "linear")]
ATTENTION_TABLE_LEGACY = [("group_norm", "norm", "norm"), ("query", "q", "linear"),
                          ("key", "k", "linear"), ("value", "v", "linear"),
                          ("proj_attn", "proj_out", "linear")]
LEGACY_ATTENTION_NAMES = ("query", "key", "value", "proj_attn")


@dataclasses.dataclass
class ConvertedAutoencoder:
  """A converted AutoencoderKL and what latent diffusion needs to use it.

  Attributes:
    params: nested flax params of ``get_model(model, **net)`` (numpy float32).
    model: the registered network, 'autoencoder_kl'.
    net: its constructor kwargs (out_channels, latent_channels, channels, num_res_blocks,
      norm_groups, norm_eps, mid_attention, use_quant_conv, use_post_quant_conv).
    image_channels: channels of the images it encodes (diffusers' in_channels).
    scaling_factor: latents for the diffusion model are ``scaling_factor * (z - shift)``
      (config.json; SD 1.x / 2.x 0.18215, SDXL 0.13025).
    shift_factor: the shift above, or None (no shift: SD, SDXL).
    latents_mean / latents_std: per-channel latent statistics of config.json when present
      (tuples of latent_channels floats), else None; carried, not applied.
    force_upcast: config.json's flag: the VAE must run in float32 (SDXL's overflows in
      float16); a hint for choosing ``net['dtype']``, which is left at float32.
    sample_size: config.json's sample_size (diffusers' tiling size; the network itself takes
      any H, W divisible by f).
    source: provenance (format, folder, weights, sha256, the filled-in config).
    notes: what the conversion did on the way (one line each), for the report.
  """
  params: Dict[str, Any]
  model: str
  net: Dict[str, Any]
  image_channels: int
  scaling_factor: float
  shift_factor: Optional[float]
  latents_mean: Optional[Tuple[float, ...]]
  latents_std: Optional[Tuple[float, ...]]
  force_upcast: bool
  sample_size: Any
  source: Dict[str, Any]
  notes: List[str] = dataclasses.field(default_factory=list)


def _positive_int(c: Mapping[str, Any], key: str) -> int:
  v = c[key]
  if not isinstance(v, int) or isinstance(v, bool) or v < 1:
    raise ConversionError(f"config.json: {key}={v!r} must be an int >= 1")
  return v


def _stats(c: Mapping[str, Any], key: str, n: int) -> Optional[Tuple[float, ...]]:
  v = c[key]
  if v is None:
    return None
  if not isinstance(v, (list, tuple)) or len(v) != n:
    raise ConversionError(f"config.json: {key}={v!r} must be null or a list of "
                          f"latent_channels={n} numbers")
  return tuple(float(x) for x in v)


def vae_config(raw: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
  """(the AutoencoderKL config with diffusers' defaults filled in, notes), checked against
  what ``autoencoder_kl`` computes. Raises ConversionError naming the first field that does
  not fit. Keys AutoencoderKL does not take are ignored, as diffusers ignores them (noted)."""
  name = raw.get("_class_name", "AutoencoderKL")
  if name != "AutoencoderKL":
    raise ConversionError(f"config.json: _class_name={name!r}; only 'AutoencoderKL' is "
                          f"converted")
  known = {k: v for k, v in raw.items() if not k.startswith("_")}
  notes = []
  extra = sorted(set(known) - set(AUTOENCODER_KL_DEFAULTS))
  if extra:
    notes.append(f"config.json keys not taken by AutoencoderKL, ignored as diffusers does: "
                 f"{extra}")
  c = {**AUTOENCODER_KL_DEFAULTS, **{k: v for k, v in known.items() if k not in extra}}
  if c["act_fn"] not in ACTIVATIONS:
    raise ConversionError(f"config.json: act_fn={c['act_fn']!r}; autoencoder_kl uses SiLU "
                          f"(accepted: {ACTIVATIONS})")
  chans = c["block_out_channels"]
  if (not isinstance(chans, (list, tuple)) or not chans
      or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in chans)):
    raise ConversionError(f"config.json: block_out_channels={chans!r} must be a non-empty "
                          f"list of ints >= 1")
  chans = [int(x) for x in chans]
  c["block_out_channels"] = chans
  for key, want in (("down_block_types", DOWN_TYPE), ("up_block_types", UP_TYPE)):
    types = list(c[key])
    if len(types) != len(chans):
      raise ConversionError(f"config.json: {len(types)} {key} for {len(chans)} "
                            f"block_out_channels; they must agree")
    bad = sorted({t for t in types if t != want})
    if bad:
      raise ConversionError(f"config.json: {key} {bad} unsupported; accepted: {want!r} (the "
                            f"attention-free blocks of SD's VAE)")
    c[key] = types
  for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block",
              "norm_num_groups"):
    _positive_int(c, key)
  bad = [x for x in chans if x % c["norm_num_groups"]]
  if bad:
    raise ConversionError(f"config.json: norm_num_groups={c['norm_num_groups']} does not "
                          f"divide block_out_channels {bad}")
  for key in ("force_upcast", "use_quant_conv", "use_post_quant_conv",
              "mid_block_add_attention"):
    if not isinstance(c[key], bool):
      raise ConversionError(f"config.json: {key}={c[key]!r} must be true or false")
  for key, optional in (("scaling_factor", False), ("shift_factor", True)):
    v = c[key]
    if v is None and optional:
      continue
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or (
        key == "scaling_factor" and v <= 0):
      raise ConversionError(f"config.json: {key}={v!r} must be a finite number"
                            f"{' > 0' if key == 'scaling_factor' else ' or null'}")
  c["latents_mean"] = _stats(c, "latents_mean", c["latent_channels"])
  c["latents_std"] = _stats(c, "latents_std", c["latent_channels"])
  return c, notes


def net_kwargs(c: Mapping[str, Any]) -> Dict[str, Any]:
  """``autoencoder_kl`` constructor kwargs of a checked AutoencoderKL config. diffusers fixes
  every GroupNorm epsilon of Encoder / Decoder at 1e-6."""
  return dict(out_channels=int(c["out_channels"]), latent_channels=int(c["latent_channels"]),
              channels=tuple(c["block_out_channels"]),
              num_res_blocks=int(c["layers_per_block"]), norm_groups=int(c["norm_num_groups"]),
              norm_eps=1e-6, mid_attention=bool(c["mid_block_add_attention"]),
              use_quant_conv=bool(c["use_quant_conv"]),
              use_post_quant_conv=bool(c["use_post_quant_conv"]))


def module_table(c: Mapping[str, Any], legacy_attention: Mapping[str, bool] = None
                 ) -> List[Tuple[str, str, str]]:
  """The explicit mapping for a checked config: (diffusers module, our module, kind) for every
  leaf module, kind in 'linear' (weight (O, I) or (O, I, 1, 1) -> Dense kernel (I, O), bias),
  'conv' ((O, I, kh, kw) -> (kh, kw, I, O), bias), 'norm' (weight -> scale, bias). Decoder
  level i is diffusers' up_blocks.(L - 1 - i). A resnet's conv_shortcut appears only where the
  channel count changes. ``legacy_attention``: {diffusers attention path: uses the deprecated
  names} (default: current names everywhere)."""
  legacy_attention = legacy_attention or {}
  chans = [int(x) for x in c["block_out_channels"]]
  levels, nb = len(chans), int(c["layers_per_block"])
  rows: List[Tuple[str, str, str]] = []

  def resnet(src, dst, c_in, c_out):
    rows.extend((f"{src}.{s}", f"{dst}/{d}", kind) for s, d, kind in RESNET_TABLE
                if s != "conv_shortcut" or c_in != c_out)

  def middle(part, width):
    resnet(f"{part}.mid_block.resnets.0", f"{part}/mid_block0", width, width)
    if c["mid_block_add_attention"]:
      src = f"{part}.mid_block.attentions.0"
      table = ATTENTION_TABLE_LEGACY if legacy_attention.get(src) else ATTENTION_TABLE
      rows.extend((f"{src}.{s}", f"{part}/mid_attn/{d}", kind) for s, d, kind in table)
    resnet(f"{part}.mid_block.resnets.1", f"{part}/mid_block1", width, width)

  rows.append(("encoder.conv_in", "encoder/conv_in", "conv"))
  width = chans[0]
  for i in range(levels):
    for j in range(nb):
      resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder/down{i}_block{j}", width,
             chans[i])
      width = chans[i]
    if i != levels - 1:
      rows.append((f"encoder.down_blocks.{i}.downsamplers.0.conv",
                   f"encoder/down{i}_downsample", "conv"))
  middle("encoder", width)
  rows += [("encoder.conv_norm_out", "encoder/norm_out", "norm"),
           ("encoder.conv_out", "encoder/conv_out", "conv")]
  if c["use_quant_conv"]:
    rows.append(("quant_conv", "quant_conv", "linear"))
  if c["use_post_quant_conv"]:
    rows.append(("post_quant_conv", "post_quant_conv", "linear"))
  rows.append(("decoder.conv_in", "decoder/conv_in", "conv"))
  middle("decoder", width)
  for i in reversed(range(levels)):
    k = levels - 1 - i
    for j in range(nb + 1):
      resnet(f"decoder.up_blocks.{k}.resnets.{j}", f"decoder/up{i}_block{j}", width, chans[i])
      width = chans[i]
    if i != 0:
      rows.append((f"decoder.up_blocks.{k}.upsamplers.0.conv", f"decoder/up{i}_upsample",
                   "conv"))
  rows += [("decoder.conv_norm_out", "decoder/norm_out", "norm"),
           ("decoder.conv_out", "decoder/conv_out", "conv")]
  return rows


def legacy_attention_paths(state: Mapping[str, np.ndarray]) -> Dict[str, bool]:
  """{'encoder.mid_block.attentions.0': True, ...}: the attention blocks whose tensors carry
  the deprecated names (query / key / value / proj_attn)."""
  out: Dict[str, bool] = {}
  for k in state:
    parts = k.split(".")
    if len(parts) >= 6 and parts[1:3] == ["mid_block", "attentions"]:
      path = ".".join(parts[:4])
      out[path] = out.get(path, False) or parts[4] in LEGACY_ATTENTION_NAMES
  return out


def _check_layout(state: Mapping[str, np.ndarray]) -> None:
  """A clear error for the original CompVis / ldm key layout (not diffusers')."""
  if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "first_stage_model."))
         for k in state):
    raise ConversionError("the weights use the original CompVis / ldm layout "
                          "('encoder.down.N.block.M...'), not diffusers'; load them with "
                          "diffusers' AutoencoderKL.from_single_file and save_pretrained the "
                          "result, then convert that folder")


_LEAVES = {"linear": (("weight", "kernel", linear_kernel), ("bias", "bias", None)),
           "conv": (("weight", "kernel", conv_kernel), ("bias", "bias", None)),
           "norm": (("weight", "scale", None), ("bias", "bias", None))}


def map_parameters(state: Mapping[str, np.ndarray], c: Mapping[str, Any],
                   target_shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Any]:
  """Our nested params from a diffusers AutoencoderKL state dict, by :func:`module_table`.
  Every tensor is used exactly once and every target leaf filled with its shape, or
  ConversionError naming the tensor."""
  _check_layout(state)
  pm = ParamMap(state, "diffusers AutoencoderKL checkpoint")
  for src, dst, kind in module_table(c, legacy_attention_paths(state)):
    for s, d, fn in _LEAVES[kind]:
      pm.move(f"{src}.{s}", f"{dst}/{d}", fn)
  return pm.finish(target_shapes)


def target_shapes(net: Mapping[str, Any], image_channels: int) -> Dict[str, Tuple[int, ...]]:
  """{'encoder/conv_in/kernel': shape, ...} of ``autoencoder_kl(**net)`` on images with
  ``image_channels`` channels (jax.eval_shape: nothing is allocated)."""
  import jax
  import jax.numpy as jnp
  from diffusion.convert.common import flatten
  from diffusion.models import autoencoder, get_model

  model = get_model(MODEL, **net)
  f = autoencoder.downsample_factor(net["channels"])
  x = jnp.zeros((1, f, f, image_channels))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  return {k: tuple(v.shape) for k, v in flatten(shapes["params"]).items()}


def convert(source_dir: str, weights: Optional[str] = None) -> ConvertedAutoencoder:
  """Converts a diffusers AutoencoderKL folder (config.json + weights) into
  :class:`ConvertedAutoencoder` (params of ``autoencoder_kl(**net)``, the scaling / shift
  factors and latent statistics of config.json, provenance and notes).

  Args:
    source_dir: the model folder (a downloaded stabilityai/sd-vae-ft-mse, or a pipeline's
      'vae/').
    weights: the weights file (default: the folder's diffusion_pytorch_model.safetensors, else
      its .bin; e.g. diffusion_pytorch_model.fp16.safetensors, cast to float32).
  """
  from diffusion.checkpoint import sha256_file
  from diffusion.convert.files import read_weights

  cfg, notes = vae_config(read_json(os.path.join(source_dir, "config.json")))
  net = net_kwargs(cfg)
  wpath = weights or find_weights(source_dir)
  state = read_weights(wpath)
  dtypes = sorted({str(v.dtype) for v in state.values()})
  if dtypes != ["float32"]:
    notes.append(f"weights stored as {dtypes}, converted to float32")
  legacy = sorted(p for p, old in legacy_attention_paths(state).items() if old)
  if legacy:
    notes.append(f"deprecated attention names (query / key / value / proj_attn) at {legacy}")
  params = map_parameters(state, cfg, target_shapes(net, int(cfg["in_channels"])))
  if cfg["force_upcast"]:
    notes.append("force_upcast: diffusers runs this VAE in float32 (keep net dtype float32)")
  source = dict(format="diffusers AutoencoderKL", folder=os.path.abspath(source_dir),
                weights=os.path.abspath(wpath), sha256=sha256_file(wpath), config=cfg)
  return ConvertedAutoencoder(
      params=params, model=MODEL, net=net, image_channels=int(cfg["in_channels"]),
      scaling_factor=float(cfg["scaling_factor"]),
      shift_factor=None if cfg["shift_factor"] is None else float(cfg["shift_factor"]),
      latents_mean=cfg["latents_mean"], latents_std=cfg["latents_std"],
      force_upcast=cfg["force_upcast"], sample_size=cfg["sample_size"], source=source,
      notes=notes)
