"""The sample driver: EMA params of the latest checkpoint -> N samples -> samples.npz + PNG.

Checkpoints are opened read-only here (and by eval): one that fails its integrity check is
skipped with a warning line, never moved; nothing under checkpoints/ is written.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

from diffusion import checkpoint, parallel
from experiments import build, plots, signals, writers
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict
close = plots.close


def _sample_fn(s) -> Callable:
  """(params, key, x_T, offset) -> (x0, info): the config's sampler with the network's params."""
  sampler = build.sampler(s.config, s.schedule)

  def run(p, k, x_t, offset):
    return sampler(build.denoiser(s.net, p, s.schedule, s.param), k, x_t, sample_offset=offset)

  return run


def generate(s, params, n: int, key: jax.Array,
             progress: Optional[Callable[[int], None]] = None, start: int = 0
             ) -> Tuple[np.ndarray, Dict[str, Any]]:
  """Samples start .. start + n - 1 (n, *data_shape) of the sequence of ``key`` from the
  config's sampler with ``params``, over the mesh; sample i depends on (key, i) only.
  ``progress(done)`` is called after each batch (e.g. a ``writers.Progress``)."""
  shape = tuple(s.example["x"].shape[1:])
  bs = int(s.config.sampling.batch_size or n)
  x, info = parallel.sample_sharded(_sample_fn(s), params, key, s.schedule, n, shape, bs, s.mesh,
                                    progress=progress, start=start)
  return x, jax.device_get(info)


def batch_generator(s, params, key: jax.Array, batch_size: int):
  """(bs, draw): ``draw(start) -> (x (bs, *data_shape) numpy, info)``, samples start ..
  start + bs - 1 of the sequence of ``key`` (as ``generate``), compiled once for many calls."""
  shape = tuple(s.example["x"].shape[1:])
  return parallel.batch_sampler(_sample_fn(s), params, key, s.schedule, shape, batch_size,
                                s.mesh)


def plot(s, x: np.ndarray, path: str, title: str = ""):
  """Scatter against data for 2-D data, an image grid for images. Returns the figure."""
  cfg = s.config
  if build.is_toy(cfg) and x.ndim == 2 and x.shape[1] == 2:
    data = build.heldout(cfg, len(x))
    return plots.scatter(data, x, path, title, extent=cfg.eval.density_extent)
  return plots.image_grid(x[:64], path)


def restore_params(config: Config, workdir: str, step: Optional[int] = None):
  """(Setup, EMA params, step) from the newest intact checkpoint of ``workdir``, or the one at
  ``step`` (then an error if it cannot be restored).

  Refuses a workdir of another experiment and one without checkpoints. Read-only: checkpoints
  proven corrupt are skipped with a warning line, never moved; nothing in the workdir changes.
  """
  from experiments import train
  s = train.setup(config)
  if not checkpoint.has_checkpoints(workdir):
    raise FileNotFoundError(f"no checkpoints in {os.path.join(workdir, checkpoint.CKPT_DIR)}; "
                            f"train first (--mode=train)")
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)
  ckpt = checkpoint.Checkpointer(workdir, config=s.identity, read_only=True)
  try:
    state, _, step = ckpt.restore(s.abstract_state, step=step)
  finally:
    ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no readable checkpoint in {ckpt.directory}")
  return s, state.ema_params, step


def run(config: Config, workdir: str) -> Dict[str, Any]:
  """Writes <workdir>/samples/samples.npz (x, nfe, step) and samples.png.

  SIGTERM/SIGINT: one line, exit 128 + signum; a file being written is finished first.
  """
  validate(config, "sample", workdir)
  with signals.RunSignals("set-up", "nothing written") as sig:
    s, params, step = restore_params(config, workdir)
    n = int(config.sampling.num_samples)
    sig.phase = "sampling"
    x, info = generate(s, params, n, jax.random.PRNGKey(config.seed + 2),
                       progress=writers.Progress("sampling", n, "samples"))
    nfe = int(np.asarray(info.get("nfe", -1)))
    out = os.path.join(workdir, "samples")
    if writers.is_main():
      sig.phase, sig.nothing_saved = "writing the samples", f"the samples are in {out}"
      with sig.deferred():  # no half-written samples.npz
        os.makedirs(out, exist_ok=True)
        tmp = os.path.join(out, ".samples.tmp.npz")  # np.savez keeps a name ending in .npz
        np.savez(tmp, x=x, nfe=nfe, step=step)
        os.replace(tmp, os.path.join(out, "samples.npz"))
        close(plot(s, x, os.path.join(out, "samples.png"),
                   f"{n} samples, step {step}, NFE {nfe}"))
    say(f"wrote {n} samples (NFE {nfe}) from the checkpoint at step {step} to {out}")
  return {"num_samples": n, "nfe": nfe, "step": step}
