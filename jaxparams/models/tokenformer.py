"""TokenFormer language model: every projection is attention over parameter tokens (Pattention).

Wang et al., "TokenFormer: Rethinking Transformer Scaling with Tokenized Model
Parameters" (ICLR 2025, arXiv 2410.23168; reference code Haiyang-W/TokenFormer).
Every linear projection of a transformer (Q, K, V, output projection, FFN) is
replaced by *Pattention*: the input tokens attend to ``n`` learnable key/value
parameter tokens,

  A = X K_Pᵀ,   Θ(A)_ij = GeLU(A_ij · τ / ‖A_i,:‖₂),   out = Θ(A) V_P,

with ``K_P ∈ ℝ^{n×d_in}``, ``V_P ∈ ℝ^{n×d_out}`` (the ``l2_norm_gelu``
normalisation that all of the paper's configs use). τ is fixed in the config
(default √n of the model as first built), so growing the model by appending
zero-key tokens (:func:`jaxparams.scale.grow`) keeps its function exactly.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models import TokenFormer, TokenFormerConfig
  >>> cfg = TokenFormerConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2,
  ...                         qkv_tokens=8, out_tokens=8, ffn_tokens=16, max_len=8)
  >>> ids = jnp.zeros((1, 4), jnp.int32)
  >>> params = TokenFormer(cfg).init(jax.random.PRNGKey(0), ids)['params']
  >>> TokenFormer(cfg).apply({'params': params}, ids).shape
  (1, 4, 32)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "KINDS", "MODULE_KIND", "Pattention", "TokenFormer", "TokenFormerBlock", "TokenFormerConfig",
    "l2_norm_gelu",
]

KINDS = ("qkv", "out", "ffn")
"""Groups of Pattention layers that share a token count and τ."""

MODULE_KIND = {"query": "qkv", "key": "qkv", "value": "qkv", "out": "out", "ffn": "ffn"}
"""Pattention module name -> its group (kind)."""


def l2_norm_gelu(scores: jax.Array, tau: float, eps: float = 1e-5) -> jax.Array:
  """The paper's default Θ: ``GeLU(A · τ / ‖A_row‖₂)`` over the last axis.

  Args:
    scores: ``[..., n]`` scores of the input tokens against n parameter tokens.
    tau: fixed temperature (the paper uses √n of the initial model).
    eps: added under the square root (the JAX reference port uses 1e-5).

  Returns:
    Same shape as ``scores``.

  Example:
    >>> import jax.numpy as jnp
    >>> l2_norm_gelu(jnp.array([[3.0, 4.0, 0.0]]), tau=5.0, eps=0.0).shape
    (1, 3)
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(scores), axis=-1, keepdims=True) + eps)
  return nn.gelu(scores * (tau / norm), approximate=False)


class Pattention(nn.Module):
  """Token-parameter attention: ``Θ(X K_Pᵀ) V_P`` (replaces a Dense layer).

  Attributes:
    num_tokens: number n of key/value parameter tokens.
    features: output width d_out (the input width comes from the input).
    tau: fixed temperature τ of the normalisation; ``None`` means √num_tokens.
    init_std: std of the normal initialiser of both token tables.
    eps: numerical epsilon inside the row norm.
    dtype: compute dtype (parameters stay ``param_dtype``).
    param_dtype: parameter dtype.

  Params: ``key_tokens`` ``[n, d_in]`` and ``value_tokens`` ``[n, d_out]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = Pattention(num_tokens=4, features=3)
    >>> x = jnp.ones((2, 5))
    >>> p = layer.init(jax.random.PRNGKey(0), x)
    >>> layer.apply(p, x).shape
    (2, 3)
  """
  num_tokens: int
  features: int
  tau: float | None = None
  init_std: float = 0.02
  eps: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.normal(self.init_std)
    keys = self.param("key_tokens", init, (self.num_tokens, x.shape[-1]), self.param_dtype)
    values = self.param("value_tokens", init, (self.num_tokens, self.features), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, keys)
    x, keys, values = x.astype(dtype), keys.astype(dtype), values.astype(dtype)
    tau = math.sqrt(self.num_tokens) if self.tau is None else self.tau
    weights = l2_norm_gelu(x @ keys.T, tau, self.eps)
    return weights @ values


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenFormerConfig:
  """Shape of a TokenFormer language model.

  Attributes:
    vocab_size: number of token ids.
    d_model: hidden width.
    n_layers: number of blocks.
    n_heads: attention heads (``d_model % n_heads == 0``).
    qkv_tokens: parameter tokens of each of the Q, K, V Pattention layers.
    out_tokens: parameter tokens of the attention output Pattention layer.
    ffn_tokens: parameter tokens of the FFN Pattention layer.
    max_len: number of learned positions.
    qkv_tau, out_tau, ffn_tau: fixed temperatures; ``None`` means √tokens of
      this config. `grow` writes the resolved old values here so growth keeps
      the function.
    init_std: std of the token and embedding initialisers.
    eps: epsilon inside the Pattention row norm.
    dtype: compute dtype name (``'float32'``, ``'bfloat16'``).
  """
  vocab_size: int = 256
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  qkv_tokens: int = 64
  out_tokens: int = 64
  ffn_tokens: int = 256
  max_len: int = 128
  qkv_tau: float | None = None
  out_tau: float | None = None
  ffn_tau: float | None = None
  init_std: float = 0.02
  eps: float = 1e-5
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "qkv_tokens", "out_tokens",
                 "ffn_tokens", "max_len"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"TokenFormerConfig.{name} must be positive, found {getattr(self, name)}")
    if self.d_model % self.n_heads:
      raise ValueError(f"TokenFormerConfig: d_model={self.d_model} is not divisible by "
                       f"n_heads={self.n_heads}")

  def tokens(self, kind: str) -> int:
    """Token count of one Pattention group (``'qkv'``, ``'out'`` or ``'ffn'``)."""
    _check_kind(kind)
    return getattr(self, f"{kind}_tokens")

  def tau(self, kind: str) -> float:
    """Resolved τ of one Pattention group: the fixed value or √tokens."""
    _check_kind(kind)
    value = getattr(self, f"{kind}_tau")
    return math.sqrt(self.tokens(kind)) if value is None else float(value)


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown Pattention kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _pattention(config: TokenFormerConfig, kind: str, features: int, name: str) -> Pattention:
  return Pattention(num_tokens=config.tokens(kind), features=features, tau=config.tau(kind),
                    init_std=config.init_std, eps=config.eps, dtype=jnp.dtype(config.dtype),
                    name=name)


