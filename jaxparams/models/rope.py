"""Rotary position embeddings as HF transformers computes them, for every family we load.

Supported rope types (``rope_scaling['rope_type']``, or the older ``'type'`` key):
``'default'``, ``'linear'``, ``'llama3'`` and ``'longrope'`` (alias ``'su'``, Phi-3), with an
optional ``partial_rotary_factor`` (only the first ``int(head_dim * factor)`` dimensions rotate).
Any other type is refused by name.

Example:
  >>> import jax.numpy as jnp
  >>> cos, sin = rope_cos_sin(jnp.arange(3)[None], head_dim=4, theta=10000.0)
  >>> cos.shape, float(cos[0, 0, 0]), float(sin[0, 0, 0])
  ((1, 3, 4), 1.0, 0.0)
  >>> x = jnp.ones((1, 3, 2, 4))
  >>> bool(jnp.allclose(apply_rotary(x, cos, sin)[:, 0], x[:, 0]))   # position 0: identity
  True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.models.layers import rope_frequencies, rotate_half

__all__ = ["ROPE_TYPES", "rope_type", "rotary_dim", "rope_inv_freq", "rope_cos_sin",
           "apply_rotary"]

ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def rope_type(scaling: dict | None) -> str:
  """The rope type named by a scaling dict (``'su'`` is ``'longrope'``); refuses unknown types."""
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
  kind = "longrope" if kind == "su" else kind
  if kind not in ROPE_TYPES:
    raise ValueError(f"rope scaling type {kind!r} is not supported; supported: {list(ROPE_TYPES)}")
  return kind


def rotary_dim(head_dim: int, partial_rotary_factor: float = 1.0) -> int:
  """Rotated dimensions per head (HF: ``int(head_dim * partial_rotary_factor)``)."""
  return int(head_dim * partial_rotary_factor)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None, *,
                  partial_rotary_factor: float = 1.0, max_position_embeddings: int | None = None,
                  long: bool = False) -> tuple[np.ndarray, float]:
  """``(inv_freq[rotary_dim // 2], attention_factor)``; ``long`` picks longrope's long factors."""
  dim = rotary_dim(head_dim, partial_rotary_factor)
  kind = rope_type(scaling)
  if kind != "longrope":
    return rope_frequencies(dim, theta, scaling if kind != "default" else None), 1.0
  orig = scaling.get("original_max_position_embeddings")
  if orig is None:
    raise ValueError("longrope scaling needs 'original_max_position_embeddings'")
  factor = scaling.get("factor")
  if factor is None:
    factor = (max_position_embeddings or orig) / orig
  attention_factor = scaling.get("attention_factor")
  if attention_factor is None:
    attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
  ext = np.asarray(scaling["long_factor" if long else "short_factor"], np.float32)
  if ext.shape != (dim // 2,):
    raise ValueError(f"longrope {'long' if long else 'short'}_factor has {ext.size} entries, "
                     f"expected {dim // 2} (rotary dim {dim} / 2)")
  shape = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv = (1.0 / (ext * np.float32(theta) ** shape)).astype(np.float32)
  return inv, float(attention_factor)


def rope_cos_sin(positions: jax.Array, *, head_dim: int, theta: float,
                 scaling: dict | None = None, partial_rotary_factor: float = 1.0,
                 max_position_embeddings: int | None = None,
                 dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """``cos, sin`` of shape ``[batch, seq, rotary_dim]`` (HF's ``rotary_emb`` output).

  Longrope uses its long factors when ``max(positions) + 1`` exceeds
  ``original_max_position_embeddings`` (as HF's dynamic update does), else the short ones.
  """
  kw = dict(partial_rotary_factor=partial_rotary_factor,
            max_position_embeddings=max_position_embeddings)
  inv, attn = rope_inv_freq(head_dim, theta, scaling, **kw)
  inv = jnp.asarray(inv, jnp.float32)
  if rope_type(scaling) == "longrope":
    long_inv, _ = rope_inv_freq(head_dim, theta, scaling, long=True, **kw)
    use_long = jnp.max(positions) + 1 > scaling["original_max_position_embeddings"]
    inv = jnp.where(use_long, jnp.asarray(long_inv, jnp.float32), inv)
  freqs = positions.astype(jnp.float32)[..., None] * inv
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return (jnp.cos(emb) * attn).astype(dtype), (jnp.sin(emb) * attn).astype(dtype)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the first ``cos.shape[-1]`` dims of ``x[batch, seq, heads, head_dim]``."""
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  r = cos.shape[-1]
  if r == x.shape[-1]:
    return x * cos + rotate_half(x) * sin
  rot, rest = x[..., :r], x[..., r:]
  return jnp.concatenate([rot * cos + rotate_half(rot) * sin, rest], axis=-1)
