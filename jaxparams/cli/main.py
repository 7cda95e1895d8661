"""The ``jaxparams`` command: one sub-command module per job.

Each module in ``SUBCOMMANDS`` defines ``add_parser(subparsers)`` (which sets
``func`` on its parser) and raises ``ValueError``/``OSError`` (missing files,
existing outputs, permissions, full disks) on bad input; ``main`` turns every
such error into one line on stderr naming the file/tensor/parameter, exit code
2. Ctrl-C (SIGINT) or SIGTERM at any moment (start-up included) prints one line, exit code 130
(143), and no temporary folder is left.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import re
import signal
import sys
import threading
from typing import Sequence

# Sub-command modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("demo", "inspect", "convert", "merge", "quantize", "dequantize", "lora", "prune",
               "edit", "flash")


# One line per sub-command for ``jaxparams --help``: shown without importing the sub-command
# modules (their imports bring jax), so the top-level help and typos answer at once. Each module
# uses its line as its ``help=`` (``SUMMARIES[name]``).
SUMMARIES = {
    "demo": "Run the end-to-end demo on embedded real data (no downloads).",
    "inspect": "Summarise a checkpoint (safetensors file/folder or orbax).",
    "convert": "Convert a checkpoint between safetensors and orbax.",
    "merge": "Merge HF safetensors checkpoints from a mergekit YAML recipe.",
    "quantize": "Quantize an HF checkpoint (RTN, GPTQ, AWQ, NF4, FP8, ...).",
    "dequantize": "Write a full-precision HF checkpoint from a quantized one.",
    "lora": "Merge a PEFT LoRA into an HF checkpoint, or extract one.",
    "prune": "Prune the Linear weights of a checkpoint (magnitude, random, N:M, Wanda, SparseGPT).",
    "edit": "Edit facts in a checkpoint (ROME, MEMIT, AlphaEdit); roll back.",
    "flash": "Run a model larger than its memory budget from disk.",
}


def _summary_parser() -> argparse.ArgumentParser:
  """The top-level parser with one-line sub-commands only (``--help``, typos): no imports."""
  from jaxparams.cli.common import Parser  # pylint: disable=import-outside-toplevel
  parser = Parser(prog="jaxparams", description=DESCRIPTION)
  _global_flags(parser)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True
  for name in SUBCOMMANDS:
    sub.add_parser(name, help=SUMMARIES[name], add_help=False)
  return parser


DESCRIPTION = ("Transform model parameters with JAX. Commands: " + ", ".join(SUBCOMMANDS) + ". "
               "'jaxparams COMMAND --help' describes each; -q silences progress bars and notes.")


def _global_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("-v", "--verbose", dest="log_verbose", action="count", default=0,
                      help="log the main steps (-v) or every tensor (-vv) to stderr")
  parser.add_argument("-q", "--quiet", dest="log_quiet", action="store_true",
                      help="only errors: no progress bar, summaries or warnings")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
  """Builds the argument parser with every sub-command (or only the one named ``only``).

  Example:
    >>> build_parser('inspect').parse_args(['inspect', 'model']).command
    'inspect'
  """
  from jaxparams.cli.common import Parser  # pylint: disable=import-outside-toplevel
  parser = Parser(prog="jaxparams", description=DESCRIPTION)
  _global_flags(parser)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True
  for name in SUBCOMMANDS if only is None else (only,):
    importlib.import_module(f"jaxparams.cli.{name}").add_parser(sub)
  return parser


def named_command(argv: Sequence[str]) -> str | None:
  """The sub-command ``argv`` runs, if it names one: only its module is imported then.

  The options before it (``-v``, ``-q``) take no value, so the first word not starting
  with ``-`` is the command. ``None`` (every sub-command) for ``--help`` or a typo.

  Example:
    >>> named_command(['-v', 'merge', 'r.yml', 'out']), named_command(['--help'])
    ('merge', None)
  """
  for word in argv:
    if not word.startswith("-"):
      return word if word in SUBCOMMANDS else None
    if word in ("-h", "--help"):
      return None
  return None


def error_line(e: BaseException) -> str:
  """One line for an error: the message's first line, naming the file for ``OSError``.

  Example:
    >>> error_line(PermissionError(13, 'Permission denied', '/out'))
    '/out: Permission denied'
    >>> error_line(ValueError('--dtype: unknown dtype'))
    '--dtype: unknown dtype'
  """
  if isinstance(e, OSError) and e.strerror:
    names = [str(f) for f in (e.filename, e.filename2) if f is not None]
    msg = f"{' -> '.join(names)}: {e.strerror}" if names else e.strerror
  elif isinstance(e, re.error):
    msg = f"invalid regular expression {e.pattern!r}: {e.msg}" if e.pattern else str(e)
  elif isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
    msg = e.args[0]
  elif isinstance(e, RecursionError):
    msg = "input nested too deeply"
  else:
    msg = str(e)
  lines = [ln for ln in msg.splitlines() if ln.strip()]
  return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def log_to_stderr(verbose: int = 0, quiet: bool = False):
  """Shows the ``jaxparams`` loggers' records on stderr while a command runs.

  Warnings by default, INFO with ``verbose=1``, DEBUG (every tensor) with 2,
  errors only with ``quiet``. The handler and level are removed afterwards.

  Example:
    >>> with log_to_stderr(verbose=1):
    ...   logging.getLogger('jaxparams').getEffectiveLevel() == logging.INFO
    True
  """
  level = (logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else
           logging.INFO if verbose == 1 else logging.WARNING)
  logger = logging.getLogger("jaxparams")
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
  old_level = logger.level
  logger.addHandler(handler)
  logger.setLevel(level)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# What a bad input raises: one line and exit 2. Anything else is a bug: traceback.
_MAX_LINE = 2000
USER_ERRORS = (ValueError, OSError, re.error, KeyError, RecursionError, OverflowError,
               UnicodeError, MemoryError)


def main(argv: Sequence[str] | None = None, *, exit_on_interrupt: bool | None = None) -> int:
  """Entry point of the ``jaxparams`` console script.

  Args:
    argv: the words after ``jaxparams``; ``None`` reads ``sys.argv``.
    exit_on_interrupt: on SIGINT/SIGTERM, leave the process at once (``os._exit``) after the
      one-line message, skipping an interpreter shutdown that live jax/orbax threads can crash.
      Default: when ``argv`` is ``None`` (the real command), never for calls from Python.

  Example:
    >>> main(['--help'])  # doctest: +SKIP
  """
  in_main_thread = threading.current_thread() is threading.main_thread()
  command = "jaxparams"
  args = None
  try:
    words = sys.argv[1:] if argv is None else list(argv)
    # One sub-command's imports, not all (jax comes with them): still under the start-up
    # Ctrl-C handler of `jaxparams/__init__.py`, then KeyboardInterrupt as usual.
    name = named_command(words)
    parser = build_parser(name) if name is not None else _summary_parser()
    if in_main_thread:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parser.parse_args(words)
    command = f"jaxparams {args.command}"
    if args.log_quiet and hasattr(args, "quiet"):
      args.quiet = True  # the sub-command's own --quiet (progress bars, summaries)
    from jaxparams.io.interrupt import catch_signals  # pylint: disable=import-outside-toplevel
    with log_to_stderr(args.log_verbose, args.log_quiet), catch_signals():
      return int(args.func(args) or 0)
  except USER_ERRORS as e:
    if isinstance(e, KeyError) and ": " not in error_line(e):
      raise  # a KeyError of ours names the file; any other is a bug: keep its traceback
    line = _disk_full_hint(e, error_line(e), _output_of(args))
    if len(line) > _MAX_LINE:  # a message quoting a hostile input (a 100 MB prompt) stays short
      line = f"{line[:_MAX_LINE]}... ({len(line)} characters, cut)"
    print(f"{command}: error: {line}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:
    # SIGINT or SIGTERM (jaxparams.io.interrupt.Interrupted): one line, exit 128 + signal.
    signum = getattr(e, "signum", signal.SIGINT)
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    print(f"{command}: {what}; no partial output was left.", file=sys.stderr)
    if exit_on_interrupt is None:
      exit_on_interrupt = argv is None
    if exit_on_interrupt and in_main_thread:  # the real command: exit now, skipping the shutdown
      sys.stdout.flush()                 # of jax/orbax threads that a Ctrl-C may have upset
      sys.stderr.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    return 128 + signum


def _output_of(args) -> str | None:
  for name in ("out", "out_dir", "dst"):
    value = getattr(args, name, None)
    if isinstance(value, str):
      return value
  return None


def _disk_full_hint(e: BaseException, line: str, out: str | None = None) -> str:
  """A full disk named as such, also when the error came wrapped (orbax) or without a file."""
  hint = "the disk is full: free space or write the output elsewhere; nothing was published"
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    named = e.filename is not None or out is None
    return f"{line if named else f'{out}: {line}'} ({hint})"
  if "No space left on device" in str(e) or "ENOSPC" in str(e):  # wrapped (orbax, tensorstore)
    return f"{line[:200]}...: No space left on device ({hint})"
  return line


if __name__ == "__main__":
  sys.exit(main())
