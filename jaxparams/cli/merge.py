"""``jaxparams merge RECIPE OUT_DIR``: stream a mergekit recipe over HF checkpoints.

Example:
  >>> import argparse
  >>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
  >>> add_parser(sub)
  >>> p.parse_args(['merge', 'ties.yml', 'out', '--seed', '3']).seed
  3
"""

from __future__ import annotations

import argparse
import sys

from jaxparams.cli.common import add_quiet, enable_compile_cache  # noqa: F401  (also its old home)

__all__ = ["add_parser", "run", "MERGEKIT_NOTES"]

#: mergekit command-line flags accepted for pasted commands, and what they mean here.
MERGEKIT_NOTES = (
    ("cuda", "--cuda: JAX computes on a GPU/TPU whenever one is present; nothing to set."),
    ("lazy-unpickle", "--lazy-unpickle: pickle checkpoints are refused; safetensors are "
     "always read lazily, one tensor at a time."),
    ("allow-crimes", "--allow-crimes: architectures are not compared; tensor names and "
     "shapes must match (or be aligned by slices/tokenizer_source)."),
    ("trust-remote-code", "--trust-remote-code: no model code is ever run; only "
     "config.json and safetensors are read."),
    ("low-cpu-memory", "--low-cpu-memory: the streaming merge already holds only a few "
     "tensors per input in host memory."),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
  """Registers the ``merge`` sub-command (sets ``func=run``)."""
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  from jaxparams.merge.registry import method_names  # pylint: disable=import-outside-toplevel
  p = sub.add_parser(
      "merge", help=SUMMARIES["merge"],
      description="Runs a mergekit recipe (YAML unchanged, or an ml-collections .py config) "
      "tensor by tensor over local HF safetensors checkpoints: jit-compiled merge methods, "
      "reading overlapped with compute, atomic sharded output with config.json and tokenizer "
      f"files. Methods: {', '.join(method_names())}. Time: the first run compiles each "
      "distinct (tensor shape, method) once, about a second each on a CPU; later runs reuse "
      "the compilation cache (--compile-cache) and stream at disk speed.")
  p.add_argument("recipe", help="mergekit YAML recipe (or a .py ml-collections config)")
  p.add_argument("out_dir", help="output folder (must not exist unless --overwrite)")
  p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  p.add_argument("--seed", "--random-seed", dest="seed", type=int, default=0,
                 help="PRNG seed of random methods (dare_*, della*); default 0")
  p.add_argument("--max-shard-size", "--out-shard-size", dest="max_shard_size", default="5GB",
                 help="output shard size in bytes, e.g. 5GB, 500M (default 5GB)")
  p.add_argument("--allow-nonfinite", action="store_true",
                 help="don't refuse NaN/Inf values in inputs or outputs")
  p.add_argument("--copy-tokenizer", action=argparse.BooleanOptionalAction, default=True,
                 help="copy tokenizer files into OUT_DIR (default; mergekit's flag)")
  p.add_argument("--write-model-card", action=argparse.BooleanOptionalAction, default=True,
                 help="write README.md (model card) and mergekit_config.yml (default, as "
                 "mergekit)")
  # mergekit flags without a separate meaning here: accepted, with a one-line note.
  for flag, _ in MERGEKIT_NOTES:
    p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                   help=argparse.SUPPRESS)
  p.add_argument("--prefetch", type=int, default=2,
                 help="tensors the reader thread may read ahead (default 2)")
  p.add_argument("--prefetch-bytes", default="2GB",
                 help="bytes the reader thread may read ahead (default 2GB; one tensor always)")
  p.add_argument("--shard", action="store_true", default=None,
                 help="split large tensors across all devices (default: only with several "
                 "GPUs/TPUs)")
  p.add_argument("--dry-run", action="store_true",
                 help="print the per-tensor plan (inputs, layer position t, parameters after "
                 "filters and gradients) and exit without merging")
  p.add_argument("--compile-cache", default=None,
                 help="persistent XLA compilation cache folder, so repeated merges skip "
                 "compilation (default: $JAXPARAMS_COMPILE_CACHE or ~/.cache/jaxparams/xla; "
                 "'none' disables)")
  add_quiet(p)
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  """Runs the merge; errors surface as ``ValueError``/``FileExistsError``/..."""
  from rich.console import Console  # pylint: disable=import-outside-toplevel

  from jaxparams.io import parse_size  # pylint: disable=import-outside-toplevel
  from jaxparams.merge.stream import merge_checkpoints  # pylint: disable=import-outside-toplevel
  shard_bytes = parse_size(args.max_shard_size, what="--max-shard-size")  # the one parser
  ahead_bytes = parse_size(args.prefetch_bytes, what="--prefetch-bytes")
  console = Console(stderr=True)
  silent = getattr(args, "log_quiet", False)  # jaxparams -q: not even the notes
  for flag, note in MERGEKIT_NOTES:
    if getattr(args, flag.replace("-", "_"), None) is not None and not silent:
      console.print(f"note: {note}", highlight=False)
  if getattr(args, "dry_run", False):
    return _dry_run(args.recipe)
  enable_compile_cache(getattr(args, "compile_cache", None))
  summary = merge_checkpoints(
      args.recipe, args.out_dir, seed=args.seed, overwrite=args.overwrite,
      max_shard_bytes=shard_bytes, allow_nonfinite=args.allow_nonfinite,
      copy_tokenizer=args.copy_tokenizer, prefetch=args.prefetch,
      prefetch_bytes=ahead_bytes, progress=not args.quiet,
      console=console, shard=args.shard,
      write_model_card=getattr(args, "write_model_card", True))
  if not args.quiet:
    gb = summary["bytes_read"] / 1e9
    console.print(f"[green]merged[/] {summary['tensors']} tensors ({gb:.2f} GB read) into "
                  f"{summary['out_dir']} in {summary['seconds']:.1f} s")
  return 0


def _fmt(v):
  if isinstance(v, list):
    return "[" + ", ".join(_fmt(x) for x in v) + "]"
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _dry_run(recipe: str) -> int:
  from rich.console import Console  # pylint: disable=import-outside-toplevel
  from rich.table import Table  # pylint: disable=import-outside-toplevel

  from jaxparams.merge.stream import plan_checkpoints  # pylint: disable=import-outside-toplevel
  tasks = plan_checkpoints(recipe)
  table = Table(title=f"{recipe}: {len(tasks)} output tensors")
  for col in ("output tensor", "base", "models", "layer pos", "parameters"):
    table.add_column(col)
  for t in tasks:
    params = {**t.global_params, **{k: list(v) for k, v in t.model_params.items()}}
    table.add_row(t.name, f"{t.base[0]}" if t.base else "-",
                  ", ".join(f"{m}:{n}" if n != t.name else m for m, n in t.models),
                  f"{t.t:.3g}", " ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
  Console(width=None if sys.stdout.isatty() else 240).print(table)  # full names in pipes/logs
  return 0


def main(argv: list[str] | None = None) -> int:
  """Runs ``jaxparams merge`` alone (``python -m jaxparams.cli.merge``), same error handling."""
  from jaxparams.cli.main import main as jaxparams_main  # pylint: disable=import-outside-toplevel
  return jaxparams_main(["merge"] + list(sys.argv[1:] if argv is None else argv),
                        exit_on_interrupt=argv is None)  # a process of its own, as `jaxparams`


if __name__ == "__main__":
  sys.exit(main())
