"""Fisher merging (Matena & Raffel, 2022): a diagonal-Fisher-weighted average of models.

``theta*_j = sum_i w_i F_ij theta_ij / sum_i w_i F_ij`` with the diagonal empirical Fisher
``F_i = mean_n (d log p(y_n | x_n; theta_i) / d theta)^2`` of each model on its own data
(the statistic: :func:`jaxparams.calib.fisher.fisher_diagonal`, re-exported here). FusionBench's defaults: Fishers
normalised by their global norm, floored at ``1e-6``.

Example:
  >>> import jax.numpy as jnp
  >>> a, b = {'w': jnp.array([0., 2.])}, {'w': jnp.array([4., 2.])}
  >>> fa, fb = {'w': jnp.array([1., 1.])}, {'w': jnp.array([3., 1.])}
  >>> fisher_merge([a, b], [fa, fb], normalize=False)['w'].tolist()
  [3.0, 2.0]
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxparams.calib.fisher import fisher_diagonal  # the statistic lives in calib

__all__ = ["fisher_diagonal", "fisher_merge"]

PyTree = Any


def fisher_merge(models: Sequence[PyTree], fishers: Sequence[PyTree], *, weights: Any = None,
                 normalize: bool = True, min_fisher: float = 1e-6) -> PyTree:
  """Fisher-weighted average ``sum_i w_i F_i theta_i / sum_i w_i F_i`` per element.

  Args:
    models: the models' pytrees (same structure).
    fishers: one Fisher-diagonal pytree per model (same structure as the models).
    weights: per-model scalars (default 1 each).
    normalize: divide each model's Fisher by its global L2 norm first (FusionBench's
      ``normalize_fisher_weight``), so models of different scale weigh alike.
    min_fisher: floor of every Fisher entry (FusionBench's ``minimal_fisher_weight``),
      so entries no model informs fall back to the plain average.

  Raises:
    ValueError: no models, or a different number of Fishers/weights than models.
  """
  models, fishers = list(models), list(fishers)
  if not models or len(fishers) != len(models):
    raise ValueError(f"fisher_merge needs one Fisher per model, got {len(models)} models and "
                     f"{len(fishers)} Fishers")
  w = jnp.ones(len(models)) if weights is None else jnp.asarray(weights, jnp.float32)
  if w.shape != (len(models),):
    raise ValueError(f"weights must have one value per model ({len(models)}), got {w.shape}")
  if normalize:
    norms = [jnp.sqrt(sum(jnp.sum(f * f) for f in jax.tree.leaves(fi))) for fi in fishers]
    fishers = [jax.tree.map(lambda f, n=n: f / jnp.maximum(n, 1e-30), fi)
               for fi, n in zip(fishers, norms)]

  from jaxparams import tree as jtree  # pylint: disable=import-outside-toplevel
  from jaxparams.merge.learned.records import FISHER  # pylint: disable=import-outside-toplevel
  from jaxparams.merge.learned.regmean import merge_with_stats  # pylint: disable=import-outside-toplevel
  cfg = {"weight": tuple(float(v) for v in w) if not isinstance(w, jax.core.Tracer) else w,
         "min_fisher": min_fisher}
  return merge_with_stats(models, FISHER, cfg, list(jtree.flatten(models[0])), stats=fishers)
