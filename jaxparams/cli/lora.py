"""``jaxparams lora merge|extract``: PEFT LoRA adapters merged into, or extracted from, HF folders.

* ``jaxparams lora merge BASE_DIR ADAPTER_DIR OUT_DIR``: an HF checkpoint with the adapter merged
  (PEFT's ``merge_and_unload`` weights), streamed tensor by tensor, atomic.
* ``jaxparams lora extract BASE_DIR FINETUNED_DIR OUT_DIR --rank R``: a PEFT adapter folder by
  truncated SVD of each Linear's delta, with ``mergekit-extract-lora``'s choices.

Both are thin wrappers of :func:`jaxparams.adapt.stream.merge_checkpoint` and
:func:`jaxparams.adapt.extract_checkpoint`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_parser", "run_merge", "run_extract"]


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  from jaxparams.cli.common import add_quiet  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("lora", help=SUMMARIES["lora"],
                     description="LoRA adapters (PEFT format) on HF safetensors checkpoints.")
  s = p.add_subparsers(dest="lora_command", metavar="ACTION")
  s.required = True
  m = s.add_parser("merge", help="Write BASE + ADAPTER as an HF checkpoint (streamed).",
                   description="Merge a PEFT LoRA/DoRA adapter into an HF checkpoint, tensor by "
                   "tensor (float32 math, output in the base dtype), atomically.")
  m.add_argument("base", metavar="BASE_DIR", help="HF checkpoint folder (safetensors)")
  m.add_argument("adapter", metavar="ADAPTER_DIR", help="PEFT adapter folder")
  m.add_argument("out", metavar="OUT_DIR", help="output folder (created atomically)")
  m.add_argument("--weight", type=float, default=1.0, help="multiplies the adapter's scaling")
  m.add_argument("--dtype", default=None, help="output dtype (default: the base tensors' dtype)")
  m.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  add_quiet(m)
  m.set_defaults(func=run_merge)
  e = s.add_parser("extract", help="Extract a PEFT LoRA from (BASE, FINETUNED) by truncated SVD.",
                   description="Extract a LoRA adapter from a fine-tuned model and its base, as "
                   "mergekit-extract-lora does (one tensor pair in memory at a time). Tensors "
                   "equal in both (e.g. embeddings a fine-tune did not change) are left out of "
                   "the adapter. Time: one SVD per Linear weight; about a minute for a "
                   "22M-parameter model on a CPU.")
  e.add_argument("base", metavar="BASE_DIR", help="base HF checkpoint folder")
  e.add_argument("finetuned", metavar="FINETUNED_DIR", help="fine-tuned HF checkpoint folder")
  e.add_argument("out", metavar="OUT_DIR", help="adapter folder to create")
  e.add_argument("--rank", "--max-rank", dest="rank", type=int, required=True,
                 help="maximum rank per module")
  e.add_argument("--sv-epsilon", type=float, default=0.0,
                 help="drop singular values <= this absolute threshold (mergekit's option)")
  e.add_argument("--energy", type=float, default=None,
                 help="smallest rank keeping this fraction of the delta's squared Frobenius norm")
  e.add_argument("--no-distribute-scale", dest="distribute_scale", action="store_false",
                 help="put S into lora_A instead of sqrt(S) into both")
  e.add_argument("--embed-lora", action="store_true",
                 help="LoRA for the embeddings and head instead of saving them whole")
  e.add_argument("--save-module", action="append", default=[], metavar="NAME",
                 help="save this module at full rank (repeatable)")
  e.add_argument("-i", "--include-regex", action="append", default=[], metavar="REGEX",
                 help="only decompose modules whose name matches (re.search; repeatable)")
  e.add_argument("-e", "--exclude-regex", action="append", default=[], metavar="REGEX",
                 help="never decompose modules whose name matches (re.search; repeatable)")
  e.add_argument("--skip-undecomposable", action="store_true",
                 help="do not save norms (non-Linear weights) at full rank")
  e.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  add_quiet(e)
  e.set_defaults(func=run_extract)


def run_merge(args: argparse.Namespace) -> int:
  from jaxparams.adapt.stream import merge_checkpoint
  from jaxparams.cli.common import progress_bar
  for p in (args.base, args.adapter):
    if not Path(p).is_dir():
      raise FileNotFoundError(f"{p}: no such folder")
  t0 = time.perf_counter()
  with progress_bar("lora merge", quiet=args.quiet) as update:
    rep = merge_checkpoint(args.base, args.adapter, args.out, weight=args.weight,
                           overwrite=args.overwrite, dtype=args.dtype,
                           progress=lambda done, total, _bytes: update(done, total))
  print(f"merged {rep['merged']} module(s), replaced {rep['replaced']} tensor(s) from "
        f"modules_to_save, copied {rep['copied']} -> {args.out} "
        f"({time.perf_counter() - t0:.1f} s)")
  return 0


def run_extract(args: argparse.Namespace) -> int:
  from jaxparams.adapt.extract import extract_checkpoint
  from jaxparams.cli.common import progress_bar
  for p in (args.base, args.finetuned):
    if not Path(p).is_dir():
      raise FileNotFoundError(f"{p}: no such folder")
  if args.rank < 1:
    raise ValueError(f"--rank must be >= 1, got {args.rank}")
  t0 = time.perf_counter()
  with progress_bar("lora extract", quiet=args.quiet) as update:
    rep = extract_checkpoint(args.base, args.finetuned, args.out, max_rank=args.rank,
                             sv_epsilon=args.sv_epsilon, energy=args.energy,
                             distribute_scale=args.distribute_scale, embed_lora=args.embed_lora,
                             modules_to_save=args.save_module, include=args.include_regex,
                             exclude=args.exclude_regex,
                             skip_undecomposable=args.skip_undecomposable,
                             overwrite=args.overwrite,
                             progress=lambda name, done, total: update(done, total, name))
  ranks = sorted(set(rep["ranks"].values()))
  worst = max(rep["tails"].values())
  print(f"extracted {len(rep['ranks'])} module(s), ranks {ranks}, largest truncation error "
        f"(Frobenius) {worst:.4g}; modules_to_save {rep['modules_to_save']} -> {args.out} "
        f"({time.perf_counter() - t0:.1f} s)")
  return 0
