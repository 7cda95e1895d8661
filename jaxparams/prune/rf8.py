"""RF8: weights rounded to at most two powers of two, stored as 8-bit codes.

Rounding (the reference ``rf8(model, n=4)``): ``d1 = sign(w) 2^round(log2|w|)``, ``r = w - d1``,
``d2 = sign(r) 2^round(log2|r|)``; ``w' = d1 + d2`` if ``e1 - e2 <= 4``, else ``d1``. Each binade
then holds 9 significands: 1 and ``1 +- 2^-k`` for k = 1..4, so a product is two shifts and an add.

Storage (ours: the reference code gives no bit layout). One byte per weight:
``sign (1 bit) | exponent offset (3 bits) | significand index (4 bits)`` with the exponent counted
down from a per-tensor ``e_max`` (the largest ``e1``), so 8 binades are representable; values more
than 7 binades below ``e_max`` flush to zero; code ``0x0F`` (index 15) is zero. Decoding is exact
on every representable value (``decode(encode(w)) == rf8_round(w)`` inside the range). Codes are
canonical: a value is encoded from its own rounding (``1.5 * 2^e`` is stored as ``0.75 * 2^(e+1)``),
so ``encode(decode(c)) == c`` for every code the encoder emits (indices 0, 2-4, 6-8).

Example:
  >>> import jax.numpy as jnp
  >>> rf8_round(jnp.array([0.3, 0.7, 0.9, -0.1234, 1.0, 0.0])).tolist()
  [0.3125, 0.75, 0.875, -0.125, 1.0, 0.0]
  >>> codes, e_max = rf8_encode(jnp.array([0.3, -0.7, 0.0]))
  >>> rf8_decode(codes, e_max).tolist()
  [0.3125, -0.75, 0.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SIGNIFICANDS", "rf8_decode", "rf8_encode", "rf8_round"]

# Index -> significand (value in [2^-1 .. 2) relative to 2^e1): 1, 1 +- 2^-k for k = 1..4.
SIGNIFICANDS = np.array([1.0, 1.5, 1.25, 1.125, 1.0625, 0.5, 0.75, 0.875, 0.9375], np.float32)
_ZERO = 15


def _pow2(e: jax.Array) -> jax.Array:
  """Exact ``2.0 ** e`` for integer-valued ``e`` (``exp2`` is not exact on every backend)."""
  return jnp.ldexp(jnp.ones_like(e, jnp.float32), e.astype(jnp.int32))


def _split(w: jax.Array):
  w = w.astype(jnp.float32)
  a = jnp.abs(w)
  safe = jnp.where(a > 0, a, 1.0)
  e1 = jnp.round(jnp.log2(safe))
  d1 = jnp.sign(w) * _pow2(e1)
  r = w - d1
  ra = jnp.abs(r)
  e2 = jnp.round(jnp.log2(jnp.where(ra > 0, ra, 1.0)))
  use2 = (ra > 0) & (e1 - e2 <= 4)
  return w, a, e1, e2, r, use2


def rf8_round(w: jax.Array) -> jax.Array:
  """Rounds to ``d1`` or ``d1 + d2`` (see the module docstring); zeros stay zero.

  Example:
    >>> rf8_round(jnp.array([3.0, 5.0])).tolist()
    [3.0, 5.0]
  """
  w, a, e1, e2, r, use2 = _split(w)
  d1 = jnp.sign(w) * _pow2(e1)
  d2 = jnp.sign(r) * _pow2(e2)
  return jnp.where(a > 0, jnp.where(use2, d1 + d2, d1), 0.0)


def rf8_encode(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """8-bit codes and the per-tensor ``e_max`` (int32).

  Example:
    >>> c, e = rf8_encode(jnp.array([1.0, -1.5]))
    >>> [hex(v) for v in c.tolist()], int(e)
    (['0x10', '0x86'], 1)
  """
  w, a, e1, e2, r, use2 = _split(rf8_round(w))     # canonical form of the rounded value
  nz = a > 0
  e_max = jnp.max(jnp.where(nz, e1, -jnp.inf))
  e_max = jnp.where(jnp.isfinite(e_max), e_max, 0.0).astype(jnp.int32)
  k = jnp.where(use2, e1 - e2, 0)                     # 1..4 when a second term is used
  up = jnp.sign(r) == jnp.sign(w)                     # |w'| = 2^e1 (1 + 2^-k) or (1 - 2^-k)
  idx = jnp.where(use2, jnp.where(up, k, 4 + k), 0).astype(jnp.int32)
  off = (e_max - e1).astype(jnp.int32)
  ok = nz & (off <= 7)
  sign = (w < 0).astype(jnp.int32)
  code = (sign << 7) | (jnp.clip(off, 0, 7) << 4) | idx
  return jnp.where(ok, code, _ZERO).astype(jnp.uint8), e_max


def rf8_decode(codes: jax.Array, e_max: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Values of RF8 codes.

  Example:
    >>> rf8_decode(jnp.array([0x0F, 0x10], jnp.uint8), jnp.int32(0)).tolist()
    [0.0, 0.5]
  """
  c = codes.astype(jnp.int32)
  idx = c & 0xF
  off = (c >> 4) & 0x7
  sign = jnp.where(c >> 7, -1.0, 1.0)
  sig = jnp.asarray(SIGNIFICANDS)[jnp.clip(idx, 0, 8)]
  val = sign * sig * _pow2(e_max - off)
  return jnp.where(idx == _ZERO, 0.0, val).astype(dtype)
