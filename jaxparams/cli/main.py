"""The ``jaxparams`` command: one sub-command module per job.

Each module in ``SUBCOMMANDS`` defines ``add_parser(subparsers)`` (which sets
``func`` on its parser) and raises ``ValueError``/``FileNotFoundError``/
``FileExistsError`` on bad input; ``main`` turns those into one clear line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Sub-command modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("demo", "inspect", "convert", "merge", "quantize", "dequantize", "edit")


def build_parser() -> argparse.ArgumentParser:
  """Builds the argument parser with every sub-command."""
  parser = argparse.ArgumentParser(
      prog="jaxparams",
      description="Transform model parameters with JAX: inspect, convert, merge, quantize.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True
  for name in SUBCOMMANDS:
    importlib.import_module(f"jaxparams.cli.{name}").add_parser(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``jaxparams`` console script.

  Example:
    >>> main(['--help'])  # doctest: +SKIP
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"jaxparams {args.command}: error: {msg}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"jaxparams {args.command}: interrupted; no partial output was left.", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
