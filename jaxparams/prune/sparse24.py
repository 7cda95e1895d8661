"""A compressed 2:4 layout: the kept values plus 2-bit position metadata, exact round trip.

For a matrix whose every aligned group of 4 along the last axis has at most 2 non-zeros (an HF
``[out, in]`` weight pruned 2:4 along ``in``), :func:`compress_24` keeps ``values[..., in/2]``
(the two kept entries of each group, in order) and ``meta[..., in/4]`` (uint8: the two positions,
2 bits each, ``pos0 | pos1 << 2``), the layout sparse tensor cores consume (values + indices).
Groups with fewer than 2 non-zeros store zeros at unused positions. :func:`decompress_24`
rebuilds the dense matrix bit-exactly.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.array([[0., 3., 0., -1., 5., 0., 0., 2.]])
  >>> values, meta = compress_24(w)
  >>> values.tolist(), meta.tolist()
  ([[3.0, -1.0, 5.0, 2.0]], [[13, 12]])
  >>> bool((decompress_24(values, meta) == w).all())
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["compress_24", "decompress_24"]


def compress_24(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Compresses a 2:4-sparse matrix (groups of 4 along the last axis).

  Raises:
    ValueError: the last axis is not a multiple of 4, or a group has more than 2 non-zeros.
  """
  if w.ndim < 1 or w.shape[-1] % 4:
    raise ValueError(f"compress_24: the last axis must be a multiple of 4, got shape {w.shape}")
  g = w.reshape(*w.shape[:-1], w.shape[-1] // 4, 4)
  nz = g != 0
  if bool(jnp.any(nz.sum(-1) > 2)):
    raise ValueError("compress_24: a group of 4 holds more than 2 non-zeros (not 2:4 sparse)")
  # positions of the (up to) two non-zeros, in order; empty slots point at zero entries
  order = jnp.argsort(~nz, axis=-1, stable=True)          # non-zeros first, then zeros
  pos = jnp.sort(order[..., :2], axis=-1)
  values = jnp.take_along_axis(g, pos, axis=-1)
  meta = (pos[..., 0] | (pos[..., 1] << 2)).astype(jnp.uint8)
  return values.reshape(*w.shape[:-1], w.shape[-1] // 2), meta


def decompress_24(values: jax.Array, meta: jax.Array) -> jax.Array:
  """The dense matrix of :func:`compress_24`'s output.

  Example:
    >>> decompress_24(jnp.array([[1., 2.]]), jnp.array([[0 | 3 << 2]], jnp.uint8)).tolist()
    [[1.0, 0.0, 0.0, 2.0]]
  """
  m = meta.astype(jnp.int32)
  pos = jnp.stack([m & 3, (m >> 2) & 3], axis=-1)
  vals = values.reshape(*values.shape[:-1], values.shape[-1] // 2, 2)
  onehot = jax.nn.one_hot(pos, 4, dtype=bool)             # [..., groups, 2, 4]
  dense = jnp.where(onehot, vals[..., None], jnp.zeros((), values.dtype)).sum(-2)
  return dense.reshape(*values.shape[:-1], values.shape[-1] * 2).astype(values.dtype)
