"""SIGTERM and SIGINT for the drivers: one clear line and a defined exit status, no traceback.

``RunSignals`` is installed at the very start of a run (train, sample, eval), before set-up and
compilation. It has two modes:

  immediate (the default): a signal ends the run at once: the handler raises ``Interrupted``
    (a BaseException, so no ``except Exception`` can swallow it), ``finally`` blocks release the
    lock and close files, and on leaving the ``with`` block one line is printed to stderr
    (``interrupted by SIGINT during set-up; nothing saved``) and the process exits with status
    128 + signum (SIGINT 130, SIGTERM 143).
  deferred (``with sig.deferred():``, e.g. the train loop, or writing an output file): the
    handler only records the first signal; the code polls ``sig.received`` at safe points (the
    train loop: every step boundary), saves what it must and calls ``sig.acknowledge()``.
    Leaving a deferred block with a recorded signal nobody acknowledged ends the run as in
    immediate mode (e.g. an output file is finished first, then the run exits).

Once a signal has been recorded, any further SIGTERM/SIGINT (in either mode) changes nothing but
prints ``<SIG> received again: already stopping, please wait``: a second Ctrl-C cannot interrupt
a checkpoint half-written or the clean-up after it.

A Python signal handler runs in the main thread between bytecodes, so a long blocking XLA call
delays it until the call returns; the signal is never lost because the flag is polled at the
next step boundary. Handlers are installed only in the main thread (elsewhere this is a no-op).

Multi-process runs (jax.distributed): a signal may reach only some processes, but a checkpoint
save (and the train step, and sampling) is a collective every process must enter together; one
process saving alone hangs the others. ``sig.agreed_stop(step)`` is the loop's test at a step
boundary: every process contributes its recorded signal (0 if none) to one small all-reduce (max)
over all devices, and all act on the same answer at the same boundary: the largest signal number
any of them recorded (SIGTERM 15 over SIGINT 2), which is then also ``received`` on every
process, so they save the same step and exit with the same status. The all-reduce is pipelined:
each boundary dispatches its own and reads the previous boundary's, which its device has long
finished, so the host does not wait for the step just dispatched; a signal is thus acted on one
boundary after the one where a process first contributed it. ``agreed_stop(step, final=True)``
(after the loop's last save, before anything collective that a signal skips) reads its answer at
once. With one process, ``agreed_stop`` is ``received``: nothing is dispatched.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def exit_status(signum: int) -> int:
  """The shell's convention for a process ended by a signal: 128 + signum."""
  return 128 + int(signum)


class Interrupted(BaseException):
  """Raised by the handler in immediate mode; turned into one line and SystemExit(128+signum)."""

  def __init__(self, signum: int, phase: str):
    super().__init__(signum, phase)
    self.signum, self.phase = int(signum), phase


class RunSignals:
  """Context manager owning SIGTERM/SIGINT for one run (see the module docstring).

  phase: a word for the message, updated by the driver (``set-up``, ``sampling``, ...).
  nothing_saved: the tail of the message in immediate mode.
  """

  def __init__(self, phase: str = "set-up", nothing_saved: str = "nothing saved"):
    self.phase = phase
    self.nothing_saved = nothing_saved
    self.received: Optional[int] = None  # first signal seen in deferred mode
    self._deferred = 0
    self._handled = False
    self._old = {}
    self._agreement: Any = None  # a parallel.StopAgreement  # multi-process runs: see agreed_stop

  # -- installation ---------------------------------------------------------------------------

  def __enter__(self) -> "RunSignals":
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, exc_type, exc, tb):
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}
    if isinstance(exc, Interrupted):
      _line(f"interrupted by {signal_name(exc.signum)} during {exc.phase}; {self.nothing_saved}")
      raise SystemExit(exit_status(exc.signum)) from None
    return False

  # -- modes ------------------------------------------------------------------------------------

  @contextlib.contextmanager
  def deferred(self):
    """Signals inside the block are recorded in ``received``, not acted on."""
    self._deferred += 1
    try:
      yield self
    finally:
      self._deferred -= 1
    if self._deferred == 0 and self.received is not None and not self._handled:
      raise Interrupted(self.received, self.phase)

  def acknowledge(self) -> None:
    """The recorded signal has been acted on (a checkpoint saved): leaving ``deferred`` is
    then normal, and the caller decides the exit status."""
    self._handled = True

  def agreed_stop(self, step: int, final: bool = False) -> Optional[int]:
    """The signal all processes stop for at the step boundary ``step``, or None: keep going.

    One process: ``received``. Several (jax.distributed): the all-reduced (max) signal number
    of every process's ``received`` (see the module docstring), the same on each; when there is
    one, it is recorded in ``received`` here too, so the loop's later tests of ``received`` and
    the exit status agree across processes. Every process must call it at the same boundaries
    (it is a collective); a second call at the same ``step`` returns the first's answer without
    a collective. ``final``: the answer including signals recorded up to now (blocks until every
    process has made the same call), for after the last boundary.
    """
    # Imported here: main.py imports this module before JAX starts (a signal during start-up
    # gets its one line without a traceback), and JAX takes seconds to import.
    from diffusion import parallel
    if parallel.process_count() == 1:
      return self.received
    if self._agreement is None:
      self._agreement = parallel.StopAgreement()
    agreed = self._agreement.poll(int(step), self.received or 0, final)
    if not agreed:
      return None
    self.received = agreed
    return agreed

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      # os.write, not print: a handler may run inside another print's buffered write.
      _line(f"{signal_name(signum)} received again: already stopping, please wait")
      return
    self.received = int(signum)
    if self._deferred == 0:
      raise Interrupted(signum, self.phase)


def exit_on_signal() -> None:
  """Until a run installs ``RunSignals`` (and after it has left it): SIGTERM or SIGINT ends the
  process with one line and status 128 + signum, no traceback. For the entry point, before
  flag parsing and the jax import."""

  def handle(signum, frame):
    del frame
    _line(f"interrupted by {signal_name(signum)} (start-up or exit); nothing saved")
    raise SystemExit(exit_status(signum))

  if threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, handle)


def _line(msg: str) -> None:
  try:
    sys.stdout.flush()
  except (OSError, ValueError, RuntimeError):  # closed pipe / reentrant call: the line matters
    pass
  os.write(2, (msg + "\n").encode())
