"""RF8: weights rounded to at most two powers of two, stored as 8-bit codes (a QArray kind).

Rounding (the reference ``rf8(model, n=4)`` of "It Takes a Good Model to Train a Good Model"):
``d1 = sign(w) 2^round(log2|w|)``, ``r = w - d1``, ``d2 = sign(r) 2^round(log2|r|)``;
``w' = d1 + d2`` if ``e1 - e2 <= 4``, else ``d1``. The values this yields are exactly
``+-2^b * s`` with ``s`` in :data:`SIGNIFICANDS` = (1, 1.0625, 1.125, 1.25, 1.5, 1.75, 1.875):
seven per binade, each a sum or difference of two powers of two (a product is two shifts and an
add).

Storage (ours: the reference code gives no bit layout). One byte per weight:
``sign (1 bit) | magnitude index m (7 bits)``. ``m = 0`` is zero, ``m = 1 + 7 (b - b_low) + j``
for the value ``2^b * SIGNIFICANDS[j]``, so 18 binades ``b_low .. b_low + 17`` are representable
and codes sort as their magnitudes (as fp8 codes do); ``m = 127`` is not emitted and decodes to
NaN (as e4m3fn's ``S.1111.111``). ``b_low = b_top - 17``, ``b_top`` the binade of the largest
rounded magnitude of the block (a tensor for :func:`rf8_encode`, a group of rows of one output
channel for the quantizer), so nothing overflows; magnitudes below ``2^b_low`` (a factor
``2^17 = 131072`` under the block's largest) flush to zero. Decoding is exact on every
representable value: ``rf8_decode(*rf8_encode(w)) == rf8_round(w)`` wherever ``rf8_round(w)``
is not flushed, and ``rf8_encode(rf8_decode(c, b)) == (c, b)`` for every code the encoder emits.

As a :class:`~jaxparams.quant.QArray` (kind ``'rf8'``, 8 bits, method ``'rf8'`` in the
quantizer registry): ``codes`` uint8 ``[K, N]``, ``scale`` float32 ``[K // G, N]`` holding
``2^b_low`` of each group (a power of two, so ``W = TABLE[codes] * scale`` is exact) and no zero.

Example:
  >>> import jax.numpy as jnp
  >>> rf8_round(jnp.array([0.3, 0.7, 0.9, -0.1234, 1.0, 0.0])).tolist()
  [0.3125, 0.75, 0.875, -0.125, 1.0, 0.0]
  >>> codes, b_low = rf8_encode(jnp.array([0.3, -0.7, 0.0]))
  >>> [hex(c) for c in codes.tolist()], int(b_low)
  (['0x74', '0xfc', '0x0'], -18)
  >>> rf8_decode(codes, b_low).tolist()
  [0.3125, -0.75, 0.0]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray
from jaxparams.quant.rf8_table import BINADES, SIGNIFICANDS, TABLE, dequantize_codes  # noqa: F401

__all__ = ["BINADES", "RF8Config", "RF8_RECORD", "SIGNIFICANDS", "TABLE", "rf8", "rf8_decode", "rf8_encode",
           "rf8_encode_with", "rf8_round"]



def _pow2(e: jax.Array) -> jax.Array:
  """Exact ``2.0 ** e`` for integer-valued ``e`` (``exp2`` is not exact on every backend)."""
  return jnp.ldexp(jnp.ones(jnp.shape(e), jnp.float32), jnp.asarray(e).astype(jnp.int32))


def rf8_round(w: jax.Array) -> jax.Array:
  """Rounds to ``d1`` or ``d1 + d2`` (see the module docstring); zeros stay zero (float32).

  Example:
    >>> rf8_round(jnp.array([3.0, 5.0, 7.0])).tolist()
    [3.0, 5.0, 7.0]
  """
  w = jnp.asarray(w).astype(jnp.float32)
  a = jnp.abs(w)
  e1 = jnp.round(jnp.log2(jnp.where(a > 0, a, 1.0)))
  d1 = jnp.sign(w) * _pow2(e1)
  r = w - d1
  ra = jnp.abs(r)
  e2 = jnp.round(jnp.log2(jnp.where(ra > 0, ra, 1.0)))
  use2 = (ra > 0) & (e1 - e2 <= 4)
  d2 = jnp.sign(r) * _pow2(e2)
  return jnp.where(a > 0, jnp.where(use2, d1 + d2, d1), 0.0)


def _binade(v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(b, j)`` with ``|v| = 2^b * SIGNIFICANDS[j]`` for RF8 values ``v != 0`` (exact: frexp)."""
  m, ex = jnp.frexp(jnp.abs(v))
  sig = 2.0 * m                                          # in [1, 2)
  j = jnp.argmin(jnp.abs(sig[..., None] - jnp.asarray(SIGNIFICANDS)), axis=-1)
  return (ex - 1).astype(jnp.int32), j.astype(jnp.int32)


