"""Sequential calibrated quantization of a model, layer by layer (GPTQ's procedure).

The calibration machinery lives in :mod:`jaxparams.calib`: layer-input capture
(:func:`~jaxparams.calib.capture_inputs`, :func:`~jaxparams.calib.collect_stats`),
the statistics type :class:`~jaxparams.calib.InputStats` and the corpus
(:func:`~jaxparams.calib.text_batches`); they are re-exported here under their old
names (``LayerStats`` is a deprecated alias of ``InputStats``).

:func:`quantize_model` runs GPTQ-style sequential quantization at block
granularity: blocks (``layers_{i}``) are processed in execution order; the
inputs of block ``i`` are captured with blocks ``< i`` already quantized (their
dequantized weights), so each block sees the errors of the ones before it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxparams as jp, jaxparams.models
  >>> cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=1, num_attention_heads=2)
  >>> model = jp.models.Llama(cfg)
  >>> ids = jnp.ones((2, 8), jnp.int32)
  >>> params = model.init(jax.random.key(0), ids)['params']
  >>> q, report = quantize_model(model, params, [('**', ('gptq', {'group_size': 16}))], [ids])
  >>> report.num_quantized
  7
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import jax
from flax import linen as nn

from jaxparams import tree as jtree
from jaxparams.calib.capture import (as_call, block_of, capture_inputs, check_batches,
                                     collect_stats, linear_order, stats_runner)
from jaxparams.calib.corpus import text_batches
from jaxparams.calib.sequential import block_groups, run_groups
from jaxparams.calib.stats import InputStats
from jaxparams.quant import rules as qrules

__all__ = ["capture_inputs", "collect_stats", "linear_order", "quantize_model",
           "text_batches", "block_of"]

_stats_runner = stats_runner      # old private names (tests and notebooks use them)
_as_call = as_call
_check_batches = check_batches


def __getattr__(name: str):
  if name == "LayerStats":
    warnings.warn("jaxparams.quant.calibrate.LayerStats is deprecated: use "
                  "jaxparams.calib.InputStats (sums xtx/abs_sum/count; .gram = X^T X / n, "
                  ".hessian = 2 X^T X / n)", DeprecationWarning, stacklevel=2)
    return InputStats
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- sequential
def quantize_model(module: nn.Module, params: Any, rules: Any, batches: Any = None, *,
                   keep: Sequence[Any] = qrules.DEFAULT_KEEP, sequential: bool = True,
                   progress: Callable[[str, int, int], None] | None = None
                   ) -> tuple[Any, qrules.QuantReport]:
  """Quantizes a model's params by rules, calibrating each layer on ``batches``.

  With ``sequential=True`` (GPTQ's procedure) blocks are quantized in execution
  order and the inputs of each block are captured from the partially quantized
  model; with ``sequential=False`` every layer is calibrated on the full-precision
  model. Methods that need no calibration still get an output-error figure in the
  report when batches are given.

  Args:
    module: a flax module (``Llama``, ``Bert``, ...).
    params: its ``'params'`` collection.
    rules: as for :func:`jaxparams.quant.quantize_tree`.
    batches: calibration batches (see :func:`collect_stats`); required when a rule
      uses a calibrated method.
    keep: full-precision defaults (see :data:`jaxparams.quant.rules.DEFAULT_KEEP`).
    sequential: feed each block the outputs of the already quantized blocks.
    progress: called as ``progress(path, index, total)`` before each layer.

  Returns:
    ``(qparams, report)`` like :func:`jaxparams.quant.quantize_tree`.

  Raises:
    ValueError: calibrated method without batches; a batch of the wrong shape; a
      layer that never ran on the calibration batches; every quantize_tree error.
  """
  flat = jtree.flatten(params)
  plan, reasons = qrules.plan_tree(flat, rules, keep=keep)
  todo = [p for p, s in plan.items() if s is not None]
  calibrated = [p for p in todo if _needs_calibration(plan[p][0])]
  if batches is None:
    if calibrated:
      raise ValueError(f"quantize_model: method {plan[calibrated[0]][0]!r} (for "
                       f"{calibrated[0]!r}) needs calibration batches")
    return qrules.quantize_tree(params, rules, keep=keep)
  batches = check_batches(batches)
  for i, b in enumerate(batches):
    as_call(b, i)
  order = [p for p in linear_order(module, params, batches[0]) if plan.get(p) is not None]
  never = [p for p in calibrated if p not in order]
  if never:
    raise ValueError(f"quantize_model: layer(s) {never[:4]} never ran on the calibration batch; "
                     "they cannot be calibrated (keep them or use a calibration-free method)")
  order += [p for p in todo if p not in order]  # not executed: quantized without statistics
  current = dict(flat)        # what the forward pass uses (dequantized where quantized)
  out = dict(flat)
  report = qrules.QuantReport()
  done = [0]

  def step(group: list[str], stats: dict[str, InputStats]) -> Any:
    for path in group:
      if progress is not None:
        progress(path, done[0], len(order))
      w = flat[path]
      qa = qrules.quantize_planned(path, w, plan[path], reasons[path], report,
                                   stats=stats.get(path))
      out[path] = qa
      current[path] = qrules.effective_weight(qa, w.dtype).reshape(w.shape)
      done[0] += 1
    return jtree.unflatten(current, like=params)

  # the one sequential block driver: each block calibrated on the blocks before it quantized
  run_groups(module, jtree.unflatten(current, like=params), batches, block_groups(order), step,
             sequential=sequential)
  final = qrules.finish_report(flat, report, reasons)
  return jtree.unflatten(out, like=params), final


def _needs_calibration(method: str) -> bool:
  return qrules.is_calibrated(method)
