"""Streaming quantization of HF checkpoints: memory bounded by one block, not the model.

:func:`quantize_checkpoint` reads an HF safetensors checkpoint (Llama, BERT/MiniLM)
from disk and writes the quantized checkpoint (the jaxparams layout of
:mod:`jaxparams.quant.checkpoint`, or the HF GPTQ layout):

* **data-free methods** (RTN, NF4, FP8, HQQ) and kept tensors go tensor by tensor through
  the shared streaming driver (:func:`jaxparams.transform.run_tasks`): read ahead in a
  background thread, quantized on the host by the method's record, packed into the layout
  (its ``emit``), written, dropped; kept tensors are copies checked to keep the source's
  shape and dtype;
* **calibrated methods** (GPTQ, AWQ, decoupleQ) go block by block, as GPTQ's own
  sequential procedure: the calibration batches are embedded once, then for each
  transformer block ``layers_i`` its weights are read, its layer-input statistics
  (:class:`~jaxparams.calib.InputStats`) collected on the previous block's outputs,
  its Linear weights quantized, the block re-run with the dequantized weights to
  give the next block's inputs, and everything of the block written and dropped.

Peak memory is about one block (plus the embedding, the calibration activations,
the driver's read-ahead of at most two tensors or 2 GB, and the output shard buffer
``max_shard_bytes``). The per-tensor quantization is
:func:`jaxparams.quant.rules.quantize_leaf`, the same function the tree API runs.
One job per file:

* the checkpoint is opened by the one HF opener (:func:`jaxparams.models.hf_open.open_hf`,
  ``config.json`` checked against the headers) and seen through
  :mod:`jaxparams.quant.stream_model`;
* calibrated blocks go through the one sequential block driver
  (:func:`jaxparams.calib.sequential.run_block_chain`) with quantization's step in
  :mod:`jaxparams.quant.block_calibration`;
* tensors are written by :mod:`jaxparams.quant.layout_writer` (jaxparams or GPTQ layout);
* :func:`dequantize_checkpoint` (:mod:`jaxparams.quant.dequantize`) streams back to a
  full-precision HF checkpoint tensor by tensor.

Example:
  >>> import os, tempfile
  >>> from pathlib import Path
  >>> import jaxparams.quant as jq
  >>> src = Path(jq.__file__).parents[2] / 'tests/fixtures/llama_tiny'
  >>> out = os.path.join(tempfile.mkdtemp(), 'q')
  >>> rep = quantize_checkpoint(src, out, [('**', ('rtn', {'bits': 4, 'group_size': 32}))])
  >>> rep.num_quantized, sorted(os.listdir(out))[:3]
  (14, ['README.md', 'config.json', 'jaxparams_quant.json'])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxparams import io as jio
from jaxparams.calib.capture import as_call, check_batches
from jaxparams.calib.corpus import folder_text_batches
from jaxparams.calib.sequential import stack_calls as _stack  # noqa: F401  (old private name)
from jaxparams.models.hf_open import open_hf
from jaxparams.quant import checkpoint as qckpt
from jaxparams.quant import report as qreport
from jaxparams.quant import rules as qrules
from jaxparams.quant.block_calibration import calibrated_blocks as _calibrated_blocks
from jaxparams.quant.block_calibration import stages as _stages  # noqa: F401  (old private name)
from jaxparams.quant.dequantize import dequantize_checkpoint
from jaxparams.quant.layout_writer import LayoutWriter, gptq_format, write_side_files
from jaxparams.quant.stream_model import StreamModel as _Model
from jaxparams.quant.stream_model import open_model as _open_model
from jaxparams.transform.stream_driver import StreamTask, run_tasks

log = logging.getLogger(__name__)

__all__ = ["quantize_checkpoint", "dequantize_checkpoint", "ST_FILES"]

# Side files copied next to a quantized checkpoint (tokenizer files are always copied).
ST_FILES = jio.SENTENCE_TRANSFORMERS_FILES + ("README.md",)


# ----------------------------------------------------------------------------- quantize
def _batches_for(src: Path, calibration: Any, max_length: int, batch_size: int) -> list:
  if calibration is None:
    return []
  cal = list(calibration) if not isinstance(calibration, (Mapping, np.ndarray)) else [calibration]
  if cal and all(isinstance(t, str) for t in cal):
    return folder_text_batches(src, cal, batch_size=batch_size, max_length=max_length,
                               purpose="calibration text cannot be tokenized")
  batches = check_batches(cal)
  for i, b in enumerate(batches):
    as_call(b, i)
  return batches


def quantize_checkpoint(src: str | Path, out: str | Path, rules: Any, *,
                        calibration: Any = None, fmt: str = "jaxparams",
                        keep: Sequence[Any] = qrules.DEFAULT_KEEP, max_length: int = 128,
                        batch_size: int = 16, overwrite: bool = False,
                        max_shard_bytes: float = 1e9,
                        progress: Callable[[str, int, int], None] | None = None,
                        true_sequential: bool = False) -> qrules.QuantReport:
  """Quantizes an HF checkpoint folder by rules, streaming; returns the report.

  Args:
    src: HF folder (``config.json`` + safetensors) of a Llama or BERT model.
    out: output folder (atomic: nothing is left on an error).
    rules: as for :func:`jaxparams.quant.quantize_tree` (``[(pattern, spec)]``, on flax
      paths such as ``layers_0/attn/q_proj/kernel``).
    calibration: texts (tokenized with ``src/tokenizer.json``) or calibration batches
      (see :func:`jaxparams.calib.capture.as_call`); required by calibrated methods.
    fmt: ``'jaxparams'`` (default) or ``'gptq'`` (HF GPTQ layout, integer methods).
    keep: full-precision defaults (:data:`jaxparams.quant.rules.DEFAULT_KEEP`).
    max_length: calibration tokens per text.
    batch_size: calibration texts per batch.
    overwrite: replace ``out``.
    max_shard_bytes: output shard size (results are written as they come).
    progress: ``progress(path, index, total)`` before each quantized tensor.
    true_sequential: inside a block, recapture each stage's inputs (q/k/v, then the attention
      output, then gate/up, then down) with the earlier stages already quantized (GPTQ's
      ``--true-sequential``); default: all layers of a block calibrated on its inputs at once.

  Raises:
    ValueError: unsupported architecture, calibrated methods without calibration,
      rules matching nothing, a layout that cannot hold a method, bad inputs.
  """
  src, out = Path(src), Path(out)
  if not src.is_dir():
    raise FileNotFoundError(f"{src}: no such checkpoint folder")
  if fmt not in ("jaxparams", "gptq"):
    raise ValueError(f"unknown output format {fmt!r}; valid: 'gptq', 'jaxparams'")
  jio.check_output_dir(out, overwrite)
  with open_hf(src, purpose="quantization") as ck:
    m = _open_model(src, ck)
    try:
      return _quantize(src, out, m, rules, calibration=calibration, fmt=fmt, keep=keep,
                       max_length=max_length, batch_size=batch_size, overwrite=overwrite,
                       max_shard_bytes=max_shard_bytes, progress=progress,
                       true_sequential=true_sequential)
    finally:
      m.close()


def _rest_tasks(m: _Model, plan: Mapping[str, Any], done: set[str]) -> list[StreamTask]:
  """Driver tasks of the tensors not written block by block, in checkpoint order.

  Kept tensors and the ones the model does not use are copies, checked to keep the
  source's shape and dtype; a planned tensor's task carries its flax path (``meta``) and is
  quantized by :func:`_quantize_emit`.
  """
  tasks = []
  for path, spec in m.abstract.items():
    if path in done:
      continue
    hf, tr = m.nmap[path]
    read = (("src", m.src_names[hf]),)
    if plan[path] is not None:
      tasks.append(StreamTask(hf, read, meta=path))
    else:
      shape = tuple(spec.shape[::-1]) if tr else tuple(spec.shape)
      tasks.append(StreamTask(hf, read, out_shape=shape, out_dtype=spec.dtype))
  for name, fname in m.extra.items():
    spec = m.reader.spec(fname)
    dtype = jio.to_numpy_dtype(spec.dtype) if isinstance(spec.dtype, str) else spec.dtype
    tasks.append(StreamTask(name, (("src", fname),), out_shape=tuple(spec.shape), out_dtype=dtype))
  return tasks


def _quantize_emit(m: _Model, plan: Mapping[str, Any], sink: LayoutWriter,
                   quantize: Callable) -> Callable:
  """The driver's ``emit``: a planned tensor (as read) quantized into the layout's parts."""

  def emit(task: StreamTask, outs: list) -> list:
    path = task.meta
    if path is None:                # a copy, already checked
      return outs
    (_, stored), = outs
    w_ = jnp.asarray(m.flax_view(path, stored))
    return sink.parts(path, quantize(path, w_), plan[path][0])

  return emit


def _quantize(src: Path, out: Path, m: _Model, rules: Any, *, calibration, fmt, keep,
              max_length, batch_size, overwrite, max_shard_bytes, progress,
              true_sequential=False):
  reader = m.reader
  plan, reasons = qrules.plan_tree(m.abstract, rules, keep=keep)
  calibrated = [p for p, s in plan.items() if s is not None and qrules.is_calibrated(s[0])]
  batches = _batches_for(src, calibration, max_length, batch_size)
  if calibrated and not batches:
    raise ValueError(f"method(s) {sorted({plan[p][0] for p in calibrated})} need calibration: "
                     "pass calibration= texts or batches (CLI: --calibration TEXT_FILE)")
  todo = [p for p, s in plan.items() if s is not None]
  log.info("quantizing %s -> %s: %d of %d tensors (%d calibrated, %d calibration batches), "
           "format %s", src, out, len(todo), len(plan), len(calibrated), len(batches or ()), fmt)
  report = qrules.QuantReport()
  src_cfg = dict(reader.config())
  meta = ({"format": "pt", "jaxparams_quant_version": str(qckpt.VERSION)}
          if fmt == "jaxparams" else None)
  kw = {"metadata": meta} if meta else {}
  # Each result goes to disk as it comes (not one shard in memory): header room for up to
  # four outputs per source tensor (qweight, scales, zeros, g_idx).
  kw["header_reserve"] = 2048 + sum(4 * (len(n) + 100) for n in reader.names())
  with jio.SafetensorsWriter(out, overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                             check_outputs=True, **kw) as w:
    sink = LayoutWriter(w, fmt, m)
    # v1 'gptq' stores zero - 1, so a zero point of 0 (asymmetric groups) cannot be written
    sink.gptq_format = gptq_format(plan)
    counter = {"i": 0}

    def quantize(path, w_, stats=None, *, qa=None, seconds=0.0):
      if qa is not None:            # computed by a block-wise method: only recorded
        report.entries[path] = qreport.make_entry(path, w_, qa, plan[path][0], reasons[path],
                                                  stats=stats, seconds=seconds)
        return qa
      if progress is not None:
        progress(path, counter["i"], len(todo))
      counter["i"] += 1
      return qrules.quantize_planned(path, w_, plan[path], reasons[path], report, stats=stats)

    done: set[str] = set()
    if batches:       # sequential, block by block (data-free layers get output errors too)
      done = _calibrated_blocks(m, plan, batches, sink, quantize, true_sequential)
    # everything else, and tensors the model does not use: through the streaming driver
    run_tasks(_rest_tasks(m, plan, done), {"src": reader}, w,
              emit=_quantize_emit(m, plan, sink, quantize))
    report = qrules.finish_report(m.abstract, report, reasons)
    write_side_files(w, sink, src, src_cfg, report)
  log.info("wrote %s", out)
  return report
