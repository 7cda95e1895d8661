"""Building blocks shared by the reference models: Linear, Embed, RMSNorm, LayerNorm, RoPE.

Every dense kernel is a plain 2-D matrix ``[in_features, out_features]`` (``y = x @ W``), so
quantizers, mergers and growth operators always see ordinary matrices.  Quantized weights enter
through the ``dot`` attribute of :class:`Linear`: when given, the layer computes
``dot(x, kernel)`` and the kernel may be any pytree (e.g. a ``jaxparams.quant.QArray``).

Example:
  >>> import jax, jax.numpy as jnp
  >>> layer = Linear(features=3)
  >>> params = layer.init(jax.random.key(0), jnp.ones((2, 4)))
  >>> params['params']['kernel'].shape
  (4, 3)
  >>> layer.apply(params, jnp.ones((2, 4))).shape
  (2, 3)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "Linear", "Embed", "RMSNorm", "LayerNorm", "rope_frequencies", "apply_rope", "rotate_half",
    "causal_mask",
]

DotFn = Callable[[jax.Array, Any], jax.Array]
_default_init = nn.initializers.normal(stddev=0.02)


def _get_or_create(module: nn.Module, name: str, init_fn, shape, dtype) -> Any:
  """Returns an existing param without flax's shape check (it may be a QArray), else creates it."""
  if module.has_variable("params", name):
    return module.get_variable("params", name)
  return module.param(name, init_fn, shape, dtype)


class Linear(nn.Module):
  """Dense layer ``y = x @ kernel (+ bias)`` with a 2-D ``[in, out]`` kernel and a ``dot`` hook.

  Attributes:
    features: Number of output features.
    use_bias: Whether to add a bias of shape ``[features]``.
    dtype: Compute dtype; ``None`` keeps the input's dtype.
    param_dtype: Dtype of freshly initialised parameters.
    kernel_init: Initialiser of the kernel.
    dot: Optional ``dot(x, kernel) -> y``. When given the kernel is passed through untouched (it
      may be a quantized pytree such as ``jaxparams.quant.QArray``); default
      ``x @ kernel.astype(x.dtype)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> calls = []
    >>> def dot(x, w):
    ...   calls.append(1)
    ...   return x @ w
    >>> y, _ = Linear(2, dot=dot).init_with_output(jax.random.key(0), jnp.ones((1, 3)))
    >>> (y.shape, len(calls))
    ((1, 2), 1)
  """
  features: int
  use_bias: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = _default_init
  dot: DotFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.dtype is not None:
      x = x.astype(self.dtype)
    kernel = _get_or_create(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
    if self.dot is not None:
      y = self.dot(x, kernel)
    else:
      if kernel.shape != (x.shape[-1], self.features):
        raise ValueError(
            f"Linear {'/'.join(self.path)}: kernel has shape {tuple(kernel.shape)}, expected "
            f"{(x.shape[-1], self.features)} ([in, out]) for input with {x.shape[-1]} features")
      y = jnp.matmul(x, kernel.astype(x.dtype))
    if self.use_bias:
      bias = _get_or_create(self, "bias", nn.initializers.zeros, (self.features,),
                            self.param_dtype)
      y = y + jnp.asarray(bias).astype(y.dtype)
    return y


class Embed(nn.Module):
  """Token embedding table ``embedding[num_embeddings, features]``; ``attend`` gives tied logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> emb = Embed(10, 4)
    >>> v = emb.init(jax.random.key(0), jnp.array([[1, 2]]))
    >>> emb.apply(v, jnp.array([[1, 2]])).shape
    (1, 2, 4)
  """
  num_embeddings: int
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  embedding_init: Callable = _default_init

  def setup(self):
    self.embedding = self.param("embedding", self.embedding_init,
                                (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    out = jnp.take(self.embedding, ids, axis=0)
    return out.astype(self.dtype) if self.dtype is not None else out

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits against the table: ``x @ embedding.T`` (tied output head)."""
    return jnp.matmul(x, self.embedding.astype(x.dtype).T)


class RMSNorm(nn.Module):
  """Llama RMSNorm: ``scale * (x / sqrt(mean(x^2) + eps))`` computed in float32.

  Matches HF ``LlamaRMSNorm`` (normalise in fp32, cast back to the input dtype, then scale).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> n = RMSNorm(epsilon=1e-6)
    >>> v = n.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> bool(jnp.allclose(n.apply(v, 2 * jnp.ones((1, 4))), 1.0, atol=1e-5))
    True
  """
  epsilon: float = 1e-6
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(x.dtype) * h.astype(x.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with exact (two-pass) variance in float32; params ``scale`` and ``bias``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> n = LayerNorm(epsilon=1e-12)
    >>> x = jnp.arange(4.0)[None]
    >>> v = n.init(jax.random.key(0), x)
    >>> round(float(n.apply(v, x).mean()), 6)
    0.0
  """
  epsilon: float = 1e-12
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    feat = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (feat,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (feat,), self.param_dtype)
    h = x.astype(jnp.float32)
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + self.epsilon)
    h = h * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return h.astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float = 10000.0,
                     scaling: dict | None = None) -> np.ndarray:
  """Inverse frequencies ``1 / theta^(2i/d)`` (HF convention), with optional rope scaling.

  Supported ``scaling['rope_type']``: ``None``/``'default'``, ``'linear'`` (``factor``) and
  ``'llama3'`` (``factor``, ``low_freq_factor``, ``high_freq_factor``,
  ``original_max_position_embeddings``).

  Example:
    >>> rope_frequencies(4).tolist()
    [1.0, 0.009999999776482582]
  """
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
  inv = inv.astype(np.float32)
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
  if kind in (None, "default"):
    return inv
  if kind == "linear":
    return (inv / np.float32(scaling["factor"])).astype(np.float32)
  if kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, out).astype(np.float32)
  raise ValueError(f"unsupported rope scaling type {kind!r}; supported: 'default', 'linear', "
                   "'llama3'")


def rotate_half(x: jax.Array) -> jax.Array:
  """HF ``rotate_half``: ``[x1, x2] -> [-x2, x1]`` on the last axis (non-interleaved halves)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray | jax.Array) -> jax.Array:
  """Applies rotary embeddings to ``x[batch, seq, heads, head_dim]`` at ``positions[batch, seq]``.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((1, 3, 2, 4))
    >>> y = apply_rope(x, jnp.arange(3)[None], rope_frequencies(4))
    >>> bool(jnp.allclose(y[:, 0], x[:, 0]))   # position 0 is the identity
    True
  """
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]   # [B, T, 1, D]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  return x * cos + rotate_half(x) * sin


def causal_mask(seq_len: int) -> jax.Array:
  """Boolean ``[seq, seq]`` lower-triangular mask (True = may attend)."""
  return jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))
