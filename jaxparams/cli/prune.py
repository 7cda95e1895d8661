"""``jaxparams prune SRC OUT``: one-shot pruning of an HF safetensors checkpoint, streamed.

Thin: parses, calls :func:`jaxparams.prune.prune_checkpoint` (or
:func:`jaxparams.prune.prune_hf_model` for the calibrated methods), prints the achieved sparsity.
Method names and which options each takes come from the registry (:data:`jaxparams.prune.PRUNERS`,
the fields of each record's config).
"""

from __future__ import annotations

import argparse
import re
import sys

from jaxparams import prune as jpr
from jaxparams.cli.common import add_quiet, progress_bar, status_line
from jaxparams.prune.records import CALIBRATED
from jaxparams.transform import param_fields

# Regex-only syntax: a --where written as the old regex (before --where meant a glob or 're:').
# A leading '.' counts too (no tensor name starts with one: '.*mlp.*' is a regex). Other patterns
# read the same either way up to edge cases: glob 'a.*b' (literal '.') is within regex 'a.*b'.
_REGEX_ONLY = re.compile(r"\\|[()|+^${}]|^\.")


def where_selector(text: str | None) -> str | None:
  """``--where`` as a selector: a glob of tensor names or ``re:REGEX``, as in ``inspect``.

  A pattern with regex-only syntax (a leading ``.``, ``\\d``, ``(a|b)``, ``+``, ...) is the old
  meaning of ``prune --where`` (a regular expression): still taken as one, with a deprecation note.

  Example:
    >>> where_selector('*.mlp.*'), where_selector('re:.*mlp.*')
    ('*.mlp.*', 're:.*mlp.*')
    >>> where_selector('.*mlp.*')  # prints a deprecation note on stderr
    're:.*mlp.*'
  """
  if text is None or text.startswith("re:") or not _REGEX_ONLY.search(text):
    return text
  try:
    re.compile(text)
  except re.error as e:
    raise ValueError(f"--where {text!r} is not a valid regular expression: {e}") from None
  print(f"note: --where {text!r} is read as a regular expression (deprecated); --where is a glob "
        f"or 're:REGEX' as in `jaxparams inspect`: write --where 're:{text}'", file=sys.stderr)
  return "re:" + text


def _takes(option: str, *, calibrated: bool = False) -> list[str]:
  """The registered methods whose config has the field ``option``."""
  return [r.name for r in jpr.PRUNERS
          if option in param_fields(r.config) and (r.name in CALIBRATED) == calibrated]


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  p = sub.add_parser(
      "prune", help=SUMMARIES["prune"],
      description="Streams SRC tensor by tensor and writes the pruned checkpoint to OUT "
      "(atomic; config and tokenizer files copied). Embeddings, norms and heads are kept unless "
      "--where says otherwise. Wanda and SparseGPT need --calibration TEXT and a model family "
      "jaxparams.models knows (they load the model and prune it layer by layer). Time: data-free "
      "methods stream at disk speed (seconds for a 22M-parameter model); calibrated ones take "
      "about a minute for 22M parameters and 128 samples on a CPU.")
  p.add_argument("src", help="model folder, .safetensors file or sharded index")
  p.add_argument("out", help="output folder")
  p.add_argument("--method", default="magnitude", choices=jpr.PRUNERS.names(),
                 help="; ".join(f"{r.name}: {r.description}" for r in jpr.PRUNERS))
  p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (default 0.5)")
  p.add_argument("--pattern", default=None, help="N:M along the input dimension, e.g. 2:4")
  p.add_argument("--scope", default="tensor", choices=("tensor", "row"),
                 help="magnitude threshold per tensor (default) or per output row")
  p.add_argument("--where", default=None,
                 help="glob of tensor names to prune (e.g. '*.mlp.*'), or 're:<regex>', as in "
                 "inspect (default: the Linear weights; only matrices are pruned)")
  p.add_argument("--seed", type=int, default=0, help="seed of --method random")
  p.add_argument("--calibration", default=None,
                 help="text file (one sample per line) for --method wanda/sparsegpt")
  p.add_argument("--max-samples", type=int, default=128, help="calibration lines used")
  p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  add_quiet(p)
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
  where = where_selector(args.where)
  with progress_bar("prune", quiet=args.quiet) as update:
    summary = jpr.prune_checkpoint(args.src, args.out, args.method, where=where,
                                   key=jax.random.key(args.seed), overwrite=args.overwrite,
                                   progress=lambda done, total, _bytes: update(done, total),
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
  with status_line(f"prune: {args.method} (load, calibrate layer by layer, write)",
                   quiet=args.quiet):
    report = jpr.prune_hf_model(args.src, args.out, args.method, lines[:args.max_samples],
                                overwrite=args.overwrite, **fields)
  mean = sum(report.values()) / max(len(report), 1)
  print(f"wrote {args.out}: {len(report)} weights pruned by {args.method}, "
        f"mean sparsity {mean:.4f}")
  return 0
