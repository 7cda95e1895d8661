"""Calibrated quantization of a streamed checkpoint, block by block, on calib's sequential driver.

:func:`calibrated_blocks` is quantization's ``step`` for
:func:`jaxparams.calib.sequential.run_block_chain` (the one sequential block driver): for each
transformer block it collects the input statistics of the block's planned Linear layers on the
outputs of the already quantized blocks, quantizes them (GPTQ/AWQ/decoupleQ per layer;
AutoRound's learned rounding and OmniQuant's block-wise training against the full-precision
chain; ``true_sequential``: each stage recalibrated with the earlier stages of the block
quantized), hands every tensor of the block to the layout writer and returns the dequantized
weights the next block is fed with.

Example:
  >>> import numpy as np
  >>> from jaxparams.calib import InputStats
  >>> x = np.ones((4, 2), np.float32)
  >>> s = {'q': InputStats.from_inputs(x), 'k': InputStats.from_inputs(x),
  ...      'o': InputStats.from_inputs(2 * x)}
  >>> stages(['q', 'k', 'o'], s)
  [['q', 'k'], ['o']]
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams import tree as jtree
from jaxparams.calib.capture import linear_order
from jaxparams.calib.sequential import BlockStep, pad_batches, run_block_chain, stack_calls
from jaxparams.quant import rules as qrules
from jaxparams.quant.methods import get_record

log = logging.getLogger(__name__)

__all__ = ["calibrated_blocks", "stages"]


def calibrated_blocks(m: Any, plan: Mapping[str, Any], batches: list, sink: Any,
                      quantize: Callable, true_sequential: bool = False) -> set[str]:
  """Quantizes the transformer blocks of ``m`` sequentially; returns the flax paths written.

  Args:
    m: the :class:`~jaxparams.quant.stream_model.StreamModel`.
    plan: flax path -> ``(method, config)`` or ``None`` (kept).
    batches: calibration batches.
    sink: the :class:`~jaxparams.quant.layout_writer.LayoutWriter`.
    quantize: ``quantize(path, w, stats=None, *, qa=None, seconds=0.0) -> QArray`` (records
      the report entry).
    true_sequential: recalibrate each stage on the block with its earlier stages quantized.

  Raises:
    ValueError: calibrated layers outside the blocks or never called on the batches.
  """
  linears = linear_order(m.module, jtree.unflatten(dict(m.abstract)), batches[0])
  calibrated = [p for p, s in plan.items() if s is not None and qrules.is_calibrated(s[0])]

  def check(order: list[str], blocks: Mapping[str, nn.Module]) -> None:
    log.info("calibrated quantization block by block: %s",
             ", ".join(n for n in order if n in blocks))
    outside = [p for p in calibrated if p.split("/", 1)[0] not in blocks]
    if outside:
      raise ValueError(f"calibrated quantization of {outside[:4]} (outside the transformer "
                       "blocks) is not supported when streaming; keep them or use a "
                       "calibration-free method (or jaxparams.quant.quantize_model in memory)")
    never = [p for p in calibrated if p not in linears]
    if never:
      raise ValueError(f"layer(s) {never[:4]} never ran on the calibration batch; they cannot "
                       "be calibrated (keep them or use a calibration-free method)")

  learned = [p for p in calibrated if plan[p][0] == "autoround"]
  # block-wise methods (OmniQuant) train against the full-precision chain's block outputs
  blockwise = {p: get_record(s[0]).info["block"] for p, s in plan.items()
               if s is not None and "block" in get_record(s[0]).info}
  done: set[str] = set()

  def step(b: BlockStep) -> dict[str, jax.Array]:
    name, module, flat = b.name, b.module, b.flat
    todo = [p for p in linears if p in flat and plan[p] is not None]
    stats = b.stats(flat, todo) if todo else {}
    if b.fp_next is not None:
      ar = [p for p in todo if p in learned]
      if ar:   # AutoRound's targets: the fp model's chain
        stats = _autoround_block(module, name, flat, {p: plan[p][1] for p in ar}, stats,
                                 b.states, b.fp_next, b.masks)
    current = dict(flat)
    changed: dict[str, Any] = {}
    if b.fp_next is not None:
      targets = [a[0] for a, _ in b.fp_next]
      n = len(name) + 1
      for fn in dict.fromkeys(blockwise[p] for p in todo if p in blockwise):
        mine = [p for p in todo if blockwise.get(p) is fn]
        t0 = time.perf_counter()
        res = fn(module, {p[n:]: v for p, v in flat.items()},
                 {p[n:]: plan[p][1] for p in mine}, b.states, targets, b.masks)
        secs = (time.perf_counter() - t0) / len(mine)
        log.info("%s: block-wise %s, loss %.3g -> %.3g", name, plan[mine[0]][0],
                 res.losses[0], res.losses[-1])
        for p in mine:
          quantize(p, flat[p], stats.get(p), qa=res.qarrays[p[n:]], seconds=secs)
          sink.add(p, res.qarrays[p[n:]], plan[p][0])
          done.add(p)
        current.update({f"{name}/{r}": v for r, v in res.params.items()})
        changed.update({f"{name}/{r}": v for r, v in res.changed.items()})
    rest = [p for p in todo if p not in done]
    for i, stage in enumerate(stages(rest, stats) if true_sequential else [rest]):
      if i:      # true-sequential: this stage sees the earlier stages of the block quantized
        again = [p for p in stage if p not in learned]
        if again:
          stats.update(b.stats(current, again))
      for p in stage:
        qa = quantize(p, flat[p], stats.get(p))
        current[p] = qrules.effective_weight(qa, flat[p].dtype).reshape(flat[p].shape)
        sink.add(p, qa, plan[p][0])
        done.add(p)
    for p in b.paths:
      if p not in done:
        if p in changed:                           # full precision, changed by a block method
          sink.add_float(p, changed[p])
        elif plan[p] is not None:                  # planned but not a called linear
          qa = quantize(p, flat[p])
          sink.add(p, qa, plan[p][0])
        else:
          sink.add(p, None, None)
        done.add(p)
    return current

  run_block_chain(m.module, m.abstract, m.read, pad_batches(batches) if learned else batches,
                  step, fp_chain=bool(learned or blockwise), on_blocks=check)
  return done


def stages(todo: list, stats: Mapping[str, Any]) -> list[list[str]]:
  """Consecutive layers reading the same input (equal ``X^T X``: q/k/v, gate/up) form a stage."""
  out: list[list[str]] = []
  for p in todo:
    prev = out[-1][-1] if out else None
    if (prev is not None and p in stats and prev in stats
        and stats[p].xtx.shape == stats[prev].xtx.shape
        and bool(jnp.array_equal(stats[p].xtx, stats[prev].xtx))):
      out[-1].append(p)
    else:
      out.append([p])
  return out


def _autoround_block(module: nn.Module, name: str, flat: Mapping[str, jax.Array],
                     configs: Mapping[str, Any], stats: Mapping[str, Any], states: list,
                     fp_next: list, masks: list) -> dict[str, Any]:
  """Block-wise AutoRound: learned rounding of ``configs``' layers; their stats carry it."""
  from jaxparams.quant.autoround import LearnedRounding, autoround_block  # pylint: disable=g-import-not-at-top
  n = len(name) + 1

  def apply(rel_flat, x):
    a, kw = x
    return module.apply({"params": jtree.unflatten(dict(rel_flat))}, *a, **kw)

  inputs = stack_calls([(tuple(a), {k: v for k, v in kw.items() if v is not None})
                        for a, kw in states])
  targets = jnp.concatenate([a[0] for a, _ in fp_next], axis=0)
  mask = None if any(m is None for m in masks) else jnp.concatenate(masks, axis=0)
  rel = {p[n:]: v for p, v in flat.items()}
  learned, losses = autoround_block(apply, rel, {p[n:]: c for p, c in configs.items()},
                                    inputs, targets, mask, name=name)
  if len(losses):
    log.info("autoround %s: loss %.3e -> best %.3e", name, float(losses[0]), float(losses.min()))
  out = dict(stats)
  for p in configs:
    s, lp = stats[p], learned[p[n:]]
    out[p] = LearnedRounding(xtx=s.xtx, abs_sum=s.abs_sum, count=s.count, v=lp["v"],
                             alpha=lp["alpha"], beta=lp["beta"])
  return out
