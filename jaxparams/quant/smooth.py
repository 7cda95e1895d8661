"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights, exactly.

Per input channel ``j`` of a Linear (or of several Linears reading the same input, e.g. q/k/v):
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (clamped at 1e-5; ``max|W_j|`` over every
consumer's row ``j`` of the Flax ``[in, out]`` kernel), then ``X <- X / s`` and ``W <- diag(s) W``:
the product is unchanged. Where the input comes from a norm the division is folded into the
norm's scale (``g <- g / s``, SmoothQuant's ``smooth_ln_fcs``; the decoders' input/post-attention
norms); elsewhere (BERT/Gemma Linears, o_proj/down_proj inputs) it is an online elementwise
division in :class:`~jaxparams.quant.online.OnlineLinear`. The paper's default alpha is 0.5;
:func:`search_alpha` picks alpha per site on the calibration rows by the fake-quantized output
error (RTN weights at the target bits, per-token activations).

Example:
  >>> import numpy as np
  >>> s = smooth_scales(np.array([8.0, 1.0]), np.array([0.5, 0.5]), 0.5)
  >>> s.round(3).tolist()
  [4.0, 1.414]
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.quant.act_quant import fake_quant_weight, quantize_activations

__all__ = ["smooth_scales", "search_alpha", "ALPHA_GRID"]

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)


def smooth_scales(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
  """SmoothQuant's ``s = max|X|^alpha / max|W|^(1-alpha)``, clamped at 1e-5 (float64)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"smooth: alpha must be in [0, 1], got {alpha}")
  a = np.maximum(np.asarray(act_absmax, np.float64), 1e-5)
  w = np.maximum(np.asarray(w_absmax, np.float64), 1e-5)
  return np.maximum(a ** alpha / w ** (1.0 - alpha), 1e-5)


def _err(x, ws, s, bits, group, act_bits, act_clip):
  xs = x / s
  if act_bits:
    xs = quantize_activations(xs, act_bits, act_clip)
  tot = 0.0
  for w in ws:
    ref = x @ w
    wq = s[:, None] * w
    if bits:
      wq = fake_quant_weight(wq, bits, group)
    tot = tot + jnp.sum((xs @ wq - ref) ** 2) / jnp.maximum(jnp.sum(ref ** 2), 1e-30)
  return tot


def search_alpha(x: np.ndarray, ws: Sequence[np.ndarray], *, bits: int, group: int,
                 act_bits: int = 0, act_clip: float = 1.0,
                 grid: Sequence[float] = ALPHA_GRID, rows: int = 1024,
                 seed: int = 0) -> tuple[float, np.ndarray]:
  """``(alpha, s)`` minimising the fake-quantized relative output error of the consumers ``ws``
  (``[K, N]`` each) on input rows ``x[n, K]`` over ``grid``."""
  x = np.asarray(x, np.float32)
  if x.shape[0] > rows:
    x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], rows, replace=False))]
  amax = np.abs(x).max(axis=0)
  wmax = np.max([np.abs(np.asarray(w)).max(axis=1) for w in ws], axis=0)
  xj = jnp.asarray(x)
  wsj = [jnp.asarray(w, jnp.float32) for w in ws]
  best = None
  for a in grid:
    s = smooth_scales(amax, wmax, a)
    e = float(jax.jit(_err, static_argnums=(3, 4, 5, 6))(xj, wsj, jnp.asarray(s, jnp.float32),
                                                          bits, group, act_bits, act_clip))
    if best is None or e < best[0]:
      best = (e, a, s)
  return best[1], best[2]
