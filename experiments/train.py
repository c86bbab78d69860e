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
Classifier runs (training.objective='classifier'): the same loop trains a noise-conditional
classifier; the log line and metrics.jsonl add its training-batch accuracy, and no samples are
drawn (neither every training.sample_every steps nor at the end).
Few-step objectives (experiments/distill.py, docs/few_step.md): the teacher's EMA parameters start
the student at a fresh start; consistency distillation's teacher is passed to every step;
progressive distillation's rounds end at steps r K, where the round's student is checkpointed
(kept) and becomes the next round's teacher (``distill.begin_round``); reflow's batches are pairs.
EDM2's power-function EMAs (training.ema_profiles, experiments/posthoc_ema.py): kept in the state
(training.PowerEMAState) and written to <workdir>/ema_snapshots/ whenever
training.ema_snapshot_every steps are crossed (never overwriting a snapshot).
Non-finite steps under the 'skip' policy: more than training.max_consecutive_skips in a row stop
the run (NonFiniteError); the end of a run prints ``skipped N of M steps (non-finite)``.
"""
from __future__ import annotations

import contextlib
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
from experiments import build, distill, posthoc_ema, signals, writers
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
    state = training.init_state(net, optimizer, key, jnp.asarray(example["x"]),
                                None if ex_label is None else jnp.asarray(ex_label))
    return training.with_power_ema(state, len(config.training.ema_profiles))

  key = jax.random.PRNGKey(config.seed)
  shapes = jax.eval_shape(init, key)
  if distill.holds_teacher(config):  # PD: the round's teacher is the student's network
    shapes = _with_teacher(shapes, shapes.params)
  shardings = parallel.state_sharding(mesh, shapes, fsdp=config.parallel.fsdp,
                                     min_size=config.parallel.fsdp_min_size)
  abstract = checkpoint.abstract_like(shapes, shardings)
  identity = build.identity_dict(config, build.resolved(config, example, shapes.params))
  return Setup(config, mesh, sched, param, net, optim, optimizer, step_cfg, example, abstract,
               shardings, identity)


def _with_teacher(state: training.TrainState, teacher) -> training.DistillState:
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(training.TrainState)}
  return training.DistillState(**fields, teacher=teacher)


def init_state(s: Setup, teacher_params=None) -> training.TrainState:
  """A fresh state; with ``teacher_params`` (the few-step objectives) the student starts from
  them where the objective does (PD always, CD / reflow with distill.init_from_teacher), and PD's
  state carries them as the first round's teacher."""
  ex_label = s.example.get("label") if s.config.model.conditional else None
  if distill.holds_teacher(s.config) and teacher_params is None:
    raise ValueError(f"training.objective={s.config.training.objective!r} starts from the "
                     f"teacher's parameters; init_state needs teacher_params")
  copy = teacher_params is not None and (distill.holds_teacher(s.config)
                                         or bool(s.config.distill.init_from_teacher))

  def init(key, teacher):
    state = training.init_state(s.net, s.optimizer, key, jnp.asarray(s.example["x"]),
                                None if ex_label is None else jnp.asarray(ex_label))
    if copy:
      state = state.replace(params=teacher, ema_params=jax.tree_util.tree_map(jnp.copy, teacher),
                            opt_state=s.optimizer.init(teacher))
    state = training.with_power_ema(state, len(s.config.training.ema_profiles))
    if distill.holds_teacher(s.config):
      state = _with_teacher(state, jax.tree_util.tree_map(jnp.copy, teacher))
    return state

  return jax.jit(init, out_shardings=s.state_shardings)(jax.random.PRNGKey(s.config.seed),
                                                        teacher_params)


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


