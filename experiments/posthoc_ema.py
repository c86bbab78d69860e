"""EDM2's post-hoc EMA (Karras et al. 2024, Sec. 3, App. C; diffusion/posthoc_ema.py): the EMA
snapshots a run writes, and the command that turns them into an EMA of any length.

  python -m experiments.posthoc_ema --config=FILE [--config.x=...] --workdir=W --sigma_rel=0.07
      [--step=N] [--out_workdir=O]

Snapshots. A run with ``training.ema_profiles`` (sigma_rel values, EDM2: (0.05, 0.10)) keeps one
power-function EMA per profile in its train state (``training.PowerEMAState``) and, whenever
``training.ema_snapshot_every`` steps are crossed, writes each one to

  W/ema_snapshots/step_<step:08d>_sigma_rel_<sigma_rel>.npz

an npz of the EMA's parameters (one array per leaf, keyed by its '/'-joined key path as in
``checkpoint.tree_signature``) and the scalars __step__ (training step), __t__ (updates the EMA
has seen: step - skipped steps), __sigma_rel__ and __gamma__. npz rather than orbax: a snapshot
is a small, write-once parameter file read back on the host into a known tree, with no
shardings, optimizer state or async machinery to manage, and thousands of them stay cheap to
list and read. Writes are atomic and never overwrite: the file is written under a temporary
name and hard-linked to its final name, which fails if a snapshot of that step exists (a resumed
run recomputes the same values bit for bit and keeps the first file).

The command reads the snapshots of W with step <= N (N: a snapshot step, default the latest),
solves for the combination whose averaging profile is closest to the power profile of
--sigma_rel ending at N (``diffusion.posthoc_ema.solve_coefficients``), and writes a NEW workdir
O (default W/posthoc_ema/sigma_rel_<s>_step_<N>) holding config.json (W's identity), one
checkpoint at step N whose params, ema_params and power EMAs are the reconstruction (optimizer
state fresh, as experiments.convert does), and posthoc_ema.json (the request, the snapshots used
and their coefficients, the profile residual). --mode=sample / eval with --workdir=O use it;
W's checkpoints and snapshots are only read. An O that already holds checkpoints is refused.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import numpy as np

from diffusion import checkpoint, parallel, posthoc_ema

PyTree = Any
SNAPSHOT_DIR = "ema_snapshots"
INFO_FILE = "posthoc_ema.json"
_META = ("__step__", "__t__", "__sigma_rel__", "__gamma__")


class Snapshot(NamedTuple):
  """One stored power EMA: its file, training step, update count t, profile and parameters."""
  path: str
  step: int
  t: int
  sigma_rel: float
  params: PyTree


def snapshot_name(step: int, sigma_rel: float) -> str:
  """step_<step:08d>_sigma_rel_<repr(sigma_rel)>.npz (repr: distinct values, distinct names)."""
  return f"step_{int(step):08d}_sigma_rel_{float(sigma_rel)!r}.npz"


def _leaf_names(tree: PyTree) -> List[str]:
  return [p for p, _, _ in checkpoint.tree_signature(tree)]


def _write_new(path: str, arrays: Dict[str, np.ndarray]) -> bool:
  """Writes an npz atomically unless ``path`` exists; True if written. The data is fsynced
  under a temporary name, then hard-linked to ``path`` (fails if it exists: never overwrites)."""
  d = os.path.dirname(path)
  tmp = os.path.join(d, f".tmp.{os.getpid()}.{os.path.basename(path)}")  # ends in .npz
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_snapshots(workdir: str, state, profiles: Sequence[float], step: int,
                    is_main: bool = True) -> List[str]:
  """Writes each power EMA of ``state`` (a training.PowerEMAState, one EMA per sigma_rel of
  ``profiles``) to <workdir>/ema_snapshots/; returns the paths written (existing snapshots are
  kept). Every process must call it (sharded EMAs are gathered); ``is_main`` writes."""
  host = parallel.to_host((state.power_ema, state.step, state.num_skipped))
  emas, at, skipped = host
  if int(at) != int(step):
    raise ValueError(f"the state is at step {int(at)}, not {step}")
  if not is_main:
    return []
  out_dir = os.path.join(workdir, SNAPSHOT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for ema, sigma_rel in zip(emas, profiles):
    arrays = dict(zip(_leaf_names(ema), jax.tree_util.tree_leaves(ema)))
    arrays.update(__step__=np.int64(step), __t__=np.int64(int(at) - int(skipped)),
                  __sigma_rel__=np.float64(sigma_rel),
                  __gamma__=np.float64(posthoc_ema.gamma_of_sigma_rel(sigma_rel)))
    path = os.path.join(out_dir, snapshot_name(step, sigma_rel))
    if _write_new(path, arrays):
      written.append(path)
  return written


def read_snapshots(workdir: str, template: PyTree) -> List[Snapshot]:
  """Every snapshot in <workdir>/ema_snapshots/, sorted by (step, sigma_rel), its parameters in
  the structure of ``template`` (a params tree of arrays or ShapeDtypeStructs). A file whose
  leaves differ from the template's is a ValueError naming it."""
  d = os.path.join(workdir, SNAPSHOT_DIR)
  names = sorted(n for n in os.listdir(d) if n.endswith(".npz") and not n.startswith(".")) \
      if os.path.isdir(d) else []
  leaves, treedef = jax.tree_util.tree_flatten(template)
  keys = _leaf_names(template)
  out = []
  for n in names:
    path = os.path.join(d, n)
    with np.load(path) as z:
      stored = set(z.files) - set(_META)
      if stored != set(keys) or not set(_META) <= set(z.files):
        raise ValueError(f"snapshot {path} holds other parameters than this config's network "
                         f"({len(stored ^ set(keys))} leaves differ, e.g. "
                         f"{sorted(stored ^ set(keys))[:3]})")
      arrays = []
      for k, ref in zip(keys, leaves):
        a = z[k]
        if a.shape != tuple(ref.shape) or a.dtype != ref.dtype:
          raise ValueError(f"snapshot {path}: leaf {k} is {a.dtype}{list(a.shape)}, the "
                           f"network's is {ref.dtype}{list(ref.shape)}")
        arrays.append(a)
      out.append(Snapshot(path, int(z["__step__"]), int(z["__t__"]), float(z["__sigma_rel__"]),
                          jax.tree_util.tree_unflatten(treedef, arrays)))
  return sorted(out, key=lambda s: (s.step, s.sigma_rel))


