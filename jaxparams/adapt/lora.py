"""LoRA and DoRA per tensor: scaling, delta, merge/unmerge, DoRA column norms (PEFT's math).

Every function here works on **one weight** in the Flax orientation of :mod:`jaxparams.models`
(a Linear kernel ``w[in, out]`` with ``y = x @ w``; an embedding table ``w[vocab, dim]``). A LoRA
is ``a[in, r]``, ``b[r, out]`` and a scalar ``scale``; its delta is ``scale * a @ b``. In PEFT's
terms ``a = lora_A.weight.T`` and ``b = lora_B.weight.T`` (embeddings: ``a = lora_embedding_A.T``,
``b = lora_embedding_B.T``), so the same formula covers both.

DoRA (Liu et al. 2024, as PEFT implements it) keeps a magnitude ``m[out]``; with
``n = ||w + scale * a @ b||`` per output unit (the L2 norm over ``in``: axis 0 of the Flax
kernel, PEFT's ``norm(dim=1)`` of ``weight[out, in]``) the layer is ``(m / n) * (x @ (w + delta))``
(bias not rescaled) and the merged weight is ``(w + delta) * (m / n)``.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.eye(4); a = jnp.zeros((4, 1)).at[0, 0].set(1.0); b = jnp.zeros((1, 4)).at[0, 0].set(1.0)
  >>> merged = merge_tensor(w, a, b, scaling(1, 1))
  >>> float(merged[0, 0]), bool(jnp.array_equal(unmerge_tensor(merged, a, b, 1.0), w))
  (2.0, True)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["scaling", "delta", "merge_tensor", "unmerge_tensor", "dora_norm", "dora_merge_tensor",
           "dora_unmerge_tensor", "init_tensor"]


def scaling(rank: int, alpha: float, use_rslora: bool = False) -> float:
  """PEFT's scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA.

  Example:
    >>> scaling(8, 16), round(scaling(8, 16, use_rslora=True), 6)
    (2.0, 5.656854)
  """
  if rank <= 0:
    raise ValueError(f"LoRA rank must be positive, got r={rank}")
  return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def delta(a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
  """``scale * a @ b`` in float32 (``a[in, r]``, ``b[r, out]``)."""
  return jnp.asarray(scale, jnp.float32) * (a.astype(jnp.float32) @ b.astype(jnp.float32))


def merge_tensor(w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
  """``w + scale * a @ b`` computed in float32, returned in ``w``'s dtype."""
  return (w.astype(jnp.float32) + delta(a, b, scale)).astype(w.dtype)


def unmerge_tensor(w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
  """Inverse of :func:`merge_tensor`: ``w - scale * a @ b`` (exact up to rounding in ``w``'s dtype)."""
  return (w.astype(jnp.float32) - delta(a, b, scale)).astype(w.dtype)


def dora_norm(w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
  """DoRA's weight norm ``||w + scale * a @ b||`` per output unit (axis 0 of ``w[in, out]``), fp32.

  Example:
    >>> import jax.numpy as jnp
    >>> dora_norm(jnp.array([[3.0, 0.0], [4.0, 1.0]]), jnp.zeros((2, 1)), jnp.zeros((1, 2)), 1.0).tolist()
    [5.0, 1.0]
  """
  return jnp.linalg.norm(w.astype(jnp.float32) + delta(a, b, scale), axis=0)


def dora_merge_tensor(w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array | float,
                      magnitude: jax.Array) -> tuple[jax.Array, jax.Array]:
  """DoRA merge: ``((w + delta) * m / n, n)`` with ``n`` the pre-merge norm (keep it to unmerge)."""
  full = w.astype(jnp.float32) + delta(a, b, scale)
  norm = jnp.linalg.norm(full, axis=0)
  return (full * (magnitude.astype(jnp.float32) / norm)).astype(w.dtype), norm


def dora_unmerge_tensor(merged: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array | float,
                        magnitude: jax.Array, norm: jax.Array) -> jax.Array:
  """Inverse of :func:`dora_merge_tensor` from the stored norm: ``merged / (m / n) - delta``."""
  factor = magnitude.astype(jnp.float32) / norm.astype(jnp.float32)
  return (merged.astype(jnp.float32) / factor - delta(a, b, scale)).astype(merged.dtype)


def init_tensor(key: jax.Array, shape: tuple[int, int], rank: int, *, embedding: bool = False,
                init: bool | str = True, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """PEFT's initial ``(a, b)`` for a weight of Flax shape ``shape``.

  Linear (``init=True``): ``lora_A`` Kaiming-uniform with ``a=sqrt(5)`` (uniform in
  ``+-1/sqrt(in)``), ``lora_B`` zeros; ``init='gaussian'``: ``lora_A ~ N(0, 1/r^2)``;
  ``init=False``: both random (not a no-op; for tests). Embeddings: ``lora_embedding_A`` zeros and
  ``lora_embedding_B ~ N(0, 1)`` (PEFT's choice).

  Example:
    >>> import jax
    >>> a, b = init_tensor(jax.random.key(0), (16, 8), 4)
    >>> a.shape, b.shape, float(abs(b).max()), bool(abs(a).max() <= 0.25)
    ((16, 4), (4, 8), 0.0, True)
  """
  n_in, n_out = shape
  ka, kb = jax.random.split(key)
  if embedding:
    a = jnp.zeros((n_in, rank), dtype)
    b = jax.random.normal(kb, (rank, n_out), dtype)
    if init is False:
      a = jax.random.normal(ka, (n_in, rank), dtype)
    return a, b
  if init is True or init is False:
    bound = 1.0 / math.sqrt(n_in)
    a = jax.random.uniform(ka, (n_in, rank), dtype, -bound, bound)
  elif init == "gaussian":
    a = jax.random.normal(ka, (n_in, rank), dtype) / rank
  else:
    raise ValueError(f"init_lora_weights {init!r} not supported; supported: True, False, "
                     "'gaussian'")
  b = (jax.random.normal(kb, (rank, n_out), dtype) * 0.02 if init is False
       else jnp.zeros((rank, n_out), dtype))
  return a, b
