"""Mosaic TPU build of the fused merge kernels ((rows, 128) tiles, SMEM scalars).

See :mod:`pallas_common` for the kernels; tested against the reference in
interpret mode on CPU and lowered with ``jax.export(..., platforms=['tpu'])``.

Example:
  >>> import jax.numpy as jnp
  >>> keys = jnp.arange(1, 11, dtype=jnp.uint32)[None]
  >>> int(kth_largest_keys(keys, jnp.array([3]), interpret=True)[0])
  8
"""

from __future__ import annotations

import jax

from jaxparams.kernels.merge_sparsify import pallas_common as _c

__all__ = ["TARGET", "kth_largest_keys", "tie_cuts", "sparsify_merge", "count_ge"]

TARGET = _c.TPU


def count_ge(keys: jax.Array, cands: jax.Array, *, interpret: bool = False) -> jax.Array:
  """#(keys[m] >= cands[m, d]) for keys (M, n) uint32 and cands (M, 15)."""
  return _c.count_ge(keys, cands, target=TARGET, interpret=interpret)


def kth_largest_keys(keys: jax.Array, k: jax.Array, *, interpret: bool = False) -> jax.Array:
  """Batched exact k-th largest uint32 key per row (8 counting passes, no sort)."""
  return _c.kth_largest_keys(keys, k, target=TARGET, interpret=interpret)


def tie_cuts(keys: jax.Array, t: jax.Array, k: jax.Array, *, interpret: bool = False
             ) -> jax.Array:
  """Per row: flat-index cut making the top set (t, cut) exactly k elements."""
  return _c.tie_cuts(keys, t, k, target=TARGET, interpret=interpret)


def sparsify_merge(base: jax.Array, models: jax.Array, *, interpret: bool = False, **kwargs
                   ) -> jax.Array:
  """Fused sparsify + sign election + disjoint mean over flat (n,) / (N, n) inputs."""
  return _c.sparsify_merge(base, models, target=TARGET, interpret=interpret, **kwargs)
