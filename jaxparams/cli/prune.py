"""``jaxparams prune SRC OUT``: one-shot pruning of an HF safetensors checkpoint, streamed.

Thin: parses, calls :func:`jaxparams.prune.prune_checkpoint` (or
:func:`jaxparams.prune.prune_hf_model` for the calibrated methods), prints the achieved sparsity.
Method names and which options each takes come from the registry (:data:`jaxparams.prune.PRUNERS`,
the fields of each record's config).
"""

from __future__ import annotations

import argparse
import re

from jaxparams import prune as jpr
from jaxparams.prune.records import CALIBRATED
from jaxparams.transform import param_fields


def _takes(option: str, *, calibrated: bool = False) -> list[str]:
  """The registered methods whose config has the field ``option``."""
  return [r.name for r in jpr.PRUNERS
          if option in param_fields(r.config) and (r.name in CALIBRATED) == calibrated]


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser(
      "prune", help="Prune the Linear weights of a checkpoint (magnitude, random, N:M).",
      description="Streams SRC tensor by tensor and writes the pruned checkpoint to OUT "
      "(atomic; config and tokenizer files copied). Embeddings, norms and heads are kept unless "
      "--where says otherwise. Wanda and SparseGPT need --calibration TEXT and a model family "
      "jaxparams.models knows (they load the model and prune it layer by layer).")
  p.add_argument("src", help="model folder, .safetensors file or sharded index")
  p.add_argument("out", help="output folder")
  p.add_argument("--method", default="magnitude", choices=jpr.PRUNERS.names(),
                 help="; ".join(f"{r.name}: {r.description}" for r in jpr.PRUNERS))
  p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (default 0.5)")
  p.add_argument("--pattern", default=None, help="N:M along the input dimension, e.g. 2:4")
  p.add_argument("--scope", default="tensor", choices=("tensor", "row"),
                 help="magnitude threshold per tensor (default) or per output row")
  p.add_argument("--where", default=None,
                 help="regex over tensor names selecting what to prune (default: Linear weights)")
  p.add_argument("--seed", type=int, default=0, help="seed of --method random")
  p.add_argument("--calibration", default=None,
                 help="text file (one sample per line) for --method wanda/sparsegpt")
  p.add_argument("--max-samples", type=int, default=128, help="calibration lines used")
  p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  fields = {"sparsity": args.sparsity}
  if args.method in CALIBRATED:
    return _run_calibrated(args, fields)
  if args.calibration is not None:
    raise ValueError(f"--calibration applies to {'/'.join(CALIBRATED)}, not {args.method}")
  valid = param_fields(jpr.PRUNERS.get(args.method).config)
  if args.pattern is not None and "pattern" not in valid:
    raise ValueError(f"--pattern applies to --method {'/'.join(_takes('pattern'))} only")
  fields.update({k: getattr(args, k) for k in ("pattern", "scope") if k in valid})
  where = None
  if args.where is not None:
    try:
      where = re.compile(args.where)
    except re.error as e:
      raise ValueError(f"--where {args.where!r} is not a valid regular expression: {e}") from None
  summary = jpr.prune_checkpoint(args.src, args.out, args.method, where=where,
                                 key=jax.random.key(args.seed), overwrite=args.overwrite,
                                 **fields)
  sp = summary["sparsity"]
  mean = sum(sp.values()) / max(len(sp), 1)
  print(f"wrote {args.out}: {len(sp)} weights pruned by {args.method}, mean sparsity {mean:.4f}")
  return 0


def _run_calibrated(args: argparse.Namespace, fields: dict) -> int:
  if args.calibration is None:
    raise ValueError(f"--method {args.method} needs --calibration TEXT_FILE")
  if args.where is not None:
    raise ValueError("--where applies to the data-free methods; calibrated methods prune every "
                     "Linear weight except embeddings and heads")
  from jaxparams.io import read_calibration_text  # pylint: disable=import-outside-toplevel
  lines = read_calibration_text(args.calibration, what="--calibration text")
  if args.pattern is not None:
    fields["pattern"] = args.pattern
  report = jpr.prune_hf_model(args.src, args.out, args.method, lines[:args.max_samples],
                              overwrite=args.overwrite, **fields)
  mean = sum(report.values()) / max(len(report), 1)
  print(f"wrote {args.out}: {len(report)} weights pruned by {args.method}, "
        f"mean sparsity {mean:.4f}")
  return 0
