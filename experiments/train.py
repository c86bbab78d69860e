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
    an interrupted command does, so a shell script running several steps stops too. Further
    signals while saving only print ``... received again: already stopping, please wait``.
The objective (``diffusion.objectives``, ``Setup.objective``) says the rest: its loss and aux
metrics (a classifier's training-batch accuracy joins the log line and metrics.jsonl), whether
samples are drawn (not for a classifier: neither every training.sample_every steps nor at the
end; an autoencoder plots its reconstructions of the first held-out images instead, in
plots/reconstructions_<step>.png), where batches come from (reflow's pairs), its teacher
(experiments/distill.py restores it: the teacher's EMA parameters start the student at a fresh
start; consistency distillation's is passed to every step) and its rounds (progressive
distillation's end at steps r K, where the round's student is checkpointed, kept, and becomes the
next round's teacher: ``begin_round``).
EDM2's power-function EMAs (training.ema_profiles, experiments/posthoc_ema.py): kept in the state
(training.PowerEMAState) and written to <workdir>/ema_snapshots/ (experiments/snapshots.py)
whenever training.ema_snapshot_every steps are crossed (never overwriting a snapshot).
Non-finite steps under the 'skip' policy: more than training.max_consecutive_skips in a row stop
the run (NonFiniteError); the end of a run prints ``skipped N of M steps (non-finite)``.
"""
from __future__ import annotations

import contextlib
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion import checkpoint, objectives, parallel, training
from experiments import (build, distill, generate, plots, reconstructions, signals, snapshots,
                         writers)
from experiments.setup import Setup, init_state, setup
from experiments.validate import ema_warning, validate
from experiments.writers import say

Config = ml_collections.ConfigDict


def restore_or_init(s: Setup, ckpt: checkpoint.Checkpointer, teacher=None):
  """(state, restored step or None): the newest intact checkpoint, else a fresh state (from the
  teacher of ``teacher()``, a callable giving its EMA params, for the few-step objectives).

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
    return init_state(s, None if teacher is None else teacher()), None
  return state, step


def _compile_steps(s: Setup, k: int, round_index: int = 0, teacher: Optional[Setup] = None):
  """The jitted function running k train steps per call, batches stacked (k, B, ...):
  ``fn(state, batches)``, or ``fn(state, batches, teacher_params)`` with a teacher passed to
  every step (``Objective.teacher_per_step``; ``teacher`` its Setup)."""
  lr_fn = training.lr_schedule(s.optim)
  teacher_model = (None if teacher is None else
                   objectives.TeacherModel(teacher.net, teacher.param, teacher.schedule))
  step = training.make_train_step(s.net, s.schedule, s.param, s.optimizer, s.step_cfg,
                                  lr_fn=lr_fn, config=s.config, teacher=teacher_model,
                                  round_index=round_index)
  data = NamedSharding(s.mesh, P(None, (parallel.DATA, parallel.MODEL)))
  rep = parallel.replicated(s.mesh)
  if teacher is None:
    fn, ins = training.multi_step(step, k), (s.state_shardings, data)
  else:
    def with_teacher(state, batches, teacher_params):
      def one(st, b):
        return step(st, b, teacher=teacher_params)
      return training.multi_step(one, k)(state, batches)
    fn, ins = with_teacher, (s.state_shardings, data, rep)
  return parallel.jit_sharded(fn, in_shardings=ins, out_shardings=(s.state_shardings, rep),
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
  lag = ema_warning(config)
  if lag:
    say(lag)  # before anything is built or compiled
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
    keep = s.objective.keep_period(config)
    ckpt = checkpoint.Checkpointer(workdir, tcfg.max_to_keep, tcfg.async_checkpoints,
                                   config=s.identity, allow_fresh_start=allow_fresh_start,
                                   keep_period=keep)
    try:
      return _loop(s, workdir, ckpt, sig)
    finally:
      ckpt.close()
  finally:
    if lock is not None:
      lock.release()


def _loop(s: Setup, workdir: str, ckpt: checkpoint.Checkpointer,
          sig: Optional[signals.RunSignals] = None) -> Dict[str, Any]:
  """The train loop from the restored (or fresh) state to training.num_steps: each call of k
  steps is followed by the step boundary's duties, in this order."""
  loop = _Loop(s, workdir, ckpt, sig if sig is not None else signals.RunSignals())
  loop.sig.phase = "training"
  with loop.sig.deferred(), contextlib.closing(loop.batches):  # closing: stops prefetch threads
    while loop.step < loop.num_steps:
      prev = loop.train_call()
      loop.log(prev)
      loop.snapshot(prev)
      loop.end_round()
      loop.periodic_checkpoint(prev)
      loop.periodic_samples(prev)
      if loop.stop_on_signal():
        break
    loop.end()
  loop.final_samples()
  loop.writer.close()
  return {"step": loop.step, "status": loop.status, "loss": loop.last_loss}


class _Loop:
  """The train loop's state between step boundaries, and one method per duty of a boundary."""

  def __init__(self, s: Setup, workdir: str, ckpt: checkpoint.Checkpointer,
               sig: signals.RunSignals):
    self.s, self.workdir, self.ckpt, self.sig = s, workdir, ckpt, sig
    config, tcfg = s.config, s.config.training
    self.config, self.tcfg = config, tcfg
    self.state, self.step, self.fixed_teacher = _restore_with_teacher(s, ckpt)
    self.boundaries, self.begin_round = _round_boundaries(s)
    if self.step in self.boundaries:  # resumed at a round's first step (idempotent)
      self.state = self.begin_round(self.state)
    self.writer = writers.MetricWriter(workdir, start_step=self.step)
    self.batches = build.train_batches(config, self.step, jax.process_index(),
                                       jax.process_count())
    self.compiled: Dict[Any, Any] = {}  # (steps per call, PD round) -> (jitted fn, sharding)
    self.pending: List[Dict[str, jax.Array]] = []  # metrics on device, not yet fetched
    self.fetched: List[Dict[str, np.ndarray]] = []  # fetched, not yet logged
    self.fetched_to = self.step  # metrics of steps before this one have been fetched
    self.skipping = s.step_cfg.nonfinite == "skip"
    self.monitor = training.SkipMonitor(int(tcfg.max_consecutive_skips),
                                        "training.max_consecutive_skips")
    self.last_loss = float("nan")
    self.t_last, self.step_last, self.calls = time.time(), self.step, 0
    self.status = "done"
    self.num_steps = int(tcfg.num_steps)
    self.k_max = max(1, int(tcfg.steps_per_call))
    # Samples (a denoiser), reconstructions of held-out images (an autoencoder) or nothing (a
    # classifier) every training.sample_every steps and at the end.
    self.report = None
    if s.objective.draws_samples:
      self.report = _report_samples
    elif s.objective.reconstructs:
      self.report = _reconstruction_reporter(s)
    self.profiles = tuple(tcfg.ema_profiles)  # power EMAs, snapshots every ema_snapshot_every

  # -- the step boundary's duties, in order --------------------------------------------------

  def train_call(self) -> int:
    """Runs the next call of k steps (compiled once per (k, round)); returns the step before
    it."""
    k = min(self.k_max, self.num_steps - self.step)
    r = self.s.objective.round_of(self.config, self.step) if self.boundaries else 0
    if (k, r) not in self.compiled:
      self.compiled[(k, r)] = _compile_steps(self.s, k, r,
                                             self.fixed_teacher and self.fixed_teacher[0])
    fn, data_sharding = self.compiled[(k, r)]
    local = [next(self.batches) for _ in range(k)]
    stacked = {key: np.stack([b[key] for b in local]) for key in local[0]}
    args = (self.fixed_teacher[1],) if self.fixed_teacher else ()
    self.state, metrics = fn(self.state, parallel.global_batch(stacked, data_sharding), *args)
    self.pending.append(metrics)
    prev, self.step, self.calls = self.step, self.step + k, self.calls + 1
    if self.calls % 8 == 0:  # bound the queue of in-flight steps (simulated devices deadlock)
      jax.block_until_ready(self.state.step)
    return prev

  def log(self, prev: int) -> None:
    """Every training.log_every steps and at the end: the mean metrics since the last line, to
    metrics.jsonl, TensorBoard and one progress line."""
    if not (_crossed(prev, self.step, self.tcfg.log_every) or self.step == self.num_steps):
      return
    training.check_finite(self.state)
    self.fetch()
    m = _mean_metrics(self.fetched)
    self.fetched.clear()
    now = time.time()
    m["steps_per_sec"] = (self.step - self.step_last) / max(now - self.t_last, 1e-9)
    self.t_last, self.step_last = now, self.step
    self.last_loss = m["loss"]
    self.writer.scalars(self.step, m)
    acc = f"accuracy {m['accuracy']:.4f}  " if "accuracy" in m else ""
    say(f"step {self.step}/{self.num_steps}  loss {m['loss']:.5f}  {acc}grad_norm "
        f"{m['grad_norm']:.3f}  {m['steps_per_sec']:.1f} steps/s  "
        f"ETA {writers.eta(self.step, self.num_steps, m['steps_per_sec'])}")

  def snapshot(self, prev: int) -> None:
    """EDM2's post-hoc EMA: the power EMAs' snapshots every training.ema_snapshot_every steps."""
    if self.profiles and _crossed(prev, self.step, self.tcfg.ema_snapshot_every):
      training.check_finite(self.state)  # no snapshot past a non-finite step or too many skips
      self.fetch()
      snapshots.write_snapshots(self.workdir, self.state, self.profiles, self.step,
                                writers.is_main())

  def end_round(self) -> None:
    """An objective with rounds (progressive distillation): round r's student is kept; round
    r + 1 starts from it."""
    if self.step not in self.boundaries:
      return
    self.save(self.step)
    say(self.s.objective.round_message(self.config, self.step))
    self.state = self.begin_round(self.state)

  def periodic_checkpoint(self, prev: int) -> None:
    """A checkpoint every training.ckpt_every steps (the last one is saved by ``end``)."""
    if not (_crossed(prev, self.step, self.tcfg.ckpt_every) and self.step < self.num_steps):
      return
    self.save(self.step)
    if self.step == self.config.debug.hang_at_step:  # fault injection for the kill/resume test
      self.ckpt.wait()
      say(f"hanging at step {self.step}")
      while self.sig.received is None:  # until killed, or a signal: saved below
        time.sleep(0.1)

  def periodic_samples(self, prev: int) -> None:
    """Samples (or an autoencoder's reconstructions) and their plot every
    training.sample_every steps (not at the end: ``end``)."""
    if (self.report is not None and _crossed(prev, self.step, self.tcfg.sample_every)
        and self.step < self.num_steps
        and self.sig.agreed_stop(self.step) is None):  # agreed: sampling is collective
      self.report(self.s, self.workdir, self.state, self.step, self.writer)

  def stop_on_signal(self) -> bool:
    """At a step boundary after SIGTERM / SIGINT: save, say so and stop (True)."""
    sig = self.sig
    if sig.agreed_stop(self.step) is None:  # all processes save at the same boundary, or none
      return False
    self.save(self.step)
    self.ckpt.wait()
    say(f"{signals.signal_name(sig.received)}: saved a checkpoint at step {self.step}; exiting")
    self.status = "preempted" if sig.received == signal.SIGTERM else "interrupted"
    sig.acknowledge()
    return True

  def end(self) -> None:
    """After the loop: the final checkpoint of a finished run, and the count of skipped steps."""
    training.check_finite(self.state)
    sig = self.sig
    if self.status == "done":
      self.save(self.step)
      self.ckpt.wait()
      say(f"training done at step {self.step}; checkpoints in {self.ckpt.directory}")
      if sig.agreed_stop(self.step, final=True) is not None:  # came during the final save
        say(f"{signals.signal_name(sig.received)}: skipping the final samples; exiting")
        self.status = "interrupted" if sig.received == signal.SIGINT else "done"
        sig.acknowledge()
    if self.skipping:
      say(f"skipped {int(jax.device_get(self.state.num_skipped))} of {self.step} steps "
          f"(non-finite)")

  def final_samples(self) -> None:
    """A finished run's samples (an autoencoder's reconstructions, a classifier's nothing),
    outside the deferred-signal block."""
    sig = self.sig
    if self.status == "done" and sig.received is None and self.report is not None:
      # Everything is saved: a signal now stops the sampling at once (immediate mode).
      sig.phase = "the final samples"
      sig.nothing_saved = f"the checkpoint at step {self.step} is saved"
      self.report(self.s, self.workdir, self.state, self.step, self.writer)

  # -- helpers -------------------------------------------------------------------------------

  def fetch(self) -> None:
    """Moves the pending metrics to the host; the skip limit is checked on them."""
    host = jax.device_get(self.pending)
    self.pending = []
    for m in host:
      if self.skipping:
        self.monitor.update(self.fetched_to, m["finite"])
      self.fetched_to += int(np.size(m["finite"]))
      self.fetched.append(m)

  def save(self, at: int) -> None:
    training.check_finite(self.state)  # never checkpoint past a non-finite step
    self.fetch()  # nor past more consecutive skips than allowed
    self.ckpt.save(at, self.state, {"step": at, "experiment": self.config.experiment})


def _restore_with_teacher(s: Setup, ckpt: checkpoint.Checkpointer) -> Tuple[Any, int, Any]:
  """(state, step, fixed teacher): the restored or fresh state (a few-step run's teacher
  restored when needed) and the start-up lines; the fixed teacher of consistency distillation
  ((its Setup, its params), passed to every step) or None."""
  config = s.config
  teacher = _Teacher(config, s.objective)
  state, restored = restore_or_init(s, ckpt, teacher.params if teacher.needed else None)
  step = int(jax.device_get(state.step))
  if restored is not None:
    say(f"resumed from the checkpoint at step {restored} in {ckpt.directory}")
  else:
    say(f"starting {config.experiment!r}: {training.count_params(state.params):,} parameters, "
        f"{s.mesh.devices.size} device(s), {jax.process_count()} process(es)")
  what = s.objective.describe(config)
  if what:
    say(what + (f"; teacher {teacher.where}" if teacher.needed else ""))
  return state, step, teacher.fixed()


def _round_boundaries(s: Setup) -> Tuple[Set[int], Optional[Callable]]:
  """(the steps where a round starts, the jitted ``Objective.begin_round``); an empty set and
  None for an objective without rounds (all but progressive distillation)."""
  boundaries = set(s.objective.round_boundaries(s.config))
  begin_round = (parallel.jit_sharded(lambda st: s.objective.begin_round(st, s.optimizer),
                                      in_shardings=(s.state_shardings,),
                                      out_shardings=s.state_shardings)
                 if boundaries else None)
  return boundaries, begin_round


class _Teacher:
  """The teacher of a few-step run, restored from distill.teacher_workdir only when needed: at a
  fresh start (the student's initial parameters; PD's first teacher) and, for a teacher passed
  to every step (consistency distillation), at every start."""

  def __init__(self, config: Config, objective: objectives.Objective):
    self.config, self.objective = config, objective
    self.needed = objective.needs_teacher(config)
    self.where = f"{config.distill.teacher_workdir}" if self.needed else ""
    self._loaded = None

  def _load(self):
    if self._loaded is None:
      t_setup, params, step = distill.load_teacher(self.config)
      say(f"teacher: the checkpoint at step {step} of {self.where}")
      self._loaded = (t_setup, params)
    return self._loaded

  def params(self):
    return self._load()[1]

  def fixed(self):
    if not self.objective.teacher_per_step:
      return None
    return self._load()


def _report_samples(s: Setup, workdir: str, state, step: int, writer) -> None:
  """Samples with the EMA params and writes PNG plots (2-D data) or an image grid.

  The learned-density heat map costs an ODE solve per grid point: --mode=eval draws it.
  """
  cfg = s.config
  n = int(cfg.eval.plot_samples) if build.is_toy(cfg) else min(int(cfg.eval.plot_samples), 64)
  x = generate.generate(s, state.ema_params, n, jax.random.PRNGKey(cfg.seed + 1))[0]
  if writers.is_main():
    fig = generate.plot(s, x, f"{workdir}/plots/samples_{step:08d}.png", f"step {step}")
    writer.image("samples", step, fig)
    plots.close(fig)
  writer.flush()


def _reconstruction_reporter(s: Setup) -> Callable:
  """``report(s, workdir, state, step, writer)``: an autoencoder's reconstructions (EMA params,
  posterior means) of the first reconstructions.GRID_IMAGES held-out images, plotted above them
  in <workdir>/plots/reconstructions_<step>.png (the images read and the function compiled
  once)."""
  _, x, _ = reconstructions.heldout_images(s.config, reconstructions.GRID_IMAGES)
  rep = parallel.replicated(s.mesh)
  fn = jax.jit(lambda params, xb: reconstructions.reconstruct(s.net, params, xb)["x_rec"],
               out_shardings=rep)
  x_dev = jax.device_put(x, rep)

  def report(s: Setup, workdir: str, state, step: int, writer) -> None:
    x_rec = parallel.to_host(fn(state.ema_params, x_dev))
    if writers.is_main():
      fig = reconstructions.grid(x, x_rec, f"{workdir}/plots/reconstructions_{step:08d}.png")
      writer.image("reconstructions", step, fig)
      plots.close(fig)
    writer.flush()

  return report
