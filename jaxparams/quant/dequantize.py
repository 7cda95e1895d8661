"""Dequantizing a quantized checkpoint back to a full-precision HF checkpoint, tensor by tensor.

Lives with the checkpoint format (:mod:`jaxparams.quant.checkpoint`): each quantized tensor of
either layout (jaxparams or HF GPTQ) is rebuilt as a :class:`~jaxparams.quant.QArray` by
:func:`~jaxparams.quant.checkpoint.iter_quantized` and dequantized by it.

Example:
  >>> import os, tempfile
  >>> from pathlib import Path
  >>> import jaxparams.quant as jq
  >>> src = Path(jq.__file__).parents[2] / 'tests/fixtures/llama_tiny'
  >>> d = tempfile.mkdtemp()
  >>> _ = jq.quantize_checkpoint(src, os.path.join(d, 'q'), [('**', ('rtn', {'group_size': 32}))])
  >>> dequantize_checkpoint(os.path.join(d, 'q'), os.path.join(d, 'dq'))['dequantized']
  14
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from jaxparams import io as jio
from jaxparams.quant import card as qcard
from jaxparams.quant import checkpoint as qckpt

log = logging.getLogger(__name__)

__all__ = ["dequantize_checkpoint"]


def dequantize_checkpoint(qdir: str | Path, out: str | Path, *, dtype: Any = None,
                          overwrite: bool = False, max_shard_bytes: float = 1e9
                          ) -> dict[str, Any]:
  """Writes the full-precision HF checkpoint of a quantized one, tensor by tensor.

  Works for the jaxparams layout and the HF GPTQ layout; each quantized tensor is
  rebuilt as a :class:`~jaxparams.quant.QArray` and dequantized by it (HF Linear
  weights come back as ``dequantize().T``).

  Args:
    qdir: the quantized folder.
    out: output folder (atomic).
    dtype: dtype of the dequantized tensors (a name such as ``'bfloat16'``); default the
      original one: the jaxparams layout records it per tensor; for GPTQ it is
      ``config.json`` ``torch_dtype``/``dtype``, else that of the full-precision tensors.
    overwrite: replace ``out``.
    max_shard_bytes: output shard size.

  Returns:
    ``{'layout', 'tensors', 'dequantized'}``.

  Raises:
    ValueError: not a quantized checkpoint, a mismatched layout, an unknown dtype.
  """
  qdir, out = Path(qdir), Path(out)
  if not qdir.is_dir():
    raise FileNotFoundError(f"{qdir}: no such folder")
  jio.check_output_dir(out, overwrite)
  if dtype is not None:
    dtype = jio.parse_dtype(dtype, what="--dtype") if isinstance(dtype, str) else np.dtype(dtype)
  layout = qckpt.detect_layout(qdir)
  if layout == "plain":
    raise ValueError(f"{qdir}: not a quantized checkpoint (no {qckpt.LAYOUT_FILE} nor "
                     f"{qckpt.GPTQ_CONFIG_FILE})")
  n = n_q = 0
  log.info("dequantizing %s -> %s", qdir, out)
  with jio.SafetensorsWriter(out, overwrite=overwrite, max_shard_bytes=max_shard_bytes) as w:
    for name, leaf, meta in qckpt.iter_quantized(qdir):
      if qckpt.is_quant(leaf):
        w.add(name, qckpt.dequantize_leaf(leaf, meta, dtype))
        n_q += 1
      else:
        w.add(name, np.asarray(leaf))
      n += 1
    cfg_file = qdir / "config.json"
    if cfg_file.is_file():
      cfg = dict(jio.read_model_config(qdir))  # copied into the output: the strict reader
      cfg.pop("quantization_config", None)
      if dtype is not None:
        cfg["torch_dtype"] = str(np.dtype(dtype))
        if "dtype" in cfg:                        # transformers >= 4.56 name
          cfg["dtype"] = str(np.dtype(dtype))
      w.write_json("config.json", cfg)
    w.copy_from(qdir)
    w.copy_from(qdir, jio.SENTENCE_TRANSFORMERS_FILES)
    card = qdir / "README.md"        # the source's card, not ours (it says "quantized")
    if card.is_file() and not qcard.is_jaxparams_card(card.read_text(errors="replace")):
      w.copy_from(qdir, ["README.md"])
  return {"layout": layout, "tensors": n, "dequantized": n_q}
