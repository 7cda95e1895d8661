"""Edit deltas: the exact difference an edit made, as a flat ``{path: array}`` pytree.

An edit returns ``(new_params, delta)`` with ``new_params[p] = params[p] + delta[p]`` computed
once; :func:`apply_delta` re-applies it (bit-identical to the edit's output, since it is the same
fp32 addition), :func:`rollback` restores the original leaves exactly (the delta also records the
original values of the edited leaves, so no floating-point subtraction is involved).
:func:`save_delta` / :func:`load_delta` write it as safetensors (atomic), with the content
fingerprint (:mod:`jaxparams.edit.fingerprint`) of every edited tensor before and after the edit.
Both directions check the tensors they are given first (:func:`check_target`): ``apply_delta``
needs the tensors the delta was computed from, ``rollback`` the edited ones; a different
model, a second apply or a second rollback raise a one-line ValueError naming the tensor.

Example:
  >>> import jax.numpy as jnp
  >>> params = {'a': {'kernel': jnp.ones((2, 2))}}
  >>> new, d = add_delta(params, {'a/kernel': jnp.full((2, 2), 0.1)})
  >>> bool((apply_delta(params, d)['a']['kernel'] == new['a']['kernel']).all())
  True
  >>> bool((rollback(new, d)['a']['kernel'] == params['a']['kernel']).all())
  True
  >>> apply_delta(new, d)
  Traceback (most recent call last):
  ...
  ValueError: tensor 'a/kernel' already holds this delta's edit (fingerprint ...): applying it again would add it twice
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import tree as jtree

__all__ = ["Delta", "add_delta", "apply_delta", "rollback", "save_delta", "load_delta",
           "compose", "fingerprints", "check_target"]


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


def fingerprints(delta: Delta) -> dict[str, dict[str, str]]:
  """``{path: {'before': fp, 'after': fp}}``: the edited tensors' fingerprints before the edit
  (the delta's originals) and after it (originals + update, the same addition as the edit)."""
  from jaxparams.edit import fingerprint as fp_lib  # pylint: disable=g-import-not-at-top
  after = _add({p: delta.originals[p] for p in delta.updates}, delta.updates)
  return {p: {"before": fp_lib.of_tensor(p, delta.originals[p]),
              "after": fp_lib.of_tensor(p, after[p])} for p in delta.updates}


def _traced(xs) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def check_target(params: Any, delta: Delta, *, rollback: bool, where: str = "") -> None:
  """Raises a one-line ValueError unless every tensor the delta edits is as the delta expects:
  the pre-edit fingerprint for an apply, the post-edit one for a rollback (``where`` prefixes
  the message, e.g. the checkpoint's folder). Traced arrays (inside ``jit``) are not checked.
  """
  from jaxparams.edit import fingerprint as fp_lib  # pylint: disable=g-import-not-at-top
  flat = jtree.flatten(params)
  missing = [p for p in delta.updates if p not in flat]
  pre = f"{where}: " if where else ""
  if missing:
    raise ValueError(f"{pre}the delta edits tensor {missing[0]!r}, which this model does not "
                     "have: a delta of another model")
  if _traced(flat[p] for p in delta.updates):
    return
  fps = delta.meta.get("fingerprints") or fingerprints(delta)
  want, other = ("after", "before") if rollback else ("before", "after")
  for p in delta.updates:
    if tuple(flat[p].shape) != tuple(delta.updates[p].shape):
      raise ValueError(f"{pre}tensor {p!r} has shape {tuple(flat[p].shape)}, the delta "
                       f"{tuple(delta.updates[p].shape)}: a delta of another model")
    got = fp_lib.of_tensor(p, flat[p])
    if got == fps[p][want]:
      continue
    if got == fps[p][other]:
      if rollback:
        raise ValueError(f"{pre}tensor {p!r} already holds the original of this delta "
                         f"(fingerprint {got[:12]}): it is not edited by it (rolled back "
                         "already?)")
      raise ValueError(f"{pre}tensor {p!r} already holds this delta's edit (fingerprint "
                       f"{got[:12]}): applying it again would add it twice")
    raise ValueError(f"{pre}tensor {p!r} (fingerprint {got[:12]}) is not the one this delta "
                     f"{'edited' if rollback else 'was computed from'} ({fps[p][want][:12]}): "
                     "a different model or a different edit")


def apply_delta(params: Any, delta: Delta, *, check: bool = True) -> Any:
  """Re-applies a delta (same addition as the edit: bit-identical result).

  ``check``: refuse tensors that are not the ones the delta was computed from
  (:func:`check_target`; a second apply is refused)."""
  if check:
    check_target(params, delta, rollback=False)
  flat = jtree.flatten(params)
  orig = {p: flat[p] for p in delta.updates}
  return _set(params, _add(orig, delta.updates))


def rollback(params: Any, delta: Delta, *, check: bool = True) -> Any:
  """Restores the leaves the delta edited to their original values (bit-exact).

  ``check``: refuse tensors that do not hold this delta's edit (:func:`check_target`)."""
  if check:
    check_target(params, delta, rollback=True)
  return _set(params, delta.originals)


def compose(first: Delta, second: Delta) -> Delta:
  """One delta for ``first`` then ``second`` (originals from ``first``; updates summed; rollback
  restores the originals exactly, re-applying gives the sum in fp32). Its fingerprints are
  those of applying it (originals + summed update): :func:`rollback` with ``check`` expects a
  model edited by the composed delta; roll back a model edited by ``first`` then ``second``
  with ``second`` then ``first``."""
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
    meta = dict(delta.meta)
    meta["fingerprints"] = meta.get("fingerprints") or fingerprints(delta)
    w.write_json("delta.json", {"meta": meta, "paths": list(delta.updates)})


def load_delta(path: str | pathlib.Path) -> Delta:
  """Reads a delta written by :func:`save_delta`; a file whose stored originals do not match
  its recorded fingerprints is refused (ValueError naming the file and tensor)."""
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  info_path = path / "delta.json"
  if not info_path.is_file():
    raise FileNotFoundError(f"{path}: no delta.json (not a delta folder written by jaxparams edit)")
  info = jio.read_json(info_path, what="delta description", folder=path)
  if (not isinstance(info, dict) or not isinstance(info.get("paths"), list)
      or not all(isinstance(p, str) for p in info["paths"])):
    raise ValueError(f"{info_path}: expected an object with a 'paths' list of tensor names")
  with jio.open_checkpoint(path) as r:
    ups = {p: jnp.asarray(r.read(f"update/{p}")) for p in info["paths"]}
    origs = {p: jnp.asarray(r.read(f"original/{p}")) for p in info["paths"]}
  meta = info.get("meta", {}) if isinstance(info.get("meta"), dict) else {}
  d = Delta(ups, origs, meta)
  recorded = meta.get("fingerprints")
  if recorded is not None:
    now = fingerprints(d)
    for p in info["paths"]:
      if recorded.get(p) != now[p]:
        raise ValueError(f"{path}: tensor {p!r} of the delta does not match its recorded "
                         "fingerprint (a damaged or altered delta file)")
  return d
