"""``jaxparams dequantize QDIR OUT_DIR``: a quantized checkpoint back to full precision.

Reads the jaxparams layout (``jaxparams_quant.json``) or the HF GPTQ layout
(``quantize_config.json`` / ``quantization_config``), dequantizes every quantized
tensor and writes an ordinary HF safetensors checkpoint with the same tensor names
(``<p>.weight`` for GPTQ's ``<p>.qweight/...``), the source ``config.json``
(without ``quantization_config``) and tokenizer files, so any tool can evaluate it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxparams import io as jio

__all__ = ["add_parser", "run", "dequantize_checkpoint"]

_COPY = jio.SENTENCE_TRANSFORMERS_FILES + ("README.md",)


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("dequantize", help="Write a full-precision HF checkpoint from a quantized one.",
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
  """Writes the full-precision checkpoint; returns ``{'layout', 'tensors', 'dequantized'}``.

  Raises:
    ValueError: not a quantized checkpoint, or a mismatched layout.
  """
  # pylint: disable=g-import-not-at-top
  from jaxparams.quant import checkpoint as qckpt
  qdir, out = Path(qdir), Path(out)
  if not qdir.is_dir():
    raise FileNotFoundError(f"{qdir}: no such folder")
  jio.check_output_dir(out, overwrite)
  layout = qckpt.detect_layout(qdir)
  if layout == "jaxparams":
    flat, meta = qckpt.load_quantized_flat(qdir)
    n_q = len(meta["tensors"])
    dense = qckpt.dequantize_flat(flat, meta, dtype=dtype)
  elif layout == "gptq":
    flat, _ = qckpt.import_gptq(qdir)
    n_q = sum(qckpt._is_quant(v) for v in flat.values())  # pylint: disable=protected-access
    dense = {}
    for name, v in flat.items():
      if qckpt._is_quant(v):  # pylint: disable=protected-access
        dense[name] = np.ascontiguousarray(np.asarray(v.dequantize(dtype)).T)
      else:
        dense[name] = np.asarray(v)
  else:
    raise ValueError(f"{qdir}: not a quantized checkpoint (no {qckpt.LAYOUT_FILE} nor "
                     f"{qckpt.GPTQ_CONFIG_FILE})")
  with jio.SafetensorsWriter(out, overwrite=overwrite) as w:
    for name, a in dense.items():
      w.add(name, a)
    cfg_file = qdir / "config.json"
    if cfg_file.is_file():
      cfg = json.loads(cfg_file.read_text())
      cfg.pop("quantization_config", None)
      if dtype is not None:
        cfg["torch_dtype"] = str(np.dtype(dtype))
      w.write_json("config.json", cfg)
    w.copy_from(qdir)
    w.copy_from(qdir, _COPY)
  return {"layout": layout, "tensors": len(dense), "dequantized": n_q}


def run(args: argparse.Namespace) -> int:
  info = dequantize_checkpoint(args.qdir, args.out, dtype=args.dtype, overwrite=args.overwrite)
  print(f"wrote {args.out}: {info['tensors']} tensors ({info['dequantized']} dequantized from the "
        f"{info['layout']} layout)")
  return 0
