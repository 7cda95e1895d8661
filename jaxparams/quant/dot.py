"""``dot(x, w)``: matmul that accepts plain weights or packed :class:`~jaxparams.quant.QArray` weights.

This is what the reference models get injected as their dot: a ``QArray`` of
kind ``'int'`` with 4 or 8 bits (groups along K, no act-order ``g_idx``) goes to
the fused dequant-matmul (a Pallas kernel on TPU / Hopper GPU, XLA elsewhere);
every other ``QArray`` is dequantized to ``x.dtype`` first; a plain array is cast
to ``x.dtype``. Leading batch dims of ``x`` are kept; everything works under jit.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.quant.rtn import rtn, RTNConfig
  >>> w = jax.random.normal(jax.random.key(0), (256, 128))
  >>> qw = rtn(w, RTNConfig(bits=4, group_size=128))
  >>> x = jnp.ones((2, 5, 256))
  >>> y = jax.jit(dot)(x, qw)
  >>> y.shape
  (2, 5, 128)
  >>> bool(jnp.allclose(y, x @ qw.dequantize(), rtol=1e-4, atol=1e-3))
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxparams.kernels.dequant_matmul import dequant_matmul
from jaxparams.quant.awq import AWQResult
from jaxparams.quant.qarray import QArray

__all__ = ["dot", "dot_general", "kernel_supported"]


def kernel_supported(w: QArray) -> bool:
  """True when ``w``'s layout is one the fused dequant-matmul kernels take."""
  if w.kind != "int" or w.bits not in (4, 8) or w.g_idx is not None:
    return False
  k, n = w.shape
  p = 32 // w.bits
  return (k % p == 0 and k % w.group_size == 0 and w.group_size % p == 0
          and tuple(w.scale.shape) == (k // w.group_size, n)
          and tuple(w.codes.shape) == (k // p, n))


def dot(x: jax.Array, w, *, implementation: str | None = None) -> jax.Array:
  """``x[..., K] @ w[K, N]`` for a jax array or a ``QArray`` ``w``; result in ``x.dtype``.

  Args:
    x: activations ``[..., K]``.
    w: ``[K, N]`` array or ``QArray``.
    implementation: forwarded to the dequant-matmul dispatcher (None, 'xla', 'pallas', ...).
  """
  if isinstance(w, AWQResult):  # activation-aware: y = (x / s) @ Q(W * s)
    return dot(x / w.input_scale.astype(x.dtype), w.qarray, implementation=implementation)
  if isinstance(w, QArray):
    if x.shape[-1] != w.shape[0]:
      raise ValueError(f"dot: x has {x.shape[-1]} input features, QArray weight has shape "
                       f"{w.shape} (K, N)")
    if kernel_supported(w):
      return dequant_matmul(x, w.codes, w.scale, w.zero, bits=w.bits, group_size=w.group_size,
                            implementation=implementation)
    return jnp.matmul(x, w.dequantize(x.dtype))
  w = jnp.asarray(w)
  return jnp.matmul(x, w.astype(x.dtype))


def dot_general(lhs: jax.Array, rhs, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """``jax.lax.dot_general`` drop-in (flax ``Dense(dot_general=...)``) that accepts ``QArray`` rhs.

  A ``QArray`` contracted as a Dense kernel (last axis of ``lhs`` with axis 0 of
  ``rhs``, no batch dims) goes through :func:`dot`; other contractions use the
  dequantized weight.
  """
  if isinstance(rhs, QArray):
    (lc, rc), (lb, rb) = dimension_numbers
    if tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb:
      y = dot(lhs, rhs)
      return y if preferred_element_type is None else y.astype(preferred_element_type)
    rhs = rhs.dequantize(lhs.dtype)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)
