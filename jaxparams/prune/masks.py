"""Pruning masks from scores: per-layer, per-output-row, global, random and N:M.

Conventions. A Flax kernel is ``[d_in, d_out]`` (a PyTorch ``Linear.weight`` transposed), so a
PyTorch "row" (one output unit) is a kernel *column*. "Per row" below means per output unit, i.e.
the comparison group is ``kernel[:, j]``, as Wanda and SparseGPT define it. A mask is a boolean
array of the weight's shape, ``True`` where the weight is **kept**.

Ties are broken by position (a stable sort), so every function prunes exactly the requested count:
``floor(n * sparsity)`` entries of each comparison group.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., -4.], [-3., 2.], [0.5, 5.], [2., -1.]])
  >>> magnitude_mask(w, 0.5).astype(int).tolist()
  [[0, 1], [1, 0], [0, 1], [1, 0]]
  >>> nm_mask(jnp.abs(w), 2, 4).astype(int).sum(axis=0).tolist()
  [2, 2]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["check_sparsity", "parse_pattern", "global_masks", "magnitude_mask", "nm_mask", "random_mask",
           "row_mask", "topk_mask"]


def check_sparsity(sparsity: float, *, name: str = "") -> float:
  """Validates a sparsity level in ``[0, 1)``.

  Example:
    >>> check_sparsity(0.5)
    0.5
  """
  where = f" for {name!r}" if name else ""
  try:
    s = float(sparsity)
  except (TypeError, ValueError):
    raise ValueError(f"sparsity{where} must be a number in [0, 1), got {sparsity!r}") from None
  if not (0.0 <= s < 1.0):
    raise ValueError(f"sparsity{where} must be in [0, 1), got {s}")
  return s


def parse_pattern(pattern: Any, name: str = "pattern") -> tuple[int, int] | None:
  """``None``, ``(n, m)`` or ``'n:m'`` -> ``(n, m)`` with ``0 < n < m``, or None.

  Example:
    >>> parse_pattern('2:4'), parse_pattern([4, 8]), parse_pattern(None)
    ((2, 4), (4, 8), None)
  """
  if pattern is None:
    return None
  try:
    n, m = (int(v) for v in (pattern.split(":") if isinstance(pattern, str) else pattern))
  except (TypeError, ValueError):
    raise ValueError(f"{name}: pattern must look like '2:4' or (2, 4), got {pattern!r}") from None
  if not 0 < n < m:
    raise ValueError(f"{name}: N:M pattern needs 0 < N < M, got {n}:{m}")
  return (n, m)


_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _sort_keys(flat: jax.Array) -> jax.Array:
  """Unsigned integers ordered as ``jnp.sort`` orders ``flat`` (-0 equals +0, NaN last)."""
  x = jnp.where(flat == 0, jnp.zeros_like(flat), flat)
  x = jnp.where(jnp.isnan(x), jnp.full_like(x, jnp.nan), x)
  u = _UINT[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, u)
  sign = jnp.array(1 << (8 * x.dtype.itemsize - 1), u)
  return jnp.where((bits & sign) != 0, ~bits, bits | sign)


def topk_mask(scores: jax.Array, n_prune: int) -> jax.Array:
  """Keeps all but the ``n_prune`` smallest entries of a flat ``scores`` (stable ties).

  The mask of a stable ascending argsort (ties: the lower flat index is pruned first; -0 equals
  +0; NaN is the largest) without sorting: for floating scores the ``n_prune``-th smallest
  value is found by a radix select over the bits of an order-preserving integer key (one
  counting pass per bit), then the ties at that value are pruned in index order (timings in
  benchmarks/RESULTS.md, "Test suite time"); other dtypes take the argsort. ``n_prune`` may be
  a traced integer (a pruning schedule under ``jit``); outside ``[0, size]`` it keeps
  everything (below) or nothing (above).

  Example:
    >>> topk_mask(jnp.array([3., 1., 2., 1.]), 2).tolist()
    [True, False, True, False]
  """
  flat = scores.reshape(-1)
  if not jnp.issubdtype(flat.dtype, jnp.floating) or flat.dtype.itemsize not in _UINT:
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks >= n_prune).reshape(scores.shape)
  keys = _sort_keys(flat)
  nbits = 8 * flat.dtype.itemsize
  one = jnp.ones((), keys.dtype)

  def settle_bit(i, v):  # v: the answer's bits above this one; is this bit 0 or 1?
    bit = (one << (nbits - 1 - i).astype(keys.dtype))
    enough = jnp.sum(keys <= (v | (bit - one)), dtype=jnp.int32) >= n_prune
    return jnp.where(enough, v, v | bit)

  kth = jax.lax.fori_loop(0, nbits, settle_bit, jnp.zeros((), keys.dtype))
  below, ties = keys < kth, keys == kth
  ties_pruned = n_prune - jnp.sum(below, dtype=jnp.int32)
  prune = below | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= ties_pruned))
  return (~prune).reshape(scores.shape)


def magnitude_mask(w: jax.Array, sparsity: float) -> jax.Array:
  """Per-tensor magnitude pruning: drop the ``floor(size * sparsity)`` smallest ``|w|``.

  Example:
    >>> int(magnitude_mask(jnp.arange(10.), 0.3).sum())
    7
  """
  s = check_sparsity(sparsity)
  return topk_mask(jnp.abs(w), int(math.floor(w.size * s)))


def row_mask(scores: jax.Array, sparsity: float) -> jax.Array:
  """Per-output pruning of a ``[d_in, d_out]`` score matrix: each column loses
  ``floor(d_in * sparsity)`` entries (Wanda's comparison group).

  Example:
    >>> row_mask(jnp.array([[1., 9.], [2., 8.], [3., 7.]]), 0.5).astype(int).tolist()
    [[0, 1], [1, 1], [1, 0]]
  """
  s = check_sparsity(sparsity)
  if scores.ndim != 2:
    raise ValueError(f"row_mask expects a [d_in, d_out] matrix, got shape {scores.shape}")
  n_prune = int(math.floor(scores.shape[0] * s))
  return jax.vmap(lambda col: topk_mask(col, n_prune), in_axes=1, out_axes=1)(scores)


def nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
  """N:M structured mask along the input axis (axis 0 of a ``[d_in, d_out]`` kernel).

  In every aligned group of ``m`` consecutive inputs of each output, the ``n`` smallest scores
  are pruned, so ``m - n`` survive (2:4 keeps 2 of 4, what sparse tensor cores expect).

  Example:
    >>> nm_mask(jnp.array([[4.], [1.], [3.], [2.]]), 2, 4).astype(int).ravel().tolist()
    [1, 0, 1, 0]
  """
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
    raise ValueError(f"N:M pattern needs integers 0 < N < M, got {n}:{m}")
  if scores.ndim != 2 or scores.shape[0] % m:
    raise ValueError(f"N:M {n}:{m} needs a [d_in, d_out] kernel with d_in a multiple of {m}, "
                     f"got shape {tuple(scores.shape)}")
  d_in, d_out = scores.shape
  groups = scores.reshape(d_in // m, m, d_out)
  order = jnp.argsort(groups, axis=1, stable=True)
  ranks = jnp.argsort(order, axis=1, stable=True)
  return (ranks >= n).reshape(d_in, d_out)


def random_mask(key: jax.Array, shape: tuple[int, ...], sparsity: float) -> jax.Array:
  """Uniformly random mask with exactly ``floor(size * sparsity)`` pruned entries.

  Example:
    >>> int(random_mask(jax.random.key(0), (4, 5), 0.4).sum())
    12
  """
  s = check_sparsity(sparsity)
  size = math.prod(shape)
  return topk_mask(jax.random.uniform(key, shape), int(math.floor(size * s)))


def global_masks(scores: dict[str, jax.Array], sparsity: float) -> dict[str, jax.Array]:
  """One threshold over several tensors (global magnitude pruning): the
  ``floor(total * sparsity)`` smallest scores across all of them are pruned.

  Example:
    >>> m = global_masks({'a': jnp.array([1., 2.]), 'b': jnp.array([3., 0.5])}, 0.5)
    >>> {k: v.tolist() for k, v in m.items()}
    {'a': [False, True], 'b': [True, False]}
  """
  s = check_sparsity(sparsity)
  names = sorted(scores)
  if not names:
    raise ValueError("global_masks: no tensors selected")
  flat = jnp.concatenate([scores[k].reshape(-1).astype(jnp.float32) for k in names])
  keep = topk_mask(flat, int(math.floor(flat.size * s)))
  out, off = {}, 0
  for k in names:
    size = scores[k].size
    out[k] = keep[off:off + size].reshape(scores[k].shape)
    off += size
  return out
