"""Shared checks and small helpers for the quantization methods.

Every method takes a weight ``W[K, N]`` (flax layout) and a ``name=`` used in error
messages (the tree path). Bits, group size, matrix shape, float dtype and finiteness are
checked once, by the method's record (:mod:`jaxparams.quant.record`), which calls the
helpers here.

Example:
  >>> resolve_group_size(256, 64)
  64
  >>> resolve_group_size(256, None)
  256
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["resolve_group_size", "as_matrix", "check_matrix", "check_finite", "check_bits", "is_concrete",
           "minmax_params", "quantize_codes", "clip_search", "MSE_GRID", "MSE_MAXSHRINK"]

# GPTQ ``quant.py`` ``find_params(mse=True)`` (GPTQModel's ``mse`` option): shrink factors
# ``1 - i / MSE_GRID`` for ``i < MSE_MAXSHRINK * MSE_GRID``; the error norm is the option's value
# (2.4 in the reference).
MSE_GRID = 100
MSE_MAXSHRINK = 0.8


def _where(name: str) -> str:
  return f" in {name!r}" if name else ""


def is_concrete(x: Any) -> bool:
  """False for tracers (inside jit), where value checks must be skipped."""
  return not isinstance(x, jax.core.Tracer)


def check_bits(bits: int, allowed, *, name: str = "", method: str = "") -> int:
  if not isinstance(bits, (int, np.integer)) or int(bits) not in tuple(allowed):
    m = f"{method}: " if method else ""
    raise ValueError(f"{m}unsupported bits={bits!r}{_where(name)}; supported: {sorted(allowed)}")
  return int(bits)


def resolve_group_size(k: int, group_size: int | None, *, name: str = "") -> int:
  """Maps ``None``/``-1``/``0`` to per-channel (``K``); checks that G divides K."""
  if group_size is None or group_size in (-1, 0):
    return int(k)
  if not isinstance(group_size, (int, np.integer)) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, -1 or None{_where(name)}; "
                     f"got {group_size!r}")
  g = int(group_size)
  if k % g:
    raise ValueError(f"group_size={g} does not divide the input axis K={k}{_where(name)}; "
                     f"use a divisor of {k} or -1 for per-channel")
  return g


def check_matrix(shape: tuple[int, ...], dtype: Any, *, name: str = "") -> None:
  """A weight matrix: at least two dimensions and a floating dtype (``ValueError`` naming it)."""
  if len(shape) < 2:
    raise ValueError(f"expected a weight matrix (>= 2 dims){_where(name)}, "
                     f"got shape {tuple(shape)}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"expected a floating weight{_where(name)}, got dtype {dtype}")


def as_matrix(w: jax.Array, *, name: str = "") -> jax.Array:
  """Returns ``w`` as a 2-D ``(prod(shape[:-1]), shape[-1])`` view; rejects scalars/vectors."""
  w = jnp.asarray(w) if not hasattr(w, "shape") else w
  check_matrix(tuple(w.shape), w.dtype, name=name)
  if w.ndim > 2:
    w = w.reshape(-1, w.shape[-1])
  return w


def check_finite(x: jax.Array, *, name: str = "", what: str = "weight") -> None:
  """Raises ValueError if a concrete array holds NaN/inf (skipped under jit)."""
  if x is None or not is_concrete(x):
    return
  a = np.asarray(x)
  if a.dtype.kind != "f" or a.dtype.itemsize < 4:
    a = a.astype(np.float32)
  bad = ~np.isfinite(a)
  if bad.any():
    n_bad = int(bad.sum())
    raise ValueError(f"{what}{_where(name)} contains {n_bad} non-finite value(s) (NaN/inf); "
                     f"shape {tuple(x.shape)}")


def minmax_params(wmin: jax.Array, wmax: jax.Array, bits: int, symmetric: bool):
  """GPTQ-reference (``quant.py``) grid from per-group min/max.

  The range always contains 0; an all-zero group gets [-1, 1]. Asymmetric:
  ``scale = (max - min) / maxq``, ``zero = round(-min / scale)``; symmetric:
  ``max = -min = absmax`` and ``zero = (maxq + 1) / 2``.

  Returns ``(scale, zero)`` as float32 arrays.
  """
  maxq = float(2 ** bits - 1)
  xmin = jnp.minimum(wmin, 0.0)
  xmax = jnp.maximum(wmax, 0.0)
  if symmetric:
    xmax = jnp.maximum(jnp.abs(xmin), xmax)
    xmin = jnp.where(xmin < 0, -xmax, xmin)
  both0 = (xmin == 0) & (xmax == 0)
  xmin = jnp.where(both0, -1.0, xmin)
  xmax = jnp.where(both0, 1.0, xmax)
  scale = (xmax - xmin) / maxq
  if symmetric:
    zero = jnp.full_like(scale, (maxq + 1) / 2)
  else:
    zero = jnp.round(-xmin / scale)
  return scale.astype(jnp.float32), zero.astype(jnp.float32)


def quantize_codes(w: jax.Array, scale: jax.Array, zero: jax.Array, bits: int) -> jax.Array:
  """``clamp(round(w / scale) + zero, 0, 2**bits - 1)`` as float (shapes broadcast)."""
  return jnp.clip(jnp.round(w / scale) + zero, 0.0, float(2 ** bits - 1))


def clip_search(w: jax.Array, grid_fn, bits: int, axis, norm: float, *, grid: int = MSE_GRID,
                maxshrink: float = MSE_MAXSHRINK):
  """Per-group clipping ratio by grid search (GPTQ's ``mse`` option, one compiled loop).

  ``grid_fn(p)`` gives ``(scale, zero)`` of the range shrunk by ``p`` (keepdims over ``axis``);
  ``p = 1 - i / grid`` for ``i = 0 .. int(maxshrink * grid) - 1`` and each group keeps the
  ``p`` with the smallest ``sum |Q(w) - w| ** norm`` (first minimum; ``p = 1`` is min/max).

  Example:
    >>> import jax
    >>> w = jax.random.normal(jax.random.key(0), (4, 64, 8))
    >>> f = lambda p: minmax_params(p * w.min(1, keepdims=True), p * w.max(1, keepdims=True), 3,
    ...                             False)
    >>> s, z = clip_search(w, f, 3, 1, 2.4)
    >>> bool((s <= f(1.0)[0] + 1e-7).all())
    True
  """
  maxq = float(2 ** bits - 1)

  def err(s, z):
    q = jnp.clip(jnp.round(w / s) + z, 0.0, maxq)
    return jnp.sum(jnp.abs((q - z) * s - w) ** norm, axis=axis, keepdims=True)

  s0, z0 = grid_fn(1.0)
  s0 = jnp.broadcast_to(s0, jnp.shape(s0))
  z0 = jnp.broadcast_to(z0, jnp.shape(s0)).astype(jnp.float32)

  def body(i, c):
    s, z, best = c
    p = 1.0 - i.astype(jnp.float32) / grid
    s1, z1 = grid_fn(p)
    z1 = jnp.broadcast_to(z1, s1.shape).astype(jnp.float32)
    e = err(s1, z1)
    better = e < best
    return jnp.where(better, s1, s), jnp.where(better, z1, z), jnp.where(better, e, best)

  s, z, _ = jax.lax.fori_loop(1, max(1, int(maxshrink * grid)), body, (s0, z0, err(s0, z0)))
  return s, z