def default_out_workdir(workdir: str, sigma_rel: float, step: int) -> str:
  return os.path.join(workdir, "posthoc_ema", f"sigma_rel_{sigma_rel:.6g}_step_{step}")


def run(config, workdir: str, sigma_rel: float, step: Optional[int] = None,
        out_workdir: Optional[str] = None) -> Dict[str, Any]:
  """Reconstructs the EMA of ``sigma_rel`` at snapshot step ``step`` (default: the latest) from
  the snapshots of ``workdir`` and writes it as a new workdir (module doc). Returns a summary:
  out_workdir, step, t, sigma_rel, gamma, coefficients, residuals, snapshots used."""
  from experiments import build, train
  from experiments.errors import ConfigError
  from experiments.validate import validate_config
  from experiments.writers import say
  validate_config(config, "train")
  if not config.training.ema_profiles:
    raise ConfigError("config.training.ema_profiles=() : this run kept no power-function EMAs, "
                      "so it has no snapshots to reconstruct from; train with e.g. "
                      "--config.training.ema_profiles='(0.05, 0.1)'")
  posthoc_ema.check_sigma_rel(sigma_rel, "--sigma_rel")
  s = train.setup(config)
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)
  snaps = read_snapshots(workdir, s.abstract_state.params)
  if not snaps:
    raise FileNotFoundError(f"no snapshots in {os.path.join(workdir, SNAPSHOT_DIR)}; train "
                            f"with training.ema_profiles and training.ema_snapshot_every")
  steps = sorted({sn.step for sn in snaps})
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise ValueError(f"--step={step} is not a snapshot step; snapshot steps: {steps}")
  used = [sn for sn in snaps if sn.step <= step]
  t_end = max(sn.t for sn in used if sn.step == step)
  params, rec = posthoc_ema.reconstruct([sn.params for sn in used], [sn.t for sn in used],
                                        [sn.sigma_rel for sn in used], sigma_rel, t_end)
  out = out_workdir or default_out_workdir(workdir, float(sigma_rel), step)
  if os.path.abspath(out) == os.path.abspath(workdir):
    raise ValueError(f"--out_workdir={out!r} is the source workdir; the reconstruction goes to a "
                     f"new workdir (W's checkpoints are never modified)")
  if checkpoint.has_checkpoints(out):
    raise ValueError(f"--out_workdir={out!r} already holds checkpoints; choose another "
                     f"(nothing was changed)")
  state = train.init_state(s)
  dev = jax.device_put(params, s.state_shardings.params)
  copy = lambda: jax.tree_util.tree_map(lambda a: a + 0, dev)  # noqa: E731
  state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32), params=dev,
                        ema_params=copy(), opt_state=s.optimizer.init(dev),
                        power_ema=tuple(copy() for _ in config.training.ema_profiles))
  info = {"source_workdir": os.path.abspath(workdir), "sigma_rel": float(sigma_rel),
          "gamma": rec.gamma, "step": step, "t": int(t_end),
          "profile_residual": rec.residual, "relative_profile_residual": rec.relative_residual,
          "snapshots": [{"file": os.path.basename(sn.path), "step": sn.step, "t": sn.t,
                         "sigma_rel": sn.sigma_rel, "coefficient": float(c)}
                        for sn, c in zip(used, rec.coefficients)]}
  checkpoint.write_config(out, s.identity)
  ckpt = checkpoint.Checkpointer(out, max_to_keep=None, async_save=False, config=s.identity)
  try:
    ckpt.save(step, state, {"step": step, "experiment": config.experiment,
                            "posthoc_ema": {k: v for k, v in info.items() if k != "snapshots"}})
  finally:
    ckpt.close()
  with open(os.path.join(out, INFO_FILE), "w") as f:
    json.dump(info, f, indent=1, sort_keys=True)
  say(f"post-hoc EMA sigma_rel={float(sigma_rel):g} (gamma {rec.gamma:.3f}) at step {step} from "
      f"{len(used)} snapshots (relative profile residual {rec.relative_residual:.2e}) -> "
      f"checkpoint {step} of {out}")
  return dict(info, out_workdir=out, coefficients=rec.coefficients, params=params)


