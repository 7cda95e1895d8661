"""AdaMerging (Yang et al., ICLR 2024): learn task-arithmetic coefficients by entropy minimisation.

Task-wise: ``theta(lam) = theta_0 + sum_k lam_k tau_k``; layer-wise: one ``lam_{k,l}`` per
model ``k`` and parameter tensor ``l``. ``lam`` is learned by Adam on the mean Shannon
entropy of the merged model's predictions on *unlabelled* test inputs, differentiating
through :func:`jaxparams.merge.task_arithmetic` (the merge is a differentiable function of its
weights). FusionBench defaults: init 0.3, Adam lr 1e-3.

Example:
  >>> import jax.numpy as jnp
  >>> base = {'a': jnp.zeros(2), 'b': jnp.zeros(2)}
  >>> m = [{'a': jnp.ones(2), 'b': jnp.ones(2)}]
  >>> layerwise_merge(base, m, jnp.array([[0.5, 2.0]]))['b'].tolist()
  [2.0, 2.0]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = ["adamerging", "entropy", "layerwise_merge", "taskwise_merge"]

PyTree = Any


def entropy(logits: jax.Array) -> jax.Array:
  """Mean Shannon entropy (nats) of ``softmax(logits)`` over the leading axes."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.mean(-jnp.sum(jnp.exp(logp) * logp, axis=-1))


def taskwise_merge(base: PyTree, models: Sequence[PyTree], lam: jax.Array) -> PyTree:
  """``base + sum_k lam[k] (models[k] - base)`` (task arithmetic with ``lam`` as weights)."""
  from jaxparams.merge import task_arithmetic  # pylint: disable=import-outside-toplevel
  return task_arithmetic(base, list(models), weights=lam, lam=1.0)


def layerwise_merge(base: PyTree, models: Sequence[PyTree], lam: jax.Array) -> PyTree:
  """Task arithmetic with one coefficient per model and leaf: ``lam[k, l]`` (leaf order of
  ``jax.tree.leaves(base)``)."""
  from jaxparams.merge import task_arithmetic  # pylint: disable=import-outside-toplevel
  leaves, treedef = jax.tree.flatten(base)
  model_leaves = [jax.tree.leaves(m) for m in models]
  if lam.shape != (len(models), len(leaves)):
    raise ValueError(f"layer-wise coefficients must have shape (models, leaves) = "
                     f"{(len(models), len(leaves))}, got {lam.shape}")
  out = [task_arithmetic({"w": b}, [{"w": ml[j]} for ml in model_leaves], weights=lam[:, j],
                         lam=1.0)["w"] for j, b in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def adamerging(base: PyTree, models: Sequence[PyTree],
               objective: Callable[[PyTree], jax.Array], *, granularity: str = "layer",
               init: float = 0.3, steps: int = 200, lr: float = 1e-3,
               clamp: tuple[float, float] | None = (0.0, 1.0)) -> tuple[PyTree, jax.Array, jax.Array]:
  """Learns merge coefficients minimising ``objective(merged)`` by Adam through the merge.

  Args:
    base: the pretrained pytree.
    models: the fine-tuned pytrees.
    objective: ``f(merged_params) -> scalar``, e.g. the sum over tasks of :func:`entropy`
      of each task's predictions on its unlabelled inputs.
    granularity: ``'task'`` (one coefficient per model) or ``'layer'`` (per model and leaf).
    init: initial value of every coefficient.
    steps: Adam steps (all in one compiled ``lax.scan``).
    lr: Adam learning rate.
    clamp: coefficients are clipped to this range in the merge (AdaMerging's code clamps
      to ``[0, 1]``; unclamped entropy minimisation can sharpen predictions by scaling the
      task vectors up); ``None`` for no clipping.

  Returns:
    ``(merged, coefficients, objective per step)``.

  Raises:
    ValueError: unknown granularity or no models.
  """
  models = list(models)
  if not models:
    raise ValueError("adamerging needs at least one model")
  if granularity == "task":
    merge, lam0 = taskwise_merge, jnp.full((len(models),), init, jnp.float32)
  elif granularity == "layer":
    n_leaves = len(jax.tree.leaves(base))
    merge, lam0 = layerwise_merge, jnp.full((len(models), n_leaves), init, jnp.float32)
  else:
    raise ValueError(f"unknown granularity {granularity!r}; valid: ['layer', 'task']")
  if clamp is not None:
    unclamped, lo, hi = merge, float(clamp[0]), float(clamp[1])
    merge = lambda b, m, lam: unclamped(b, m, jnp.clip(lam, lo, hi))
  opt = optax.adam(lr)
  loss = lambda lam: objective(merge(base, models, lam))

  @jax.jit
  def run(lam):
    def step(carry, _):
      lam, s = carry
      v, g = jax.value_and_grad(loss)(lam)
      u, s = opt.update(g, s, lam)
      return (optax.apply_updates(lam, u), s), v
    (lam, _), hist = jax.lax.scan(step, (lam, opt.init(lam)), None, length=steps)
    return lam, hist

  lam, hist = run(lam0)
  if clamp is not None:
    lam = jnp.clip(lam, lo, hi)
  return merge(base, models, lam), lam, hist
