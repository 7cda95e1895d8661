"""Per-token dynamic activation quantization (the ``A8`` / ``A4`` of W8A8, W4A8, W4A4).

Each token row ``x[..., :]`` gets its own symmetric scale ``s = clip * max|x| / (2^(b-1) - 1)``
computed at run time (QuaRot's default: per token, symmetric, ``--a_groupsize -1``), codes
``round(x / s)`` clipped to ``[-2^(b-1), 2^(b-1) - 1]``, and the layer multiplies the integer
activations by the (integer) weights; here the product is simulated in floating point
(``fake`` quantization, exact for the integer grid: ``s * codes``), so every model runs it on
any backend through the ``dot=`` injection point (:mod:`jaxparams.quant.online`). The rounding
has the straight-through gradient, so learned rotations (:mod:`jaxparams.quant.spinquant`) can
train through it.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.1, -1.0, 0.5], [2.0, 0.0, -4.0]])
  >>> quantize_activations(x, 8).tolist() == (jnp.round(x / (jnp.abs(x).max(-1, keepdims=True)
  ...     / 127)) * (jnp.abs(x).max(-1, keepdims=True) / 127)).tolist()
  True
  >>> float(jnp.abs(quantize_activations(x, 4) - x).max()) <= 4.0 / 7 / 2 + 1e-6
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["quantize_activations", "act_codes", "fake_quant_weight"]


def _round_ste(x: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def act_codes(x: jax.Array, bits: int, clip: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """``(codes, scale)``: int codes ``[..., K]`` (float dtype) and per-token scales ``[..., 1]``."""
  if bits not in (2, 3, 4, 6, 8):
    raise ValueError(f"act_quant: bits must be 2, 3, 4, 6 or 8, got {bits}")
  if not 0.0 < clip <= 1.0:
    raise ValueError(f"act_quant: clip ratio must be in (0, 1], got {clip}")
  qmax = 2 ** (bits - 1) - 1
  xf = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(xf), axis=-1, keepdims=True) * clip / qmax
  scale = jnp.where(scale > 0, scale, 1.0)
  codes = jnp.clip(_round_ste(xf / scale), -qmax - 1, qmax)
  return codes, scale


def quantize_activations(x: jax.Array, bits: int, clip: float = 1.0) -> jax.Array:
  """``x`` fake-quantized per token to ``bits`` (symmetric, dynamic), in ``x.dtype``.

  Args:
    x: activations ``[..., K]``; every leading index is one token.
    bits: 8 or 4 (2, 3, 6 accepted for experiments).
    clip: fraction of each token's abs-max mapped to the largest code (QuaRot's
      ``a_clip_ratio``; 1.0 = no clipping).
  """
  codes, scale = act_codes(x, bits, clip)
  return (codes * scale).astype(x.dtype)


def _weight_grid(w: jax.Array, bits: int, group: int) -> tuple[jax.Array, jax.Array, int]:
  k, n = w.shape
  g = k if group in (-1, 0) or group >= k else group
  if k % g:
    raise ValueError(f"act_quant: group_size {group} does not divide K={k}")
  return w.reshape(k // g, g, n), jnp.asarray(2 ** bits - 1, w.dtype), g


def fake_quant_weight(w: jax.Array, bits: int, group: int) -> jax.Array:
  """RTN min-max asymmetric fake quantization of ``w[K, N]`` in groups of ``group`` rows (the
  library's RTN grid), with the straight-through gradient; the objective inside the
  rotation and smoothing searches (:mod:`~jaxparams.quant.spinquant`, :mod:`~jaxparams.quant.smooth`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> w = jax.random.normal(jax.random.key(0), (8, 2))
    >>> bool(jnp.abs(fake_quant_weight(w, 8, 4) - w).max() < 0.02)
    True
  """
  k, n = w.shape
  wg, qmax, _ = _weight_grid(w, bits, group)
  lo = jnp.minimum(wg.min(axis=1, keepdims=True), 0.0)
  hi = jnp.maximum(wg.max(axis=1, keepdims=True), 0.0)
  scale = jnp.where(hi > lo, (hi - lo) / qmax, 1.0)
  zero = jnp.round(-lo / scale)
  q = jnp.clip(_round_ste(wg / scale) + zero, 0, qmax)
  return ((q - zero) * scale).reshape(k, n)
