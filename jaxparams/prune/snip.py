"""SNIP: prune at initialisation by connection sensitivity ``|g * w|`` (Lee et al., 2019).

The score of each weight is ``|dL/dw * w|`` on one batch. The paper keeps the top ``1 - sparsity``
of all selected weights together (``distribution='global'``); jaxpruner's SNIP instead spreads the
sparsity over layers with a distribution (``'uniform'`` or ``'erk'``) and ranks within each layer;
both are offered. The masks feed :func:`jaxparams.prune.wrap_optax` (``masks=``), which keeps the
pruned weights at zero while training.

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'w': jax.random.normal(jax.random.key(0), (16, 4))}
  >>> x = jax.random.normal(jax.random.key(1), (32, 16))
  >>> loss = lambda p, x: jnp.mean((x @ p['w']) ** 2)
  >>> m = snip_masks(loss, params, x, sparsity=0.5)
  >>> float(m['w'].mean())
  0.5
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.prune import distribution as dist
from jaxparams.prune.masks import check_sparsity, global_masks, topk_mask

__all__ = ["snip_masks", "snip_scores"]


def snip_scores(loss_fn: Callable[..., jax.Array], params: Any, *batch: Any,
                where: Any = None) -> dict[str, jax.Array]:
  """``{path: |grad * w|}`` for the selected leaves (default: leaves with >= 2 dims).

  Example:
    >>> s = snip_scores(lambda p: jnp.sum(p['w'] ** 2), {'w': jnp.array([[1., -2.]])})
    >>> s['w'].tolist()
    [[2.0, 8.0]]
  """
  grads = jtree.flatten(jax.grad(loss_fn)(params, *batch))
  flat = jtree.flatten(params)
  names = jtree.select(flat, where if where is not None else dist.default_where, flat=True)
  return {k: jnp.abs(grads[k] * flat[k]).astype(jnp.float32) for k in names}


def snip_masks(loss_fn: Callable[..., jax.Array], params: Any, *batch: Any, sparsity: float,
               where: Any = None, distribution: str = "global") -> dict[str, jax.Array]:
  """Keep-masks from SNIP scores.

  Args:
    loss_fn: ``loss_fn(params, *batch) -> scalar``.
    params: the initial parameters.
    *batch: the batch arguments of ``loss_fn``.
    sparsity: overall fraction pruned among the selected leaves.
    where: which leaves to prune (default: every leaf with >= 2 dims).
    distribution: ``'global'`` (the paper), ``'uniform'`` or ``'erk'`` (per layer, jaxpruner).

  Returns:
    ``{path: bool keep-mask}``.
  """
  s = check_sparsity(sparsity)
  scores = snip_scores(loss_fn, params, *batch, where=where)
  if distribution == "global":
    return global_masks(scores, s)
  if distribution not in dist.DISTRIBUTIONS:
    raise ValueError(f"snip_masks: unknown distribution {distribution!r}; valid: "
                     f"{['global', *dist.DISTRIBUTIONS]}")
  sel = {k: jtree.flatten(params)[k] for k in scores}
  levels = dist.DISTRIBUTIONS[distribution](sel, s, where=lambda p, x: True)
  return {k: topk_mask(v, int(math.floor(v.size * levels[k]))) for k, v in scores.items()}
