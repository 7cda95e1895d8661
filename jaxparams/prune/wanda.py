"""Wanda: prune by ``|W| * ||x||`` per output unit, with no weight update (Sun et al., 2024).

The score of kernel entry ``(i, j)`` (input ``i``, output ``j``) is ``|W_ij| * ||X_i||_2``, the
norm taken over every calibration token of the layer's input. Each output unit (a kernel column,
a PyTorch row) is its own comparison group and loses its ``floor(d_in * sparsity)`` lowest scores,
or the ``n`` lowest of every aligned group of ``m`` inputs for N:M. The norm may be given as any
positive multiple (the reference keeps a running mean of ``||X_i||^2``), so the ``diag`` of an
``X^T X`` statistic serves directly.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.array([[0.05, 0.1], [0.1, 0.1], [0.1, 0.1], [0.1, 0.1]])
  >>> x_sq = jnp.array([100.0 ** 2, 1.0, 1.0, 1.0])     # input 0 is an outlier feature
  >>> wanda_mask(w, x_sq, sparsity=0.25)[:, 0].tolist()  # its small weight survives
  [True, False, True, True]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxparams.prune import masks

__all__ = ["wanda_mask", "wanda_scores"]


def wanda_scores(w: jax.Array, x_sq: jax.Array) -> jax.Array:
  """``|W_ij| * sqrt(x_sq_i)`` for a ``[d_in, d_out]`` kernel and per-input ``sum x^2``.

  Example:
    >>> wanda_scores(jnp.array([[-2.0], [1.0]]), jnp.array([1.0, 4.0])).ravel().tolist()
    [2.0, 2.0]
  """
  if w.ndim != 2:
    raise ValueError(f"Wanda expects a [d_in, d_out] kernel, got shape {tuple(w.shape)}")
  if x_sq.shape != (w.shape[0],):
    raise ValueError(f"Wanda: input statistics of shape {tuple(x_sq.shape)} do not match the "
                     f"kernel's {w.shape[0]} inputs (expected ({w.shape[0]},))")
  return jnp.abs(w.astype(jnp.float32)) * jnp.sqrt(x_sq.astype(jnp.float32))[:, None]


def wanda_mask(w: jax.Array, x_sq: jax.Array, *, sparsity: float = 0.5,
               pattern: tuple[int, int] | None = None) -> jax.Array:
  """Keep-mask of Wanda for one kernel.

  Args:
    w: ``[d_in, d_out]`` kernel.
    x_sq: ``[d_in]`` sum (or mean) of squared inputs per input feature, e.g. ``diag(X^T X)``.
    sparsity: fraction pruned per output unit (ignored when ``pattern`` is given).
    pattern: ``(n, m)`` for N:M sparsity (``n`` pruned of every ``m``), e.g. ``(2, 4)``.

  Returns:
    Boolean mask, ``True`` = kept.

  Example:
    >>> m = wanda_mask(jnp.ones((8, 3)), jnp.arange(1.0, 9.0), pattern=(2, 4))
    >>> m[:, 0].astype(int).tolist()
    [0, 0, 1, 1, 0, 0, 1, 1]
  """
  scores = wanda_scores(w, x_sq)
  if pattern is not None:
    return masks.nm_mask(scores, *pattern)
  return masks.row_mask(scores, sparsity)
