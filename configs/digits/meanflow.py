"""8x8 digits: MeanFlow (Geng et al. 2025) from scratch, the digits U-Net as a two-time network.

The U-Net of configs/digits/rf.py (DDPM U-Net, 32/64/64 channels, positional embedding of 999 c)
fed (x_t, t, t - r) (model.parameterization 'mean_flow': a second noise embedding for t - r,
summed with the first) outputs the average velocity u(x_t, r, t) on the rectified-flow path over
t in [0, 1]. Loss: MeanFlow's jvp target with the paper's defaults (lognorm(-0.4, 1.0), 25% r !=
t, adaptive weighting p = 1; diffusion.mean_flow); optimizer, batch, steps and EMA of the digits
configs. Sampled by the 'flow_map' sampler, 1 step from pure noise (t = 1) to the data (t = 0).
No likelihood: eval reports sample metrics only (a flow map has no PF-ODE density).

Run:
  python -m experiments.main --config=configs/digits/meanflow.py --workdir=workdirs/digits_meanflow --mode=train
  python -m experiments.main --config=configs/digits/meanflow.py --workdir=workdirs/digits_meanflow --mode=eval
The DiT instead of the U-Net: --config.model.name=dit with the net of configs/digits/dit.py
(configs/digits/shortcut.py shows it). Not yet trained here.
"""
import ml_collections

from configs.digits.common import digits_config


def flow_map_digits_config(objective: str) -> ml_collections.ConfigDict:
  """The digits U-Net config as a two-time flow-map run of ``objective`` ('mean_flow',
  'shortcut'): rectified flow on t in [0, 1], the 'flow_map' sampler, 1 uniform step."""
  c = digits_config("vp")
  c.experiment = f"digits/{objective}"
  c.sde.name = "rectified_flow"
  c.sde.fields = ml_collections.ConfigDict(dict(t_min=0.0, t_max=1.0))
  c.training.objective = objective
  c.model.parameterization = "mean_flow"
  c.model.time_input = "t"
  c.training.weighting = "flow"  # not read by the flow-map objectives
  c.training.time_sampling = "uniform"  # not read either
  c.sampling.sampler = "flow_map"
  c.sampling.grid = "uniform"
  c.sampling.num_steps = 1
  c.eval.elbo = False
  c.eval.sweep_samplers = "flow_map"  # --mode=sweep: the flow map at 1, 2 and 4 steps
  c.eval.sweep_nfe = "1,2,4"
  return c


def get_config():
  return flow_map_digits_config("mean_flow")
