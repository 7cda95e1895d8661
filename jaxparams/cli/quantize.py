"""``jaxparams quantize SRC_DIR OUT_DIR``: quantize an HF checkpoint (BERT, Llama), streaming.

Thin: parses the flags and calls :func:`jaxparams.quant.quantize_checkpoint`,
which reads the checkpoint tensor by tensor (data-free methods) or block by block
(GPTQ/AWQ/decoupleQ, calibrated on ``--calibration`` text, one sample per
non-empty line), so peak memory is about one transformer block. Embeddings,
norms, biases and the LM head stay full precision unless a rules file says
otherwise. Output:

* ``--format jaxparams`` (default): the jaxparams layout (see
  :mod:`jaxparams.quant.checkpoint`) under the HF tensor names, plus the source
  ``config.json``, tokenizer files and ``quant_report.json``;
* ``--format gptq``: the HF GPTQ layout (``qweight``/``qzeros``/``scales``/``g_idx``,
  ``quantize_config.json``, ``gptq_v2`` when asymmetric) for integer methods, with the
  sentence-transformers files.

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


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("quantize", help="Quantize an HF checkpoint (BERT, Llama).",
                     description="Quantize the Linear weights of an HF safetensors checkpoint with "
                     f"{', '.join(METHODS)} and write a quantized checkpoint (streaming: tensor by "
                     "tensor, or block by block for calibrated methods).")
  p.add_argument("src", metavar="SRC_DIR", help="HF checkpoint folder (config.json + safetensors)")
  p.add_argument("out", metavar="OUT_DIR", help="output folder (created atomically)")
  p.add_argument("--method", choices=METHODS, default="rtn")
  p.add_argument("--bits", type=int, default=4, help="2, 3, 4 or 8 (nf4: 4; fp8: 8)")
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
                 help="output layout")
  p.add_argument("--max-length", type=int, default=128, help="calibration tokens per sample")
  p.add_argument("--batch-size", type=int, default=16, help="calibration samples per batch")
  p.add_argument("--max-samples", type=int, default=256, help="calibration samples used")
  p.add_argument("--max-shard-bytes", type=float, default=1e9, help="output shard size (bytes)")
  p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
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

  progress_cm = None
  callback = None
  if not args.no_progress:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress,  # pylint: disable=g-import-not-at-top
                               TextColumn, TimeElapsedColumn)
    progress_cm = Progress(TextColumn("[bold]quantize[/] {task.description}"), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
    state: dict[str, Any] = {}

    def callback(path: str, i: int, total: int) -> None:
      if "task" not in state:
        state["task"] = progress_cm.add_task(path, total=total)
      progress_cm.update(state["task"], completed=i, description=path)
  try:
    if progress_cm is not None:
      progress_cm.start()
    report = qc(args.src, args.out, rules, calibration=texts, fmt=args.format,
                max_length=args.max_length, batch_size=args.batch_size,
                overwrite=args.overwrite, max_shard_bytes=args.max_shard_bytes,
                progress=callback)
    if progress_cm is not None and "task" in state:
      progress_cm.update(state["task"], completed=report.num_quantized, description="done")
  finally:
    if progress_cm is not None:
      progress_cm.stop()
  errs = [e.error for e in report.quantized() if e.error is not None]
  print(f"wrote {args.out} ({args.format}): {report.num_quantized} tensors quantized, "
        f"{report.bytes_before / 2**20:.2f} MiB -> {report.bytes_after / 2**20:.2f} MiB, "
        f"mean relative weight error {np.mean(errs) if errs else 0:.4f}")
  return 0
