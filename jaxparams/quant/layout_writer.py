"""Writing a quantized checkpoint as tensors come: the jaxparams layout or the HF GPTQ layout.

:class:`LayoutWriter` takes each tensor of a streamed quantization (a quantized
:class:`~jaxparams.quant.QArray`, a kept tensor, or a full-precision tensor changed by a block-wise
method) and writes its parts through a :class:`jaxparams.io.SafetensorsWriter`; it keeps the
per-tensor layout entries (jaxparams layout) or GPTQ summaries for the JSON written at the end
(:func:`write_side_files`). The encodings are those of :mod:`jaxparams.quant.checkpoint`.

Example:
  >>> gptq_format({'a': ('gptq', type('C', (), {'symmetric': True})())})
  'gptq'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxparams import io as jio
from jaxparams.quant import card as qcard
from jaxparams.quant import checkpoint as qckpt
from jaxparams.quant import qentry
from jaxparams.quant import rules as qrules

__all__ = ["LayoutWriter", "gptq_format", "write_side_files"]


class LayoutWriter:
  """Writes tensors of either layout as they come; the JSON/config at the end."""

  def __init__(self, writer: Any, fmt: str, m: Any):
    self.w, self.fmt, self.m = writer, fmt, m
    self.entries: dict[str, dict] = {}
    self.gptq_tensors: dict[str, Any] = {}
    self.gptq_format = "gptq"

  def add_float(self, path: str, value: Any) -> None:
    """A full-precision tensor changed by a block-wise method (e.g. a norm scale under LET)."""
    hf, tr = self.m.nmap[path]
    a = np.asarray(value)
    self.w.add(hf, a.T if tr else a)

  def add(self, path: str, leaf: Any, method: str | None) -> None:
    """Writes one tensor: kept (``method`` ``None``, read from the source) or quantized."""
    if method is None:
      hf, _ = self.m.nmap[path]
      self.w.add(hf, self.m.read_hf(hf))
      return
    for name, arr in self.parts(path, leaf, method):
      self.w.add(name, arr)

  def parts(self, path: str, leaf: Any, method: str) -> list[tuple[str, Any]]:
    """The output tensors of one quantized leaf, in this layout (its entry or summary kept).

    Raises:
      ValueError: ``path`` is not a Linear weight; the packed parts disagree with the layout
        entry; the GPTQ layout cannot hold ``leaf``.
    """
    hf, tr = self.m.nmap[path]
    if not tr:
      raise ValueError(f"{path}: quantized tensor {hf!r} is not a Linear weight; keep it in full "
                       "precision")
    if self.fmt == "gptq":
      out = list(qckpt.gptq_encode(hf, leaf, checkpoint_format=self.gptq_format).items())
      self.gptq_tensors[hf] = qckpt.gptq_summary(hf, leaf)
      return out
    meta = qckpt.layout_entry(leaf, transpose=True, method=method)
    self.entries[hf] = meta
    parts = qckpt.encode_parts(leaf)
    self._check_parts(hf, meta, parts)
    return [(f"{hf}.{part}", arr) for part, arr in parts.items()]

  def _check_parts(self, hf: str, meta: Mapping[str, Any], parts: Mapping[str, Any]) -> None:
    # Packed outputs hold no source dtype: their shapes must agree with the layout entry (what
    # a reader checks), before anything is published; scales/zeros are checked finite by the
    # writer (check_outputs).
    want = qentry.expected_shapes(meta)
    for part, arr in parts.items():
      if part in want and tuple(np.shape(arr)) != want[part]:
        raise ValueError(f"{self.w.out_dir}: output tensor {hf}.{part} has shape "
                         f"{tuple(np.shape(arr))}, expected {want[part]} for a {meta['bits']}-bit "
                         f"{meta['kind']} tensor of shape {tuple(meta['shape'])}; nothing was "
                         "written")


def gptq_format(plan: Mapping[str, Any]) -> str:
  """``'gptq'`` (v1) when every planned quantizer is symmetric, else ``'gptq_v2'``."""
  specs = [s for s in plan.values() if s is not None]
  return "gptq" if all(getattr(s[1], "symmetric", False) for s in specs) else "gptq_v2"


def _card(src: Path, report: qrules.QuantReport) -> str:
  methods: dict[str, int] = {}
  bits: dict[str, Any] = {}
  for e in report.quantized():
    methods[e.method] = methods.get(e.method, 0) + 1
    bits.setdefault(e.method, set()).add(e.bits)
  return qcard.model_card(src.resolve().name, methods,
                          bits={m: ", ".join(str(b) for b in sorted(v, key=str))
                                for m, v in bits.items()})


def write_side_files(w: Any, sink: LayoutWriter, src: Path, src_cfg: Mapping[str, Any],
                     report: qrules.QuantReport) -> None:
  """The layout JSON, ``config.json`` (with ``quantization_config``), report, card, tokenizer.

  Raises:
    ValueError: ``fmt='gptq'`` with quantized tensors outside one stack of numbered blocks.
  """
  m = sink.m
  if sink.fmt == "gptq":
    qcfg = qckpt.gptq_config(sink.gptq_tensors, checkpoint_format=sink.gptq_format)
    if "block_name_to_quantize" not in qcfg:
      raise ValueError(f"--format gptq: the quantized tensors {sorted(sink.gptq_tensors)[:4]} "
                       "are not all Linear weights of one stack of numbered blocks, which GPTQ "
                       "loaders require; keep the others in full precision")
    w.write_json(qckpt.GPTQ_CONFIG_FILE, qcfg)
    w.write_json("config.json", {**src_cfg, "quantization_config": qcfg})
    w.copy_from(src)
    w.copy_from(src, jio.SENTENCE_TRANSFORMERS_FILES)
  else:
    order = [m.nmap[p][0] for p in m.abstract]
    entries = {hf: sink.entries[hf] for hf in order if hf in sink.entries}
    w.write_json(qckpt.LAYOUT_FILE, {"format": qckpt.FORMAT, "version": qckpt.VERSION,
                                     "tensors": entries})
    w.write_json("config.json", {**src_cfg,
                                 "quantization_config": qcard.quantization_config(qckpt.VERSION)})
    w.write_json("quant_report.json", report.to_dict())
    w.copy_from(src)
    w.copy_from(src, jio.SENTENCE_TRANSFORMERS_FILES)
    (w.folder_tmp / "README.md").write_text(_card(src, report))
