"""What several ``jaxparams`` commands share (and nothing of the library's: that is a call away).

One vocabulary across commands: ``-q/--quiet`` (no progress bar; ``--no-progress`` is a deprecated
alias), ``--max-shard-size`` (``--max-shard-bytes`` is a deprecated alias), choices checked at
parse time with a "did you mean" hint.

Example:
  >>> enable_compile_cache('none') is None
  True
  >>> did_you_mean('magnitud', ['magnitude', 'random'])
  " (did you mean 'magnitude'?)"
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
from typing import Any, Callable, Iterable, Iterator

__all__ = ["enable_compile_cache", "did_you_mean", "Parser", "DeprecatedAlias", "add_quiet",
           "add_max_shard_size", "int_choices", "progress_bar", "status_line"]


def enable_compile_cache(folder: str | None) -> str | None:
  """Turns on jax's persistent compilation cache (every kernel, however fast to compile).

  ``folder`` ``None`` means ``$JAXPARAMS_COMPILE_CACHE`` or ``~/.cache/jaxparams/xla``;
  ``'none'`` leaves the cache off. Returns the folder used.
  """
  import jax  # pylint: disable=import-outside-toplevel  (the command line starts without jax)
  folder = folder or os.environ.get("JAXPARAMS_COMPILE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxparams", "xla")
  if folder.lower() == "none":
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


def did_you_mean(name: Any, choices: Iterable[Any]) -> str:
  """``" (did you mean 'x'?)"`` for the closest of ``choices`` (difflib), else ``""``."""
  close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


class Parser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose invalid-choice errors add a "did you mean" hint.

  Sub-command parsers made by ``add_subparsers().add_parser`` are of this class too.

  Example:
    >>> p = Parser(prog='x'); _ = p.add_argument('--method', choices=['rome', 'memit'])
    >>> try:
    ...   p._check_value(p._actions[-1], 'memt')
    ... except argparse.ArgumentError as e:
    ...   print(e)
    argument --method: invalid choice: 'memt' (did you mean 'memit'?); choose from rome, memit
  """

  def _check_value(self, action: argparse.Action, value: Any) -> None:
    if action.choices is not None and value not in action.choices:
      choices = list(action.choices)
      raise argparse.ArgumentError(
          action, f"invalid choice: {value!r}{did_you_mean(value, choices)}; choose from "
          f"{', '.join(map(str, choices))}")


class DeprecatedAlias(argparse.Action):
  """An old flag spelling: stores like ``new`` (``store_true`` when ``nargs=0``), hidden from
  ``--help``; a note on stderr when stderr is a terminal.

  Example:
    >>> p = argparse.ArgumentParser(); add_quiet(p)
    >>> p.parse_args(['--no-progress']).quiet
    True
  """

  def __init__(self, option_strings, dest, new: str = "", nargs=None, const=None, **kwargs):
    self.new = new
    kwargs.setdefault("help", argparse.SUPPRESS)
    super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    if sys.stderr.isatty():  # a person at a terminal; scripts and logs keep their stderr
      print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
    setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_quiet(p: argparse.ArgumentParser) -> None:
  """``-q/--quiet`` (no progress bar, sets ``args.quiet``) and the deprecated ``--no-progress``."""
  p.add_argument("-q", "--quiet", action="store_true",
                 help="no progress bar (jaxparams -q also silences notes and summaries; "
                 "--no-progress: the deprecated spelling)")
  p.add_argument("--no-progress", dest="quiet", action=DeprecatedAlias, nargs=0, const=True,
                 new="-q/--quiet")


def add_max_shard_size(p: argparse.ArgumentParser, default: str = "5GB") -> None:
  """``--max-shard-size SIZE`` (``args.max_shard_size``; 5GB, 500MB or 2e9) and the deprecated
  ``--max-shard-bytes``."""
  p.add_argument("--max-shard-size", default=default,
                 help=f"output shard size, e.g. 5GB, 500MB or 2e9 bytes (default {default}; "
                 "--max-shard-bytes: the deprecated spelling)")
  p.add_argument("--max-shard-bytes", dest="max_shard_size", action=DeprecatedAlias,
                 new="--max-shard-size")


def int_choices(*allowed: int, what: str = "value") -> Callable[[str], int]:
  """An argparse ``type`` accepting only ``allowed`` integers (checked at parse time).

  Example:
    >>> int_choices(2, 4, 8, what='--bits')('4')
    4
  """
  def parse(text: str) -> int:
    try:
      v = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
    if v not in allowed:
      raise argparse.ArgumentTypeError(
          f"{what} {v} is not supported; choose from {', '.join(map(str, allowed))}")
    return v
  parse.__name__ = what  # argparse names the type in its messages
  return parse


@contextlib.contextmanager
def progress_bar(label: str, *, quiet: bool = False, unit: str = "tensors"
                 ) -> Iterator[Callable[..., None]]:
  """A rich progress bar on stderr; yields ``update(done, total, description='')``.

  With ``quiet`` (or nothing ever reported) nothing is shown; the bar is closed on exit, also on
  errors and Ctrl-C.

  Example:
    >>> with progress_bar('prune', quiet=True) as update:
    ...   update(1, 2, 'w')
  """
  if quiet:
    yield lambda *a, **k: None
    return
  from rich.console import Console  # pylint: disable=import-outside-toplevel
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress,  # pylint: disable=import-outside-toplevel
                             TextColumn, TimeElapsedColumn, TimeRemainingColumn)
  bar = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                 TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                 TextColumn("{task.description}", markup=False),
                 console=Console(stderr=True), transient=False)
  state: dict[str, Any] = {}

  def update(done: int, total: int | None, description: str = "") -> None:
    if "task" not in state:
      bar.start()
      state["task"] = bar.add_task(description, total=total)
    bar.update(state["task"], completed=done, total=total, description=description)

  try:
    yield update
  finally:
    if "task" in state:
      bar.stop()


@contextlib.contextmanager
def status_line(text: str, *, quiet: bool = False) -> Iterator[None]:
  """A spinner with the elapsed time on stderr while a step with no countable parts runs.

  Example:
    >>> with status_line('edit: rome', quiet=True):
    ...   pass
  """
  if quiet or not sys.stderr.isatty():  # a spinner in a log is noise; errors stay one line
    yield
    return
  from rich.console import Console  # pylint: disable=import-outside-toplevel
  from rich.progress import (Progress, SpinnerColumn, TextColumn,  # pylint: disable=import-outside-toplevel
                             TimeElapsedColumn)
  bar = Progress(SpinnerColumn(), TextColumn(text, markup=False), TimeElapsedColumn(),
                 console=Console(stderr=True), transient=True)
  with bar:
    bar.add_task(text, total=None)
    yield
