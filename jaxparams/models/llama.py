"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) as a Flax linen module.

Parameter paths (``jp.tree.flatten`` of ``params``)::

  embed_tokens/embedding                 [vocab, hidden]
  layers_{i}/input_layernorm/scale       [hidden]
  layers_{i}/attn/{q,k,v,o}_proj/kernel  [in, out]   (+ /bias when attention_bias)
  layers_{i}/post_attention_layernorm/scale
  layers_{i}/mlp/{gate,up,down}_proj/kernel           (+ /bias when mlp_bias)
  norm/scale
  lm_head/kernel                         [hidden, vocab]   (absent when tie_word_embeddings)

Example:
  >>> import jax, jax.numpy as jnp
  >>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  >>> model = Llama(cfg)
  >>> ids = jnp.zeros((1, 5), jnp.int32)
  >>> params = model.init(jax.random.key(0), ids)['params']
  >>> model.apply({'params': params}, ids).shape
  (1, 5, 32)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams.models.layers import Embed, Linear, RMSNorm, apply_rope, rope_frequencies

__all__ = ["LlamaConfig", "Llama", "LlamaBlock", "LlamaAttention", "LlamaMLP"]


def _freeze(obj: Any) -> Any:
  """Turns dicts/lists into hashable sorted tuples (so the config stays hashable)."""
  if isinstance(obj, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in obj.items()))
  if isinstance(obj, list):
    return tuple(_freeze(v) for v in obj)
  return obj


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
  """Hyperparameters of a Llama-family decoder; field names follow HF ``config.json``.

  ``dtype`` is the compute (activation) dtype; parameters keep whatever dtype they are stored in.
  ``rope_scaling`` is kept as a sorted tuple of items (hashable); see :attr:`rope_scaling_dict`.

  Example:
    >>> cfg = LlamaConfig.from_hf_dict({'vocab_size': 8, 'hidden_size': 4,
    ...     'intermediate_size': 8, 'num_hidden_layers': 1, 'num_attention_heads': 2})
    >>> (cfg.num_key_value_heads, cfg.head_dim)
    (2, 2)
    >>> LlamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    True
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple | None = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  hidden_act: str = "silu"
  bos_token_id: int | None = 1
  eos_token_id: int | tuple | None = 2
  pad_token_id: int | None = None
  dtype: str = "float32"

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                       f"num_key_value_heads ({self.num_key_value_heads})")
    if self.hidden_act not in ("silu", "swish"):
      raise ValueError(f"hidden_act {self.hidden_act!r} not supported; supported: 'silu'")

  @property
  def head_dim_(self) -> int:
    """The effective head dimension (``head_dim`` or ``hidden_size // num_attention_heads``)."""
    return self.head_dim

  @property
  def rope_scaling_dict(self) -> dict | None:
    return None if self.rope_scaling is None else {k: v for k, v in self.rope_scaling}

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "LlamaConfig":
    """Builds a config from an HF ``config.json`` dict (transformers 4 and 5 rope layouts)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names and k not in ("dtype", "rope_scaling")}
    rope = d.get("rope_parameters") or d.get("rope_scaling")
    if isinstance(rope, dict):
      if "rope_theta" in rope:
        kw["rope_theta"] = rope["rope_theta"]
      kind = rope.get("rope_type", rope.get("type", "default"))
      if kind not in (None, "default"):
        kw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict:
    """The HF ``config.json`` dict (``model_type='llama'``), loadable by transformers 4 and 5."""
    rope = {"rope_type": "default", **(self.rope_scaling_dict or {})}
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim_,
        "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
        "rope_scaling": self.rope_scaling_dict,
        "rope_parameters": {"rope_theta": self.rope_theta, **rope},
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings, "attention_bias": self.attention_bias,
        "mlp_bias": self.mlp_bias, "hidden_act": self.hidden_act,
        "bos_token_id": self.bos_token_id, "eos_token_id": eos, "pad_token_id": self.pad_token_id,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
    }

  def to_json(self) -> str:
    return json.dumps(self.to_hf_dict(), indent=2)


class LlamaAttention(nn.Module):
  """Grouped-query self-attention with RoPE; projections ``q_proj``/``k_proj``/``v_proj``/``o_proj``."""
  config: LlamaConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    c = self.config
    b, t, _ = x.shape
    hd, nh, nkv = c.head_dim_, c.num_attention_heads, c.num_key_value_heads
    lin = lambda n, name: Linear(n, use_bias=c.attention_bias, dot=self.dot, name=name)
    q = lin(nh * hd, "q_proj")(x).reshape(b, t, nh, hd)
    k = lin(nkv * hd, "k_proj")(x).reshape(b, t, nkv, hd)
    v = lin(nkv * hd, "v_proj")(x).reshape(b, t, nkv, hd)
    inv_freq = rope_frequencies(hd, c.rope_theta, c.rope_scaling_dict)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    q = q.reshape(b, t, nkv, nh // nkv, hd)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k).astype(jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, t, nh * hd)
    return lin(c.hidden_size, "o_proj")(out)


class LlamaMLP(nn.Module):
  """SwiGLU feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""
  config: LlamaConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    lin = lambda n, name: Linear(n, use_bias=c.mlp_bias, dot=self.dot, name=name)
    h = jax.nn.silu(lin(c.intermediate_size, "gate_proj")(x)) * lin(c.intermediate_size,
                                                                       "up_proj")(x)
    return lin(c.hidden_size, "down_proj")(h)


class LlamaBlock(nn.Module):
  """One pre-norm decoder layer: attention and SwiGLU MLP, each with a residual."""
  config: LlamaConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    c = self.config
    h = RMSNorm(c.rms_norm_eps, name="input_layernorm")(x)
    x = x + LlamaAttention(c, self.dot, name="attn")(h, mask, positions)
    h = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x)
    return x + self.feed_forward()(h)

  def feed_forward(self) -> nn.Module:
    """The FFN submodule ``mlp``; subclasses swap it (``models.MoELlama``: mixture of experts)."""
    return LlamaMLP(self.config, self.dot, name="mlp")


class Llama(nn.Module):
  """Llama causal language model returning logits ``[batch, seq, vocab]``.

  Attributes:
    config: A :class:`LlamaConfig`.
    dot: Optional matmul injected into every :class:`Linear` (e.g. ``jaxparams.quant.dot``).

  Call arguments:
    input_ids: ``int[batch, seq]``.
    attention_mask: Optional ``[batch, seq]`` with 1 for real tokens and 0 for padding (keys that
      are 0 are never attended to); causal masking is always applied.
    positions: Optional ``int[batch, seq]`` RoPE positions (default ``arange(seq)``, as HF does
      when no ``position_ids`` are passed).
    return_hidden: If True return the final normed hidden states instead of logits.
  """
  config: LlamaConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, return_hidden: bool = False) -> jax.Array:
    c = self.config
    b, t = input_ids.shape
    dtype = jnp.dtype(c.dtype)
    embed = Embed(c.vocab_size, c.hidden_size, name="embed_tokens")
    x = embed(input_ids).astype(dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, :]
    for i in range(c.num_hidden_layers):
      x = self.decoder_layer(f"layers_{i}")(x, mask, positions)
    x = RMSNorm(c.rms_norm_eps, name="norm")(x)
    if return_hidden:
      return x
    if c.tie_word_embeddings:
      return embed.attend(x)
    return Linear(c.vocab_size, dot=self.dot, name="lm_head")(x)

  def decoder_layer(self, name: str) -> nn.Module:
    """The decoder layer ``name``; subclasses swap it (``models.MoELlama``)."""
    return LlamaBlock(self.config, self.dot, name=name)
