"""The train driver: config -> sharded jitted steps -> checkpoints, metrics, plots (auto-resume).

Reads top to bottom: set up (mesh, network, optimizer, state shardings), refuse a workdir of
another experiment or one in use, restore the latest checkpoint or initialize, then loop:
fetch batch i (a pure function of (seed, i)), run steps, report, checkpoint, sample.

Signals (``experiments.signals``), handled from the very start of ``train``:
  during set-up and restore (before the loop): SIGTERM or SIGINT ends the run with one line,
    ``interrupted by SIGINT during set-up; nothing saved``, and exit status 128 + signum
    (143, 130); no traceback, and no checkpoint is touched.
  once the loop runs (from its first compile on): the signal is recorded and polled at every
    step boundary (a long XLA call only delays it); the loop saves a checkpoint there, waits
    for it to be written and prints ``SIGTERM: saved a checkpoint at step N; exiting``.
    SIGTERM (a scheduler's preemption) then exits 0: the run did what it was asked and resumes
    on the next start. SIGINT (Ctrl-C, a person stopping the run) exits 130 after the save, as
    an interrupted command does, so a shell script running several steps stops too. Further signals while saving only print
    ``... received again: already stopping, please wait``.
Classifier runs (training.objective='classifier'): the same loop trains a noise-conditional
classifier; the log line and metrics.jsonl add its training-batch accuracy, and no samples are
drawn (neither every training.sample_every steps nor at the end).
Non-finite steps under the 'skip' policy: more than training.max_consecutive_skips in a row stop
the run (NonFiniteError); the end of a run prints ``skipped N of M steps (non-finite)``.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion import checkpoint, parallel, training
from experiments import build, signals, writers
from experiments.validate import validate
from experiments.writers import say

Config = ml_collections.ConfigDict


@dataclasses.dataclass
class Setup:
  """Everything built from the config that train, sample and eval share."""
  config: Config
  mesh: Any
  schedule: Any
  param: Any
  net: Any
  optim: training.OptimConfig
  optimizer: Any
  step_cfg: training.StepConfig
  example: Dict[str, np.ndarray]
  abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings
  state_shardings: Any
  identity: Dict[str, Any]  # the full config + resolved facts, as saved in config.json


def setup(config: Config) -> Setup:
  """Builds and validates everything; no files are touched."""
  if config.debug.setup_delay_s > 0:  # fault injection: a slow set-up for the signal tests
    say("setting up (debug.setup_delay_s)")
    time.sleep(float(config.debug.setup_delay_s))
  build.check_dataset(config)
  mesh = parallel.make_mesh(config.parallel.model_axis)
  sched, param, net = build.schedule(config), build.parameterization(config), build.model(config)
  optim = build.optim_config(config)
  optimizer = training.make_optimizer(optim)
  step_cfg = build.step_config(config)
  example = build.example_batch(config)
  ex_label = example.get("label") if config.model.conditional else None  # the network's input

  def init(key):
    return training.init_state(net, optimizer, key, jnp.asarray(example["x"]),
                               None if ex_label is None else jnp.asarray(ex_label))

  key = jax.random.PRNGKey(config.seed)
  shapes = jax.eval_shape(init, key)
  shardings = parallel.state_sharding(mesh, shapes, fsdp=config.parallel.fsdp,
                                     min_size=config.parallel.fsdp_min_size)
  abstract = checkpoint.abstract_like(shapes, shardings)
  identity = build.identity_dict(config, build.resolved(config, example, shapes.params))
  return Setup(config, mesh, sched, param, net, optim, optimizer, step_cfg, example, abstract,
               shardings, identity)


def init_state(s: Setup) -> training.TrainState:
  ex_label = s.example.get("label") if s.config.model.conditional else None

  def init(key):
    return training.init_state(s.net, s.optimizer, key, jnp.asarray(s.example["x"]),
                               None if ex_label is None else jnp.asarray(ex_label))

  return jax.jit(init, out_shardings=s.state_shardings)(jax.random.PRNGKey(s.config.seed))


def restore_or_init(s: Setup, ckpt: checkpoint.Checkpointer):
  """(state, restored step or None): the newest intact checkpoint, else a fresh state.

  Checkpoints proven corrupt are set aside (see diffusion.checkpoint); a checkpoint of another
  state structure, or one that fails to read without proof of corruption, is an error and
  nothing is changed. A fresh state when every checkpoint is corrupt needs
  ``ckpt.allow_fresh_start``. config.json is (re)written only once the state is settled, so a
  refused start leaves the workdir's record of its experiment as it was.
  """
  state, _, step = ckpt.restore(s.abstract_state)
  if writers.is_main():
    checkpoint.write_config(ckpt.workdir, s.identity)
  if state is None:
    return init_state(s), None
  return state, step


def _compile_steps(s: Setup, k: int):
  """The jitted function running k train steps per call, batches stacked (k, B, ...)."""
  lr_fn = training.lr_schedule(s.optim)
  step = training.make_train_step(s.net, s.schedule, s.param, s.optimizer, s.step_cfg,
                                  lr_fn=lr_fn)
  fn = training.multi_step(step, k)
  data = NamedSharding(s.mesh, P(None, (parallel.DATA, parallel.MODEL)))
  return parallel.jit_sharded(fn, in_shardings=(s.state_shardings, data),
                              out_shardings=(s.state_shardings, parallel.replicated(s.mesh)),
                              donate_argnums=(0,)), data


def _crossed(prev: int, now: int, every: int) -> bool:
  return every > 0 and now // every > prev // every


def _mean_metrics(pending: List[Dict[str, jax.Array]]) -> Dict[str, float]:
  host = jax.device_get(pending)
  keys = host[0].keys()
  return {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in keys}


def train(config: Config, workdir: str, allow_fresh_start: bool = False) -> Dict[str, Any]:
  """Trains (or resumes) in ``workdir``. Returns a summary dict (final step, status, loss).

  status: 'done', or 'preempted' (SIGTERM: saved, returns). After a SIGINT the checkpoint is
  saved and SystemExit(130) raised; a signal before the loop raises SystemExit(128 + signum).
  ``allow_fresh_start``: when the workdir has checkpoints but every one is proven corrupt, set
  them aside and start from step 0 (otherwise checkpoint.NoUsableCheckpointError).
  """
  validate(config, "train", workdir)
  with signals.RunSignals("set-up", "nothing saved") as sig:
    summary = _train(config, workdir, sig, allow_fresh_start)
  if summary["status"] == "interrupted":
    raise SystemExit(signals.exit_status(signal.SIGINT))
  return summary


def _train(config: Config, workdir: str, sig: signals.RunSignals,
           allow_fresh_start: bool = False) -> Dict[str, Any]:
  s = setup(config)
  tcfg = config.training
  checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)  # before touching files
  lock = checkpoint.RunLock(workdir) if writers.is_main() else None
  if lock is not None:
    lock.acquire()
  try:
    checkpoint.check_identity(workdir, s.identity, build.IDENTITY_FIELDS)  # now under the lock
    ckpt = checkpoint.Checkpointer(workdir, tcfg.max_to_keep, tcfg.async_checkpoints,
                                   config=s.identity, allow_fresh_start=allow_fresh_start)
    try:
      return _loop(s, workdir, ckpt, sig)
    finally:
      ckpt.close()
  finally:
    if lock is not None:
      lock.release()


def _loop(s: Setup, workdir: str, ckpt: checkpoint.Checkpointer,
          sig: Optional[signals.RunSignals] = None) -> Dict[str, Any]:
  config, tcfg = s.config, s.config.training
  sig = sig if sig is not None else signals.RunSignals()
  state, restored = restore_or_init(s, ckpt)
  step = int(jax.device_get(state.step))
  if restored is not None:
    say(f"resumed from the checkpoint at step {restored} in {ckpt.directory}")
  else:
    say(f"starting {config.experiment!r}: {training.count_params(state.params):,} parameters, "
        f"{s.mesh.devices.size} device(s), {jax.process_count()} process(es)")
  writer = writers.MetricWriter(workdir, start_step=step)
  batches = build.train_batches(config, step, jax.process_index(), jax.process_count())
  compiled: Dict[int, Any] = {}
  pending: List[Dict[str, jax.Array]] = []  # metrics on device, not yet fetched
  fetched: List[Dict[str, np.ndarray]] = []  # fetched, not yet logged
  fetched_to = step  # metrics of steps before this one have been fetched
  skipping = s.step_cfg.nonfinite == "skip"
  monitor = training.SkipMonitor(int(tcfg.max_consecutive_skips),
                                 "training.max_consecutive_skips")
  last_loss = float("nan")
  t_last, step_last, calls = time.time(), step, 0
  status = "done"
  num_steps = int(tcfg.num_steps)
  k_max = max(1, int(tcfg.steps_per_call))
  draws_samples = not build.is_classifier(config)

  def fetch():
    """Moves the pending metrics to the host; the skip limit is checked on them."""
    nonlocal pending, fetched_to
    host = jax.device_get(pending)
    pending = []
    for m in host:
      if skipping:
        monitor.update(fetched_to, m["finite"])
      fetched_to += int(np.size(m["finite"]))
      fetched.append(m)

  def save(at: int):
    training.check_finite(state)  # never checkpoint past a non-finite step
    fetch()  # nor past more consecutive skips than allowed
    ckpt.save(at, state, {"step": at, "experiment": config.experiment})

  sig.phase = "training"
  with sig.deferred():
    while step < num_steps:
      k = min(k_max, num_steps - step)
      if k not in compiled:
        compiled[k] = _compile_steps(s, k)
      fn, data_sharding = compiled[k]
      local = [next(batches) for _ in range(k)]
      stacked = {key: np.stack([b[key] for b in local]) for key in local[0]}
      state, metrics = fn(state, parallel.global_batch(stacked, data_sharding))
      pending.append(metrics)
      prev, step, calls = step, step + k, calls + 1
      if calls % 8 == 0:  # bound the queue of in-flight steps (simulated devices deadlock)
        jax.block_until_ready(state.step)
      if _crossed(prev, step, tcfg.log_every) or step == num_steps:
        training.check_finite(state)
        fetch()
        m = _mean_metrics(fetched)
        fetched.clear()
        now = time.time()
        m["steps_per_sec"] = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        last_loss = m["loss"]
        writer.scalars(step, m)
        acc = f"accuracy {m['accuracy']:.4f}  " if "accuracy" in m else ""
        say(f"step {step}/{num_steps}  loss {m['loss']:.5f}  {acc}grad_norm "
            f"{m['grad_norm']:.3f}  {m['steps_per_sec']:.1f} steps/s  "
            f"ETA {writers.eta(step, num_steps, m['steps_per_sec'])}")
      if _crossed(prev, step, tcfg.ckpt_every) and step < num_steps:
        save(step)
        if step == config.debug.hang_at_step:  # fault injection for the kill/resume test
          ckpt.wait()
          say(f"hanging at step {step}")
          while sig.received is None:  # until killed, or a signal: saved below
            time.sleep(0.1)
      if (draws_samples and _crossed(prev, step, tcfg.sample_every) and step < num_steps
          and sig.received is None):
        _report_samples(s, workdir, state, step, writer)
      if sig.received is not None:  # the step boundary: save, then stop
        save(step)
        ckpt.wait()
        name = signals.signal_name(sig.received)
        say(f"{name}: saved a checkpoint at step {step}; exiting")
        status = "preempted" if sig.received == signal.SIGTERM else "interrupted"
        sig.acknowledge()
        break
    training.check_finite(state)
    if status == "done":
      save(step)
      ckpt.wait()
      say(f"training done at step {step}; checkpoints in {ckpt.directory}")
      if sig.received is not None:  # came during the final save: it is written; no samples
        say(f"{signals.signal_name(sig.received)}: skipping the final samples; exiting")
        status = "interrupted" if sig.received == signal.SIGINT else "done"
        sig.acknowledge()
    if skipping:
      say(f"skipped {int(jax.device_get(state.num_skipped))} of {step} steps (non-finite)")
  if status == "done" and sig.received is None and draws_samples:
    # Everything is saved: a signal now stops the sampling at once (immediate mode).
    sig.phase, sig.nothing_saved = "the final samples", f"the checkpoint at step {step} is saved"
    _report_samples(s, workdir, state, step, writer)
  writer.close()
  return {"step": step, "status": status, "loss": last_loss}


def _report_samples(s: Setup, workdir: str, state, step: int, writer) -> None:
  """Samples with the EMA params and writes PNG plots (2-D data) or an image grid.

  The learned-density heat map costs an ODE solve per grid point: --mode=eval draws it.
  """
  from experiments import sample  # late: plotting pulls in matplotlib
  cfg = s.config
  n = int(cfg.eval.plot_samples) if build.is_toy(cfg) else min(int(cfg.eval.plot_samples), 64)
  x = sample.generate(s, state.ema_params, n, jax.random.PRNGKey(cfg.seed + 1))[0]
  if writers.is_main():
    fig = sample.plot(s, x, f"{workdir}/plots/samples_{step:08d}.png", f"step {step}")
    writer.image("samples", step, fig)
    sample.close(fig)
  writer.flush()
