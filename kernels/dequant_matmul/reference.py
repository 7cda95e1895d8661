"""Pure ``jnp`` reference of the dequant-matmul: the specification the kernels must match.

Layout (shared with :mod:`jaxparams.quant.qarray`): the weight is ``W[K, N]``
(``y = x @ W``). Integer codes ``q[k, n]`` in ``[0, 2**bits)`` are packed along K
into uint32 words: ``P = 32 // bits`` codes per word, row ``k`` of column ``n``
lives in ``codes[k // P, n]`` at bit offset ``(k % P) * bits`` (LSB first). This
is the HF GPTQ ``qweight`` layout. ``scale`` and ``zero`` are ``[K // G, N]``
(``G = group_size``, groups run along K, per-channel is ``G = K``) and
``W[k, n] = (q[k, n] - zero[k // G, n]) * scale[k // G, n]``; ``zero=None`` means 0.

Example:
  >>> import jax.numpy as jnp
  >>> q = jnp.arange(8, dtype=jnp.uint32)[:, None]          # K=8, N=1
  >>> word = jnp.sum(q << (4 * jnp.arange(8, dtype=jnp.uint32))[:, None], 0, keepdims=True)
  >>> unpack(word, 4, 8)[:, 0].tolist()
  [0, 1, 2, 3, 4, 5, 6, 7]
  >>> w = dequantize(word, jnp.ones((1, 1)), jnp.full((1, 1), 8.0), bits=4, group_size=8)
  >>> w[:, 0].tolist()
  [-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["codes_per_word", "unpack", "dequantize", "dequant_matmul_reference"]


def codes_per_word(bits: int) -> int:
  """Codes per uint32 word for the kernel-supported widths (4 -> 8, 8 -> 4; 2 -> 16)."""
  if bits not in (2, 4, 8):
    raise ValueError(f"dequant_matmul supports bits in (2, 4, 8) in its layout, got bits={bits!r}")
  return 32 // bits


def _as_u32(codes: jax.Array) -> jax.Array:
  codes = jnp.asarray(codes)
  if codes.dtype == jnp.uint32:
    return codes
  if codes.dtype.itemsize != 4 or not jnp.issubdtype(codes.dtype, jnp.integer):
    raise ValueError(f"packed codes must be 32-bit integer words, got dtype {codes.dtype}")
  return jax.lax.bitcast_convert_type(codes, jnp.uint32)


def unpack(codes: jax.Array, bits: int, k: int) -> jax.Array:
  """Unpacks uint32 words ``[ceil(K/P), N]`` into int32 codes ``[K, N]``.

  Args:
    codes: packed words (uint32; int32 is reinterpreted bit for bit).
    bits: 2, 4 or 8.
    k: number of logical rows K.

  Returns:
    int32 array ``[K, N]`` with values in ``[0, 2**bits)``.
  """
  p = codes_per_word(bits)
  codes = _as_u32(codes)
  rows = codes.shape[0]
  if rows != -(-k // p):
    raise ValueError(f"packed codes have {rows} rows; K={k} at bits={bits} needs {-(-k // p)}")
  shifts = jnp.arange(p, dtype=jnp.uint32) * jnp.uint32(bits)
  planes = (codes[:, None, :] >> shifts[None, :, None]) & jnp.uint32((1 << bits) - 1)
  return planes.reshape((rows * p,) + codes.shape[1:])[:k].astype(jnp.int32)


def dequantize(codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *, bits: int,
               group_size: int, dtype=jnp.float32) -> jax.Array:
  """``W[k, n] = (q[k, n] - zero[k // G, n]) * scale[k // G, n]`` computed in f32, cast to ``dtype``.

  Args:
    codes: packed uint32 words ``[K / P, N]``.
    scale: ``[K // G, N]`` float.
    zero: ``[K // G, N]`` float in code units, or None (treated as 0).
    bits: 2, 4 or 8.
    group_size: G; must divide K = ``scale.shape[0] * G``.
    dtype: output dtype.

  Returns:
    ``[K, N]`` array of ``dtype``.
  """
  num_groups, n = scale.shape
  k = num_groups * group_size
  q = unpack(codes, bits, k).astype(jnp.float32)
  s = jnp.repeat(scale.astype(jnp.float32), group_size, axis=0)
  if zero is not None:
    if zero.shape != scale.shape:
      raise ValueError(f"zero shape {zero.shape} does not match scale shape {scale.shape}")
    q = q - jnp.repeat(zero.astype(jnp.float32), group_size, axis=0)
  if q.shape != (k, n):
    raise ValueError(f"codes unpack to {q.shape}, scale implies {(k, n)}")
  return (q * s).astype(dtype)


def dequant_matmul_reference(x: jax.Array, codes: jax.Array, scale: jax.Array,
                             zero: jax.Array | None, *, bits: int, group_size: int) -> jax.Array:
  """``x @ W`` with ``W`` dequantized to ``x.dtype``, f32 accumulation, result in ``x.dtype``.

  Args:
    x: ``[..., K]`` activations (bf16 or f32).
    codes, scale, zero, bits, group_size: the quantized weight, see :func:`dequantize`.

  Returns:
    ``[..., N]`` in ``x.dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> codes = jnp.full((1, 2), 0x11111111, jnp.uint32)        # every 4-bit code is 1
    >>> y = dequant_matmul_reference(jnp.ones((3, 8)), codes, jnp.ones((1, 2)), None,
    ...                              bits=4, group_size=8)
    >>> y.tolist()[0]
    [8.0, 8.0]
  """
  w = dequantize(codes, scale, zero, bits=bits, group_size=group_size, dtype=x.dtype)
  y = jnp.einsum("...k,kn->...n", x, w, preferred_element_type=jnp.float32,
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)
