"""checkerboard: MeanFlow (Geng et al. 2025) from scratch, a two-time MLP sampled in 1 step.

The residual MLP of checkerboard_rf fed (x_t, t, t - r) (model.parameterization 'mean_flow': two
time embeddings summed) outputs the average velocity u(x_t, r, t) on the rectified-flow path
x_t = (1 - t) x0 + t eps over the whole t in [0, 1] (sde.fields t_min = 0, t_max = 1, so that one
step of the flow map goes from pure noise at t = 1 to the data at t = 0). Loss: the MeanFlow
target sg(v - (t - r) du/dt) by one jvp, (r, t) logit-normal lognorm(-0.4, 1.0) with 25% r != t
and adaptive weighting p = 1, c = 1e-3 (the paper's ImageNet defaults, diffusion.mean_flow).
Sampled by the 'flow_map' sampler (x <- x - (t - s) u(x, s, t)), 1 step on the uniform grid.

Run:
  python -m experiments.main --config=configs/toy/checkerboard_meanflow.py --workdir=workdirs/checkerboard_meanflow --mode=train
  python -m experiments.main --config=configs/toy/checkerboard_meanflow.py --workdir=workdirs/checkerboard_meanflow --mode=eval

Two steps: add --config.sampling.num_steps=2. Not yet measured on checkerboard; the 8gaussians
benchmark (benchmarks/few_step_mixture.py --only=mean_flow, docs/mean_flow.md) is.
"""
import ml_collections

from configs.toy.checkerboard_rf import rf_toy_config


def flow_map_toy_config(dataset: str, objective: str) -> ml_collections.ConfigDict:
  """``rf_toy_config(dataset, 'uniform')`` as a two-time flow-map run of ``objective``
  ('mean_flow' or 'shortcut'): t in [0, 1], parameterization 'mean_flow', the 'flow_map' sampler
  with 1 step on the uniform grid."""
  c = rf_toy_config(dataset, "uniform")
  c.experiment = f"toy/{dataset}_{objective}"
  c.sde.fields = ml_collections.ConfigDict(dict(t_min=0.0, t_max=1.0))
  c.training.objective = objective
  c.model.parameterization = "mean_flow"
  c.model.time_input = "t"
  c.training.weighting = "flow"  # not read by the flow-map objectives
  c.sampling.sampler = "flow_map"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 1
  c.eval.sweep_samplers = "flow_map"  # --mode=sweep: the flow map at 1, 2 and 4 steps
  c.eval.sweep_nfe = "1,2,4"
  return c


def get_config():
  return flow_map_toy_config("checkerboard", "mean_flow")
