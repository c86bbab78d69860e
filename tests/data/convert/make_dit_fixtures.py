"""Writes tests/data/convert/dit/: a tiny DiT checkpoint saved as the released ones are (a plain
``torch.save(model.state_dict())``) and reference outputs computed by DiT's own model code
(Peebles & Xie 2023, facebookresearch/DiT, models.py).

DiT's code is non-commercial (CC-BY-NC 4.0): it is READ and RUN here, in a scratch environment,
never copied into the project. Nothing imports this file and pytest does not collect it. Run:

    TORCH_ENV/bin/pip install timm                      # DiT's models.py imports timm's layers
    mkdir -p /tmp/dit && git --git-dir=DIT_MIRROR show \
        ed81ce2229091fd4ecc9a223645f95cf379d582b:models.py > /tmp/dit/models.py
    TORCH_ENV/bin/python tests/data/convert/make_dit_fixtures.py \
        --dit_models=/tmp/dit/models.py --out=tests/data/convert/dit

(DIT_MIRROR: a clone of github.com/facebookresearch/DiT; the commit above is its main branch
as read.) Made with torch 2.14.1, timm 1.0.31, numpy 2.5.5.

The model: ``DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
num_heads=2, num_classes=10, learn_sigma=True, class_dropout_prob=0.1)`` (16 tokens, 8 output
channels, an 11-row class table with the NULL row 10). EVERY parameter except the fixed
``pos_embed`` is overwritten with seeded random values (:func:`randomise_`), the adaLN
modulations and the final layer included, which DiT initialises to zero; ``pos_embed`` keeps
DiT's own 2-D sine-cosine values, as in the released files.

Files:
  dit_tiny.pt     ``torch.save(model.state_dict())`` (torch's zip format, float32).
  reference.npz   x (6, 4, 8, 8) float64 ~ N(0, 1), NCHW as DiT takes it;
                  t (6,) float64 = 0, 1, 17, 500.5, 998, 999 (DiT feeds integer steps 0..999;
                    it accepts any float, 500.5 checks the embedding between steps);
                  y (6,) int64 = 0, 3, 9, 10, 5, 10 (10 = num_classes: the NULL class);
                  out (6, 8, 8, 8) float64: DiT's forward in float64 (model.double()) with its
                    sinusoidal timestep features computed in float32 as DiT computes them
                    (``t.float() * freqs``), then cast to float64 for the MLP (DiT itself would
                    fail on the float32 / float64 mismatch);
                  out_temb64 (6, 8, 8, 8) float64: the same with the features in float64;
                  out_f32 (6, 8, 8, 8) float32: the float32 forward of x.astype(float32);
                  cfg_x, cfg_t, cfg_y, cfg_scale, cfg_out_f32: ``forward_with_cfg`` in float32
                    on the first 3 examples duplicated (labels y[:3] then 3 NULLs), scale 1.5.
                    DiT guides only the first 3 of the 4 eps channels there ("for exact
                    reproducibility"), the other channels are the plain outputs;
                  temb_dit (6, 256) float32: DiT's sinusoidal features of t;
                  pos_embed (16, 32) float32: the checkpoint's pos_embed;
                  config: the constructor arguments as JSON.
It is deterministic: reruns give a byte-identical .pt and equal arrays.
"""
import argparse
import importlib.util
import json
import math
import os
import sys

import numpy as np
import torch

CONFIG = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
              mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
SEED = 24
T = np.array([0.0, 1.0, 17.0, 500.5, 998.0, 999.0])
Y = np.array([0, 3, 9, 10, 5, 10])
CFG_SCALE = 1.5