class TokenFormerBlock(nn.Module):
  """Pre-LN block: causal multi-head attention and FFN, all projections Pattention.

  Param names: ``ln_attn``, ``query``, ``key``, ``value``, ``out``, ``ln_ffn``, ``ffn``.
  ``attention_mask``: optional ``[batch, time]``, 1 for real tokens, 0 for padding (never
  attended to); the causal mask always applies.
  """
  config: TokenFormerConfig

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    d, h = cfg.d_model, cfg.n_heads
    hd = d // h
    y = nn.LayerNorm(name="ln_attn")(x)
    split = lambda t: t.reshape(t.shape[:-1] + (h, hd))
    q = split(_pattention(cfg, "qkv", d, "query")(y))
    k = split(_pattention(cfg, "qkv", d, "key")(y))
    v = split(_pattention(cfg, "qkv", d, "value")(y))
    t = x.shape[-2]
    mask = jnp.tril(jnp.ones((t, t), bool))
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[..., None, None, :]
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(hd)
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    att = jax.nn.softmax(scores, axis=-1)
    o = jnp.einsum("...hqk,...khd->...qhd", att, v).reshape(x.shape[:-1] + (d,))
    x = x + _pattention(cfg, "out", d, "out")(o)
    y = nn.LayerNorm(name="ln_ffn")(x)
    return x + _pattention(cfg, "ffn", d, "ffn")(y)


class TokenFormer(nn.Module):
  """Decoder-only TokenFormer language model (learned positions, tied LM head).

  Call with int token ids ``[batch, time]`` (time ≤ ``max_len``); returns logits
  ``[batch, time, vocab_size]``; ``attention_mask`` (optional ``[batch, time]``, 0 for padding)
  keeps padded keys out of attention. Param tree: ``embed``, ``pos_embed``,
  ``blocks_0`` … ``blocks_{L-1}``, ``ln_final``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> cfg = TokenFormerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2,
    ...                         qkv_tokens=4, out_tokens=4, ffn_tokens=8, max_len=6)
    >>> ids = jnp.ones((2, 6), jnp.int32)
    >>> p = TokenFormer(cfg).init(jax.random.PRNGKey(0), ids)
    >>> TokenFormer(cfg).apply(p, ids).shape
    (2, 6, 11)
  """
  config: TokenFormerConfig

  @nn.compact
  def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    if ids.shape[-1] > cfg.max_len:
      raise ValueError(f"TokenFormer: sequence length {ids.shape[-1]} exceeds max_len={cfg.max_len}")
    init = nn.initializers.normal(cfg.init_std)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, name="embed")
    pos = self.param("pos_embed", init, (cfg.max_len, cfg.d_model))
    x = embed(ids) + pos[: ids.shape[-1]]
    x = x.astype(jnp.dtype(cfg.dtype))
    for i in range(cfg.n_layers):
      x = TokenFormerBlock(cfg, name=f"blocks_{i}")(x, attention_mask)
    x = nn.LayerNorm(name="ln_final")(x)
    return embed.attend(x.astype(jnp.float32))
