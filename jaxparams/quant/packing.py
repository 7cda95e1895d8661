"""Bit packing of integer codes into uint32 words along the input axis K.

Layout (see ``QArray``): for ``bits`` in {2, 4, 8} a word holds ``P = 32 // bits``
codes; for ``bits == 3`` it holds ``P = 10`` (the top two bits are unused).
Row ``k`` of column ``n`` lives in ``codes[k // P, n]`` at bit offset
``(k % P) * bits``, least significant first. For 2/4/8 bits this is the HF
GPTQ ``qweight`` layout reinterpreted as uint32.

Everything here is pure ``jnp`` and works under ``jax.jit`` (``bits`` and ``k``
are static Python ints). For 2/4/8 bits the specification is the kernel reference
:mod:`jaxparams.kernels.dequant_matmul.reference` (its ``codes_per_word`` and its
``unpack``, which validates the packed shape); this module adds the 3-bit layout and
the packer.

Example:
  >>> import jax.numpy as jnp
  >>> q = jnp.arange(16, dtype=jnp.int32).reshape(8, 2) % 16
  >>> words = pack(q, 4)
  >>> words.shape
  (1, 2)
  >>> bool((unpack(words, 4, 8) == q).all())
  True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.kernels.dequant_matmul import reference as spec

__all__ = ["SUPPORTED_BITS", "codes_per_word", "packed_rows", "pack", "unpack", "check_bits",
           "pack_stream", "unpack_stream"]

SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits: int, *, name: str = "") -> None:
  """Raises ValueError unless ``bits`` is a supported packed width."""
  if bits not in SUPPORTED_BITS:
    where = f" for {name!r}" if name else ""
    raise ValueError(f"unsupported bits={bits!r}{where}; supported: {list(SUPPORTED_BITS)}")


def codes_per_word(bits: int) -> int:
  """Number of codes stored in one uint32 word (10 for 3 bits, else 32 // bits)."""
  check_bits(bits)
  return 10 if bits == 3 else spec.codes_per_word(bits)


def packed_rows(k: int, bits: int) -> int:
  """Rows of the packed array for ``k`` input rows: ``ceil(k / P)``."""
  p = codes_per_word(bits)
  return -(-k // p)


def pack(q: jax.Array, bits: int) -> jax.Array:
  """Packs integer codes ``q[K, ...]`` in ``[0, 2**bits)`` into uint32 words along axis 0.

  Rows are zero-padded up to a multiple of ``P``. Values outside the range are
  masked to their low ``bits`` bits.

  Args:
    q: integer array, shape ``(K, ...)``.
    bits: 2, 3, 4 or 8.

  Returns:
    uint32 array of shape ``(ceil(K / P), ...)``.
  """
  codes_per_word(bits)
  return _pack_jit(jnp.asarray(q), bits)


@functools.partial(jax.jit, static_argnums=1)
def _pack_jit(q: jax.Array, bits: int) -> jax.Array:
  p = codes_per_word(bits)
  k = q.shape[0]
  rows = -(-k // p)
  q = q.astype(jnp.uint32) & jnp.uint32((1 << bits) - 1)
  if rows * p != k:
    pad = [(0, rows * p - k)] + [(0, 0)] * (q.ndim - 1)
    q = jnp.pad(q, pad)
  q = q.reshape((rows, p) + q.shape[1:])
  shifts = jnp.arange(p, dtype=jnp.uint32) * jnp.uint32(bits)
  shifts = shifts.reshape((1, p) + (1,) * (q.ndim - 2))
  # Fields do not overlap, so a sum is an OR.
  return jnp.sum(q << shifts, axis=1, dtype=jnp.uint32)


def unpack(codes: jax.Array, bits: int, k: int, dtype=jnp.int32) -> jax.Array:
  """Inverse of :func:`pack`: uint32 words ``(ceil(K/P), ...)`` -> codes ``(K, ...)``.

  Args:
    codes: packed uint32 array (int32 is accepted and reinterpreted).
    bits: 2, 3, 4 or 8.
    k: the number of logical rows K.
    dtype: output integer dtype.
  """
  if bits in (2, 4, 8) and jnp.dtype(dtype) == jnp.int32:
    return spec.unpack(codes, bits, k)            # the kernels' specification
  p = codes_per_word(bits)
  codes = jnp.asarray(codes)
  if codes.dtype != jnp.uint32:
    if codes.dtype.itemsize != 4:
      raise ValueError(f"packed codes must be 32-bit words, got dtype {codes.dtype}")
    codes = jax.lax.bitcast_convert_type(codes, jnp.uint32)
  rows = codes.shape[0]
  if rows != -(-k // p):
    raise ValueError(f"packed codes have {rows} rows; K={k} at {bits} bits needs {-(-k // p)}")
  return _unpack_jit(codes, bits, k, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _unpack_jit(codes: jax.Array, bits: int, k: int, dtype) -> jax.Array:
  p = codes_per_word(bits)
  rows = codes.shape[0]
  shifts = jnp.arange(p, dtype=jnp.uint32) * jnp.uint32(bits)
  shifts = shifts.reshape((1, p) + (1,) * (codes.ndim - 1))
  q = (codes[:, None] >> shifts) & jnp.uint32((1 << bits) - 1)
  q = q.reshape((rows * p,) + codes.shape[1:])[:k]
  return q.astype(dtype)


def pack_np(q: np.ndarray, bits: int) -> np.ndarray:
  """NumPy version of :func:`pack` (for checkpoint conversion on the host)."""
  return np.asarray(pack(jnp.asarray(q), bits))


def pack_stream(q: np.ndarray, bits: int, axis: int = 0) -> np.ndarray:
  """Packs codes along ``axis`` as one LSB-first bit stream into int32 words (host, NumPy).

  The HF GPTQ ``qweight``/``qzeros`` convention: for 2/4/8 bits the words equal
  :func:`pack`'s; 3-bit codes fill 3 words per 32 codes (no unused bits, unlike
  :func:`pack`'s 10-per-word layout). The packed length times ``bits`` must be a
  multiple of 32.

  Example:
    >>> hex(int(pack_stream(np.arange(8).reshape(8, 1), 4).view(np.uint32)[0, 0]))
    '0x76543210'
    >>> q = np.arange(64).reshape(32, 2) % 8
    >>> bool((unpack_stream(pack_stream(q, 3), 3, 32) == q).all())
    True
  """
  q = np.moveaxis(np.asarray(q), axis, 0).astype(np.uint32) & np.uint32((1 << bits) - 1)
  k = q.shape[0]
  if (k * bits) % 32:
    raise ValueError(f"pack_stream: {k} codes of {bits} bits do not fill whole 32-bit words")
  planes = (q[:, None] >> np.arange(bits, dtype=np.uint32).reshape((1, bits) + (1,) * (q.ndim - 1))
            ) & np.uint32(1)                                   # [K, bits, ...] bit planes
  stream = planes.reshape((k * bits // 32, 32) + q.shape[1:])
  weights = (np.uint64(1) << np.arange(32, dtype=np.uint64)).reshape((1, 32) + (1,) * (q.ndim - 1))
  words = np.sum(stream.astype(np.uint64) * weights, axis=1).astype(np.uint32)
  return np.moveaxis(words.view(np.int32), 0, axis)


def unpack_stream(words: np.ndarray, bits: int, count: int, axis: int = 0) -> np.ndarray:
  """Inverse of :func:`pack_stream`: int32 words -> ``count`` int32 codes along ``axis``."""
  w = np.moveaxis(np.asarray(words), axis, 0).view(np.uint32)
  if w.shape[0] * 32 != count * bits:
    raise ValueError(f"unpack_stream: {w.shape[0]} words hold {w.shape[0] * 32 // bits} codes of "
                     f"{bits} bits, expected {count}")
  shifts = np.arange(32, dtype=np.uint32).reshape((1, 32) + (1,) * (w.ndim - 1))
  stream = ((w[:, None] >> shifts) & np.uint32(1)).reshape((count, bits) + w.shape[1:])
  weights = (np.uint32(1) << np.arange(bits, dtype=np.uint32)).reshape((1, bits) +
                                                                      (1,) * (w.ndim - 1))
  codes = np.sum(stream * weights, axis=1).astype(np.int32)
  return np.moveaxis(codes, 0, axis)
