"""``jaxparams inspect PATH``: a checkpoint's tensors from headers, optional stats."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from jaxparams import io as jio
from jaxparams import tree as jtree


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("inspect", help="Summarise a checkpoint (safetensors file/folder or orbax).",
                     description="Prints one row per tensor (name, shape, dtype, params, bytes) "
                     "read from the headers alone; --stats streams through the tensors one at "
                     "a time for mean/std/abs-max/zeros.")
  p.add_argument("path", help="a .safetensors file, an HF folder, or a jaxparams/orbax folder")
  p.add_argument("--stats", action="store_true", help="read every tensor for statistics")
  p.add_argument("--where", default=None, help="glob of tensor names to show (e.g. '*attn*')")
  p.set_defaults(func=run)


def is_orbax_dir(path: Path) -> bool:
  """True for an orbax checkpoint folder (or a converted folder with ``params/``)."""
  if (path / "params").is_dir():
    path = path / "params"
  return path.is_dir() and any((path / n).exists() for n in (
      "_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint"))


def run(args: argparse.Namespace) -> int:
  console = Console()
  path = Path(args.path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or folder.")
  if is_orbax_dir(path):
    from jaxparams.cli.convert import load_any  # pylint: disable=g-import-not-at-top
    flat, _ = load_any(path)
    s = jtree.summary(flat, where=args.where, stats=args.stats)
    console.print(s.to_table(title=str(path)))
    return 0
  with jio.open_checkpoint(path) as ck:
    names = jtree.select({n: None for n in ck.names()}, args.where, flat=True)
    if not args.stats:
      specs = [(n, ck.spec(n).shape, ck.spec(n).dtype, ck.spec(n).nbytes) for n in names]
      console.print(jtree.summary_from_specs(specs).to_table(title=str(path)))
      return 0
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} tensors"), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
      task = bar.add_task("reading", total=len(names))
      for n in names:
        rows.append(jtree.leaf_stats(n, ck.read(n)))
        bar.advance(task)
    console.print(jtree.Summary(tuple(rows)).to_table(title=str(path)))
  return 0
