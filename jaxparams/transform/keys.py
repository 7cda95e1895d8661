"""Per-tensor PRNG keys: one rule for both drivers, independent of processing order.

Example:
  >>> import jax
  >>> k = tensor_key(jax.random.key(0), 'layers/0/kernel')
  >>> bool((jax.random.key_data(k) == jax.random.key_data(
  ...     tensor_key(jax.random.key(0), 'layers/0/kernel'))).all())
  True
"""

from __future__ import annotations

import zlib

import jax

__all__ = ["tensor_key"]


def tensor_key(key: jax.Array, name: str) -> jax.Array:
  """``fold_in(key, crc32(name))``: the key of tensor ``name`` in a run keyed by ``key``."""
  return jax.random.fold_in(key, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)
