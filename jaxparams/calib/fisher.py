"""The diagonal empirical Fisher: per-parameter mean squared gradients of per-example log-likelihoods.

``F = mean_n (d log p(y_n | x_n; theta) / d theta)^2``, per-example gradients by
``jax.vmap(jax.grad(...))`` in bounded chunks. A calibration statistic like the Gram of
:mod:`jaxparams.calib.stats`: Fisher merging (:mod:`jaxparams.merge.learned.fisher`) weighs
models by it, and anything else (pruning saliency, EWC) can read it from here.

* :func:`fisher_diagonal`: for any ``log_likelihood(params, x_n, y_n)`` of one example.
* :func:`causal_lm_fisher`: of a causal language model on tokenized text batches (the summed
  next-token log-likelihood of each text, padding masked).

Example:
  >>> import jax.numpy as jnp
  >>> ll = lambda p, x, y: -(p['w'] * x - y) ** 2
  >>> f = fisher_diagonal(ll, {'w': jnp.float32(0.)}, jnp.array([1., 2.]), jnp.array([1., 1.]))
  >>> float(f['w'])   # grads 2 and 4: mean of 4 and 16
  10.0
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fisher_diagonal", "causal_lm_fisher"]

PyTree = Any


def fisher_diagonal(log_likelihood: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
                    params: PyTree, x: jax.Array, y: jax.Array, *,
                    batch_size: int = 256) -> PyTree:
  """Diagonal empirical Fisher ``mean_n g_n^2`` of per-example log-likelihood gradients.

  Args:
    log_likelihood: ``f(params, x_n, y_n) -> log p(y_n | x_n)`` for ONE example.
    params: the model's parameters (a pytree of float arrays).
    x: inputs ``[N, ...]``; y: labels ``[N, ...]``.
    batch_size: examples per vmapped chunk (bounds memory).

  Returns:
    A pytree like ``params`` of non-negative Fisher diagonals.

  Raises:
    ValueError: no examples, or a different number of labels.
  """
  n = int(x.shape[0])
  if n == 0 or int(y.shape[0]) != n:
    raise ValueError(f"fisher_diagonal needs N > 0 examples with N labels, got x {x.shape} "
                     f"and y {y.shape}")
  per_example = jax.jit(jax.vmap(jax.grad(log_likelihood), in_axes=(None, 0, 0)))
  total = jax.tree.map(jnp.zeros_like, params)
  for s in range(0, n, batch_size):
    g = per_example(params, x[s:s + batch_size], y[s:s + batch_size])
    total = jax.tree.map(lambda t, gi: t + jnp.sum(gi * gi, axis=0), total, g)
  return jax.tree.map(lambda t: t / n, total)


def causal_lm_fisher(module: Any, params: PyTree, batches: Sequence[Any], *,
                     batch_size: int = 8) -> PyTree:
  """Diagonal Fisher of a causal LM: ``log p(text)`` = summed next-token log-likelihood.

  Args:
    module: a flax causal LM (``module.apply({'params': p}, ids, mask) -> logits``).
    params: its params.
    batches: ``{'input_ids', 'attention_mask'}`` batches (e.g.
      :func:`jaxparams.calib.text_batches`), each padded to its own length.
    batch_size: texts per vmapped chunk.

  Returns:
    A pytree like ``params``: the mean over all texts of the squared per-text gradients.

  Raises:
    ValueError: no batches.
  """
  def loglik(p, ids, mask):
    logp = jax.nn.log_softmax(module.apply({"params": p}, ids[None], mask[None])[0, :-1], -1)
    tok = jnp.take_along_axis(logp, ids[1:, None], -1)[:, 0]
    return jnp.sum(tok * mask[1:])

  fisher, n = None, 0
  for b in batches:  # each batch padded to its own length
    ids = jnp.asarray(np.asarray(b["input_ids"], np.int32))
    mask = jnp.asarray(np.asarray(b["attention_mask"], np.int32))
    f = jax.tree.map(lambda v, k=ids.shape[0]: v * k,
                     fisher_diagonal(loglik, params, ids, mask, batch_size=batch_size))
    fisher = f if fisher is None else jax.tree.map(jnp.add, fisher, f)
    n += ids.shape[0]
  if fisher is None:
    raise ValueError("causal_lm_fisher: no calibration batches")
  return jax.tree.map(lambda v: v / n, fisher)
