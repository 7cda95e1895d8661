"""Signals (SIGINT, SIGTERM) around work on disk: recorded, never lost, raised at safe points.

* :func:`catch_signals` (the ``jaxparams`` command installs it) turns SIGINT and SIGTERM into
  :class:`Interrupted` (a ``KeyboardInterrupt``), so ``atomic_dir`` removes its temporary folder
  and the command prints one line and exits ``128 + signal``. The handler also *records* the
  signal: a ``KeyboardInterrupt`` raised while Python runs a garbage-collector callback (XLA's
  ``_xla_gc_callback``) is swallowed by Python ("Exception ignored in ..."), so the handler does not
  raise there at all, and :func:`raise_if_interrupted` -- called at safe points: before each
  tensor is written, before an output is published -- raises it instead.
* :func:`finish_before_interrupt` defers both signals until a block that cannot be cancelled
  halfway (orbax's background writer) ends.

Outside the main thread, or where :func:`catch_signals` is not installed (library use), nothing
changes: :func:`raise_if_interrupted` does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

__all__ = ["Interrupted", "catch_signals", "finish_before_interrupt", "raise_if_interrupted",
           "SIGNALS"]

#: The signals that end a command cleanly.
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_GC_CALLBACKS = ("_xla_gc_callback",)


class Interrupted(KeyboardInterrupt):
  """A recorded SIGINT or SIGTERM; ``signum`` is the signal number.

  Example:
    >>> e = Interrupted(signal.SIGTERM)
    >>> isinstance(e, KeyboardInterrupt), e.name, e.exit_code
    (True, 'SIGTERM', 143)
  """

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = int(signum)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def _in_gc_callback(frame) -> bool:
  while frame is not None:
    if frame.f_code.co_name in _GC_CALLBACKS:
      return True
    frame = frame.f_back
  return False


class _Recorder:
  """The installed handler: records each signal; raises unless inside a gc callback."""

  def __init__(self):
    self.received: list[int] = []
    self.delivered = False

  def __call__(self, signum, frame):
    self.received.append(signum)
    if _in_gc_callback(frame):
      return  # raising here would be swallowed; raise_if_interrupted raises it later
    self.delivered = True
    raise Interrupted(signum)

  def pending(self) -> int | None:
    return None if self.delivered or not self.received else self.received[0]


def _recorder() -> _Recorder | None:
  if threading.current_thread() is not threading.main_thread():
    return None
  h = signal.getsignal(signal.SIGINT)
  return h if isinstance(h, _Recorder) else None


def raise_if_interrupted() -> None:
  """Raises :class:`Interrupted` if a recorded signal has not been raised yet (a safe point).

  Example:
    >>> raise_if_interrupted()  # nothing recorded (or no handler installed): no-op
  """
  rec = _recorder()
  signum = rec.pending() if rec is not None else None
  if signum is not None:
    rec.delivered = True
    raise Interrupted(signum)


def _unraisable_filter(previous):
  def hook(unraisable):
    rec = _recorder()
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and rec is not None:
      rec.delivered = False  # it was swallowed: the next safe point raises it again
      if not rec.received:
        rec.received.append(signal.SIGINT)
      return
    previous(unraisable)
  return hook


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
  """Installs the recording SIGINT/SIGTERM handler for the block (main thread only).

  Example:
    >>> with catch_signals():
    ...   raise_if_interrupted()
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  rec = _Recorder()
  previous = {s: signal.signal(s, rec) for s in SIGNALS}
  old_hook = sys.unraisablehook
  sys.unraisablehook = _unraisable_filter(old_hook)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    sys.unraisablehook = old_hook


@contextlib.contextmanager
def finish_before_interrupt(what: str) -> Iterator[None]:
  """Defers SIGINT and SIGTERM until the block ends, then raises :class:`Interrupted`.

  For a writer whose threads keep writing after an interrupt: cleaning up its
  folder while it writes would leave data behind, so the block (``what``)
  finishes first. A second signal stops at once. Outside the main thread it
  does nothing.

  Example:
    >>> with finish_before_interrupt('the orbax write'):
    ...   pass
  """
  del what  # named for readers of the call site; the command prints one line when it ends
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending: list[int] = []

  def handler(signum, frame):  # pylint: disable=unused-argument
    if pending:
      raise Interrupted(signum)
    pending.append(signum)

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  if pending:
    raise Interrupted(pending[0])
  raise_if_interrupted()
