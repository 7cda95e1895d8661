"""Path-addressed views of parameter pytrees.

Every leaf of a pytree is addressed by a ``/``-joined string path such as
``layers/3/mlp/kernel``: dict keys, sequence indices and dataclass field names
are joined in order. ``flatten`` and ``unflatten`` convert between a pytree and
an ordered ``{path: leaf}`` dict.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

PyTree = Any
SEP = "/"

__all__ = ["flatten", "unflatten", "path_str", "leaf_paths"]


def _key_str(key: Any) -> str:
  """Returns the path component of one jax key entry."""
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return str(key.name)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(keypath: tuple[Any, ...]) -> str:
  """Converts a jax key path to a ``/``-joined path string.

  Wrapper entries that only hold a value (``nnx.Variable``'s ``value``) are
  dropped so that an ``nnx.State`` path reads like the linen one.

  Example:
    >>> import jax
    >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({'a': [1, 2]})[0]]
    ['a/0', 'a/1']
  """
  parts = [_key_str(k) for k in keypath]
  if len(parts) > 1 and parts[-1] in ("value", "raw_value") and isinstance(
      keypath[-1], jax.tree_util.GetAttrKey):
    parts = parts[:-1]
  return SEP.join(parts)


def _is_leaf(x: Any) -> bool:
  return x is None


def flatten(tree: PyTree, *, is_leaf=None) -> dict[str, Any]:
  """Flattens a pytree into an ordered ``{path: leaf}`` dict.

  Args:
    tree: any pytree (nested dicts, lists, tuples, ``FrozenDict``,
      ``nnx.State``, registered dataclasses, ``QArray``...).
    is_leaf: optional predicate that stops the recursion (as in
      ``jax.tree_util``).

  Returns:
    A dict from ``/``-joined path to leaf, in pytree order.

  Raises:
    ValueError: if two leaves map to the same path string.

  Example:
    >>> flatten({'layers': [{'w': 1}, {'w': 2}]})
    {'layers/0/w': 1, 'layers/1/w': 2}
  """
  items, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  out: dict[str, Any] = {}
  for keypath, leaf in items:
    p = path_str(keypath)
    if p in out:
      raise ValueError(f"Two leaves share the path {p!r}; keys must not contain '/'.")
    out[p] = leaf
  return out


def leaf_paths(tree: PyTree, *, is_leaf=None) -> list[str]:
  """Returns the leaf paths of ``tree`` in pytree order.

  Example:
    >>> leaf_paths({'b': 1, 'a': {'x': 2}})
    ['a/x', 'b']
  """
  return list(flatten(tree, is_leaf=is_leaf))


def unflatten(flat: Mapping[str, Any], like: PyTree | None = None, *,
              is_leaf=None) -> PyTree:
  """Rebuilds a pytree from a ``{path: leaf}`` dict.

  Args:
    flat: mapping from path to leaf.
    like: optional pytree whose structure is reused (lists, tuples,
      dataclasses, ``FrozenDict``, ``nnx.State`` round-trip exactly). Without
      it, nested plain dicts keyed by the path components are built.
    is_leaf: predicate passed to ``jax.tree_util`` when reading ``like``.

  Returns:
    The rebuilt pytree.

  Raises:
    ValueError: if ``flat`` lacks paths of ``like`` or has extra ones.

  Example:
    >>> unflatten({'a/b': 1, 'a/c': 2})
    {'a': {'b': 1, 'c': 2}}
    >>> unflatten({'0': 1, '1': 2}, like=[0, 0])
    [1, 2]
  """
  if like is not None:
    items, treedef = jax.tree_util.tree_flatten_with_path(like, is_leaf=is_leaf)
    paths = [path_str(k) for k, _ in items]
    missing = [p for p in paths if p not in flat]
    extra = sorted(set(flat) - set(paths))
    if missing or extra:
      raise ValueError(
          f"unflatten: paths differ from the template: missing {missing[:5]}"
          f" (of {len(missing)}), unexpected {extra[:5]} (of {len(extra)}).")
    return jax.tree_util.tree_unflatten(treedef, [flat[p] for p in paths])
  root: dict[str, Any] = {}
  for path, leaf in flat.items():
    parts = path.split(SEP)
    node = root
    for i, part in enumerate(parts[:-1]):
      nxt = node.setdefault(part, {})
      if not isinstance(nxt, dict):
        raise ValueError(
            f"unflatten: {SEP.join(parts[:i + 1])!r} is both a leaf and a prefix of {path!r}.")
      node = nxt
    if parts[-1] in node:
      raise ValueError(f"unflatten: {path!r} is both a leaf and a prefix of another path.")
    node[parts[-1]] = leaf
  return root
