"""Entry point: ``python -m experiments.main --config=FILE --workdir=DIR --mode=MODE``, MODE one
of train, sample, eval, sweep (sample quality against NFE on one checkpoint: FID / KID on images,
sliced Wasserstein / MMD on toy data) and pairs (reflow's (noise, sample) pairs of a trained
flow).

Any config field can be overridden, ``--config.training.num_steps=2000``; an unknown key is an
error naming close matches and the valid keys of its section (``experiments.cli``). This module
only dispatches: the flags and their checks are ``experiments.cli``, each mode its own module.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging

from experiments import cli, signals
from diffusion.config_checks import ConfigError

_FLAGS = cli.define_flags()
flags.adopt_module_key_flags(cli)  # --helpshort lists them as this program's flags


def main(argv: Sequence[str]) -> None:
  cli.check_command(_FLAGS, argv)
  config, workdir, mode = _FLAGS.config.value, _FLAGS.workdir.value, _FLAGS.mode.value
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # JAX and the modes are imported here, not at the top: --help and usage errors come before
  # the seconds JAX takes to import, a signal meanwhile gets exit_on_signal's one line, and the
  # modes load only once the config is valid, the compilation cache set and jax.distributed up.
  from diffusion import checkpoint, parallel, training  # heavy (JAX): after the flags
  from experiments import compile_cache, runtime, validate  # the library: as above
  try:
    validate.validate_config(config, mode)  # the device-independent checks, before JAX starts
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  try:
    compile_cache.enable(_FLAGS.compilation_cache.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if config.parallel.distributed:
    parallel.initialize_distributed(config.parallel.coordinator_address,
                                    config.parallel.num_processes, config.parallel.process_id)
  runtime.announce()  # the platform and devices; a warning when a GPU / TPU goes unused
  from experiments import evaluate, reflow, sample, sweep, train  # after jax.distributed is up
  expected = (ValueError, FileNotFoundError, checkpoint.WorkdirMismatchError,
              checkpoint.WorkdirLockedError, checkpoint.CheckpointError,
              training.NonFiniteError)
  try:
    if mode == "train":
      train.train(config, workdir, allow_fresh_start=_FLAGS.allow_fresh_start.value)
    elif mode == "sample":
      sample.run(config, workdir)
    elif mode == "sweep":
      sweep.run(config, workdir)
    elif mode == "pairs":
      reflow.run(config, workdir)
    else:
      evaluate.run(config, workdir)
  except expected as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  signals.exit_on_signal()  # one line, no traceback, for a signal before or after a run
  app.run(main, flags_parser=cli.parse_flags)
