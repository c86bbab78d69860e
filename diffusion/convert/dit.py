"""DiT checkpoints (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers";
facebookresearch/DiT) onto ``dit``.

The released files (DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt) are plain ``torch.save`` state
dicts of the EMA weights, read here without torch (diffusion.convert.files). The network is
:class:`diffusion.models.dit.DiT` with the released code's conventions switched on
(``embedding_convention='adm'``, ``pos_embed_axes='wh'``; the dit module's docstring lists the
differences): :func:`module_table` maps every tensor once, and ``pos_embed`` (the fixed 2-D
sine-cosine table, a frozen parameter there, a constant here) is checked against
:func:`diffusion.models.dit.sincos_2d` instead of copied.

Mapping (torch module -> our module; Linear (O, I) -> Dense kernel (I, O)):

  x_embedder.proj (Conv2d (D, C, p, p))  -> patch_embed (kernel (p p C, D): the conv's kernel
                                            transposed to (p, p, C, D) and flattened, the order
                                            of dit.patchify's tokens)
  t_embedder.mlp.0 / mlp.2               -> noise_embedding/dense0 / dense1
  y_embedder.embedding_table ((K+1, D))  -> class_embedding/embed (row K = the NULL class)
  blocks.i.attn.qkv / attn.proj          -> block{i}/attn/qkv / attn/proj (timm's qkv layout
                                            (3, heads, head_dim) is ours: no reordering)
  blocks.i.mlp.fc1 / mlp.fc2             -> block{i}/mlp_fc1 / mlp_fc2
  blocks.i.adaLN_modulation.1            -> block{i}/adaLN_modulation (chunks shift_msa,
                                            scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp:
                                            our split order)
  final_layer.adaLN_modulation.1         -> final_layer/adaLN_modulation (shift, scale)
  final_layer.linear                     -> final_layer/linear (outputs (p, p, 2C) per token:
                                            the released unpatchify's order and ours)
  pos_embed ((1, T, D))                  -> checked equal to sincos_2d(D, s, s, 'wh')

The architecture is read from the shapes (depth, D, p, C, input size, classes, learn_sigma,
mlp ratio, frequency width); the head count is not in any shape, so it comes from the model
name ('DiT-XL/2'), from the paper's size of that (depth, D), or from ``num_heads``.

The diffusion of the released model (its diffusion/__init__.py, create_diffusion defaults): DDPM's
1000 linear betas 1e-4..0.02, eps prediction with a learned variance (the "range" interpolation of
Nichol & Dhariwal 2021, the last C output channels), the network fed the integer step 0..999, and
latents of Stable Diffusion's VAE times 0.18215 (H/8 x W/8 x 4). ``schedule='discrete'`` maps that
onto ``vp_discrete`` with the step index as input (exact at DDPM's steps), ``'continuous'`` onto
the VP SDE with c = 999 t, as diffusion.convert.diffusers_unet does for DDPM. What differs from
the release's sampling is listed in :func:`release_notes`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from diffusion.convert import diffusers_unet
from diffusion.convert.common import ConversionError, Converted, ParamMap, conv_kernel, linear_kernel

# The DiT release's diffusion (create_diffusion's defaults) in a diffusers scheduler's words,
# for diffusers_unet.schedule_and_time.
RELEASED_SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          beta_schedule="linear", prediction_type="epsilon")
SCHEDULES = diffusers_unet.SCHEDULES
# Stable Diffusion's VAE (stabilityai/sd-vae-ft-ema / -mse), which the DiT and SiT releases
# encode with: 8x downsampling, 4 channels, latents scaled by 0.18215.
VAE_DOWNSAMPLING = 8
VAE_CHANNELS = 4
LATENT_SCALE_FACTOR = 0.18215
# The release's class dropout (train.py: DiT(class_dropout_prob=0.1) by default), kept for
# fine-tuning with classifier-free guidance.
RELEASED_LABEL_DROPOUT = 0.1
# Released files and the model each holds.
RELEASED_FILES = {"DiT-XL-2-256x256.pt": ("DiT-XL/2", 256), "DiT-XL-2-512x512.pt": ("DiT-XL/2", 512)}
# |pos_embed - sincos_2d| allowed (both are float64 sines rounded to float32).
POS_EMBED_ATOL = 1e-6

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def model_names() -> Tuple[str, ...]:
  """'DiT-S/2' ... 'DiT-XL/8': the released code's model names (paper Table 1 x patch 2, 4, 8)."""
  from diffusion.models import dit
  return tuple(f"DiT-{size}/{p}" for size in dit.SIZES for p in dit.PATCH_SIZES)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A DiT's hyper-parameters as the checkpoint's shapes give them (``num_heads`` from the name
  or the paper's sizes)."""
  depth: int
  hidden_size: int
  num_heads: int
  patch_size: int
  mlp_ratio: float
  in_channels: int
  input_size: int
  num_classes: int
  learn_sigma: bool
  frequency_dim: int
  name: Optional[str] = None  # 'DiT-XL/2' when it is one of model_names()


def _shape(state: Mapping[str, np.ndarray], key: str, ndim: int) -> Tuple[int, ...]:
  if key not in state:
    raise ConversionError(f"DiT checkpoint: missing parameter {key!r} (not a DiT state dict? "
                          f"its first keys: {sorted(state)[:5]})")
  shape = tuple(np.shape(state[key]))
  if len(shape) != ndim:
    raise ConversionError(f"DiT checkpoint: {key!r} has shape {shape}, expected {ndim} axes")
  return shape


def infer_architecture(state: Mapping[str, np.ndarray], model: Optional[str] = None,
                       num_heads: Optional[int] = None,
                       num_classes: Optional[int] = None) -> Architecture:
  """The architecture of a DiT state dict, from its shapes.

  Args:
    state: {name: array} of the checkpoint.
    model: optional released model name ('DiT-XL/2', ...): its depth, width and patch size are
      checked against the shapes and it gives the head count.
    num_heads: the head count, when neither ``model`` nor the paper's sizes give it (it is not
      visible in any shape: qkv is (3D, D) for every head count).
    num_classes: optional check of the class count: the class table must have
      ``num_classes + 1`` rows (the last one the NULL class of classifier-free guidance).
  Raises ConversionError naming the parameter or the field that does not fit.
  """
  from diffusion.models import dit

  d, c_in, p, p2 = _shape(state, "x_embedder.proj.weight", 4)
  if p != p2:
    raise ConversionError(f"DiT checkpoint: x_embedder.proj.weight {(d, c_in, p, p2)} has a "
                          f"non-square patch")
  _, tokens, d_pos = _shape(state, "pos_embed", 3)
  side = math.isqrt(tokens)
  if side * side != tokens or d_pos != d:
    raise ConversionError(f"DiT checkpoint: pos_embed {tuple(np.shape(state['pos_embed']))} is "
                          f"not a square grid of width {d}")
  blocks = {int(m.group(1)) for k in state for m in [_BLOCK.match(k)] if m}
  depth = len(blocks)
  if not depth or blocks != set(range(depth)):
    raise ConversionError(f"DiT checkpoint: block indices {sorted(blocks)[:8]} are not 0..N-1")
  d_out, freq = _shape(state, "t_embedder.mlp.0.weight", 2)
  rows, d_y = _shape(state, "y_embedder.embedding_table.weight", 2)
  hidden_mlp, _ = _shape(state, "blocks.0.mlp.fc1.weight", 2)
  out, _ = _shape(state, "final_layer.linear.weight", 2)
  if out == p * p * 2 * c_in:
    learn_sigma = True
  elif out == p * p * c_in:
    learn_sigma = False
  else:
    raise ConversionError(f"DiT checkpoint: final_layer.linear has {out} outputs, neither "
                          f"p^2 C = {p * p * c_in} nor p^2 2C = {p * p * 2 * c_in}")
  if rows < 2:
    raise ConversionError(f"DiT checkpoint: y_embedder.embedding_table has {rows} row(s); a "
                          f"class-conditional DiT has num_classes + 1 (the NULL class)")
  if num_classes is not None and rows != num_classes + 1:
    raise ConversionError(f"DiT checkpoint: y_embedder.embedding_table has {rows} rows; "
                          f"num_classes={num_classes} needs {num_classes + 1} (the last one the "
                          f"NULL class; a DiT trained with class_dropout_prob=0 has none and is "
                          f"not converted)")
  if d_out != d or d_y != d:
    raise ConversionError(f"DiT checkpoint: widths differ: patch embedding {d}, timestep MLP "
                          f"{d_out}, class table {d_y}")
  name = None
  if model is not None:
    if model not in model_names():
      raise ConversionError(f"model={model!r}; accepted: {list(model_names())}")
    kw = dit.preset(model[len("DiT-"):])
    got = dict(depth=depth, hidden_size=d, patch_size=p)
    bad = {k: (got[k], kw[k]) for k in got if got[k] != kw[k]}
    if bad:
      raise ConversionError(f"the checkpoint is not {model}: " + ", ".join(
          f"{k} {g} in the checkpoint, {w} in {model}" for k, (g, w) in bad.items()))
    if num_heads is not None and num_heads != kw["num_heads"]:
      raise ConversionError(f"num_heads={num_heads}, but {model} has {kw['num_heads']}")
    num_heads, name = kw["num_heads"], model
  if num_heads is None:
    sizes = [s for s, kw in dit.SIZES.items() if (kw["depth"], kw["hidden_size"]) == (depth, d)]
    if not sizes:
      raise ConversionError(f"the number of attention heads is not stored in a DiT checkpoint "
                            f"and depth {depth} / width {d} is none of the paper's sizes "
                            f"{sorted(dit.SIZES)}; pass num_heads (or a model name)")
    num_heads = dit.SIZES[sizes[0]]["num_heads"]
    name = f"DiT-{sizes[0]}/{p}" if p in dit.PATCH_SIZES else None
  if d % num_heads:
    raise ConversionError(f"num_heads={num_heads} does not divide the width {d}")
  return Architecture(depth=depth, hidden_size=d, num_heads=int(num_heads), patch_size=p,
                      mlp_ratio=hidden_mlp / d, in_channels=c_in, input_size=side * p,
                      num_classes=rows - 1, learn_sigma=learn_sigma, frequency_dim=freq,
                      name=name)


def net_kwargs(arch: Architecture, embedding_scale: float = 1.0) -> Dict[str, Any]:
  """``dit`` constructor kwargs reproducing the released network (its timestep and positional
  embedding conventions, its initialisation for fine-tuning, its class dropout)."""
  return dict(patch_size=arch.patch_size, hidden_size=arch.hidden_size, depth=arch.depth,
              num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, learn_sigma=arch.learn_sigma,
              num_classes=arch.num_classes, label_dropout=RELEASED_LABEL_DROPOUT,
              frequency_dim=arch.frequency_dim, embedding_type="positional",
              embedding_scale=float(embedding_scale), embedding_convention="adm",
              pos_embed_axes="wh", reference_init=True)


def module_table(depth: int) -> List[Tuple[str, str, str]]:
  """(released module, our module, kind) for every parameterised module of a DiT of ``depth``
  blocks; kind 'linear' (weight (O, I) -> kernel (I, O), bias), 'patch' (conv weight
  (D, C, p, p) -> kernel (p p C, D), bias) or 'embedding' (weight -> embedding)."""
  rows = [("x_embedder.proj", "patch_embed", "patch"),
          ("t_embedder.mlp.0", "noise_embedding/dense0", "linear"),
          ("t_embedder.mlp.2", "noise_embedding/dense1", "linear"),
          ("y_embedder.embedding_table", "class_embedding/embed", "embedding")]
  for i in range(depth):
    rows += [(f"blocks.{i}.attn.qkv", f"block{i}/attn/qkv", "linear"),
             (f"blocks.{i}.attn.proj", f"block{i}/attn/proj", "linear"),
             (f"blocks.{i}.mlp.fc1", f"block{i}/mlp_fc1", "linear"),
             (f"blocks.{i}.mlp.fc2", f"block{i}/mlp_fc2", "linear"),
             (f"blocks.{i}.adaLN_modulation.1", f"block{i}/adaLN_modulation", "linear")]
  rows += [("final_layer.adaLN_modulation.1", "final_layer/adaLN_modulation", "linear"),
           ("final_layer.linear", "final_layer/linear", "linear")]
  return rows


def patch_kernel(w: np.ndarray) -> np.ndarray:
  """The patch embedding's Conv2d weight (D, C, p, p) as the Dense kernel (p p C, D) on
  dit.patchify's (p, p, C)-flattened patches (a stride-p conv with a p x p kernel is that
  linear map)."""
  if w.ndim != 4 or w.shape[2] != w.shape[3]:
    raise ConversionError(f"a patch embedding weight must be (D, C, p, p), got {w.shape}")
  k = conv_kernel(w)  # (p, p, C, D)
  return k.reshape(-1, k.shape[-1])


_LEAVES = {"linear": (("weight", "kernel", linear_kernel), ("bias", "bias", None)),
           "patch": (("weight", "kernel", patch_kernel), ("bias", "bias", None)),
           "embedding": (("weight", "embedding", None),)}


def pos_embed_axes(pos_embed: np.ndarray, patch_grid: int) -> Tuple[str, Dict[str, float]]:
  """Which of dit.sincos_2d's channel orders the checkpoint's fixed ``pos_embed`` (1, T, D) is,
  and the largest absolute difference to each; ConversionError when neither fits (a learned or
  otherwise different positional embedding, which ``dit`` does not have)."""
  from diffusion.models import dit
  table = np.asarray(pos_embed, np.float64)[0]
  errors = {axes: float(np.abs(table - dit.sincos_2d(table.shape[1], patch_grid, patch_grid,
                                                     axes)).max())
            for axes in dit.POS_EMBED_AXES}
  best = min(errors, key=errors.get)
  if errors[best] > POS_EMBED_ATOL:
    raise ConversionError(f"DiT checkpoint: pos_embed is not the fixed 2-D sine-cosine "
                          f"embedding of dit.sincos_2d (largest difference per channel order: "
                          f"{errors}); a learned positional embedding is not converted")
  return best, errors


def map_parameters(state: Mapping[str, np.ndarray], arch: Architecture,
                   target_shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Any]:
  """Our nested params from a DiT state dict by :func:`module_table`; ``pos_embed`` is checked
  (by :func:`pos_embed_axes`), not copied. Every tensor is used exactly once and every target
  leaf filled with its shape, or ConversionError."""
  pm = ParamMap(state, "DiT checkpoint")
  for src, dst, kind in module_table(arch.depth):
    for s, d, fn in _LEAVES[kind]:
      pm.move(f"{src}.{s}", f"{dst}/{d}", fn)
  axes, _ = pos_embed_axes(pm.take("pos_embed"), arch.input_size // arch.patch_size)
  pm.used["pos_embed"] = f"(the constant dit.sincos_2d(axes={axes!r}), checked)"
  return pm.finish(target_shapes)


def release_notes(arch: Architecture, image_size: int) -> List[str]:
  """What the converted model does differently from the release's own sampling, one line each."""
  c = arch.in_channels
  notes = [
      f"network: the release's conventions (embedding_convention='adm': [cos, sin] timestep "
      f"features with frequencies 10000^(-i/{arch.frequency_dim // 2}); pos_embed_axes='wh': "
      f"the column index in the first half of the positional channels); pos_embed checked "
      f"equal to dit.sincos_2d",
      f"labels: {arch.num_classes} classes, the NULL (unconditional) label is "
      f"{arch.num_classes} (the table's last row)",
      f"latents: {image_size}x{image_size} images through Stable Diffusion's VAE, "
      f"{arch.input_size}x{arch.input_size}x{c}, times {LATENT_SCALE_FACTOR} "
      f"(latent.normalization='scale'); set latent.dataset to the folder "
      f"`python -m experiments.encode` writes"]
  if arch.learn_sigma:
    notes.append(f"learned variance: the network keeps its {c} variance channels "
                 f"(apply(..., with_variance=True) returns all {2 * c}), but this codebase's "
                 f"samplers use fixed variances: the release's 250-step sampler draws with the "
                 f"learned ones (Nichol & Dhariwal 2021), so samples and FID differ from it")
  notes.append("guidance: config.guidance 'cfg' guides every latent channel; the release's "
               "forward_with_cfg guides only the first 3 of the 4 eps channels (kept in its "
               "code 'for exact reproducibility' of the paper's numbers)")
  return notes


def convert_state_dict(state: Mapping[str, np.ndarray], model: Optional[str] = None,
                       num_heads: Optional[int] = None, num_classes: Optional[int] = None,
                       embedding_scale: float = 1.0
                       ) -> Tuple[Architecture, Dict[str, Any], Dict[str, Any]]:
  """(architecture, ``dit`` constructor kwargs, nested params) of a DiT state dict: the shapes
  give the architecture (:func:`infer_architecture`), the network is built with the release's
  conventions (:func:`net_kwargs`) and filled by :func:`map_parameters`."""
  from diffusion.models import get_model  # heavy imports only when converting
  import jax
  import jax.numpy as jnp
  from diffusion.convert.common import flatten

  arch = infer_architecture(state, model, num_heads, num_classes)
  kw = net_kwargs(arch, embedding_scale)
  net = get_model("dit", **kw)
  shape = (arch.input_size, arch.input_size, arch.in_channels)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape),
                                           jnp.zeros((1,))))
  target = {k: v.shape for k, v in flatten(shapes["params"]).items()}
  return arch, kw, map_parameters(state, arch, target)


