"""Calibration statistics of a layer's inputs: GPTQ Hessian and AWQ channel magnitudes.

One :class:`ActStats` serves every calibrated method: GPTQ and decoupleQ read
``hessian`` (``H = 2 X^T X / n``), AWQ reads ``abs_mean`` (mean ``|x|`` per input
channel) and the Gram matrix ``hessian / 2``. Accumulate it batch by batch with
:func:`gptq_hessian` (alias :func:`accumulate_stats`); it is a pytree, so it can
be carried through ``jax.lax.scan`` or a jitted step.

Example:
  >>> import jax
  >>> x = jax.random.normal(jax.random.key(0), (32, 16))
  >>> s = gptq_hessian(x[:16])
  >>> s = gptq_hessian(x[16:], prev=s)
  >>> s.hessian.shape, int(s.count)
  ((16, 16), 32)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["ActStats", "gptq_hessian", "accumulate_stats", "as_hessian"]


@dataclasses.dataclass(frozen=True)
class ActStats:
  """Running statistics of the inputs ``x[..., K]`` of one linear layer.

  Attributes:
    hessian: float32 ``[K, K]``, ``2 / n * sum_t x_t x_t^T`` (GPTQ's H).
    abs_mean: float32 ``[K]``, ``mean_t |x_t|`` per input channel (AWQ).
    count: float32 scalar, number of rows ``n`` seen (tokens).
  """

  hessian: jax.Array
  abs_mean: jax.Array
  count: jax.Array

  @property
  def gram(self) -> jax.Array:
    """``X^T X / n`` (= hessian / 2)."""
    return self.hessian * 0.5


jax.tree_util.register_dataclass(ActStats, data_fields=["hessian", "abs_mean", "count"],
                                 meta_fields=[])


def gptq_hessian(x: jax.Array, prev: ActStats | None = None) -> ActStats:
  """Adds a batch of inputs ``x[..., K]`` to the running statistics.

  Each row of the flattened ``x`` (all leading axes are tokens) counts as one
  sample; ``H = 2 / n * X^T X`` is kept normalised as in GPTQ's ``add_batch``.

  Args:
    x: layer inputs, shape ``(..., K)``.
    prev: statistics so far, or None to start.

  Returns:
    Updated :class:`ActStats`.
  """
  x = jnp.asarray(x)
  k = x.shape[-1]
  if prev is not None and prev.hessian.shape != (k, k):
    raise ValueError(f"calibration inputs have {k} features but the running Hessian is "
                     f"{tuple(prev.hessian.shape)}")
  x = x.reshape(-1, k).astype(jnp.float32)
  m = jnp.float32(x.shape[0])
  xtx = jnp.einsum("ti,tj->ij", x, x, precision=jax.lax.Precision.HIGHEST)
  asum = jnp.sum(jnp.abs(x), axis=0)
  if prev is None:
    return ActStats(hessian=2.0 * xtx / m, abs_mean=asum / m, count=m)
  n = prev.count + m
  h = prev.hessian * (prev.count / n) + 2.0 * xtx / n
  a = prev.abs_mean * (prev.count / n) + asum / n
  return ActStats(hessian=h, abs_mean=a, count=n)


accumulate_stats = gptq_hessian


def as_hessian(h, *, k: int, name: str = "") -> jax.Array:
  """Accepts an :class:`ActStats` or a ``[K, K]`` array and returns the Hessian."""
  if isinstance(h, ActStats):
    h = h.hessian
  h = jnp.asarray(h)
  if h.shape != (k, k):
    where = f" for {name!r}" if name else ""
    raise ValueError(f"Hessian{where} has shape {tuple(h.shape)}, expected ({k}, {k}) "
                     f"(K = input features of the weight)")
  return h.astype(jnp.float32)
