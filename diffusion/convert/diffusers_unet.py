"""diffusers ``UNet2DModel`` checkpoints of the DDPM family onto ``ddpm_unet``.

The released DDPM models (Ho et al. 2020: google/ddpm-cifar10-32, -celebahq-256, -church-256,
-bedroom-256, -cat-256), and the models of diffusers' own unconditional training example
(examples/unconditional_image_generation/train_unconditional.py: UNet2DModel's class defaults,
block_out_channels (128, 128, 256, 256, 512, 512), attention at the fifth level), are diffusers
``UNet2DModel``s with DDPM's block structure: per level
``layers_per_block`` ResnetBlock2D (+ self-attention in the ``Attn*Block2D`` levels), a
stride-2 conv between levels, a (res, attn, res) middle, a mirrored decoder with one more block
per level, GroupNorm and SiLU. That is :class:`diffusion.models.unet.DDPMUNet` exactly; the
mapping (:func:`module_table`, one row per module) renames every tensor and changes torch
layouts to flax ones.

The noise schedule comes from the checkpoint's ``scheduler_config.json``: its N betas become
:class:`diffusion.schedules.DiscreteVP` (DDPM's marginals exactly at t_n = (n + 1) / N) and the
network is fed its step index n = N t - 1 (time_input 'index'). ``schedule='continuous'`` gives
instead the VP SDE with beta in [N beta_start, N beta_end] (the continuous limit, the reference
convention of score SDE and of configs/cifar10/ddpm.py: c = (N - 1) t), at the cost of a
logSNR error of up to 0.095 and up to 3.4 steps of index offset for DDPM's betas
(docs/convert.md).

The config fields that only change numbers of that structure are mapped onto ``ddpm_unet``'s
options (:data:`MAPPED`): ``norm_eps``, ``downsample_padding`` (0: pad (0, 1) before the
stride-2 conv, DDPM's; 1: pad (1, 1), UNet2DModel's default), ``flip_sin_to_cos`` and
``freq_shift`` (the sinusoidal embedding), ``attention_head_dim`` (multi-head attention over the
same weights), ``mid_block_scale_factor``, ``time_embedding_dim``, ``attn_norm_num_groups``,
``center_input_sample``, ``act_fn`` 'silu' / 'swish' (one function). Anything outside that
structure (other block types, scale-shift time conditioning, Fourier or learned embeddings,
learned variances, class embeddings, a middle without attention, ...) is a ConversionError
naming the field, its value and what is accepted (:data:`REFUSED_OTHERWISE`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from diffusion.convert.common import (ConversionError, Converted, ParamMap, conv_kernel,
                                      linear_kernel)

# UNet2DModel's constructor defaults (diffusers 0.42): a config.json written by an older
# diffusers may lack a key, and diffusers itself then uses these.
UNET2D_DEFAULTS: Dict[str, Any] = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", time_embedding_dim=None, freq_shift=0,
    flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0,
    act_fn="silu", attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None,
    norm_eps=1e-5, resnet_time_scale_shift="default", add_attention=True,
    class_embed_type=None, num_class_embeds=None, num_train_timesteps=None)

# Config fields that only set numbers of DDPM's structure -> the ddpm_unet option they set.
MAPPED: Dict[str, str] = dict(
    norm_eps="norm_eps", downsample_padding="downsample_padding", freq_shift="freq_shift",
    flip_sin_to_cos="flip_sin_to_cos", attention_head_dim="attn_head_dim / num_heads",
    mid_block_scale_factor="mid_block_scale", time_embedding_dim="temb_dim",
    attn_norm_num_groups="mid_attn_norm_groups", center_input_sample="center_input",
    norm_num_groups="norm_groups", dropout="dropout")

# diffusers' downsample_padding -> ddpm_unet's: 0 pads (0, 1) (then a VALID stride-2 conv), 1
# pads (1, 1) (Conv2d(padding=1)). Others change the resolution (2: H / 2 + 1).
DOWNSAMPLE_PADDING = {0: "asymmetric", 1: "symmetric"}

# Fields whose other values are another architecture: (accepted values, what the others are).
REFUSED_OTHERWISE: Dict[str, Tuple[Tuple[Any, ...], str]] = dict(
    time_embedding_type=(("positional",), "'fourier' is NCSN++'s Gaussian Fourier features of "
                         "log sigma with the output divided by sigma, 'learned' a table of one "
                         "embedding per training step; ddpm_unet has the sinusoidal embedding "
                         "only (score SDE checkpoints: --format=score_sde)"),
    resnet_time_scale_shift=(("default",), "'scale_shift' conditions the second GroupNorm by a "
                             "scale and a shift (AdaGN of iDDPM / ADM, time_emb_proj of 2C "
                             "outputs), 'spatial' by a spatial norm; ddpm_unet's blocks add the "
                             "projected embedding"),
    class_embed_type=((None,), "class embeddings are not mapped (ddpm_unet's class embedding "
                      "has a NULL class for guidance, diffusers' has none)"),
    num_class_embeds=((None,), "class embeddings are not mapped (ddpm_unet's class embedding "
                      "has a NULL class for guidance, diffusers' has none)"),
    add_attention=((True,), "ddpm_unet's middle is (res, attn, res); a middle without "
                   "attention is not built"),
    mid_block_type=(("UNetMidBlock2D",), "ddpm_unet's middle is UNetMidBlock2D's (res, attn, "
                    "res)"),
    act_fn=(("silu", "swish"), "ddpm_unet's blocks use SiLU (= swish)"),
    downsample_padding=(tuple(DOWNSAMPLE_PADDING), "other paddings change the resolution of "
                        "the stride-2 conv"),
)

DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_TYPES = ("UpBlock2D", "AttnUpBlock2D")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SCHEDULES = ("discrete", "continuous")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# Inside a ResnetBlock2D -> ResnetBlockDDPM. conv_shortcut is a 1x1 conv -> a Dense.
RESNET_TABLE = [("norm1", "norm0"), ("conv1", "conv0"), ("time_emb_proj", "temb_proj"),
                ("norm2", "norm1"), ("conv2", "conv1"), ("conv_shortcut", "shortcut")]
# Inside an attention block -> AttentionBlock: current names, then the deprecated ones of the
# released google/ddpm-* files (diffusers' AttentionBlock before 0.15).
ATTENTION_TABLE = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                   ("to_out.0", "proj_out")]
ATTENTION_TABLE_LEGACY = [("group_norm", "norm"), ("query", "q"), ("key", "k"),
                          ("value", "v"), ("proj_attn", "proj_out")]


def read_json(path: str) -> Dict[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} does not exist")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{path!r} is not valid JSON ({e})") from e


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_count(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _block_type(name: str) -> str:
  """diffusers' get_down_block / get_up_block read 'UNetResX' as 'X'."""
  return name[len("UNetRes"):] if name.startswith("UNetRes") else name