def convert(path: str, model: Optional[str] = None, schedule: str = "discrete",
            num_heads: Optional[int] = None, num_classes: Optional[int] = None) -> Converted:
  """Converts a DiT checkpoint (a torch.save'd state dict, e.g. DiT-XL-2-256x256.pt).

  Args:
    path: the .pt file.
    model: optional model name ('DiT-XL/2'; default: the name of a released file, else the
      paper's size of the shapes) checked against the shapes.
    schedule: 'discrete' (DDPM's 1000 steps exactly: vp_discrete, the network sees the step
      index) or 'continuous' (the VP SDE with beta in [0.1, 20], c = 999 t).
    num_heads, num_classes: see :func:`infer_architecture`.
  Returns the Converted model: ``image_shape`` is the latent shape, ``latent`` the pixel image
  size and the latent normalization.
  """
  from diffusion.checkpoint import sha256_file
  from diffusion.convert.files import read_weights

  if schedule not in SCHEDULES:
    raise ConversionError(f"schedule={schedule!r}; accepted: {SCHEDULES}")
  state = read_weights(path)
  released = RELEASED_FILES.get(os.path.basename(path))
  if model is None and released is not None:
    model = released[0]
  sde, param, time_input, emb_scale, notes = diffusers_unet.schedule_and_time(
      RELEASED_SCHEDULER, schedule)
  notes = [n.replace("DDPM's", "the DiT release's") for n in notes]
  arch, kw, params = convert_state_dict(state, model, num_heads, num_classes, emb_scale)
  if arch.in_channels != VAE_CHANNELS:
    raise ConversionError(f"the checkpoint takes {arch.in_channels}-channel inputs; DiT runs on "
                          f"the {VAE_CHANNELS}-channel latents of Stable Diffusion's VAE")
  image_size = arch.input_size * VAE_DOWNSAMPLING
  if released is not None and released[1] != image_size:
    raise ConversionError(f"{os.path.basename(path)} should hold a {released[1]}px model; its "
                          f"pos_embed gives {arch.input_size}x{arch.input_size} latents "
                          f"({image_size}px)")
  notes += release_notes(arch, image_size)
  shape = (arch.input_size, arch.input_size, arch.in_channels)
  source = dict(format="DiT", file=os.path.abspath(path), sha256=sha256_file(path),
                model=arch.name, schedule=schedule, architecture=dataclasses.asdict(arch))
  return Converted(params=params, model="dit", net=kw, sde=sde, parameterization=param,
                   time_input=time_input, image_shape=shape, source=source, notes=notes,
                   latent=dict(image_size=image_size, normalization="scale",
                               scale_factor=LATENT_SCALE_FACTOR))
