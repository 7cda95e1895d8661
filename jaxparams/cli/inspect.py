"""``jaxparams inspect PATH``: a checkpoint's tensors from headers, optional stats.

Thin: the rows are :func:`jaxparams.io.checkpoint_rows` (the tree layer's
:class:`~jaxparams.tree.summary.LeafStats`, bytes formatted by its ``human_bytes``); this module
only prints them.

Rows are printed as they are produced, a block at a time (a million-tensor
header starts printing at once). Names come from files and are shown as plain
text: never as rich markup, control characters escaped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxparams import io as jio
from jaxparams.tree.summary import human_bytes

_BLOCK = 500  # rows per printed block
_COLUMNS = ("path", "shape", "dtype", "params", "bytes")
_STATS = ("mean", "std", "absmax", "zeros")


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("inspect", help=SUMMARIES["inspect"],
                     description="Prints one row per tensor (name, shape, dtype, params, bytes) "
                     "read from the headers alone; --stats streams through the tensors one at "
                     "a time for mean/std/abs-max/zeros.")
  p.add_argument("path", help="a .safetensors file, an HF folder, or a jaxparams/orbax folder")
  p.add_argument("--stats", action="store_true", help="read every tensor for statistics")
  p.add_argument("--where", default=None,
                 help="glob of tensor names to show (e.g. '*attn*'), or 're:<regex>'")
  p.set_defaults(func=run)


def plain(text: object) -> str:
  r"""Text shown literally: non-printable characters (escape sequences, bells) escaped.

  Rows are written as plain text, never through rich markup, so ``[/]`` or
  ``[link=...]`` in a name is shown as is.

  Example:
    >>> plain('ckpt[v2]\x1b[31m')
    'ckpt[v2]\\x1b[31m'
  """
  s = str(text)
  if not s.isprintable():
    s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
  return s


def _widths(block: list[list[str]], header: list[str]) -> list[int]:
  return [min(max(len(r[i]) for r in block + [header]), 120 if i == 0 else 40)
          for i in range(len(header))]


def _line(cells: list[str], widths: list[int]) -> str:
  out = [cells[0].ljust(widths[0])] + [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                                      enumerate(zip(cells[1:], widths[1:]))]
  return "  ".join(out).rstrip()


def run(args: argparse.Namespace) -> int:
  path = Path(args.path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or folder.")
  out = sys.stdout
  out.write(plain(path) + "\n")
  header = list(_COLUMNS) + (list(_STATS) if args.stats else [])
  widths: list[int] | None = None
  block: list[list[str]] = []
  total_params = total_bytes = count = 0

  def flush() -> None:
    nonlocal widths
    if widths is None:
      widths = _widths(block, header)
      out.write(_line(header, widths) + "\n")
    out.write("".join(_line(r, widths) + "\n" for r in block))
    out.flush()
    block.clear()

  for row in jio.checkpoint_rows(path, stats=args.stats, where=args.where):
    cells = [plain(row.path), plain(row.shape), plain(row.dtype), f"{row.params:,}",
             human_bytes(row.bytes)]
    if args.stats:
      cells += [f"{row.mean:.4g}", f"{row.std:.4g}", f"{row.absmax:.4g}", f"{row.zeros:.2%}"]
    block.append(cells)
    total_params += row.params
    total_bytes += row.bytes
    count += 1
    if len(block) == _BLOCK:
      flush()
  if block or widths is None:
    flush()
  out.write(f"total: {count:,} tensors, {total_params:,} params, {human_bytes(total_bytes)}\n")
  return 0
