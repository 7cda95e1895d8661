"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) as a Flax linen module.

Parameter paths (``jp.tree.flatten`` of ``params``)::

  embed_tokens/embedding                 [vocab, hidden]
  layers_{i}/input_layernorm/scale       [hidden]
  layers_{i}/attn/{q,k,v,o}_proj/kernel  [in, out]   (+ /bias when attention_bias; q/k/v
                                                     only when qkv_bias)
  layers_{i}/attn/{q,k}_norm/scale       [head_dim]  (qk_norm)
  layers_{i}/attn/qkv_proj/kernel        [in, (nh + 2 nkv) head_dim]  (fused_projections,
                                                     replaces q/k/v_proj)
  layers_{i}/post_attention_layernorm/scale
  layers_{i}/mlp/{gate,up,down}_proj/kernel           (+ /bias when mlp_bias)
  layers_{i}/mlp/gate_up_proj/kernel     [in, 2 intermediate]  (fused_projections, gate first)
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
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams.models.attention import (FULL, LAYER_TYPES, SLIDING, decoder_mask, gqa_attention,
                                        sliding)
from jaxparams.models.layers import Embed, Linear, RMSNorm
from jaxparams.models.rope import apply_rotary, rope_cos_sin, rope_type

__all__ = ["LlamaConfig", "Llama", "LlamaBlock", "LlamaAttention", "LlamaMLP"]


# FFN gate activations (hidden_act); 'relu' gives the sparse FFNs of relufied Llamas.
_ACTS = {"silu": jax.nn.silu, "swish": jax.nn.silu, "relu": jax.nn.relu}

_FAMILY_FIELDS = ("qkv_bias", "qk_norm", "sliding_window", "layer_types", "fused_projections")


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
  model_type: ClassVar[str] = "llama"
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
  # Switches used by the families built on this decoder (Qwen2/3, Mistral, Phi-3); off for Llama.
  qkv_bias: bool = False              # bias on q/k/v only (Qwen2); attention_bias: on all four
  qk_norm: bool = False               # RMSNorm over head_dim on q and k before RoPE (Qwen3)
  sliding_window: int | None = None   # window of the 'sliding_attention' layers (Mistral, Qwen)
  layer_types: tuple | None = None    # per layer 'full_attention'/'sliding_attention'
  partial_rotary_factor: float = 1.0  # fraction of head_dim that rotates
  fused_projections: bool = False     # one qkv_proj and one gate_up_proj Linear (Phi-3)
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
    if self.hidden_act not in _ACTS:
      raise ValueError(f"hidden_act {self.hidden_act!r} not supported; supported: {list(_ACTS)}")
    if isinstance(self.layer_types, list):
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_hidden_layers or any(
          t not in LAYER_TYPES for t in self.layer_types):
        raise ValueError(f"layer_types must list {self.num_hidden_layers} entries from "
                         f"{list(LAYER_TYPES)}, found {list(self.layer_types)[:8]}")
    rope_type(self.rope_scaling_dict)  # refuses unsupported rope types by name

  def layer_type(self, i: int) -> str:
    """``'sliding_attention'`` or ``'full_attention'`` for layer ``i``."""
    if self.sliding_window is None:
      return FULL
    return self.layer_types[i] if self.layer_types is not None else SLIDING

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
    names = {f.name for f in dataclasses.fields(cls)} - set(_FAMILY_FIELDS)
    kw = {k: v for k, v in d.items() if k in names and k not in ("dtype", "rope_scaling")}
    rope = d.get("rope_parameters") or d.get("rope_scaling")
    if isinstance(rope, dict):
      if "rope_theta" in rope:
        kw["rope_theta"] = rope["rope_theta"]
      if "partial_rotary_factor" in rope:
        kw["partial_rotary_factor"] = rope["partial_rotary_factor"]
      kind = rope.get("rope_type", rope.get("type", "default"))
      if kind not in (None, "default"):
        scaling = {k: v for k, v in rope.items()
                   if k not in ("rope_theta", "partial_rotary_factor")}
        if "original_max_position_embeddings" in d:
          scaling.setdefault("original_max_position_embeddings",
                             d["original_max_position_embeddings"])
        kw["rope_scaling"] = scaling
    kw.update(cls._family_from_hf(d))
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def _family_from_hf(cls, d: dict) -> dict:
    """Family switches read from an HF config dict (none for Llama)."""
    del d
    return {}

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
  """Grouped-query self-attention with RoPE; projections ``q_proj``/``k_proj``/``v_proj``/``o_proj``
  (or one fused ``qkv_proj``), optional q/k RMSNorm, the layer's mask (sliding or full)."""
  config: LlamaConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    c = self.config
    b, t, _ = x.shape
    hd, nh, nkv = c.head_dim_, c.num_attention_heads, c.num_key_value_heads
    qkv_bias = c.attention_bias or c.qkv_bias
    lin = lambda n, name, bias=qkv_bias: Linear(n, use_bias=bias, dot=self.dot, name=name)
    if c.fused_projections:
      qkv = lin((nh + 2 * nkv) * hd, "qkv_proj")(x)
      q, k, v = jnp.split(qkv, [nh * hd, (nh + nkv) * hd], axis=-1)
    else:
      q, k, v = (lin(nh * hd, "q_proj")(x), lin(nkv * hd, "k_proj")(x),
                 lin(nkv * hd, "v_proj")(x))
    q, k, v = q.reshape(b, t, nh, hd), k.reshape(b, t, nkv, hd), v.reshape(b, t, nkv, hd)
    if c.qk_norm:
      q = RMSNorm(c.rms_norm_eps, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, name="k_norm")(k)
    cos, sin = rope_cos_sin(positions, head_dim=hd, theta=c.rope_theta,
                            scaling=c.rope_scaling_dict,
                            partial_rotary_factor=c.partial_rotary_factor,
                            max_position_embeddings=c.max_position_embeddings, dtype=x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = gqa_attention(q, k, v, mask, scale=hd ** -0.5)
    return lin(c.hidden_size, "o_proj", c.attention_bias)(out)


class LlamaMLP(nn.Module):
  """Gated feed-forward: ``down_proj(act(gate_proj(x)) * up_proj(x))``; act is ``hidden_act``
  (SiLU: SwiGLU, the default; ReLU: the sparse FFN of relufied models)."""
  config: LlamaConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    lin = lambda n, name: Linear(n, use_bias=c.mlp_bias, dot=self.dot, name=name)
    if c.fused_projections:
      gate, up = jnp.split(lin(2 * c.intermediate_size, "gate_up_proj")(x), 2, axis=-1)
    else:
      gate, up = lin(c.intermediate_size, "gate_proj")(x), lin(c.intermediate_size, "up_proj")(x)
    return lin(c.hidden_size, "down_proj")(_ACTS[c.hidden_act](gate) * up)


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
    masks = {FULL: decoder_mask(t, attention_mask, b)}
    if c.sliding_window is not None:
      masks[SLIDING] = sliding(masks[FULL], c.sliding_window)
    for i in range(c.num_hidden_layers):
      x = self.decoder_layer(f"layers_{i}")(x, masks[c.layer_type(i)], positions)
    x = RMSNorm(c.rms_norm_eps, name="norm")(x)
    if return_hidden:
      return x
    if c.tie_word_embeddings:
      return embed.attend(x)
    return Linear(c.vocab_size, dot=self.dot, name="lm_head")(x)

  def decoder_layer(self, name: str) -> nn.Module:
    """The decoder layer ``name``; subclasses swap it (``models.MoELlama``)."""
    return LlamaBlock(self.config, self.dot, name=name)
