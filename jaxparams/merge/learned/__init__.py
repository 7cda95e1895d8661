"""Merging that learns: Fisher, RegMean, AdaMerging, CMA-ES search, MAP Pareto fronts, M2N2,
MergeLock.

Data- or search-driven merges on parameter pytrees, built on the differentiable, vmappable
tree merges of :mod:`jaxparams.merge` (``task_arithmetic``) and the calibration layer
(:mod:`jaxparams.calib`, Gram matrices for RegMean). The digits suite
(:mod:`jaxparams.demo.digits_suite`) and ``benchmarks/merge_suite.py`` measure them.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxparams.merge import learned
  >>> a, b = {'w': jnp.array([0., 2.])}, {'w': jnp.array([2., 2.])}
  >>> f = {'w': jnp.ones(2)}
  >>> learned.fisher_merge([a, b], [f, f])['w'].tolist()
  [1.0, 2.0]
"""

from jaxparams.merge.learned.adamerging import (adamerging, entropy, layerwise_merge, taskwise_merge,
                                               ties_vectors)
from jaxparams.merge.learned.cmaes import cmaes_search
from jaxparams.merge.learned.mergelock import lock_attention, lock_mlp, unlock
from jaxparams.merge.learned.m2n2 import (crossover, m2n2_evolve, select_parents, shared_fitness,
                                          update_archive)
from jaxparams.merge.learned.fisher import fisher_diagonal, fisher_merge
from jaxparams.merge.learned.map_front import (Surrogate, fit_surrogate, hypervolume_2d, pareto_mask,
                                               predict_surrogate, quadratic_features)
from jaxparams.merge.learned.regmean import regmean, regmean_grams

__all__ = [
    "Surrogate", "adamerging", "cmaes_search", "entropy", "fisher_diagonal", "fisher_merge",
    "fit_surrogate", "hypervolume_2d", "layerwise_merge", "pareto_mask", "predict_surrogate",
    "quadratic_features", "regmean", "regmean_grams", "taskwise_merge", "ties_vectors",
    "lock_attention", "lock_mlp", "unlock",
    "crossover", "m2n2_evolve", "select_parents", "shared_fitness", "update_archive",
]