def main(argv: Sequence[str]) -> None:
  from absl import app, flags, logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  f = flags.FLAGS
  if f["mode"].present:
    raise app.UsageError("--mode is not a flag of experiments.posthoc_ema")
  if f.config is None or not f.workdir or f.sigma_rel is None:
    raise app.UsageError("--config, --workdir and --sigma_rel are required")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from diffusion import checkpoint as ck
  from experiments.errors import ConfigError
  try:
    summary = run(f.config, f.workdir, f.sigma_rel, f.step, f.out_workdir)
  except (ConfigError, ValueError, FileNotFoundError, ck.WorkdirMismatchError,
          ck.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"sample with: python -m experiments.main --config=<the run's config and overrides> "
        f"--workdir={summary['out_workdir']} --mode=sample", flush=True)


if __name__ == "__main__":
  from absl import app, flags
  from experiments import cli
  cli.define_flags()  # --config (with overrides) and --workdir, as experiments.main has them
  flags.DEFINE_float("sigma_rel", None, "The EMA length to reconstruct (0 < sigma_rel <= 0.3).")
  flags.DEFINE_integer("step", None, "The snapshot step the EMA ends at (default: the latest).")
  flags.DEFINE_string("out_workdir", None, "The new workdir (default: "
                      "W/posthoc_ema/sigma_rel_<s>_step_<N>).")
  app.run(main, flags_parser=cli.parse_flags)
