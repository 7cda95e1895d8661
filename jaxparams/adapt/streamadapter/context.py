"""The demonstrations' key/value states, read from the frozen base model, split into chunks.

The base Llama runs once over the context ``[BOS, demos...]``; the outputs of every layer's
``k_proj`` and ``v_proj`` (before RoPE, so position-free) are captured by the calibration layer's
:func:`jaxparams.calib.capture.capture_calls`, with no change to the model. Each demonstration
token ``t`` of layer ``l`` gets the feature ``[k_t, v_t, k_{t-1}, v_{t-1}]`` (its own key/value
and its left neighbour's: the neighbour binds an output token to the input it answers; the BOS
token only serves as the first neighbour). The tokens are then cut into chunks of ``chunk_size`` (the last one padded
and masked).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...                   num_hidden_layers=2, num_attention_heads=2)
  >>> model = Llama(cfg)
  >>> params = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))['params']
  >>> feats = kv_features(model, params, jnp.ones((3, 6), jnp.int32))
  >>> feats.shape
  (3, 2, 5, 32)
  >>> f, m = chunk(feats, 4)
  >>> f.shape, m.shape, m[0].tolist()
  ((3, 2, 2, 4, 32), (3, 2, 4), [[True, True, True, True], [True, False, False, False]])
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxparams.calib.capture import capture_calls

__all__ = ["kv_features", "chunk", "feature_dim"]


def feature_dim(config: Any) -> int:
  """Per-token feature size ``4 * num_key_value_heads * head_dim`` of a Llama config."""
  return 4 * config.num_key_value_heads * config.head_dim_


def kv_features(model: Any, params: Any, context_ids: jax.Array) -> jax.Array:
  """``[batch, layers, t - 1, 4 * kv_dim]`` features of the context's demonstration tokens.

  Args:
    model: A :class:`jaxparams.models.Llama` (unfused q/k/v projections).
    params: Its parameters (treated as constants: gradients stop here).
    context_ids: ``int[batch, t]`` starting with BOS.

  Raises:
    ValueError: when the model has no separate ``k_proj``/``v_proj`` (fused projections).
  """
  c = model.config
  if getattr(c, "fused_projections", False):
    raise ValueError("StreamAdapter reads k_proj/v_proj outputs; config.fused_projections=True "
                     "models (one qkv_proj) are not supported")
  params = jax.lax.stop_gradient(params)
  names = [f"layers_{i}/attn/{n}" for i in range(c.num_hidden_layers)
           for n in ("k_proj", "v_proj")]
  _, _, outs = capture_calls(model, params, context_ids, outputs=names)
  missing = [n for n in names if n not in outs]
  if missing:
    raise ValueError(f"StreamAdapter reads the outputs of {missing[:2]}..., which the model never "
                     f"called (a Llama with {c.num_hidden_layers} layers of unfused projections)")
  per_layer = []
  for i in range(c.num_hidden_layers):
    k, v = outs[f"layers_{i}/attn/k_proj"], outs[f"layers_{i}/attn/v_proj"]
    kv = jnp.concatenate([k, v], axis=-1).astype(jnp.float32)      # [b, t, 2 kv_dim]
    per_layer.append(jnp.concatenate([kv[:, 1:], kv[:, :-1]], axis=-1))
  return jax.lax.stop_gradient(jnp.stack(per_layer, axis=1))


def chunk(features: jax.Array, chunk_size: int,
          mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Cuts ``[batch, layers, t, f]`` into ``[batch, layers, n_chunks, chunk_size, f]`` + mask.

  Args:
    features: Per-token features.
    chunk_size: Tokens per chunk.
    mask: Optional ``bool[batch, t]`` (False = padding token, e.g. a batch of unequal contexts).

  Returns:
    ``(chunks, mask)`` with ``mask`` ``bool[batch, n_chunks, chunk_size]``; ``n_chunks =
    ceil(t / chunk_size)`` (0 for an empty context).
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, found {chunk_size}")
  b, nl, t, f = features.shape
  if mask is None:
    mask = jnp.ones((b, t), bool)
  if mask.shape != (b, t):
    raise ValueError(f"mask has shape {mask.shape}, expected {(b, t)} (batch, tokens)")
  n = -(-t // chunk_size)
  pad = n * chunk_size - t
  features = jnp.pad(features, ((0, 0), (0, 0), (0, pad), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad)))
  return (features.reshape(b, nl, n, chunk_size, f), mask.reshape(b, n, chunk_size))
