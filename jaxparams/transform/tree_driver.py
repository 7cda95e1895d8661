"""Tree driver: a transform record over in-memory pytrees.

:func:`apply_tree` maps a record over the leaves chosen by ``where=`` (a
:mod:`jaxparams.tree` selector; matching nothing is an error), calling
:meth:`Transform.apply` once per leaf with the leaf's path, so every check of
the record runs. Unselected leaves come from the first input (the base when
there is one). The value checks (NaN/Inf...) of all leaves are read once, at
the end, in one host transfer.

It is pure and traceable: wrap it in ``jax.jit``, ``jax.vmap`` over an array
hyperparameter (one in ``record.array_params``, passed as an array), or
``jax.grad`` where the record's math is differentiable. Under a trace the
value checks cannot raise and are skipped (static checks still run). Sharded
leaves stay sharded (the per-tensor functions are element-wise plus
reductions, partitioned by XLA). Random records get one key per leaf,
:func:`~jaxparams.transform.keys.tensor_key` ``(key, path)``, as in the
streaming driver.

Example:
  >>> import dataclasses, jax, jax.numpy as jnp
  >>> from jaxparams.transform import Transform, checks
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class ScaleConfig:
  ...   factor: float = 2.0
  >>> scale = Transform(name='scale', fn=lambda x, c: x * c.factor, config=ScaleConfig,
  ...                   array_params=('factor',), checks=(checks.finite,))
  >>> params = {'a': jnp.ones(2), 'b': jnp.ones(2)}
  >>> apply_tree(scale, params, config={'factor': 3.0}, where='a')['a'].tolist()
  [3.0, 3.0]
  >>> grid = jax.vmap(lambda f: apply_tree(scale, params, config={'factor': f}))(
  ...     jnp.array([1.0, 2.0]))
  >>> grid['b'].tolist()
  [[1.0, 1.0], [2.0, 2.0]]
  >>> apply_tree(scale, {'a': jnp.array([jnp.inf])})
  Traceback (most recent call last):
  ...
  ValueError: tensor 'a': input contains NaN or Inf
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

import jax
import numpy as np

from jaxparams import tree as jtree
from jaxparams.transform.keys import tensor_key
from jaxparams.transform.record import Transform

__all__ = ["apply_tree", "check_same_leaves"]

PyTree = Any


def check_same_leaves(flats: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
  """All flat trees have the same leaf paths and leaf shapes (``ValueError`` naming them).

  Example:
    >>> check_same_leaves([{'a': 1}, {'b': 1}], ['base', 'model 0'])
    Traceback (most recent call last):
    ...
    ValueError: model 0 has different leaves than base: missing ['a'], extra ['b']
  """
  ref = flats[0]
  for label, f in zip(labels[1:], flats[1:]):
    missing, extra = sorted(set(ref) - set(f)), sorted(set(f) - set(ref))
    if missing or extra:
      raise ValueError(f"{label} has different leaves than {labels[0]}: missing {missing[:5]}, "
                       f"extra {extra[:5]}")
    for p, x in f.items():
      if np.shape(x) != np.shape(ref[p]):
        raise ValueError(f"tensor {p!r}: shape {np.shape(x)} in {label} but "
                         f"{np.shape(ref[p])} in {labels[0]}")


def apply_tree(record: Transform, *trees: Any, config: Any = None, key: jax.Array | None = None,
               where: jtree.Selector = None, labels: Sequence[str] | None = None,
               options: Mapping[str, Any] | None = None,
               leaf_config: Callable[[str], Any] | None = None,
               leaf_options: Callable[[str], Mapping[str, Any]] | None = None,
               skip: Collection[str] = ()) -> PyTree:
  """Applies ``record`` to every selected leaf.

  Args:
    record: the transform.
    *trees: ``tree`` (``inputs='one'``) or ``base, models`` (``base`` may be
      ``None`` when the record allows; ``models`` a sequence of pytrees).
    config: the record's config (instance, dict of fields, or ``None``).
    key: PRNG key of the run (per-leaf keys are derived from it).
    where: selector of the leaves to transform.
    labels: input labels for error messages (default ``base``/``model i``).
    options: keyword options of the record's function.
    leaf_config: ``path -> config`` overriding ``config`` per leaf.
    leaf_options: ``path -> options`` added per leaf.
    skip: names of checks not to run.

  Returns:
    A pytree with the structure of the first input (the base when present);
    a leaf whose function returns a dict becomes that dict.

  Raises:
    ValueError: different leaf sets, a selector matching nothing, or a
      failing check (naming the leaf path).
  """
  if record.inputs == "one":
    if len(trees) != 1:
      raise ValueError(f"transform {record.name!r} takes one pytree, got {len(trees)}")
    base, models = None, [trees[0]]
    inputs_flat = [jtree.flatten(trees[0])]
    default_labels = ["input"]
  else:
    if len(trees) != 2:
      raise ValueError(f"transform {record.name!r} takes (base, models), got {len(trees)} "
                       "positional arguments")
    base, models = trees[0], list(trees[1])
    # Arity and base policy are checked by the record (before any leaf is touched).
    record._arrange((base, models), "")  # pylint: disable=protected-access
    if record.base == "ignored":
      base = None
    inputs_flat = ([jtree.flatten(base)] if base is not None else []) + [
        jtree.flatten(m) for m in models]
    default_labels = list(record.labels(len(models), base is not None))
  if not inputs_flat:
    raise ValueError(f"transform {record.name!r}: no input trees")
  labels = list(labels) if labels is not None else default_labels
  check_same_leaves(inputs_flat, labels)
  ref_tree = base if base is not None else models[0]
  flat_ref = inputs_flat[0]
  chosen = jtree.select(flat_ref, where, flat=True) if where is not None else list(flat_ref)
  base_config = record.coerce_config(config)

  out = dict(flat_ref)
  pending = []
  for p in chosen:
    leaves = [f[p] for f in inputs_flat]
    cfg = record.coerce_config(leaf_config(p)) if leaf_config is not None else base_config
    opts = dict(options or {})
    if leaf_options is not None:
      opts.update(leaf_options(p))
    k = tensor_key(key, p) if key is not None else None
    if record.inputs == "one":
      args: tuple[Any, ...] = (leaves[0],)
    elif base is not None:
      args = (leaves[0], leaves[1:])
    else:
      args = (None, leaves)
    res, flags = record.apply(*args, config=cfg, key=k, path=p, labels=labels, options=opts,
                              skip=skip)
    out[p] = res
    if flags.shape[0] and not isinstance(flags, jax.core.Tracer):
      pending.append((p, args, cfg, flags))
  if pending:
    fetched = jax.device_get([f for *_, f in pending])  # one transfer for all leaves
    for (p, args, cfg, _), flags in zip(pending, fetched):
      if not np.all(flags):
        arranged = record._arrange(args, p)  # pylint: disable=protected-access
        record.verify(flags, record.context(arranged, cfg, p, labels), skip)
  return jtree.unflatten(out, like=ref_tree)
