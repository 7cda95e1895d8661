"""``jaxparams quantize SRC_DIR OUT_DIR``: quantize an HF checkpoint (any family of
:mod:`jaxparams.models`), streaming.

Thin: parses the flags and calls :func:`jaxparams.quant.quantize_checkpoint`,
which reads the checkpoint tensor by tensor (data-free methods) or block by block
(GPTQ/AWQ/decoupleQ, calibrated on ``--calibration`` text, one sample per
non-empty line), so peak memory is about one transformer block. Embeddings,
norms, biases and the LM head stay full precision unless a rules file says
otherwise. Output:

* ``--format jaxparams`` (default): the jaxparams layout (see
  :mod:`jaxparams.quant.checkpoint`) under the HF tensor names, plus the source
  ``config.json``, tokenizer files and ``quant_report.json``. Loaded by
  ``jaxparams.quant.load_quantized`` and ``jaxparams dequantize`` (which writes a plain
  checkpoint any tool loads); transformers and sentence-transformers refuse it on purpose;
* ``--format gptq``: the HF GPTQ layout (``qweight``/``qzeros``/``scales``/``g_idx``,
  ``quantize_config.json``, ``gptq_v2`` when asymmetric) for integer methods, with the
  sentence-transformers files. Loaded by transformers / sentence-transformers with
  ``optimum`` and a GPTQ kernel package (``gptqmodel``) installed (both need torch), and by
  ``jaxparams dequantize``.

A rules file (YAML) is a list of ``{pattern: GLOB, method: NAME, bits: N, ...}``
entries (first match wins; ``method: keep``/``full``/``none`` keeps full precision);
missing ``method``/``bits``/``group_size`` fall back to the command-line values
(:func:`jaxparams.quant.rule_file.read_rules`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxparams.quant import rule_file

__all__ = ["add_parser", "run"]

METHODS = tuple(rule_file.method_names())
BITS = (2, 3, 4, 8)  # jaxparams.quant.packing.SUPPORTED_BITS (tests/cli check they agree)


FORMAT_HELP = ("output layout (default jaxparams). jaxparams: read by jaxparams "
               "(jaxparams.quant.load_quantized) and `jaxparams dequantize`; transformers and "
               "sentence-transformers refuse it (run `jaxparams dequantize OUT_DIR PLAIN_DIR` for "
               "them). gptq: the HF GPTQ layout (integer methods, 2/3/4/8 bits), loaded by "
               "transformers/sentence-transformers with optimum and gptqmodel installed (both "
               "need torch; see the README), and by `jaxparams dequantize`")


def _families() -> str:
  from jaxparams.models.families import families  # pylint: disable=import-outside-toplevel
  return ", ".join(families())


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  from jaxparams.cli.common import (add_max_shard_size, add_quiet,  # pylint: disable=import-outside-toplevel
                                    int_choices)
  p = sub.add_parser("quantize", help=SUMMARIES["quantize"],
                     description="Quantize the Linear weights of an HF safetensors checkpoint "
                     f"({_families()}) with {', '.join(METHODS)} and write a quantized "
                     "checkpoint (streaming: tensor by tensor, or block by block for calibrated "
                     "methods). Time: data-free methods (rtn, nf4, fp8, hqq, ...) stream at "
                     "about disk speed plus one compile per weight shape; calibrated ones (gptq, "
                     "awq, decoupleq, autoround, omniquant) take minutes on a CPU even for a "
                     "22M-parameter model (GPTQ on all-MiniLM-L6-v2: about 80 s). The default --format jaxparams is read by jaxparams and "
                     "`jaxparams dequantize`, not by transformers; --format gptq loads in "
                     "transformers with optimum + gptqmodel.")
  p.add_argument("src", metavar="SRC_DIR", help="HF checkpoint folder (config.json + safetensors)")
  p.add_argument("out", metavar="OUT_DIR", help="output folder (created atomically)")
  p.add_argument("--method", choices=METHODS, default="rtn")
  p.add_argument("--bits", type=int_choices(*BITS, what="--bits"), default=4,
                 help="2, 3, 4 or 8 (default 4; nf4: 4; fp8: 8)")
  p.add_argument("--group-size", type=int, default=128,
                 help="rows per group along the input axis; -1 = per channel (nf4: block size)")
  p.add_argument("--calibration", metavar="TEXT_FILE",
                 help="calibration text, one sample per line (needed by gptq, awq, decoupleq)")
  p.add_argument("--rules", metavar="RULES.yml", help="YAML list of {pattern, method, ...} rules")
  p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                 help="gptq, decoupleq: process columns by decreasing Hessian diagonal (desc_act; "
                 "gptq: on by default, --no-act-order turns it off; decoupleq always does); "
                 "refused for other methods")
  p.add_argument("--symmetric", action="store_true",
                 help="symmetric grid (rtn, gptq, awq; refused for other methods)")
  p.add_argument("--iters", type=int, default=None,
                 help="autoround: signed-gradient steps per block (default 200; 0 = RTN)")
  p.add_argument("--mse", type=float, default=None, metavar="NORM",
                 help="rtn, gptq: per-group clip search with this error norm (2.4 as GPTQ's mse)")
  p.add_argument("--format", choices=("jaxparams", "gptq"), default="jaxparams",
                 help=FORMAT_HELP)
  p.add_argument("--max-length", type=int, default=128, help="calibration tokens per sample")
  p.add_argument("--batch-size", type=int, default=16, help="calibration samples per batch")
  p.add_argument("--max-samples", type=int, default=256, help="calibration samples used")
  add_max_shard_size(p, default="1GB")
  p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  add_quiet(p)
  # -- issue 29 (rotations, SmoothQuant, activation bits): jaxparams.quant.rotated_checkpoint
  p.add_argument("--rotate", choices=("hadamard", "random", "learned"), default=None,
                 help="fold rotations into the weights first (QuaRot; learned = SpinQuant's "
                 "Cayley SGD); runs in memory")
  p.add_argument("--smooth", default=None, metavar="ALPHA",
                 help="SmoothQuant scales with this alpha in [0, 1], or 'auto' (per-site search)")
  p.add_argument("--act-bits", type=int, choices=(0, 4, 8), default=0,
                 help="per-token dynamic activation bits of the quantized Linears (W8A8, W4A8)")
  p.add_argument("--compile-cache", default=None,
                 help="persistent XLA compilation cache folder, so repeated runs skip "
                 "compilation (default: $JAXPARAMS_COMPILE_CACHE or ~/.cache/jaxparams/xla; "
                 "'none' disables)")
  p.set_defaults(func=run)


# The library functions this module used to re-export, and where they are.
_MOVED = {"method_fields": "jaxparams.quant.rule_file.flag_fields",
          "read_rules": "jaxparams.quant.rule_file.read_rules",
          "quantize_checkpoint": "jaxparams.quant.quantize_checkpoint (calibration= takes the texts)"}


def __getattr__(name: str):
  if name in _MOVED:  # deprecated aliases, removed: the command line holds no library calls
    raise AttributeError(f"jaxparams.cli.quantize.{name} was a deprecated alias; use {_MOVED[name]}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _read_texts(path: str | Path, max_samples: int) -> list[str]:
  from jaxparams.calib.corpus import sample_evenly  # pylint: disable=g-import-not-at-top
  from jaxparams.io import read_calibration_text  # pylint: disable=g-import-not-at-top
  return sample_evenly(read_calibration_text(path), max_samples)


def _option_fields(args: argparse.Namespace) -> dict[str, Any]:
  """``--iters``/``--mse`` as config fields; refused for methods without that field."""
  from jaxparams.quant import methods as qmethods  # pylint: disable=g-import-not-at-top
  has = {f.name for f in dataclasses.fields(qmethods.get_quantizer(args.method).config_cls)}
  out = {}
  for flag, field in (("--iters", "iters"), ("--mse", "mse")):
    val = getattr(args, field, None)
    if val is None:
      continue
    if field not in has:
      raise ValueError(f"{flag} does not apply to --method {args.method}")
    out[field] = val
  return out


def run(args: argparse.Namespace) -> int:
  from jaxparams.cli.common import enable_compile_cache  # pylint: disable=g-import-not-at-top
  from jaxparams.quant.stream import quantize_checkpoint as qc  # pylint: disable=g-import-not-at-top
  enable_compile_cache(getattr(args, "compile_cache", None))  # one compile per shape, ever
  fields = rule_file.flag_fields(args.method, args.bits, args.group_size,
                                 act_order=args.act_order, symmetric=args.symmetric)
  fields.update(_option_fields(args))
  if args.rules:
    rules = rule_file.read_rules(args.rules, args.method, fields)
  else:
    rules = [("**", (args.method, fields))]
  texts = _read_texts(args.calibration, args.max_samples) if args.calibration else None
  if args.rotate or args.smooth is not None or args.act_bits:   # issue 29: in-memory path
    from jaxparams.quant.rotated_checkpoint import run_cli  # pylint: disable=g-import-not-at-top
    return run_cli(args, rules, texts)

  from jaxparams.cli.common import progress_bar  # pylint: disable=g-import-not-at-top
  from jaxparams.io import parse_size  # pylint: disable=g-import-not-at-top
  shard_bytes = parse_size(args.max_shard_size, what="--max-shard-size")
  with progress_bar("quantize", quiet=args.quiet) as update:
    report = qc(args.src, args.out, rules, calibration=texts, fmt=args.format,
                max_length=args.max_length, batch_size=args.batch_size,
                overwrite=args.overwrite, max_shard_bytes=shard_bytes,
                progress=lambda path, i, total: update(i, total, path))
    update(report.num_quantized, report.num_quantized, "done")
  errs = [e.error for e in report.quantized() if e.error is not None]
  print(f"wrote {args.out} ({args.format}): {report.num_quantized} tensors quantized, "
        f"{report.bytes_before / 2**20:.2f} MiB -> {report.bytes_after / 2**20:.2f} MiB, "
        f"mean relative weight error {np.mean(errs) if errs else 0:.4f}")
  return 0
