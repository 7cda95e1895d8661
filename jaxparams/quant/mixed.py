"""Mixed precision under a budget: per-layer bit widths from measured sensitivity.

Each layer is quantized at every candidate width with the chosen method and its relative
output error ``tr(D^T G D) / tr(W^T G W)`` is measured on the calibration Gram
``G = X^T X / n`` (``D = W_hat - W``; :func:`layer_errors`). :func:`allocate_bits` then picks
one width per layer so that the parameter-weighted mean width meets ``target`` bits per
weight with the smallest summed error (an exact multiple-choice knapsack). Widths count code bits
only: every layer keeps the same group size, so the scales and zeros add the same overhead
as uniform precision of that group size. :func:`mixed_rules` writes the result as rules for
:func:`~jaxparams.quant.quantize_tree`, ``quantize_model`` or the streaming
``quantize_checkpoint``.

Example:
  >>> errs = {'a': {2: 0.4, 3: 0.1, 4: 0.03}, 'b': {2: 0.05, 3: 0.02, 4: 0.01}}
  >>> allocate_bits(errs, {'a': 100, 'b': 100}, 3.0)
  {'a': 4, 'b': 2}
  >>> mixed_rules({'a': 4, 'b': 2}, 'rtn', {'group_size': 64})[0]
  ('a', ('rtn', {'group_size': 64, 'bits': 4}))
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxparams.quant import methods as qmethods
from jaxparams.quant.report import effective_weight

__all__ = ["layer_errors", "allocate_bits", "mixed_rules", "mean_bits"]

def layer_errors(weights: Mapping[str, Any], stats: Mapping[str, Any], method: str,
                 fields: Mapping[str, Any], bits: Sequence[int] = (2, 3, 4)
                 ) -> dict[str, dict[int, float]]:
  """Relative output error of every layer at every width: ``{path: {bits: error}}``.

  Args:
    weights: ``{path: W[K, N]}``.
    stats: ``{path: InputStats}`` (the calibration of each layer).
    method: a registered quantizer (``rtn``, ``gptq``, ...).
    fields: its other config fields (``group_size``, ...); ``bits`` is set per width.
    bits: candidate widths.
  """
  out: dict[str, dict[int, float]] = {}
  for path, w in weights.items():
    if path not in stats:
      raise ValueError(f"layer_errors: no calibration statistics for {path!r}; have "
                       f"{sorted(stats)[:6]}")
    g = stats[path].gram
    w32 = jnp.asarray(w, jnp.float32).reshape(-1, w.shape[-1])
    ref = float(jnp.sum(w32 * (g @ w32)))
    row = {}
    for b in bits:
      cfg = qmethods.make_config(method, **{**dict(fields), "bits": int(b)})
      stat = stats[path] if qmethods.get_quantizer(method).needs != "none" else None
      qa = qmethods.quantize_matrix(method, w, cfg, stat, name=path)
      d = effective_weight(qa, jnp.float32).reshape(w32.shape) - w32
      row[int(b)] = float(jnp.sum(d * (g @ d))) / max(ref, 1e-30)
    out[path] = row
  return out


def mean_bits(assign: Mapping[str, int], sizes: Mapping[str, int]) -> float:
  """Parameter-weighted mean width."""
  total = sum(sizes[p] for p in assign)
  return sum(assign[p] * sizes[p] for p in assign) / total


def allocate_bits(errors: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int],
                  target: float, *, max_units: int = 200_000) -> dict[str, int]:
  """Per-layer widths whose weighted mean is at most ``target``, minimising the summed error.

  An exact multiple-choice knapsack (dynamic programme over the extra bits, in units of
  the sizes' greatest common divisor; coarser units, rounded up so the budget still holds,
  when that would exceed ``max_units``).

  Args:
    errors: ``{path: {bits: error}}`` (e.g. from :func:`layer_errors`).
    sizes: ``{path: number of weights}``.
    target: mean bits per weight (code bits).

  Raises:
    ValueError: a target below the narrowest width, or layers without sizes.
  """
  missing = sorted(set(errors) - set(sizes))
  if missing:
    raise ValueError(f"allocate_bits: no size for {missing[:6]}")
  paths = list(errors)
  widths = {p: sorted(int(b) for b in errors[p]) for p in paths}
  low = {p: widths[p][0] for p in paths}
  if mean_bits(low, sizes) > target + 1e-9:
    raise ValueError(f"allocate_bits: target {target} bits/weight is below the narrowest "
                     f"widths' mean {mean_bits(low, sizes):.3f}")
  total = sum(int(sizes[p]) for p in paths)
  spare = target * total - sum(low[p] * int(sizes[p]) for p in paths)
  unit = int(np.gcd.reduce([int(sizes[p]) for p in paths]))
  cap = int(np.floor(spare / unit + 1e-9))
  if cap > max_units:
    scale = int(np.ceil(cap / max_units))
    unit, cap = unit * scale, int(np.floor(spare / (unit * scale) + 1e-9))
  dp = np.zeros(cap + 1)
  choices = []
  for p in paths:
    new = np.full(cap + 1, np.inf)
    pick = np.zeros(cap + 1, np.int64)
    for b in widths[p]:
      cost = int(np.ceil((b - low[p]) * int(sizes[p]) / unit - 1e-9))
      if cost > cap:
        continue
      cand = np.full(cap + 1, np.inf)
      cand[cost:] = dp[:cap + 1 - cost] + float(errors[p][b])
      better = cand < new
      new[better], pick[better] = cand[better], b
    dp = new
    choices.append(pick)
  c = int(np.argmin(dp))
  assign = {}
  for p, pick in zip(reversed(paths), reversed(choices)):
    b = int(pick[c])
    assign[p] = b
    c -= int(np.ceil((b - low[p]) * int(sizes[p]) / unit - 1e-9))
  return {p: assign[p] for p in paths}


def mixed_rules(assign: Mapping[str, int], method: str, fields: Mapping[str, Any]
                ) -> list[tuple[str, tuple[str, dict[str, Any]]]]:
  """``[(path, (method, {**fields, 'bits': b}))]``, one exact rule per layer."""
  return [(p, (method, {**dict(fields), "bits": int(b)})) for p, b in assign.items()]
