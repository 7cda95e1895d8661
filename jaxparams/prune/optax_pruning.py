"""Pruning during training as an optax wrapper: masks live in the optimizer state.

``wrap_optax(tx, sparsity, schedule=...)`` returns a ``GradientTransformation`` that runs ``tx``,
then (on the schedule's update steps) recomputes each selected leaf's keep-mask by magnitude of
the updated weights at the schedule's current sparsity, and rewrites the updates so that
``optax.apply_updates`` lands exactly on ``mask * (params + updates)``: pruned weights are exactly
zero after every step, with no extra call. (jaxpruner's design, where the wrapper keeps the masks
in its state; jaxpruner applies them in a separate ``post_gradient_update`` call, here they are
folded into the update.) Fixed masks, e.g. from SNIP at initialisation, are given with ``masks=``.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 8)), 'b': jnp.zeros(8)}
  >>> tx = wrap_optax(optax.sgd(0.1), {'w': 0.75},
  ...                 schedule=PolynomialSchedule(begin_step=0, end_step=4, update_freq=1))
  >>> state = tx.init(params)
  >>> for _ in range(6):
  ...   grads = jax.tree.map(jnp.ones_like, params)
  ...   updates, state = tx.update(grads, state, params)
  ...   params = optax.apply_updates(params, updates)
  >>> float((params['w'] == 0).mean())
  0.75
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxparams import tree as jtree
from jaxparams.prune.masks import check_sparsity, topk_mask
from jaxparams.prune.schedule import OneShotSchedule, PolynomialSchedule

__all__ = ["PruningState", "apply_masks", "post_update", "sparsity_report", "wrap_optax"]


class PruningState(NamedTuple):
  """Optimizer state of :func:`wrap_optax`.

  Attributes:
    inner: the wrapped optimizer's state.
    masks: ``{path: bool array}`` keep-masks of the pruned leaves.
    count: number of updates done (int32).
  """

  inner: Any
  masks: dict[str, jax.Array]
  count: jax.Array


def apply_masks(params: Any, masks: Mapping[str, jax.Array]) -> Any:
  """Zeroes the pruned entries of the leaves named in ``masks``.

  Example:
    >>> apply_masks({'w': jnp.ones(3)}, {'w': jnp.array([True, False, True])})['w'].tolist()
    [1.0, 0.0, 1.0]
  """
  flat = jtree.flatten(params)
  missing = sorted(set(masks) - set(flat))
  if missing:
    raise ValueError(f"apply_masks: masks name leaves that are not in the tree: {missing[:3]}")
  return jtree.unflatten({k: (jnp.where(masks[k], v, jnp.zeros_like(v)) if k in masks else v)
                          for k, v in flat.items()}, params)


def sparsity_report(params: Any, where: Any = None) -> dict[str, float]:
  """Fraction of exact zeros per selected leaf.

  Example:
    >>> sparsity_report({'w': jnp.array([0., 1., 0., 2.])})
    {'w': 0.5}
  """
  flat = jtree.flatten(params)
  return {k: float(jnp.mean(flat[k] == 0)) for k in jtree.select(flat, where, flat=True)}


def wrap_optax(tx: optax.GradientTransformation, sparsity: Mapping[str, float] | None = None, *,
               schedule: PolynomialSchedule | OneShotSchedule | None = None,
               masks: Mapping[str, jax.Array] | None = None,
               fold: bool = True) -> optax.GradientTransformation:
  """Wraps ``tx`` so that selected leaves are pruned by magnitude on a schedule.

  Args:
    tx: any optax transformation.
    sparsity: ``{path: final sparsity}``, e.g. from :func:`jaxparams.prune.erk` or
      :func:`jaxparams.prune.uniform`. Not needed with ``masks``.
    schedule: when and how far to prune (default: one shot at step 0).
    masks: fixed keep-masks (e.g. SNIP's); the weights are masked at every step and the masks are
      never recomputed.
    fold: fold the masking into the updates (the default: ``optax.apply_updates`` lands on the
      pruned weights). With ``fold=False`` the updates of pruned weights are zeroed and the
      caller, which applies the updates itself (e.g. scaled by a learning rate it owns), calls
      :func:`post_update` after each step -- jaxpruner's ``post_gradient_update``.

  Returns:
    An optax ``GradientTransformation`` whose state is a :class:`PruningState`.
  """
  if (sparsity is None) == (masks is None):
    raise ValueError("wrap_optax: give exactly one of `sparsity` (magnitude pruning on a "
                     "schedule) or `masks` (fixed masks)")
  targets = {k: check_sparsity(v, name=k) for k, v in (sparsity or {}).items()}
  fixed = dict(masks) if masks is not None else None
  schedule = schedule if schedule is not None else OneShotSchedule(step=0)
  names = sorted(fixed if fixed is not None else targets)

  def init_fn(params):
    flat = jtree.flatten(params)
    missing = [k for k in names if k not in flat]
    if missing:
      raise ValueError(f"wrap_optax: no leaf {missing[0]!r} in the parameters; "
                       f"leaves: {sorted(flat)[:8]}...")
    if fixed is not None:
      m = {k: jnp.asarray(fixed[k], bool) for k in names}
      for k in names:
        if m[k].shape != flat[k].shape:
          raise ValueError(f"wrap_optax: mask of {k!r} has shape {m[k].shape}, the leaf "
                           f"{flat[k].shape}")
    else:
      m = {k: jnp.ones(flat[k].shape, bool) for k in names}
    return PruningState(tx.init(params), m, jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("wrap_optax needs `params` in update() to keep pruned weights at zero")
    inner_updates, inner_state = tx.update(updates, state.inner, params)
    if not fold:
      u_flat = jtree.flatten(inner_updates)
      out = {k: (jnp.where(state.masks[k], v, jnp.zeros_like(v)) if k in state.masks else v)
             for k, v in u_flat.items()}
      return (jtree.unflatten(out, inner_updates),
              PruningState(inner_state, state.masks, state.count + 1))
    p_flat, u_flat = jtree.flatten(params), jtree.flatten(inner_updates)
    new_masks = {}
    out = dict(u_flat)
    for k in names:
      new_w = p_flat[k] + u_flat[k]
      mask = state.masks[k]
      if fixed is None:
        level = schedule.sparsity(targets[k], state.count)
        n_prune = jnp.floor(level * math.prod(new_w.shape)).astype(jnp.int32)
        fresh = topk_mask(jnp.abs(new_w.astype(jnp.float32)), n_prune)
        mask = jnp.where(schedule.is_update_step(state.count), fresh, mask)
      new_masks[k] = mask
      out[k] = jnp.where(mask, new_w, jnp.zeros_like(new_w)) - p_flat[k]
    return (jtree.unflatten(out, inner_updates),
            PruningState(inner_state, new_masks, state.count + 1))

  return optax.GradientTransformation(init_fn, update_fn)


def post_update(params: Any, state: PruningState, sparsity: Mapping[str, float] | None = None,
                *, schedule: PolynomialSchedule | OneShotSchedule | None = None
                ) -> tuple[Any, PruningState]:
  """After the caller applied ``wrap_optax(..., fold=False)``'s updates: recompute the masks on
  the schedule's update steps (by magnitude of the new weights) and zero the pruned weights.

  Give the same ``sparsity`` and ``schedule`` as to :func:`wrap_optax` (``sparsity=None``: the
  masks are fixed and only applied).

  Example:
    >>> import optax
    >>> tx = wrap_optax(optax.sgd(1.0), {'w': 0.5}, fold=False)
    >>> p = {'w': jnp.array([1., -3., 0.5, 2.])}
    >>> s = tx.init(p)
    >>> u, s = tx.update({'w': jnp.zeros(4)}, s, p)
    >>> p, s = post_update(optax.apply_updates(p, u), s, {'w': 0.5})
    >>> p['w'].tolist()
    [0.0, -3.0, 0.0, 2.0]
  """
  schedule = schedule if schedule is not None else OneShotSchedule(step=0)
  fixed = sparsity is None
  targets = {k: check_sparsity(v, name=k) for k, v in (sparsity or {}).items()}
  missing = sorted(set(state.masks) - set(targets)) if not fixed else []
  if missing:
    raise ValueError(f"post_update: no sparsity given for pruned leaves {missing[:3]}")
  flat = jtree.flatten(params)
  step = state.count - 1                      # the step whose update was just applied
  masks = {}
  for k, mask in state.masks.items():
    if not fixed:
      w = flat[k]
      level = schedule.sparsity(targets[k], step)
      n_prune = jnp.floor(level * math.prod(w.shape)).astype(jnp.int32)
      fresh = topk_mask(jnp.abs(w.astype(jnp.float32)), n_prune)
      mask = jnp.where(schedule.is_update_step(step), fresh, mask)
    masks[k] = mask
  return apply_masks(params, masks), PruningState(state.inner, masks, state.count)
