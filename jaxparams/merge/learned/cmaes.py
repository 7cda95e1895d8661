"""Black-box merge-coefficient search with CMA-ES (evosax), one vmapped call per generation.

Each candidate is a vector of task-arithmetic coefficients (one per model, or per model and
leaf); a generation's whole population is merged and evaluated by ``jax.vmap`` of
``merge + fitness`` in one compiled program. Only forward evaluations are used (no
gradients), as in black-box merging of models behind an API. ``evosax`` minimises fitness.

Example:
  >>> import jax.numpy as jnp
  >>> base, m = {'w': jnp.zeros(2)}, [{'w': jnp.ones(2)}, {'w': -jnp.ones(2)}]
  >>> fit = lambda p: jnp.sum((p['w'] - jnp.array([0.5, 0.5])) ** 2)
  >>> _, lam, hist = cmaes_search(base, m, fit, generations=30, population=8, seed=0)
  >>> bool(hist[-1] < 1e-2)
  True
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxparams.merge.learned.adamerging import layerwise_merge, taskwise_merge

__all__ = ["cmaes_search"]

PyTree = Any


def cmaes_search(base: PyTree, models: Sequence[PyTree], fitness: Callable[[PyTree], jax.Array],
                 *, granularity: str = "task", init: float = 0.3, sigma: float = 0.2,
                 population: int = 16, generations: int = 50, seed: int = 0
                 ) -> tuple[PyTree, jax.Array, jax.Array]:
  """CMA-ES over task-arithmetic coefficients minimising ``fitness(merged)``.

  Args:
    base: the pretrained pytree; models: the fine-tuned pytrees.
    fitness: ``f(merged_params) -> scalar`` to minimise (e.g. validation loss or -accuracy).
    granularity: ``'task'`` or ``'layer'`` (see :func:`~.adamerging.layerwise_merge`).
    init: initial mean of every coefficient; sigma: initial step size.
    population: candidates per generation; generations: number of generations.
    seed: PRNG seed (results are reproducible for a seed).

  Returns:
    ``(merged at the best coefficients, best coefficients, best fitness so far per
    generation)``.

  Raises:
    ImportError: evosax is not installed (``pip install jaxparams[learn]``).
    ValueError: unknown granularity.
  """
  try:
    from evosax.algorithms import CMA_ES  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - optional dependency
    raise ImportError("cmaes_search needs evosax: pip install 'jaxparams[learn]'") from e
  models = list(models)
  if granularity == "task":
    merge, shape = taskwise_merge, (len(models),)
  elif granularity == "layer":
    merge, shape = layerwise_merge, (len(models), len(jax.tree.leaves(base)))
  else:
    raise ValueError(f"unknown granularity {granularity!r}; valid: ['layer', 'task']")
  mean = jnp.full(shape, init, jnp.float32)
  es = CMA_ES(population_size=population, solution=mean)
  params = es.default_params.replace(std_init=sigma)
  evaluate = jax.vmap(lambda lam: fitness(merge(base, models, lam)))

  @jax.jit
  def run(key):
    key, k0 = jax.random.split(key)
    state = es.init(k0, mean, params)

    def gen(carry, _):
      key, state, best_f, best_x = carry
      key, ka, kt = jax.random.split(key, 3)
      pop, state = es.ask(ka, state, params)
      f = evaluate(pop)
      state, _ = es.tell(kt, pop, f, state, params)
      i = jnp.argmin(f)
      better = f[i] < best_f
      best_x = jnp.where(better, pop[i], best_x)
      best_f = jnp.minimum(best_f, f[i])
      return (key, state, best_f, best_x), best_f

    init_f = fitness(merge(base, models, mean))
    (_, _, _, best_x), hist = jax.lax.scan(gen, (key, state, init_f, mean), None,
                                           length=generations)
    return best_x, hist

  best, hist = run(jax.random.key(seed))
  return merge(base, models, best), best, hist
