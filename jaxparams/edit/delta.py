"""Edit deltas: the exact difference an edit made, as a flat ``{path: array}`` pytree.

An edit returns ``(new_params, delta)`` with ``new_params[p] = params[p] + delta[p]`` computed
once; :func:`apply_delta` re-applies it (bit-identical to the edit's output, since it is the same
fp32 addition), :func:`rollback` restores the original leaves exactly (the delta also records the
original values of the edited leaves, so no floating-point subtraction is involved).
:func:`save_delta` / :func:`load_delta` write it as safetensors (atomic).

Example:
  >>> import jax.numpy as jnp
  >>> params = {'a': {'kernel': jnp.ones((2, 2))}}
  >>> new, d = add_delta(params, {'a/kernel': jnp.full((2, 2), 0.1)})
  >>> bool((apply_delta(params, d)['a']['kernel'] == new['a']['kernel']).all())
  True
  >>> bool((rollback(new, d)['a']['kernel'] == params['a']['kernel']).all())
  True
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree

__all__ = ["Delta", "add_delta", "apply_delta", "rollback", "save_delta", "load_delta",
           "compose"]


@dataclasses.dataclass(frozen=True)
class Delta:
  """What an edit changed.

  Attributes:
    updates: ``{path: delta array}`` added to each edited leaf.
    originals: ``{path: original leaf}`` (for an exact rollback).
    meta: JSON-able description (method, requests, layers).
  """
  updates: dict[str, jax.Array]
  originals: dict[str, jax.Array]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


jax.tree_util.register_pytree_node(
    Delta, lambda d: ((d.updates, d.originals), d.meta),
    lambda meta, ch: Delta(ch[0], ch[1], meta))


def _set(params: Any, values: dict[str, jax.Array]) -> Any:
  flat = jtree.flatten(params)
  missing = [p for p in values if p not in flat]
  if missing:
    raise ValueError(f"delta names leaves the params do not have: {missing[:8]}")
  for p, v in values.items():
    if tuple(v.shape) != tuple(flat[p].shape):
      raise ValueError(f"delta leaf {p!r} has shape {tuple(v.shape)}, params have "
                       f"{tuple(flat[p].shape)}")
  flat.update(values)
  return jtree.unflatten(flat)


@jax.jit
def _add(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {p: (a[p].astype(jnp.float32) + b[p].astype(jnp.float32)).astype(a[p].dtype) for p in a}


def add_delta(params: Any, updates: dict[str, jax.Array], meta: dict | None = None
              ) -> tuple[Any, Delta]:
  """Adds ``updates`` to the named leaves; returns ``(new_params, Delta)``."""
  flat = jtree.flatten(params)
  orig = {p: flat[p] for p in updates if p in flat}
  if len(orig) != len(updates):
    raise ValueError(f"updates name unknown leaves: {sorted(set(updates) - set(orig))[:8]}")
  new = _add(orig, dict(updates))
  return _set(params, new), Delta(dict(updates), orig, dict(meta or {}))


def apply_delta(params: Any, delta: Delta) -> Any:
  """Re-applies a delta (same addition as the edit: bit-identical result)."""
  flat = jtree.flatten(params)
  orig = {p: flat[p] for p in delta.updates}
  return _set(params, _add(orig, delta.updates))


def rollback(params: Any, delta: Delta) -> Any:
  """Restores the leaves the delta edited to their original values (bit-exact)."""
  return _set(params, delta.originals)


def compose(first: Delta, second: Delta) -> Delta:
  """One delta for ``first`` then ``second`` (originals from ``first``; updates summed; rollback
  restores the originals exactly, re-applying gives the sum in fp32)."""
  ups = dict(first.updates)
  for p, v in second.updates.items():
    ups[p] = ups[p] + v if p in ups else v
  origs = dict(second.originals)
  origs.update(first.originals)
  return Delta(ups, origs, {"composed": [first.meta, second.meta]})


def save_delta(delta: Delta, path: str | pathlib.Path) -> None:
  """Writes ``delta.safetensors`` (``update/<path>``, ``original/<path>``) + meta in a folder."""
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  with jio.SafetensorsWriter(path, overwrite=True) as w:
    for p, v in delta.updates.items():
      w.add(f"update/{p}", np.asarray(jax.device_get(v)))
    for p, v in delta.originals.items():
      w.add(f"original/{p}", np.asarray(jax.device_get(v)))
    w.write_json("delta.json", {"meta": delta.meta, "paths": list(delta.updates)})


def load_delta(path: str | pathlib.Path) -> Delta:
  """Reads a delta written by :func:`save_delta`."""
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  info_path = path / "delta.json"
  if not info_path.is_file():
    raise FileNotFoundError(f"{path}: no delta.json (not a delta folder written by jaxparams edit)")
  info = json.loads(info_path.read_text())
  with jio.open_checkpoint(path) as r:
    ups = {p: jnp.asarray(r.read(f"update/{p}")) for p in info["paths"]}
    origs = {p: jnp.asarray(r.read(f"original/{p}")) for p in info["paths"]}
  return Delta(ups, origs, info.get("meta", {}))
