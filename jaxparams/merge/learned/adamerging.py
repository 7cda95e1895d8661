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

__all__ = ["adamerging", "entropy", "layerwise_merge", "taskwise_merge", "ties_vectors"]

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


def ties_vectors(base: PyTree, models: Sequence[PyTree], *, density: float = 0.2,
                 scope: str = "tensor", mean: bool = False) -> list[PyTree]:
  """TIES's trimmed, sign-elected task vectors, as fixed-mask models ``base + m_k * tau_k``.

  Keep the ``density`` fraction of largest ``|tau_k|`` of each model (trim; per tensor as
  mergekit, ``scope='model'`` over the whole model as the TIES paper and FusionBench), elect
  the sign of ``sum_k`` of the trimmed vectors per entry, keep the entries that agree
  (disjoint merge). Task arithmetic over these models with one weight ``lam`` equals TIES with
  ``lam`` and ``normalize=False`` (sum), or with ``mean=True`` (each kept entry divided by the
  number of models keeping it) ``normalize=True`` (the disjoint mean) -- see
  :func:`jaxparams.merge.ties`. AdaMerging over them learns the coefficients with the masks
  fixed (the paper's AdaMerging++).

  Raises:
    ValueError: ``density`` not in ``(0, 1]``, unknown scope, or no models.
  """
  if not 0.0 < density <= 1.0 or not models:
    raise ValueError(f"ties_vectors needs models and density in (0, 1], got {len(models)} "
                     f"models and density {density}")
  if scope not in ("tensor", "model"):
    raise ValueError(f"unknown TIES trim scope {scope!r}; valid: ['model', 'tensor']")
  n = len(models)
  leaves, treedef = jax.tree.flatten(base)
  taus = [jnp.stack([jax.tree.leaves(m)[j].astype(jnp.float32) - b.astype(jnp.float32)
                     for m in models]) for j, b in enumerate(leaves)]

  def kth(flat):  # [n, size] -> per-model threshold [n]
    k = flat.shape[1] if density >= 1 else max(1, int(density * flat.shape[1]))  # as mergekit
    return jax.lax.top_k(flat, k)[0][:, -1]

  if scope == "model":
    thr_all = kth(jnp.concatenate([jnp.abs(t.reshape(n, -1)) for t in taus], axis=1))
  out = [[] for _ in range(n)]
  for b, t in zip(leaves, taus):
    thr = thr_all if scope == "model" else kth(jnp.abs(t.reshape(n, -1)))
    trimmed = jnp.where(jnp.abs(t) >= thr.reshape((-1,) + (1,) * b.ndim), t, 0.0)
    sign = jnp.sign(jnp.sum(trimmed, 0))
    kept = jnp.where((jnp.sign(trimmed) == sign) & (trimmed != 0), trimmed, 0.0)
    if mean:
      kept = kept / jnp.maximum(jnp.sum(kept != 0, 0), 1)
    for i in range(n):
      out[i].append((b.astype(jnp.float32) + kept[i]).astype(b.dtype))
  return [jax.tree.unflatten(treedef, o) for o in out]


def adamerging(base: PyTree, models: Sequence[PyTree],
               objective: Callable[[PyTree], jax.Array], *, granularity: str = "layer",
               init: float = 0.3, steps: int = 200, lr: float = 1e-3,
               clamp: tuple[float, float] | None = (0.0, 1.0), ties_density: float | None = None,
               ties_scope: str = "tensor", ties_mean: bool = False,
               callback_every: int = 0, callback: Callable | None = None,
               key: jax.Array | None = None) -> tuple[PyTree, jax.Array, jax.Array]:
  """Learns merge coefficients minimising ``objective(merged)`` by Adam through the merge.

  Args:
    base: the pretrained pytree.
    models: the fine-tuned pytrees.
    objective: ``f(merged_params) -> scalar``, e.g. the sum over tasks of :func:`entropy`
      of each task's predictions on its unlabelled inputs.
    granularity: ``'task'`` (one coefficient per model) or ``'layer'`` (per model and leaf).
    init: initial value of every coefficient.
    steps: Adam steps (all in one compiled ``lax.scan``).
    lr: Adam learning rate: a number, or an array broadcastable to the coefficients'
      shape (per-layer learning rates, e.g. ``[1, leaves]``).
    clamp: coefficients are clipped to this range in the merge (AdaMerging's code clamps
      to ``[0, 1]``; unclamped entropy minimisation can sharpen predictions by scaling the
      task vectors up); ``None`` for no clipping.
    ties_density: if set, learn coefficients of TIES's trimmed, sign-elected task vectors
      with fixed masks (:func:`ties_vectors`, the paper's AdaMerging over TIES).
    ties_scope, ties_mean: :func:`ties_vectors`'s ``scope`` and ``mean``.
    callback_every, callback: call ``callback(step, clipped_coefficients, merged)`` every
      ``callback_every`` steps (tracing the optimisation, e.g. accuracy vs entropy); the
      steps between calls run in one compiled ``lax.scan``.

    key: if given, the objective is stochastic: ``objective(merged, step_key)`` with
      ``step_key = fold_in(key, step)`` (e.g. a fresh minibatch of unlabelled inputs per
      step, as AdaMerging's code draws batches of 16 per task).

  Returns:
    ``(merged, coefficients, objective per step)``.

  Raises:
    ValueError: unknown granularity or no models.
  """
  models = list(models)
  if not models:
    raise ValueError("adamerging needs at least one model")
  if ties_density is not None:
    models = ties_vectors(base, models, density=ties_density, scope=ties_scope,
                          mean=ties_mean)
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
  opt = optax.scale_by_adam()
  step_size = jnp.broadcast_to(jnp.asarray(lr, jnp.float32), lam0.shape)  # per coefficient
  if key is None:
    loss = lambda lam, i: objective(merge(base, models, lam))
  else:
    loss = lambda lam, i: objective(merge(base, models, lam), jax.random.fold_in(key, i))

  def _scan(lam, s, n, start=0):
    def step(carry, i):
      lam, s = carry
      v, g = jax.value_and_grad(loss)(lam, i)
      u, s = opt.update(g, s, lam)
      return (lam - step_size * u, s), v
    (lam, s), hist = jax.lax.scan(step, (lam, s), start + jnp.arange(n))
    return lam, s, hist

  @jax.jit
  def run(lam):
    lam, _, hist = _scan(lam, opt.init(lam), steps)
    return lam, hist

  if callback is not None and callback_every > 0:
    lam, s, hist = lam0, opt.init(lam0), []
    chunk = jax.jit(_scan, static_argnums=2)
    done = 0
    while done < steps:
      callback(done, jnp.clip(lam, lo, hi) if clamp is not None else lam,
               merge(base, models, lam))
      n = min(callback_every, steps - done)
      lam, s, h = chunk(lam, s, n, done)
      hist.append(h)
      done += n
    callback(done, jnp.clip(lam, lo, hi) if clamp is not None else lam,
             merge(base, models, lam))
    hist = jnp.concatenate(hist)
  else:
    lam, hist = run(lam0)
  if clamp is not None:
    lam = jnp.clip(lam, lo, hi)
  return merge(base, models, lam), lam, hist