def load_dit(path: str):
  """DiT's models.py as a module (it imports timm)."""
  spec = importlib.util.spec_from_file_location("dit_models", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules["dit_models"] = mod
  spec.loader.exec_module(mod)
  return mod


def randomise_(model: torch.nn.Module, seed: int) -> None:
  """Overwrites every parameter but pos_embed: weights N(0, 1/fan_in) (fan_in = numel /
  out_features; the class table N(0, 1)), biases N(0, 0.1^2)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "pos_embed":
        continue
      z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
      if name.endswith(".bias"):
        value = 0.1 * z
      elif name == "y_embedder.embedding_table.weight":
        value = z
      elif name.endswith(".weight") and p.ndim >= 2:
        value = z / math.sqrt(p.numel() / p.shape[0])
      else:
        raise ValueError(f"no randomisation rule for {name} of shape {tuple(p.shape)}")
      p.copy_(value.to(p.dtype))


def timestep_features(t: torch.Tensor, dim: int, float64: bool) -> torch.Tensor:
  """DiT's TimestepEmbedder.timestep_embedding (GLIDE / ADM): [cos(t f), sin(t f)],
  f_i = exp(-ln(10000) i / (dim / 2)); in float64 when asked, else as DiT (float32)."""
  dt = torch.float64 if float64 else torch.float32
  half = dim // 2
  freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=dt) / half)
  args = t[:, None].to(dt) * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


@torch.no_grad()
def forward(mod, state, x, t, y, dtype, temb64=False):
  """DiT's forward of ``state`` in ``dtype``; the timestep features as DiT computes them
  (float32) or in float64, cast to the model's dtype."""
  m = mod.DiT(**CONFIG).to(dtype)
  m.load_state_dict(state)
  m.eval()
  emb = m.t_embedder
  if dtype == torch.float64:
    # DiT's own staticmethod, cast to the MLP's dtype (the float32 features it computes would
    # not multiply float64 weights); or the float64 features.
    own = type(emb).timestep_embedding

    def features_then_mlp(ts):
      dim = emb.frequency_embedding_size
      f = timestep_features(ts, dim, True) if temb64 else own(ts, dim).to(dtype)
      return emb.mlp(f)

    emb.forward = features_then_mlp
  out = m(torch.from_numpy(x).to(dtype), torch.from_numpy(t).to(dtype), torch.from_numpy(y))
  return out.numpy()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--dit_models", required=True, help="DiT's models.py")
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  mod = load_dit(args.dit_models)
  torch.manual_seed(0)
  model = mod.DiT(**CONFIG)
  randomise_(model, SEED)
  model.eval()
  state = model.state_dict()
  os.makedirs(args.out, exist_ok=True)
  torch.save(state, os.path.join(args.out, "dit_tiny.pt"))

  gen = torch.Generator().manual_seed(SEED + 1)
  shape = (len(T), CONFIG["in_channels"], CONFIG["input_size"], CONFIG["input_size"])
  x = torch.randn(shape, generator=gen, dtype=torch.float64).numpy()
  ref = dict(x=x, t=T, y=Y)
  ref["out"] = forward(mod, state, x, T, Y, torch.float64)
  ref["out_temb64"] = forward(mod, state, x, T, Y, torch.float64, temb64=True)
  ref["out_f32"] = forward(mod, state, x.astype(np.float32), T, Y, torch.float32)
  with torch.no_grad():
    out32 = torch.from_numpy(ref["out_f32"])
    again = model(torch.from_numpy(x).float(), torch.from_numpy(T).float(), torch.from_numpy(Y))
    assert torch.equal(again, out32), "the float32 forward is not reproducible"
    half = len(T) // 2
    cfg_x = np.concatenate([x[:half], x[:half]]).astype(np.float32)
    cfg_t = np.concatenate([T[:half], T[:half]])
    cfg_y = np.concatenate([Y[:half], np.full(half, CONFIG["num_classes"])])
    cfg = model.forward_with_cfg(torch.from_numpy(cfg_x), torch.from_numpy(cfg_t).float(),
                                 torch.from_numpy(cfg_y), CFG_SCALE)
    temb = model.t_embedder.timestep_embedding(torch.from_numpy(T), 256)
  ref.update(cfg_x=cfg_x, cfg_t=cfg_t, cfg_y=cfg_y, cfg_scale=np.float64(CFG_SCALE),
             cfg_out_f32=cfg.numpy(), temb_dit=temb.numpy(),
             pos_embed=state["pos_embed"].numpy()[0], config=np.array(json.dumps(CONFIG)))
  # The features of DiT's own code equal the float32 re-implementation used above.
  assert np.array_equal(ref["temb_dit"], timestep_features(torch.from_numpy(T), 256,
                                                           False).numpy())
  err = np.abs(ref["out"] - ref["out_f32"]).max() / np.abs(ref["out"]).max()
  assert 0 < err < 1e-5, err
  np.savez(os.path.join(args.out, "reference.npz"), **ref)
  print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"|out| max {np.abs(ref['out']).max():.3f}, float32 vs float64 {err:.2e}, "
        f"float32 vs float64 features "
        f"{np.abs(ref['out'] - ref['out_temb64']).max() / np.abs(ref['out']).max():.2e}")


if __name__ == "__main__":
  main()