def unet_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
  """The UNet2DModel config with diffusers' defaults filled in, checked against DDPM's
  structure. Raises ConversionError naming the first field that does not fit, its value and
  what is accepted."""
  name = raw.get("_class_name", "UNet2DModel")
  if name != "UNet2DModel":
    raise ConversionError(f"config.json: _class_name={name!r}; only 'UNet2DModel' (the DDPM "
                          f"family) is converted")
  c = {**UNET2D_DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}
  for key, (accepted, why) in REFUSED_OTHERWISE.items():
    if not any(c[key] == a and type(c[key]) is type(a) for a in accepted):
      raise ConversionError(f"config.json: {key}={c[key]!r} is not converted: {why}; "
                            f"accepted: {', '.join(repr(a) for a in accepted)}")
  down = [_block_type(t) for t in c["down_block_types"]]
  up = [_block_type(t) for t in c["up_block_types"]]
  chans = [int(x) for x in c["block_out_channels"]]
  if not (len(down) == len(up) == len(chans)) or not chans:
    raise ConversionError(f"config.json: {len(down)} down blocks, {len(up)} up blocks and "
                          f"{len(chans)} block_out_channels must agree")
  for kind, types, accepted in (("down_block_types", down, DOWN_TYPES),
                                ("up_block_types", up, UP_TYPES)):
    bad = [t for t in types if t not in accepted]
    if bad:
      raise ConversionError(f"config.json: {kind} {bad} unsupported; accepted: {accepted}")
  if [t.startswith("Attn") for t in down] != [t.startswith("Attn") for t in reversed(up)]:
    raise ConversionError(f"config.json: attention levels of down_block_types {down} and "
                          f"up_block_types {up} do not mirror each other")
  c["down_block_types"], c["up_block_types"] = down, up
  # Only the Attn blocks read downsample_type / upsample_type, and only where they resample.
  last = len(chans) - 1
  for key, types in (("downsample_type", down), ("upsample_type", up)):
    if c[key] != "conv" and any(t.startswith("Attn") for t in types[:last]):
      raise ConversionError(f"config.json: {key}={c[key]!r} is not converted: the attention "
                            f"levels would resample with a {c[key]!r} block, ddpm_unet with a "
                            f"3x3 conv; accepted: 'conv'")
  if any(ch % chans[0] for ch in chans):
    raise ConversionError(f"config.json: block_out_channels {chans} are not multiples of the "
                          f"first ({chans[0]})")
  _check_numbers(c, chans)
  if c["in_channels"] != c["out_channels"]:
    raise ConversionError(f"config.json: out_channels={c['out_channels']} != in_channels="
                          f"{c['in_channels']} (a learned-variance output); only networks "
                          f"predicting an image-shaped eps / v / x0 are converted")
  size = c["sample_size"]
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise ConversionError(f"config.json: sample_size={size}; square images only")
    size = size[0]
  if not isinstance(size, int) or size % 2 ** (len(chans) - 1):
    raise ConversionError(f"config.json: sample_size={size!r} must be an int divisible by "
                          f"2^{len(chans) - 1}")
  c["sample_size"] = size
  return c


