"""8x8 digits: a shortcut model (Frans et al. 2024) from scratch with the small DiT.

The DiT of configs/digits/dit.py (patch 2, depth 6, hidden 128, 4 heads) as a two-time network
(a second timestep embedding for d = t - r), read as the shortcut s(x_t, t, d) = u(x_t, t - d, t)
on rectified flow over t in [0, 1] (our time runs data -> noise, the reverse of Frans et al.;
docs/mean_flow.md). Loss: a quarter of each batch self-consistency targets (d in {1/128 ..
1/2}), the rest flow matching (diffusion.shortcut, the paper's defaults); everything else
configs/digits/meanflow.py. Sampled by the 'flow_map' sampler, 1 step.

Run:
  python -m experiments.main --config=configs/digits/shortcut.py --workdir=workdirs/digits_shortcut --mode=train
  python -m experiments.main --config=configs/digits/shortcut.py --workdir=workdirs/digits_shortcut --mode=eval
Not yet trained here.
"""
import ml_collections

from configs.digits.dit import NET
from configs.digits.meanflow import flow_map_digits_config


def get_config():
  c = flow_map_digits_config("shortcut")
  c.model.name = "dit"
  c.model.net = ml_collections.ConfigDict(dict(NET, embedding_scale=999.0))  # c = t -> 999 t
  return c
