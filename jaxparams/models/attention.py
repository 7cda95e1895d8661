"""Decoder attention pieces shared by the families: masks and grouped-query attention.

Masks are boolean ``[batch, q, k]`` (True = may attend), built as HF's ``masking_utils`` does:
causal, AND the padding mask on keys, AND for sliding layers ``k > q - window`` (the window
counts the query itself).

Example:
  >>> import jax.numpy as jnp
  >>> m = decoder_mask(4, jnp.array([[1, 1, 1, 0]]))
  >>> m[0].astype(int).tolist()
  [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]
  >>> sliding(m, 2)[0].astype(int).tolist()
  [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["decoder_mask", "sliding", "gqa_attention", "FULL", "SLIDING", "LAYER_TYPES"]

FULL, SLIDING = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)


def decoder_mask(seq_len: int, attention_mask: jax.Array | None = None,
                 batch: int = 1) -> jax.Array:
  """Causal mask ``[batch, seq, seq]``, keys with ``attention_mask == 0`` removed."""
  mask = jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))[None]
  if attention_mask is not None:
    return mask & attention_mask.astype(bool)[:, None, :]
  return jnp.broadcast_to(mask, (batch, seq_len, seq_len))


def sliding(mask: jax.Array, window: int) -> jax.Array:
  """Restricts a ``[batch, q, k]`` mask to keys with ``k > q - window``."""
  t_q, t_k = mask.shape[-2:]
  q = jnp.arange(t_q)[:, None]
  k = jnp.arange(t_k)[None, :]
  return mask & (k > q - window)[None]


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float,
                  softcap: float | None = None) -> jax.Array:
  """Grouped-query attention (HF eager semantics): ``q[b,t,nh,d]``, ``k,v[b,s,nkv,d]``.

  Scores are ``q.k * scale`` (then ``softcap * tanh(scores / softcap)`` when given), masked,
  soft-maxed in float32. Returns ``[b, t, nh * d]``.
  """
  b, t, nh, hd = q.shape
  nkv = k.shape[2]
  q = q.reshape(b, t, nkv, nh // nkv, hd)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k).astype(jnp.float32) * scale
  if softcap is not None:
    scores = jnp.tanh(scores / softcap) * softcap
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, t, nh * v.shape[-1])
