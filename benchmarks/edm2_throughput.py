"""Training throughput of EDM2's U-Net at CIFAR-10 size (edm2.PRESETS['cifar10'], 36,610,076
parameters) on this host: the full train step of configs/cifar10/edm2.py (EDM preconditioning,
the 'edm2' uncertainty-weighted loss with lognormal sigmas, Adam, forced weight normalisation,
EMA), float32, one device, synthetic 32x32x3 data; compile timed separately from the timed steps
after one warm-up step. Prints one row in benchmarks/results/cifar_throughput_<platform>.md's
format (it does not write the file).

  python benchmarks/edm2_throughput.py --batch 8 --steps 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffusion import training  # noqa: E402
from diffusion.models import edm2, get_model  # noqa: E402
from diffusion.parameterization import Parameterization  # noqa: E402
from diffusion.schedules import get_schedule  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3, help="timed steps")
  args = p.parse_args(argv)
  net = get_model("edm2_unet", **edm2.preset("cifar10"))
  sched = get_schedule("edm", t_min=0.002, t_max=80.0)
  param = Parameterization(kind="edm", time_input="c_noise")
  opt = training.make_optimizer(training.OptimConfig(
      lr=0.012, b2=0.99, grad_clip=0.0, decay="rsqrt", rsqrt_ref_steps=35_000, warmup_steps=10))
  cfg = training.StepConfig(weighting="edm2", time_sampling="lognormal", ema_decay=0.99716,
                            loss_opts=(("p_mean", -0.8), ("p_std", 1.6)))
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (args.batch, 32, 32, 3), jnp.float32)
  state = jax.jit(lambda k: training.init_state(net, opt, k, x[:1]))(key)
  jitted = jax.jit(training.make_train_step(net, sched, param, opt, cfg), donate_argnums=(0,))
  load0 = os.getloadavg()
  t0 = time.perf_counter()
  compiled = jitted.lower(state, {"x": x}).compile()
  t1 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  state, m = compiled(state, {"x": x})  # warm-up
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, m = compiled(state, {"x": x})
  jax.block_until_ready(state)
  sps = args.steps / (time.perf_counter() - t)
  assert np.isfinite(float(m["loss"])), "non-finite loss"
  dev = jax.devices()[0]
  print(f"EDM2 U-Net (cifar10 preset, {training.count_params(state.params):,} params), "
        f"jax {jax.__version__}, load average {load0[0]:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores")
  print("| device | batch | compile s | s/step | steps/s | images/s | GFLOP/step |")
  print(f"| {dev.platform} ({os.cpu_count()} cores) | {args.batch} | {t1 - t0:.1f} | "
        f"{1 / sps:.2f} | {sps:.3f} | {sps * args.batch:.2f} | {flops / 1e9:.0f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
