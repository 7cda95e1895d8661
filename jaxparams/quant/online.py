"""Online input transforms of one Linear: smoothing, rotation, activation quantization.

An :class:`OnlineLinear` leaf stands where a Linear's kernel was. It holds the weight in the
transformed basis ``W' = R^T diag(s) W`` (a plain array, a :class:`~jaxparams.quant.QArray` or
an AWQ result) and what the layer does to its input first::

    x  ->  x / s  ->  x R  ->  quantize per token (act_bits)  ->  dot(., W')

so in full precision ``dot(x, leaf) == x @ W`` exactly (up to float rounding): ``R`` is
orthogonal. ``R`` is a randomised Hadamard (``signs``, applied by the fast transform
:func:`~jaxparams.quant.hadamard.fwht`) or a dense learned matrix (``matrix``, SpinQuant).
The leaf enters the reference models through their ``dot=`` injection point:
``Llama(cfg, dot=online_dot)``; :meth:`OnlineLinear.dequantize` multiplies the transforms back
and gives the stock weight ``W`` any tool can use.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from jaxparams.quant.hadamard import random_signs, rotation_matrix
  >>> w = jax.random.normal(jax.random.key(0), (12, 3))
  >>> d = random_signs(12, 0)
  >>> leaf = OnlineLinear(w=jnp.asarray(rotation_matrix(12, d).T, jnp.float32) @ w,
  ...                     signs=jnp.asarray(d, jnp.float32))
  >>> x = jax.random.normal(jax.random.key(1), (2, 12))
  >>> bool(jnp.allclose(online_dot(x, leaf), x @ w, atol=1e-5))
  True
  >>> bool(np.allclose(leaf.dequantize(), w, atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.quant.act_quant import quantize_activations
from jaxparams.quant.dot import dot as qdot
from jaxparams.quant.hadamard import fwht, rotation_matrix

__all__ = ["OnlineLinear", "online_dot", "is_online"]


@dataclasses.dataclass(frozen=True)
class OnlineLinear:
  """A kernel with online input transforms (see the module doc).

  Attributes:
    w: the weight in the transformed basis ``[K, N]`` (array, QArray or AWQResult).
    smooth: SmoothQuant scales ``s[K]`` (the input is divided by them) or None.
    signs: random signs ``d[K]`` of a Hadamard rotation ``diag(d) H / sqrt(K)``, or None.
    matrix: a dense orthogonal rotation ``R[K, K]`` (learned), used instead of ``signs``.
    act_bits: per-token activation bits (0: full-precision activations).
    act_clip: activation clip ratio.
    seed: seed of the random orthogonal fallback for sizes without a Hadamard matrix.
  """
  w: Any
  smooth: Any = None
  signs: Any = None
  matrix: Any = None
  act_bits: int = 0
  act_clip: float = 1.0
  seed: int = 0

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.w.shape)

  @property
  def rotated(self) -> bool:
    return self.signs is not None or self.matrix is not None

  def transform_input(self, x: jax.Array) -> jax.Array:
    """``x -> quantize(x / s @ R)``: what the layer multiplies with ``w``."""
    if self.smooth is not None:
      x = x / jnp.asarray(self.smooth, x.dtype)
    if self.matrix is not None:
      x = x @ jnp.asarray(self.matrix, x.dtype)
    elif self.signs is not None:
      x = fwht(x, self.signs, seed=self.seed)
    if self.act_bits:
      x = quantize_activations(x, self.act_bits, self.act_clip)
    return x

  def rotation(self) -> np.ndarray:
    """``R`` as a float64 matrix (identity when not rotated)."""
    k = self.shape[0]
    if self.matrix is not None:
      return np.asarray(self.matrix, np.float64)
    if self.signs is not None:
      return rotation_matrix(k, np.asarray(self.signs, np.float64), seed=self.seed)
    return np.eye(k)

  def weight(self, dtype: Any = None) -> np.ndarray:
    """``W'``, dequantized when quantized (float64 numpy)."""
    w = self.w
    if hasattr(w, "dequantize"):
      w = w.dequantize(dtype)
    return np.asarray(jax.device_get(w), np.float64)

  def dequantize(self, dtype: Any = None) -> np.ndarray:
    """The stock weight ``W = diag(1/s) R W'`` (``[K, N]``), transforms multiplied back."""
    w = self.rotation() @ self.weight()
    if self.smooth is not None:
      w = w / np.asarray(self.smooth, np.float64)[:, None]
    dt = np.dtype(dtype) if dtype is not None else np.float32
    return w.astype(dt)


jax.tree_util.register_dataclass(OnlineLinear, data_fields=["w", "smooth", "signs", "matrix"],
                                 meta_fields=["act_bits", "act_clip", "seed"])


def is_online(leaf: Any) -> bool:
  """Whether ``leaf`` is an :class:`OnlineLinear` (an ``is_leaf`` for tree walks)."""
  return isinstance(leaf, OnlineLinear)


def online_dot(x: jax.Array, w: Any) -> jax.Array:
  """The models' ``dot=``: :class:`OnlineLinear` kernels transform ``x`` first, then
  :func:`jaxparams.quant.dot` (plain arrays, QArrays, AWQ results)."""
  if isinstance(w, OnlineLinear):
    return qdot(w.transform_input(x), w.w)
  return qdot(x, w)
