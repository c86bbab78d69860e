"""EDM2's post-hoc EMA (Karras et al. 2024, Sec. 3, App. C; diffusion/posthoc_ema.py): the command
that turns the EMA snapshots a run writes (experiments/snapshots.py) into an EMA of any length.

  python -m experiments.posthoc_ema --config=FILE --workdir=W --sigma_rel=0.07 [--step=N]
      [--out_workdir=O]

FILE is the run's config file; the run's overrides are read from W/config.json (the values the
run used, ``experiments.setup.saved_config``), so they need not be repeated; one given that
differs from the run's value is refused, naming both.

Snapshots: a run with ``training.ema_profiles`` writes each power-function EMA to
W/ema_snapshots/step_<step:08d>_sigma_rel_<sigma_rel>.npz whenever
``training.ema_snapshot_every`` steps are crossed (experiments/snapshots.py: the format).

The command reads the snapshots of W with step <= N (N: a snapshot step, default the latest),
solves for the combination whose averaging profile is closest to the power profile of
--sigma_rel ending at N (``diffusion.posthoc_ema.solve_coefficients``), and writes a NEW workdir
O (default W/posthoc_ema/sigma_rel_<s>_step_<N>) holding config.json (W's identity), one
checkpoint at step N whose params, ema_params and power EMAs are the reconstruction (optimizer
state fresh, as experiments.convert does), and posthoc_ema.json (the request, the snapshots used
and their coefficients, the profile residual). --mode=sample / eval with --workdir=O use it;
W's checkpoints and snapshots are only read. An O that already holds checkpoints is refused.
The command ends with a sample command for O (an eval command when the objective draws no
samples) that runs as printed: FILE with the run's values as --config.<key>=<value> overrides.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app, flags, logging
import jax
import ml_collections

from diffusion import checkpoint, posthoc_ema
from experiments import build, cli, runtime
from diffusion.config_checks import ConfigError
from experiments.config_files import load_config_file
from experiments.setup import Setup, init_state, saved_config, setup
from experiments.snapshots import SNAPSHOT_DIR, Snapshot, read_snapshots
from experiments.validate import validate_config
from experiments.writers import say

PyTree = Any
Config = ml_collections.ConfigDict
INFO_FILE = "posthoc_ema.json"


def check_overrides_match(given: Config, saved: Config, keys: Sequence[str],
                          workdir: str) -> None:
  """A ``--config.<key>`` override that differs from the run's value in W/config.json is a
  ConfigError naming both (the reconstruction is of that run; the override would be replaced)."""
  given_values, saved_values = dict(cli.leaves(given)), dict(cli.leaves(saved))
  for key in keys:
    a, b = given_values[key], saved_values[key]
    if a != b and not (isinstance(b, tuple) and tuple(a) == b):
      raise ConfigError(f"--config.{key}={a!r} differs from the run's value {b!r} in "
                        f"{workdir}/config.json; post-hoc EMA reconstructs that run: leave the "
                        f"override out (the run's values are read from config.json)")


def default_out_workdir(workdir: str, sigma_rel: float, step: int) -> str:
  return os.path.join(workdir, "posthoc_ema", f"sigma_rel_{sigma_rel:.6g}_step_{step}")


def run(config: Config, workdir: str, sigma_rel: float, step: Optional[int] = None,
        out_workdir: Optional[str] = None, overridden: Sequence[str] = ()) -> Dict[str, Any]:
  """Reconstructs the EMA of ``sigma_rel`` at snapshot step ``step`` (default: the latest) from
  the snapshots of ``workdir`` and writes it as a new workdir (module doc). ``config``: the run's
  config file's, whose values W/config.json replaces; ``overridden``: the keys given on the
  command line, each of which must equal the run's value (``check_overrides_match``). Returns a
  summary: out_workdir, step, t, sigma_rel, gamma, coefficients, residuals, snapshots used, and
  the config used."""
  given, config = config, saved_config(config, workdir)
  check_overrides_match(given, config, overridden, workdir)
  validate_config(config, "train")
  if not config.training.ema_profiles:
    raise ConfigError("config.training.ema_profiles=() : this run kept no power-function EMAs, "
                      "so it has no snapshots to reconstruct from; train with e.g. "
                      "--config.training.ema_profiles='(0.05, 0.1)'")
  posthoc_ema.check_sigma_rel(sigma_rel, "--sigma_rel")
  s = setup(config)
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)
  step, used = _snapshots_to(workdir, s, step)
  t_end = max(sn.t for sn in used if sn.step == step)
  params, rec = posthoc_ema.reconstruct([sn.params for sn in used], [sn.t for sn in used],
                                        [sn.sigma_rel for sn in used], sigma_rel, t_end)
  out = out_workdir or default_out_workdir(workdir, float(sigma_rel), step)
  _check_out_workdir(out, workdir)
  state = _state_of(s, params, step)
  info = {"source_workdir": os.path.abspath(workdir), "sigma_rel": float(sigma_rel),
          "gamma": rec.gamma, "step": step, "t": int(t_end),
          "profile_residual": rec.residual, "relative_profile_residual": rec.relative_residual,
          "snapshots": [{"file": os.path.basename(sn.path), "step": sn.step, "t": sn.t,
                         "sigma_rel": sn.sigma_rel, "coefficient": float(c)}
                        for sn, c in zip(used, rec.coefficients)]}
  _write_workdir(out, s, state, step, info)
  say(f"post-hoc EMA sigma_rel={float(sigma_rel):g} (gamma {rec.gamma:.3f}) at step {step} from "
      f"{len(used)} snapshots (relative profile residual {rec.relative_residual:.2e}) -> "
      f"checkpoint {step} of {out}")
  return dict(info, out_workdir=out, coefficients=rec.coefficients, params=params, config=config)


def _snapshots_to(workdir: str, s: Setup, step: Optional[int]) -> Tuple[int, List[Snapshot]]:
  """(the snapshot step N: ``step``, default the latest; the snapshots of ``workdir`` with step
  <= N)."""
  snaps = read_snapshots(workdir, s.abstract_state.params)
  if not snaps:
    raise FileNotFoundError(f"no snapshots in {os.path.join(workdir, SNAPSHOT_DIR)}; train "
                            f"with training.ema_profiles and training.ema_snapshot_every")
  steps = sorted({sn.step for sn in snaps})
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise ValueError(f"--step={step} is not a snapshot step; snapshot steps: {steps}")
  return step, [sn for sn in snaps if sn.step <= step]


def _check_out_workdir(out: str, workdir: str) -> None:
  """The reconstruction goes to a new workdir: not the source, none with checkpoints."""
  if os.path.abspath(out) == os.path.abspath(workdir):
    raise ValueError(f"--out_workdir={out!r} is the source workdir; the reconstruction goes to a "
                     f"new workdir (W's checkpoints are never modified)")
  if checkpoint.has_checkpoints(out):
    raise ValueError(f"--out_workdir={out!r} already holds checkpoints; choose another "
                     f"(nothing was changed)")


def _state_of(s: Setup, params: PyTree, step: int):
  """A fresh train state at ``step`` whose params, EMA and power EMAs are ``params`` (optimizer
  state fresh)."""
  state = init_state(s)
  dev = jax.device_put(params, s.state_shardings.params)
  copy = lambda: jax.tree_util.tree_map(lambda a: a + 0, dev)  # noqa: E731
  return state.replace(step=jax.numpy.asarray(step, jax.numpy.int32), params=dev,
                       ema_params=copy(), opt_state=s.optimizer.init(dev),
                       power_ema=tuple(copy() for _ in s.config.training.ema_profiles))


def _write_workdir(out: str, s: Setup, state, step: int, info: Dict[str, Any]) -> None:
  """config.json (the source's identity), the checkpoint at ``step`` and posthoc_ema.json."""
  checkpoint.write_config(out, s.identity)
  ckpt = checkpoint.Checkpointer(out, max_to_keep=None, async_save=False, config=s.identity)
  try:
    ckpt.save(step, state, {"step": step, "experiment": s.config.experiment,
                            "posthoc_ema": {k: v for k, v in info.items() if k != "snapshots"}})
  finally:
    ckpt.close()
  with open(os.path.join(out, INFO_FILE), "w") as f:
    json.dump(info, f, indent=1, sort_keys=True)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  f = flags.FLAGS
  if f["mode"].present:
    raise app.UsageError("--mode is not a flag of experiments.posthoc_ema")
  if f.config is None or not f.workdir or f.sigma_rel is None:
    raise app.UsageError("--config, --workdir and --sigma_rel are required")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  runtime.announce()
  try:
    summary = run(f.config, f.workdir, f.sigma_rel, f.step, f.out_workdir,
                  overridden=cli.override_keys(sys.argv))
  except (ConfigError, ValueError, FileNotFoundError, checkpoint.WorkdirMismatchError,
          checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(sample_hint(cli.config_spec(sys.argv), summary["config"], summary["out_workdir"]),
        flush=True)


def sample_hint(spec: str, config: Config, workdir: str) -> str:
  """The command that samples ``workdir`` (a reconstruction of a run with ``config``), or
  evaluates it when its objective draws no samples (a classifier, an autoencoder): the config
  file ``spec`` with the overrides that give ``config``, one line (two when a value cannot be
  passed on the command line)."""
  args, unsettable = cli.override_args(load_config_file(spec), config)
  what, mode = (("sample", "sample") if build.objective(config).draws_samples
                else ("evaluate", "eval"))
  line = " ".join([f"{what} with: python -m experiments.main", shlex.quote(f"--config={spec}"),
                   *args, shlex.quote(f"--workdir={workdir}"), f"--mode={mode}"])
  if unsettable:
    line += (f"\n(the run's {', '.join(unsettable)} cannot be set on the command line: from "
             f"Python, experiments.setup.saved_config gives its config)")
  return line


if __name__ == "__main__":
  cli.define_flags()  # --config (with overrides) and --workdir, as experiments.main has them
  flags.DEFINE_float("sigma_rel", None, "The EMA length to reconstruct (0 < sigma_rel <= 0.3).")
  flags.DEFINE_integer("step", None, "The snapshot step the EMA ends at (default: the latest).")
  flags.DEFINE_string("out_workdir", None, "The new workdir (default: "
                      "W/posthoc_ema/sigma_rel_<s>_step_<N>).")
  app.run(main, flags_parser=cli.parse_flags)
