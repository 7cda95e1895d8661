"""Ctrl-C (or SIGTERM) while the ``jaxparams`` command is still importing: one line, exit 130
(143), no traceback.

``jaxparams/__init__.py`` calls :func:`quiet_interrupt_at_startup` before its
heavy imports (jax, flax, orbax). It does something only when the process is
the ``jaxparams`` console script or ``python -m jaxparams.cli...``; library
users and other programs keep Python's default Ctrl-C. ``cli.main.main``
restores the default handler (``KeyboardInterrupt``) once it runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["quiet_interrupt_at_startup", "is_cli_process"]


def is_cli_process() -> bool:
  """True when this process is the ``jaxparams`` command.

  Example:
    >>> is_cli_process()  # under a test runner
    False
  """
  argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
  if argv0 in ("jaxparams", "jaxparams.exe"):
    return True
  orig = list(getattr(sys, "orig_argv", []))
  if "-m" in orig:
    i = orig.index("-m")
    return i + 1 < len(orig) and orig[i + 1].startswith("jaxparams.cli")
  return False


def _exit_quietly(signum, frame):  # pylint: disable=unused-argument
  try:
    what = b"interrupted" if signum == signal.SIGINT else b"stopped by SIGTERM"
    os.write(2, b"jaxparams: " + what + b" during start-up.\n")
  finally:
    os._exit(128 + signum)  # pylint: disable=protected-access


def quiet_interrupt_at_startup() -> None:
  """Installs the quiet start-up handler in the ``jaxparams`` command (no-op elsewhere)."""
  if is_cli_process() and threading.current_thread() is threading.main_thread():
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
      signal.signal(signal.SIGINT, _exit_quietly)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # SIGTERM: a line too, exit 143
      signal.signal(signal.SIGTERM, _exit_quietly)