def _compile_steps(s: Setup, k: int, round_index: int = 0, teacher=None):
  """The jitted function running k train steps per call, batches stacked (k, B, ...):
  ``fn(state, batches)``, or ``fn(state, batches, teacher_params)`` with a fixed teacher (CD;
  ``teacher`` its Setup)."""
  lr_fn = training.lr_schedule(s.optim)
  loss_fn = distill.loss_fn(s.config, s, teacher, round_index)
  step = training.make_train_step(s.net, s.schedule, s.param, s.optimizer, s.step_cfg,
                                  loss_fn=loss_fn, lr_fn=lr_fn)
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
    keep = distill.steps_per_round(config) if distill.holds_teacher(config) else None
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
  config, tcfg = s.config, s.config.training
  sig = sig if sig is not None else signals.RunSignals()
  teacher = _Teacher(config)
  state, restored = restore_or_init(s, ckpt, teacher.params if teacher.needed else None)
  step = int(jax.device_get(state.step))
  if restored is not None:
    say(f"resumed from the checkpoint at step {restored} in {ckpt.directory}")
  else:
    say(f"starting {config.experiment!r}: {training.count_params(state.params):,} parameters, "
        f"{s.mesh.devices.size} device(s), {jax.process_count()} process(es)")
  if distill.describe(config):
    say(distill.describe(config) + (f"; teacher {teacher.where}" if teacher.needed else ""))
  fixed_teacher = teacher.fixed()  # CD: (Setup, params) passed to every step; else None
  boundaries = set(distill.round_boundaries(config)) if distill.holds_teacher(config) else set()
  begin_round = (parallel.jit_sharded(lambda st: distill.begin_round(st, s.optimizer),
                                      in_shardings=(s.state_shardings,),
                                      out_shardings=s.state_shardings)
                 if boundaries else None)
  if step in boundaries:  # resumed at a round's first step (idempotent)
    state = begin_round(state)
  writer = writers.MetricWriter(workdir, start_step=step)
  batches = build.train_batches(config, step, jax.process_index(), jax.process_count())
  compiled: Dict[Any, Any] = {}  # (steps per call, PD round) -> (jitted fn, data sharding)
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
  profiles = tuple(tcfg.ema_profiles)  # power EMAs in the state, snapshots every ema_snapshot_every

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
  with sig.deferred(), contextlib.closing(batches):  # closing: stops the prefetch threads
    while step < num_steps:
      k = min(k_max, num_steps - step)
      r = distill.round_of(config, step) if boundaries else 0
      if (k, r) not in compiled:
        compiled[(k, r)] = _compile_steps(s, k, r, fixed_teacher and fixed_teacher[0])
      fn, data_sharding = compiled[(k, r)]
      local = [next(batches) for _ in range(k)]
      stacked = {key: np.stack([b[key] for b in local]) for key in local[0]}
      args = (fixed_teacher[1],) if fixed_teacher else ()
      state, metrics = fn(state, parallel.global_batch(stacked, data_sharding), *args)
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
      if profiles and _crossed(prev, step, tcfg.ema_snapshot_every):  # EDM2's post-hoc EMA
        training.check_finite(state)  # no snapshot past a non-finite step or too many skips
        fetch()
        posthoc_ema.write_snapshots(workdir, state, profiles, step, writers.is_main())
      if step in boundaries:  # round r's student is kept; round r + 1 starts from it
        save(step)
        done_round = distill.round_of(config, step - 1)
        say(f"round {done_round + 1}/{config.distill.rounds} done at step {step}: its student "
            f"({distill.round_student_steps(config, done_round)} DDIM steps) is the checkpoint "
            f"at step {step}")
        state = begin_round(state)
      if _crossed(prev, step, tcfg.ckpt_every) and step < num_steps:
        save(step)
        if step == config.debug.hang_at_step:  # fault injection for the kill/resume test
          ckpt.wait()
          say(f"hanging at step {step}")
          while sig.received is None:  # until killed, or a signal: saved below
            time.sleep(0.1)
      if (draws_samples and _crossed(prev, step, tcfg.sample_every) and step < num_steps
          and sig.agreed_stop(step) is None):  # agreed: sampling is collective
        _report_samples(s, workdir, state, step, writer)
      if sig.agreed_stop(step) is not None:  # the step boundary: all processes save, then stop
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
      if sig.agreed_stop(step, final=True) is not None:  # came during the final save: no samples
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


class _Teacher:
  """The teacher of a few-step run, restored from distill.teacher_workdir only when needed: at a
  fresh start (the student's initial parameters; PD's first teacher) and, for consistency
  distillation, at every start (the fixed teacher passed to each step)."""

  def __init__(self, config: Config):
    self.config = config
    self.needed = distill.needs_teacher(config)
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
    if distill.objective(self.config) != "consistency_distillation":
      return None
    return self._load()


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
