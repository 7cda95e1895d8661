"""A small CNN for scikit-learn's 8x8 digits with normalisation layers (for test-time adaptation).

``DigitsCNN``: ``conv_0 (3x3, 16) -> bn_0 -> relu -> conv_1 (3x3, 32, stride 2) -> bn_1 -> relu
-> global mean pool -> head (Linear, 10)``. :class:`BatchStatNorm` always normalises with the
statistics of the batch it sees (as EATA/Tent configure BatchNorm at test time: no running
averages), so its affine ``scale``/``bias`` are the only parameters test-time adaptation changes.

Parameter paths: ``conv_{0,1}/{kernel,bias}``, ``bn_{0,1}/{scale,bias}``, ``head/{kernel,bias}``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = DigitsCNN()
  >>> params = model.init(jax.random.key(0), jnp.zeros((2, 64)))['params']
  >>> sorted(params)
  ['bn_0', 'bn_1', 'conv_0', 'conv_1', 'head']
  >>> model.apply({'params': params}, jnp.ones((4, 64))).shape
  (4, 10)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams.models.layers import Linear

__all__ = ["BatchStatNorm", "DigitsCNN"]


class BatchStatNorm(nn.Module):
  """BatchNorm that always uses the current batch's mean/variance (over all axes but the last).

  Attributes:
    epsilon: Added to the variance (PyTorch BatchNorm's 1e-5).
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    feat = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (feat,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (feat,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    h = x.astype(jnp.float32)
    mean = jnp.mean(h, axis=axes)
    var = jnp.mean(jnp.square(h - mean), axis=axes)
    return ((h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(x.dtype)


class DigitsCNN(nn.Module):
  """CNN classifier of ``[batch, 64]`` (or ``[batch, 8, 8]``) digit images in ``[0, 1]``.

  Attributes:
    features: Channels of the two convolutions.
    num_classes: Output classes.
    dot: Optional matmul injected into the head :class:`Linear`.
  """
  features: tuple[int, int] = (16, 32)
  num_classes: int = 10
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], 8, 8, 1)
    x = nn.Conv(self.features[0], (3, 3), padding="SAME", name="conv_0")(x)
    x = jax.nn.relu(BatchStatNorm(name="bn_0")(x))
    x = nn.Conv(self.features[1], (3, 3), strides=(2, 2), padding="SAME", name="conv_1")(x)
    x = jax.nn.relu(BatchStatNorm(name="bn_1")(x))
    x = jnp.mean(x, axis=(1, 2))
    return Linear(self.num_classes, use_bias=True, dot=self.dot, name="head")(x)