def _check_numbers(c: Mapping[str, Any], chans: List[int]) -> None:
  """The mapped numeric fields (:data:`MAPPED`) in ddpm_unet's accepted ranges."""
  def bad(key, accepted):
    raise ConversionError(f"config.json: {key}={c[key]!r}; accepted: {accepted}")

  for key in ("norm_eps", "mid_block_scale_factor"):
    if not (_is_number(c[key]) and c[key] > 0):
      bad(key, "a number > 0")
  if not (_is_number(c["freq_shift"]) and chans[0] // 2 - c["freq_shift"] > 0):
    bad("freq_shift", f"a number < block_out_channels[0] // 2 = {chans[0] // 2}")
  for key in ("flip_sin_to_cos", "center_input_sample"):
    if not isinstance(c[key], bool):
      bad(key, "true or false")
  if not (_is_number(c["dropout"]) and 0 <= c["dropout"] < 1):
    bad("dropout", "a number in [0, 1)")
  if not (_is_count(c["norm_num_groups"]) and all(ch % c["norm_num_groups"] == 0
                                                  for ch in chans)):
    bad("norm_num_groups", f"an int dividing every block_out_channels {chans}")
  if c["attn_norm_num_groups"] is not None and not (
      _is_count(c["attn_norm_num_groups"]) and chans[-1] % c["attn_norm_num_groups"] == 0):
    bad("attn_norm_num_groups", f"null or an int dividing the middle's {chans[-1]} channels")
  if c["time_embedding_dim"] is not None and not _is_count(c["time_embedding_dim"]):
    bad("time_embedding_dim", "null or an int >= 1")
  head_dim = c["attention_head_dim"]
  widths = sorted({chans[i] for i, t in enumerate(c["down_block_types"])
                   if t.startswith("Attn")} | {chans[-1]})
  if head_dim is not None and not (_is_count(head_dim) and all(w % head_dim == 0
                                                               for w in widths)):
    bad("attention_head_dim", f"null (one head) or an int dividing the attention widths "
        f"{widths}")


def net_kwargs(c: Mapping[str, Any]) -> Dict[str, Any]:
  """``ddpm_unet`` constructor kwargs of a checked UNet2DModel config.

  Heads: diffusers gives each attention layer C / attention_head_dim heads of
  attention_head_dim channels (None: one head of C), ddpm_unet's ``attn_head_dim``."""
  chans = [int(x) for x in c["block_out_channels"]]
  attn_levels = [i for i, t in enumerate(c["down_block_types"]) if t.startswith("Attn")]
  head_dim = c["attention_head_dim"]
  heads = dict(num_heads=1) if head_dim is None else dict(attn_head_dim=int(head_dim))
  return dict(ch=chans[0], ch_mult=tuple(ch // chans[0] for ch in chans),
              num_res_blocks=int(c["layers_per_block"]),
              attn_resolutions=tuple(c["sample_size"] // 2**i for i in attn_levels),
              dropout=float(c["dropout"]), resamp_with_conv=True, **heads,
              embedding_type="positional", embedding_scale=1.0,
              norm_groups=int(c["norm_num_groups"]), norm_eps=float(c["norm_eps"]),
              downsample_padding=DOWNSAMPLE_PADDING[c["downsample_padding"]],
              freq_shift=float(c["freq_shift"]), flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
              mid_block_scale=float(c["mid_block_scale_factor"]),
              temb_dim=c["time_embedding_dim"], mid_attn_norm_groups=c["attn_norm_num_groups"],
              center_input=bool(c["center_input_sample"]))


def schedule_and_time(sched: Mapping[str, Any], schedule: str
                      ) -> Tuple[Tuple[str, Dict[str, Any]], str, str, float, List[str]]:
  """(sde (name, fields), parameterization, time_input, embedding_scale, notes) of a
  scheduler_config.json (DDPMScheduler / DDIMScheduler / PNDMScheduler fields)."""
  if schedule not in SCHEDULES:
    raise ConversionError(f"schedule={schedule!r}; accepted: {SCHEDULES}")
  if sched.get("trained_betas") is not None:
    raise ConversionError("scheduler_config.json: trained_betas (explicit betas) are not "
                          "supported; accepted: beta_schedule with beta_start / beta_end")
  n = int(sched.get("num_train_timesteps", 1000))
  b0, b1 = float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02))
  kind = sched.get("beta_schedule", "linear")
  pred = sched.get("prediction_type", "epsilon")
  if pred not in PREDICTION_TYPES:
    raise ConversionError(f"scheduler_config.json: prediction_type={pred!r}; accepted: "
                          f"{sorted(PREDICTION_TYPES)}")
  notes = []
  if schedule == "discrete":
    fields = dict(num_timesteps=n, beta_start=b0, beta_end=b1, beta_schedule=kind,
                  t_min=1.0 / n, t_max=1.0)
    from diffusion.schedules import get_schedule  # validates the betas
    try:
      get_schedule("vp_discrete", **fields)
    except ValueError as e:
      raise ConversionError(f"scheduler_config.json: {e}") from e
    notes.append(f"schedule: DDPM's {n} {kind} betas {b0:g}..{b1:g} as vp_discrete; the "
                 f"network sees the step index N t - 1 (exact at t_n = (n + 1) / {n})")
    return ("vp_discrete", fields), PREDICTION_TYPES[pred], "index", 1.0, notes
  if kind != "linear":
    raise ConversionError(f"schedule='continuous' needs beta_schedule='linear', got {kind!r}; "
                          f"use schedule='discrete'")
  fields = dict(beta_min=n * b0, beta_max=n * b1, t_min=1.0 / n, t_max=1.0)
  notes.append(f"schedule: the continuous VP SDE, beta in [{n * b0:g}, {n * b1:g}], network "
               f"input c = {n - 1} t (the reference convention; logSNR and step-index errors "
               f"against DDPM's discrete schedule in docs/convert.md)")
  return ("vp", fields), PREDICTION_TYPES[pred], "t", float(n - 1), notes


def module_table(c: Mapping[str, Any], legacy_attention: bool = False
                 ) -> List[Tuple[str, str, str]]:
  """The explicit mapping for a checked config: (diffusers module, our module, kind) for every
  leaf module, kind in 'linear' (weight (O, I) or (O, I, 1, 1) -> kernel (I, O), bias), 'conv'
  ((O, I, kh, kw) -> (kh, kw, I, O)), 'norm' (weight -> scale, bias). Encoder level i is
  diffusers' down_blocks.i; decoder level i is up_blocks.(L - 1 - i). A resnet's
  'conv_shortcut' appears only where the channel count changes."""
  attn_table = ATTENTION_TABLE_LEGACY if legacy_attention else ATTENTION_TABLE
  chans = [int(x) for x in c["block_out_channels"]]
  levels, nb = len(chans), int(c["layers_per_block"])
  attn = [t.startswith("Attn") for t in c["down_block_types"]]
  rows: List[Tuple[str, str, str]] = []

  def resnet(src, dst, c_in, c_out):
    for s, d in RESNET_TABLE:
      if s == "conv_shortcut" and c_in == c_out:
        continue
      kind = "norm" if s.startswith("norm") else "conv" if s in ("conv1", "conv2") else "linear"
      rows.append((f"{src}.{s}", f"{dst}/{d}", kind))

  def attention(src, dst):
    rows.extend((f"{src}.{s}", f"{dst}/{d}", "norm" if d == "norm" else "linear")
                for s, d in attn_table)

  rows += [("time_embedding.linear_1", "noise_embedding/dense0", "linear"),
           ("time_embedding.linear_2", "noise_embedding/dense1", "linear"),
           ("conv_in", "conv_in", "conv")]
  skips, width = [chans[0]], chans[0]
  for i in range(levels):
    for j in range(nb):
      resnet(f"down_blocks.{i}.resnets.{j}", f"down{i}_block{j}", width, chans[i])
      width = chans[i]
      if attn[i]:
        attention(f"down_blocks.{i}.attentions.{j}", f"down{i}_attn{j}")
      skips.append(width)
    if i != levels - 1:
      rows.append((f"down_blocks.{i}.downsamplers.0.conv", f"down{i}_downsample/conv", "conv"))
      skips.append(width)
  resnet("mid_block.resnets.0", "mid_block0", width, width)
  attention("mid_block.attentions.0", "mid_attn")
  resnet("mid_block.resnets.1", "mid_block1", width, width)
  for i in reversed(range(levels)):
    k = levels - 1 - i
    for j in range(nb + 1):
      resnet(f"up_blocks.{k}.resnets.{j}", f"up{i}_block{j}", width + skips.pop(), chans[i])
      width = chans[i]
      if attn[i]:
        attention(f"up_blocks.{k}.attentions.{j}", f"up{i}_attn{j}")
    if i != 0:
      rows.append((f"up_blocks.{k}.upsamplers.0.conv", f"up{i}_upsample/conv", "conv"))
  rows += [("conv_norm_out", "norm_out", "norm"), ("conv_out", "conv_out", "conv")]
  return rows


def is_legacy_attention(state: Mapping[str, np.ndarray]) -> bool:
  """Whether the attention tensors carry the pre-0.15 names (query / key / value / proj_attn)
  of the released google/ddpm-* files."""
  return any(".attentions." in k and k.rsplit(".", 2)[-2] in ("query", "key", "value",
                                                               "proj_attn") for k in state)


_LEAVES = {"linear": (("weight", "kernel", linear_kernel), ("bias", "bias", None)),
           "conv": (("weight", "kernel", conv_kernel), ("bias", "bias", None)),
           "norm": (("weight", "scale", None), ("bias", "bias", None))}


def map_parameters(state: Mapping[str, np.ndarray], c: Mapping[str, Any],
                   target_shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Any]:
  """Our nested params from a diffusers state dict, by :func:`module_table`. Every tensor is
  used exactly once and every target leaf filled with its shape, or ConversionError."""
  pm = ParamMap(state, "diffusers UNet2DModel checkpoint")
  for src, dst, kind in module_table(c, is_legacy_attention(state)):
    for s, d, fn in _LEAVES[kind]:
      pm.move(f"{src}.{s}", f"{dst}/{d}", fn)
  return pm.finish(target_shapes)


def find_weights(folder: str) -> str:
  """The weights file of a diffusers model folder (safetensors preferred)."""
  for name in WEIGHT_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{folder!r} holds none of {WEIGHT_FILES}")


def find_scheduler_config(folder: str) -> Optional[str]:
  """scheduler_config.json next to the model, or in a sibling 'scheduler/' (pipeline repos,
  where the model sits in 'unet/')."""
  for path in (os.path.join(folder, "scheduler_config.json"),
               os.path.join(folder, os.pardir, "scheduler", "scheduler_config.json")):
    if os.path.isfile(path):
      return os.path.normpath(path)
  return None


def convert(folder: str, schedule: str = "discrete", weights: Optional[str] = None,
            scheduler_config: Optional[str] = None) -> Converted:
  """Converts a diffusers UNet2DModel folder (config.json + weights) and its scheduler config.

  Args:
    folder: the model folder (a downloaded google/ddpm-* repository, or its 'unet/').
    schedule: 'discrete' (default: DDPM's marginals exactly, vp_discrete) or 'continuous'
      (the VP SDE limit with c = (N - 1) t, the reference convention).
    weights: the weights file (default: the folder's safetensors, else its .bin).
    scheduler_config: its scheduler_config.json (default: next to the model or in
      '../scheduler/'); required, since it defines the betas and the prediction type.
  """
  from diffusion.models import get_model  # heavy imports only when converting
  import jax
  import jax.numpy as jnp
  from diffusion.checkpoint import sha256_file
  from diffusion.convert.common import flatten
  from diffusion.convert.files import read_weights

  if schedule not in SCHEDULES:
    raise ConversionError(f"schedule={schedule!r}; accepted: {SCHEDULES}")
  cfg = unet_config(read_json(os.path.join(folder, "config.json")))
  sched_path = scheduler_config or find_scheduler_config(folder)
  if sched_path is None:
    raise ConversionError(f"no scheduler_config.json next to {folder!r} (or in "
                          f"'../scheduler/'): it defines the betas and the prediction type; "
                          f"pass its path")
  sched_cfg = read_json(sched_path)
  sde, param, time_input, emb_scale, notes = schedule_and_time(sched_cfg, schedule)
  clip = bool(sched_cfg.get("clip_sample", True))  # DDPMScheduler's default
  if clip and float(sched_cfg.get("clip_sample_range", 1.0)) != 1.0:
    raise ConversionError(f"scheduler_config.json: clip_sample_range="
                          f"{sched_cfg['clip_sample_range']!r}; sampling.clip_denoised clips "
                          f"to the data range [-1, 1] only (accepted: 1.0)")
  if clip:
    notes.append("sampling.clip_denoised=True: the scheduler clips x0_hat to [-1, 1] "
                 "(clip_sample)")
  kw = net_kwargs(cfg)
  kw["embedding_scale"] = emb_scale
  size, ch = cfg["sample_size"], int(cfg["in_channels"])
  net = get_model("ddpm_unet", **kw)
  shapes = jax.eval_shape(
      lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, ch)), jnp.zeros((1,))))
  target = {k: v.shape for k, v in flatten(shapes["params"]).items()}
  wpath = weights or find_weights(folder)
  params = map_parameters(read_weights(wpath), cfg, target)
  source = dict(format="diffusers UNet2DModel", folder=os.path.abspath(folder),
                weights=os.path.abspath(wpath), sha256=sha256_file(wpath),
                scheduler_config=os.path.abspath(sched_path), schedule=schedule,
                config=cfg)
  return Converted(params=params, model="ddpm_unet", net=kw, sde=sde, parameterization=param,
                   time_input=time_input, image_shape=(size, size, ch), source=source,
                   notes=notes, clip_denoised=clip)
