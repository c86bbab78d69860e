"""checkerboard: a shortcut model (Frans et al. 2024) from scratch, sampled in 1 step.

The two-time MLP of checkerboard_meanflow, read as s(x_t, t, d) = u(x_t, t - d, t) (our time runs
from data t = 0 to noise t = 1, the reverse of Frans et al.'s; docs/mean_flow.md): a quarter of
each batch regressed on the self-consistency target of two half steps (d in {1/128 .. 1/2}), the
rest on flow matching (d = 0), the paper's defaults (diffusion.shortcut). Sampled by the
'flow_map' sampler, 1 step from t = 1 to t = 0.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_shortcut.py --workdir=workdirs/checkerboard_shortcut --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_shortcut.py --workdir=workdirs/checkerboard_shortcut --mode=eval

Not yet measured on checkerboard; the 8gaussians benchmark (benchmarks/few_step_mixture.py
--only=shortcut, docs/mean_flow.md) is.
"""
from configs.toy.checkerboard_meanflow import flow_map_toy_config


def get_config():
  return flow_map_toy_config("checkerboard", "shortcut")
