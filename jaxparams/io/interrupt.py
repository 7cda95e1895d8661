"""Ctrl-C around work that cannot be cancelled halfway (orbax's background writer)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["finish_before_interrupt"]


@contextlib.contextmanager
def finish_before_interrupt(what: str) -> Iterator[None]:
  """Defers Ctrl-C (SIGINT) until the block ends, then raises ``KeyboardInterrupt``.

  For a writer whose threads keep writing after an interrupt: cleaning up its
  folder while it writes would leave data behind, so the block (``what``)
  finishes first. A second Ctrl-C stops at once. Outside the main thread it
  does nothing.

  Example:
    >>> with finish_before_interrupt('the orbax write'):
    ...   pass
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending: list[int] = []

  def handler(signum, frame):  # pylint: disable=unused-argument
    if pending:
      raise KeyboardInterrupt
    pending.append(signum)  # silent: the command prints one line when the block is done

  previous = signal.signal(signal.SIGINT, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if pending:
    raise KeyboardInterrupt
