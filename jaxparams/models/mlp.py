"""A small multi-layer perceptron (used by the merge demos, e.g. a digits classifier).

Parameter paths: ``layers_{i}/kernel`` ``[in, out]`` and ``layers_{i}/bias``; the last layer is
the output layer (no activation).

Example:
  >>> import jax, jax.numpy as jnp
  >>> mlp = MLP(features=(32, 10))
  >>> params = mlp.init(jax.random.key(0), jnp.ones((2, 64)))['params']
  >>> sorted(params), params['layers_0']['kernel'].shape
  (['layers_0', 'layers_1'], (64, 32))
  >>> mlp.apply({'params': params}, jnp.ones((2, 64))).shape
  (2, 10)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from flax import linen as nn

from jaxparams.models.layers import Linear

__all__ = ["MLP"]

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu,
                "tanh": jax.numpy.tanh}


class MLP(nn.Module):
  """Stack of biased :class:`Linear` layers with an activation between them.

  Attributes:
    features: Output width of each layer; the last entry is the output size.
    activation: A name in ``'relu' | 'gelu' | 'silu' | 'tanh'`` or a callable.
    dot: Optional matmul injected into every layer.
  """
  features: Sequence[int]
  activation: str | Callable = "relu"
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = self.activation
    if isinstance(act, str):
      if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; valid: {sorted(_ACTIVATIONS)}")
      act = _ACTIVATIONS[act]
    for i, f in enumerate(self.features):
      x = Linear(f, use_bias=True, dot=self.dot, name=f"layers_{i}")(x)
      if i < len(self.features) - 1:
        x = act(x)
    return x
