"""Net2WiderNet unit mappings: which old unit each new unit copies, and how outgoing weights split.

Shared by the MLP (:mod:`jaxparams.scale.net2net`) and Llama (:mod:`jaxparams.scale.llama_growth`)
growth operators.

Example:
  >>> g, c = wider_mapping(3, 4)
  >>> g.tolist(), c.tolist()
  ([0, 1, 2, 0], [2, 1, 1, 2])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["wider_mapping", "take_units", "split_units", "add_noise"]


def wider_mapping(n: int, q: int, key: jax.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Net2WiderNet unit mapping g and replication counts.

  Args:
    n: current number of units.
    q: new number of units (``q >= n``).
    key: PRNG key for the random mapping of the new units; ``None`` = round robin.

  Returns:
    ``(g, counts)``: int arrays ``[q]``; ``g[j]`` is the source unit of new unit
    j and ``counts[j]`` = |{x : g[x] = g[j]}|.

  Raises:
    ValueError: if ``q < n`` (cannot preserve the function by shrinking).

  Example:
    >>> g, c = wider_mapping(2, 5)
    >>> g.tolist(), c.tolist()
    ([0, 1, 0, 1, 0], [3, 2, 3, 2, 3])
  """
  if n <= 0:
    raise ValueError(f"wider_mapping: current width must be positive, found {n}")
  if q < n:
    raise ValueError(f"Net2WiderNet cannot shrink: new width {q} < current width {n}")
  if key is None:
    extra = np.arange(q - n) % n
  else:
    extra = _host_rng(key).integers(0, n, q - n)
  g = np.concatenate([np.arange(n), extra]).astype(np.int32)
  counts = np.bincount(g, minlength=n)[g]
  return g, counts


def _host_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded by a JAX key (no device compile for a few host integers)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def add_noise(x: jax.Array, n_old: int, axis: int, noise: float, key: jax.Array | None) -> jax.Array:
  """Adds relative noise to the slices ``n_old:`` (the new copies) along ``axis``."""
  if noise <= 0 or x.shape[axis] == n_old:
    return x
  if key is None:
    raise ValueError("Net2WiderNet: noise > 0 needs a PRNG key")
  scale = noise * jnp.std(x.astype(jnp.float32))
  eps = scale * jax.random.normal(key, x.shape, jnp.float32)
  keep = (jnp.arange(x.shape[axis]) >= n_old).reshape([-1 if a == axis % x.ndim else 1
                                                       for a in range(x.ndim)])
  return (x.astype(jnp.float32) + jnp.where(keep, eps, 0.0)).astype(x.dtype)


def take_units(x: jax.Array, idx: np.ndarray, axis: int) -> jax.Array:
  return jnp.take(jnp.asarray(x), jnp.asarray(idx), axis=axis)


def split_units(x: jax.Array, g: np.ndarray, counts: np.ndarray, axis: int) -> jax.Array:
  """Outgoing weights: rows g along ``axis`` divided by their replication count."""
  x = jnp.asarray(x)
  shape = [1] * x.ndim
  shape[axis] = -1
  c = jnp.asarray(counts, jnp.float32).reshape(shape)
  return (take_units(x, g, axis).astype(jnp.float32) / c).astype(x.dtype)
