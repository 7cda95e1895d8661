"""RegMean (Jin et al., 2023): merge linear layers by the closed-form regression solution.

For each linear layer ``y = x @ W`` (kernel ``[in, out]``) with input Gram matrices
``G_i = X_i^T X_i`` of model ``i`` on its own data (from :func:`jaxparams.calib.collect_stats`),

``W* = (sum_i G~_i)^-1 sum_i G~_i W_i``,  ``G~_i = alpha G_i + (1 - alpha) diag(G_i)``

(``alpha`` = the paper's off-diagonal scaling; FusionBench's ``reduce_non_diagonal_ratio``
0.95). With ``alpha = 1`` ``W*`` minimises ``sum_i ||X_i W - X_i W_i||^2``. Leaves without a
Gram matrix (biases, norms, embeddings) are averaged.

Example:
  >>> import jax.numpy as jnp
  >>> a, b = {'k': jnp.eye(2)}, {'k': 3 * jnp.eye(2)}
  >>> g = [{'k': jnp.diag(jnp.array([1., 0.]))}, {'k': jnp.diag(jnp.array([0., 1.]))}]
  >>> regmean([a, b], g, alpha=1.0, eps=0.0)['k'].tolist()
  [[1.0, 0.0], [0.0, 3.0]]
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.merge.learned.records import REGMEAN

__all__ = ["merge_with_stats", "regmean", "regmean_grams"]

PyTree = Any


def regmean_grams(module: Any, params: PyTree, batches: Any) -> dict[str, jax.Array]:
  """``{kernel path: X^T X}`` of every linear layer of ``module`` on ``batches`` (calib layer)."""
  from jaxparams.calib import collect_stats  # pylint: disable=import-outside-toplevel
  return {p: s.xtx for p, s in collect_stats(module, params, batches).items()}


def _path_map(grams: Any) -> dict[str, jax.Array]:
  if isinstance(grams, Mapping) and all(isinstance(k, str) and "/" in k for k in grams):
    return dict(grams)
  return dict(jtree.flatten(grams)) if grams else {}


def regmean(models: Sequence[PyTree], grams: Sequence[Any], *, alpha: float = 0.95,
            eps: float = 1e-6) -> PyTree:
  """Merges ``models`` with RegMean.

  Args:
    models: the models' pytrees (same structure).
    grams: per model, the Gram matrices ``X_i^T X_i`` ``[in, in]`` of its linear kernels,
      either ``{'layers_0/kernel': G}`` (path -> Gram, as :func:`regmean_grams` returns)
      or a pytree mirroring the model with Grams at the kernels.
    alpha: off-diagonal scaling in ``[0, 1]`` (1 = exact regression, 0 = diagonal).
    eps: ridge added to ``sum_i G~_i`` relative to its mean diagonal (for singular Grams).

  Raises:
    ValueError: counts differ, alpha out of range, a Gram path that is not a 2-D leaf of
      the models, or a Gram of the wrong size.
  """
  models = list(models)
  if not models or len(grams) != len(models):
    raise ValueError(f"regmean needs one Gram dict per model, got {len(models)} models and "
                     f"{len(grams)} Gram sets")
  gmaps = [_path_map(g) for g in grams]
  paths = set(gmaps[0])
  if any(set(g) != paths for g in gmaps):
    raise ValueError("regmean: every model needs Grams for the same kernel paths")
  flats = [jtree.flatten(m) for m in models]
  for p in sorted(paths):
    if p not in flats[0] or flats[0][p].ndim != 2:
      raise ValueError(f"regmean: Gram path {p!r} is not a 2-D leaf of the models; leaves: "
                       f"{sorted(flats[0])}")
    k = flats[0][p].shape[0]
    for i, g in enumerate(gmaps):
      if g[p].shape != (k, k):
        raise ValueError(f"regmean: Gram of model {i} at {p!r} has shape {g[p].shape}, "
                         f"expected {(k, k)}")

  return merge_with_stats(models, REGMEAN, {"alpha": alpha, "eps": eps}, sorted(paths),
                          lambda p: {"grams": tuple(g[p] for g in gmaps)})


def merge_with_stats(models: Sequence[PyTree], record: Any, config: Any, paths: Sequence[str],
                     leaf_options: Any = None, stats: Sequence[PyTree] | None = None) -> PyTree:
  """The tree driver for a data-aware record: ``record`` on ``paths``, ``linear`` elsewhere.

  Statistics reach the record either per leaf as options (``leaf_options(path)``, RegMean's
  Grams) or as trailing input trees (``stats``: one tree per model shaped like the models,
  Fisher's diagonals).
  """
  from jaxparams.merge.registry import get_record  # pylint: disable=import-outside-toplevel
  from jaxparams.transform import apply_tree  # pylint: disable=import-outside-toplevel
  models = list(models)
  n = len(models)
  flat0 = jtree.flatten(models[0])
  chosen = set(paths)
  rest = [p for p in flat0 if p not in chosen]
  labels = [f"model {i}" for i in range(n)]
  out: dict[str, Any] = {}
  if chosen:
    inputs = models + list(stats or [])
    labs = labels + [f"{record.name} statistics of model {i}" for i in range(len(stats or []))]
    out.update(jtree.flatten(apply_tree(record, None, inputs, config=config,
                                        where=lambda p, _: p in chosen, labels=labs,
                                        leaf_options=leaf_options)))
  if rest:
    linear = get_record("linear")
    avg = jtree.flatten(apply_tree(linear, None, models, config={"weight": (1.0,) * n},
                                   where=lambda p, _: p not in chosen, labels=labels))
    out.update({p: avg[p] for p in rest})
  return jtree.unflatten({p: out[p] for p in flat0}, like=models[0])