def rf8_encode_with(w: jax.Array, b_low: jax.Array) -> jax.Array:
  """8-bit codes of ``rf8_round(w)`` against a given lowest binade ``b_low`` (broadcast to ``w``).

  Magnitudes above the 18 binades from ``b_low`` are clipped to the largest code; below, they
  flush to zero. (:func:`rf8_encode` picks ``b_low`` so that nothing clips.)
  """
  v = rf8_round(w)
  b, j = _binade(v)
  off = b - jnp.asarray(b_low, jnp.int32)
  m = 1 + 7 * jnp.clip(off, 0, BINADES - 1) + j
  m = jnp.where(off >= BINADES, 7 * BINADES, m)          # clip to the largest magnitude
  m = jnp.where((v == 0) | (off < 0), 0, m)
  sign = (v < 0) & (m > 0)
  return ((sign.astype(jnp.int32) << 7) | m).astype(jnp.uint8)


def _b_low(v: jax.Array, axis=None) -> jax.Array:
  b, _ = _binade(v)
  top = jnp.max(jnp.where(v != 0, b, jnp.iinfo(jnp.int32).min), axis=axis, keepdims=axis is not None)
  return jnp.where(top == jnp.iinfo(jnp.int32).min, 0, top - (BINADES - 1)).astype(jnp.int32)


def rf8_encode(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """8-bit codes of a whole tensor and its lowest binade ``b_low`` (int32; 0 for all zeros).

  Example:
    >>> c, b = rf8_encode(jnp.array([1.0, -1.5]))
    >>> [hex(v) for v in c.tolist()], int(b)
    (['0x78', '0xfc'], -17)
  """
  b_low = _b_low(rf8_round(w))
  return rf8_encode_with(w, b_low), b_low


def rf8_decode(codes: jax.Array, b_low: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Values of RF8 codes (``b_low`` broadcast to ``codes``).

  Example:
    >>> rf8_decode(jnp.array([0x00, 0x01, 0x81, 0x08], jnp.uint8), jnp.int32(-1)).tolist()
    [0.0, 0.5, -0.5, 1.0]
  """
  c = jnp.asarray(codes).astype(jnp.int32)
  mag = jnp.asarray(TABLE)[c & 0x7F] * _pow2(b_low)
  return jnp.where(c >> 7, -mag, mag).astype(dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RF8Config:
  """RF8 settings.

  Attributes:
    group_size: rows per exponent block along K; -1/None = per output channel.
  """

  group_size: int | None = -1


def _rf8(w: jax.Array, cfg: RF8Config, *, name: str = "") -> QArray:
  # The math; group size, shape, dtype and finiteness are the record's checks.
  w = common.as_matrix(w, name=name)
  k, n = w.shape
  g = common.resolve_group_size(k, cfg.group_size, name=name)
  codes, scale = _rf8_jit(w, g)
  return QArray(codes=codes, scale=scale, zero=None, shape=(k, n), bits=8, group_size=g,
                kind="rf8", dtype=jnp.dtype(w.dtype).name)


RF8_RECORD = qrec.quantizer("rf8", _rf8, RF8Config, jitted=True, bit_widths=None,
                            description="RF8: two powers of two per weight, 8-bit codes")


def rf8(w: jax.Array, cfg: RF8Config = RF8Config(), *, name: str = "") -> QArray:
  """Quantizes ``w[K, N]`` to RF8 codes with one power-of-two scale per group and channel.

  Example:
    >>> qa = rf8(jnp.array([[0.3, 2.0], [-0.7, 0.0]]))
    >>> qa.kind, qa.dequantize().tolist()
    ('rf8', [[0.3125, 2.0], [-0.75, 0.0]])
  """
  return qrec.call(RF8_RECORD, w, cfg, name=name)


@functools.partial(jax.jit, static_argnums=(1,))
def _rf8_jit(w, g):
  k, n = w.shape
  w3 = w.astype(jnp.float32).reshape(k // g, g, n)
  b_low = _b_low(rf8_round(w3), axis=1)                  # [K/G, 1, N]
  codes = rf8_encode_with(w3, b_low).reshape(k, n)
  return codes, _pow2(b_low[:, 0, :])


