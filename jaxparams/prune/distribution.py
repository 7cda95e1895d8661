"""How a target sparsity is spread over the layers: uniform or ERK (jaxpruner's semantics).

Only leaves selected by ``where`` are pruned. The default selection is every leaf with at least
two dimensions (jaxpruner's ``NOT_DIM_ONE_FILTER``): biases and norm scales stay dense.

Example:
  >>> import jax.numpy as jnp
  >>> p = {'a': jnp.zeros((100, 100)), 'b': jnp.zeros((10, 1000)), 'bias': jnp.zeros(100)}
  >>> d = erk(p, 0.8)
  >>> sorted(d), round(float(d['a']), 3), round(float(d['b']), 3)
  (['a', 'b'], 0.934, 0.666)
"""

from __future__ import annotations

import math
from typing import Any, Callable

from jaxparams import tree as jtree
from jaxparams.prune.masks import check_sparsity

__all__ = ["default_where", "erk", "uniform"]


def default_where(path: str, leaf: Any) -> bool:
  """Selects leaves with two or more dimensions (kernels, embeddings).

  Example:
    >>> import numpy as np
    >>> default_where('a/kernel', np.zeros((2, 2))), default_where('a/bias', np.zeros(2))
    (True, False)
  """
  return getattr(leaf, "ndim", 0) >= 2


def _selected(params: Any, where: Any) -> dict[str, Any]:
  flat = jtree.flatten(params)
  if where is None:
    where = default_where
  return {k: flat[k] for k in jtree.select(flat, where, flat=True)}


def uniform(params: Any, sparsity: float, where: Any = None) -> dict[str, float]:
  """The same sparsity for every selected leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> uniform({'w': jnp.zeros((4, 4)), 'b': jnp.zeros(4)}, 0.5)
    {'w': 0.5}
  """
  s = check_sparsity(sparsity)
  return {k: s for k in _selected(params, where)}


def erk(params: Any, sparsity: float, where: Any = None, power_scale: float = 1.0,
        ) -> dict[str, float]:
  """Erdos-Renyi-Kernel: density of a leaf proportional to ``(sum of dims / product of dims)
  ** power_scale``, scaled so the selected leaves reach ``sparsity`` overall; leaves whose density
  would exceed 1 are kept dense and the rest re-solved (as jaxpruner's ``erk`` does).

  Example:
    >>> import jax.numpy as jnp
    >>> d = erk({'w': jnp.zeros((8, 8))}, 0.75)
    >>> d
    {'w': 0.75}
  """
  s = check_sparsity(sparsity)
  leaves = _selected(params, where)
  sizes = {k: math.prod(v.shape) for k, v in leaves.items()}
  raw = {k: (sum(v.shape) / math.prod(v.shape)) ** power_scale for k, v in leaves.items()}
  total = sum(sizes.values())
  dense: set[str] = set()
  while True:
    budget = (1.0 - s) * total - sum(sizes[k] for k in dense)
    denom = sum(raw[k] * sizes[k] for k in leaves if k not in dense)
    if denom <= 0:
      raise ValueError(f"ERK cannot reach sparsity {s}: every selected leaf would be dense")
    eps = budget / denom
    over = {k for k in leaves if k not in dense and eps * raw[k] > 1.0}
    if not over:
      break
    dense |= over
  return {k: (0.0 if k in dense else 1.0 - eps * raw[k]) for k in leaves}


DISTRIBUTIONS: dict[str, Callable[..., dict[str, float]]] = {"uniform": uniform, "erk": erk}
