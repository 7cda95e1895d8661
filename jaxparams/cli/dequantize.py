"""``jaxparams dequantize QDIR OUT_DIR``: a quantized checkpoint back to full precision.

Reads the jaxparams layout (``jaxparams_quant.json``) or the HF GPTQ layout
(``quantize_config.json`` / ``quantization_config``), dequantizes every quantized
tensor (:func:`jaxparams.quant.dequantize_checkpoint`, tensor by tensor) and writes an
ordinary HF safetensors checkpoint with the same tensor names (``<p>.weight`` for GPTQ's
``<p>.qweight/...``), the source ``config.json`` (without ``quantization_config``) and
tokenizer files, so any tool can evaluate it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxparams.quant import stream

__all__ = ["add_parser", "run", "dequantize_checkpoint"]


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("dequantize", help=SUMMARIES["dequantize"],
                     description="Dequantize a jaxparams or HF GPTQ quantized checkpoint into a "
                     "full-precision HF safetensors checkpoint (same tensor names, config copied).")
  p.add_argument("qdir", metavar="QDIR", help="quantized checkpoint folder")
  p.add_argument("out", metavar="OUT_DIR", help="output folder (created atomically)")
  p.add_argument("--dtype", default=None,
                 help="output dtype of dequantized tensors (default: the original dtype)")
  p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
  p.set_defaults(func=run)


def dequantize_checkpoint(qdir: str | Path, out: str | Path, *, dtype: Any = None,
                          overwrite: bool = False) -> dict[str, Any]:
  """Deprecated: use :func:`jaxparams.quant.dequantize_checkpoint` (the library call)."""
  return stream.dequantize_checkpoint(qdir, out, dtype=dtype, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
  from jaxparams.quant import rotated_checkpoint as rc  # pylint: disable=g-import-not-at-top
  if rc.is_outliers_checkpoint(args.qdir):   # issue 29: rotations multiplied back
    info = rc.dequantize_outliers_checkpoint(args.qdir, args.out, dtype=args.dtype,
                                             overwrite=args.overwrite)
    print(f"wrote {args.out}: {info['dequantized']} tensors dequantized, {info['unrotated']} "
          "with their rotations multiplied back (stock full-precision weights)")
    return 0
  info = stream.dequantize_checkpoint(args.qdir, args.out, dtype=args.dtype,
                                      overwrite=args.overwrite)
  print(f"wrote {args.out}: {info['tensors']} tensors ({info['dequantized']} dequantized from the "
        f"{info['layout']} layout)")
  return 0
