"""Path-aware operations on parameter pytrees: map, partition, cast, compare.

All functions are pure, work under ``jax.jit`` (selection is resolved from
static paths), and keep shardings: element-wise functions applied to sharded
arrays return sharded arrays without gathering them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.tree.paths import PyTree, flatten, unflatten
from jaxparams.tree.select import Selector, select

__all__ = ["map", "map_with_path", "partition", "combine", "cast", "allclose", "diff",
           "LeafDiff"]

_map = map  # the builtin, shadowed below on purpose (jp.tree.map mirrors jax.tree.map)


def _rebuild(tree: PyTree, flat: dict[str, Any]) -> PyTree:
  return unflatten(flat, like=tree, is_leaf=lambda x: x is None)


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree, where: Selector = None, *,
                  strict: bool = True) -> PyTree:
  """Applies ``fn(path, leaf)`` to the selected leaves; the others pass through.

  Example:
    >>> map_with_path(lambda p, x: x * 10, {'a': 1, 'b': 2}, where='b')
    {'a': 1, 'b': 20}
  """
  flat = flatten(tree)
  chosen = set(select(flat, where, flat=True, strict=strict))
  out = {p: (fn(p, x) if p in chosen else x) for p, x in flat.items()}
  return _rebuild(tree, out)


def map(fn: Callable[[Any], Any], tree: PyTree, where: Selector = None, *,  # noqa: A001
        strict: bool = True) -> PyTree:
  """Applies ``fn(leaf)`` to the leaves chosen by ``where``.

  Args:
    fn: function of one leaf.
    tree: the parameter pytree.
    where: selector (glob, regex, rules, predicate, mask tree); ``None`` = all.
    strict: raise when ``where`` selects nothing.

  Returns:
    A pytree of the same structure.

  Example:
    >>> import jax.numpy as jnp
    >>> t = {'mlp': {'kernel': jnp.ones(2), 'bias': jnp.ones(2)}}
    >>> map(lambda x: 2 * x, t, where='*/kernel')['mlp']['kernel']
    Array([2., 2.], dtype=float32)
  """
  return map_with_path(lambda _, x: fn(x), tree, where, strict=strict)


def partition(tree: PyTree, where: Selector, *, strict: bool = True) -> tuple[PyTree, PyTree]:
  """Splits ``tree`` into (selected, rest), with ``None`` in the other's slots.

  Example:
    >>> a, b = partition({'w': 1, 'b': 2}, 'w')
    >>> a, b
    ({'b': None, 'w': 1}, {'b': 2, 'w': None})
    >>> combine(a, b)
    {'b': 2, 'w': 1}
  """
  flat = flatten(tree)
  chosen = set(select(flat, where, flat=True, strict=strict))
  sel = {p: (x if p in chosen else None) for p, x in flat.items()}
  rest = {p: (None if p in chosen else x) for p, x in flat.items()}
  return _rebuild(tree, sel), _rebuild(tree, rest)


def combine(*trees: PyTree) -> PyTree:
  """Merges trees from :func:`partition`: each slot takes its first non-``None``.

  Example:
    >>> combine({'a': 1, 'b': None}, {'a': None, 'b': 2})
    {'a': 1, 'b': 2}
  """
  if not trees:
    raise ValueError("combine needs at least one tree.")
  is_none = lambda x: x is None
  flats = [flatten(t, is_leaf=is_none) for t in trees]
  out = {}
  for p in flats[0]:
    vals = [f.get(p) for f in flats]
    out[p] = next((v for v in vals if v is not None), None)
  return unflatten(out, like=trees[0], is_leaf=is_none)


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(x, "dtype")


def cast(tree: PyTree, dtype: Any, where: Selector = None, *, strict: bool = True) -> PyTree:
  """Casts the selected floating-point leaves to ``dtype``.

  Integer, boolean and non-array leaves are left as they are (quantized codes,
  step counters), so ``cast(params, jnp.bfloat16)`` is always safe.

  Example:
    >>> import jax.numpy as jnp
    >>> t = cast({'w': jnp.ones(2), 'step': jnp.int32(3)}, jnp.bfloat16)
    >>> t['w'].dtype, t['step'].dtype
    (dtype(bfloat16), dtype('int32'))
  """
  dtype = jnp.dtype(dtype)

  def f(x):
    if _is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact):
      return x.astype(dtype)
    return x

  return map(f, tree, where, strict=strict)


class LeafDiff(NamedTuple):
  """One row of :func:`diff`, a named tuple: ``LeafDiff(path, kind, max_abs, max_rel)``.

  Unpacks as before (``path, kind, max_abs, max_rel = row``) and prints its field names.

  Example:
    >>> LeafDiff('w', 'value', 1e-3, 1.0)
    LeafDiff(path='w', kind='value', max_abs=0.001, max_rel=1.0)
  """

  path: str
  kind: str
  max_abs: float = float("nan")
  max_rel: float = float("nan")


def diff(a: PyTree, b: PyTree, *, rtol: float = 0.0, atol: float = 0.0) -> list[LeafDiff]:
  """Lists the leaves that differ between two trees, and by how much.

  ``kind`` is ``'missing_in_a'``, ``'missing_in_b'``, ``'shape'``, ``'dtype'``
  or ``'value'`` (some element differs by more than ``atol + rtol*|b|``).

  Example:
    >>> import numpy as np
    >>> diff({'w': np.zeros(2)}, {'w': np.array([0., 1e-3])})[0].kind
    'value'
  """
  fa, fb = flatten(a), flatten(b)
  out: list[LeafDiff] = []
  for p in fa:
    if p not in fb:
      out.append(LeafDiff(p, "missing_in_b"))
  for p in fb:
    if p not in fa:
      out.append(LeafDiff(p, "missing_in_a"))
  for p, x in fa.items():
    if p not in fb:
      continue
    y = fb[p]
    xs, ys = np.shape(x), np.shape(y)
    if xs != ys:
      out.append(LeafDiff(p, "shape"))
      continue
    xa, ya = np.asarray(x), np.asarray(y)
    if xa.dtype != ya.dtype:
      out.append(LeafDiff(p, "dtype"))
      continue
    if xa.size == 0:
      continue
    xf, yf = xa.astype(np.float64), ya.astype(np.float64)
    err = np.abs(xf - yf)
    bad = ~(err <= atol + rtol * np.abs(yf))
    # NaNs in the same places count as equal.
    bad &= ~(np.isnan(xf) & np.isnan(yf))
    if bad.any():
      rel = err / np.maximum(np.abs(yf), np.finfo(np.float64).tiny)
      out.append(LeafDiff(p, "value", float(np.nanmax(err)), float(np.nanmax(rel))))
  return out


def allclose(a: PyTree, b: PyTree, *, rtol: float = 1e-6, atol: float = 0.0) -> bool:
  """True when both trees have the same paths, shapes, dtypes and close values.

  Example:
    >>> allclose({'w': [1.0]}, {'w': [1.0 + 1e-9]})
    True
  """
  return not diff(a, b, rtol=rtol, atol=atol)
