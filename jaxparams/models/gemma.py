"""Gemma 2 and Gemma 3 (text) decoders as a Flax linen module.

What differs from Llama (all as transformers computes it):

* token embeddings times ``sqrt(hidden_size)``, the factor rounded to the embedding dtype;
* RMSNorm with ``(1 + weight)`` applied in float32 (weights stored as offsets from 1);
* a norm before and after both attention and MLP (``input_layernorm``,
  ``post_attention_layernorm``, ``pre_feedforward_layernorm``, ``post_feedforward_layernorm``);
* GeGLU MLP (``gelu`` with the tanh approximation);
* attention scaled by ``query_pre_attn_scalar ** -0.5``; optional attention and final-logit
  soft-capping ``cap * tanh(x / cap)`` (Gemma 2: 50 and 30);
* alternating local (sliding-window) and global layers (``layer_types``; Gemma 2 alternates,
  Gemma 3 has five local layers per global one);
* Gemma 3 only: RMSNorm on q and k, and local layers rotate with ``rope_local_base_freq``
  (global ones with ``rope_theta`` and ``rope_scaling``).

Parameter paths: as :class:`~jaxparams.models.Llama` (``embed_tokens``, ``layers_{i}/attn/...``,
``layers_{i}/mlp/...``, ``norm``, ``lm_head`` when untied) plus
``layers_{i}/{pre,post}_feedforward_layernorm`` and ``layers_{i}/attn/{q,k}_norm`` (Gemma 3).

Example:
  >>> import jax, jax.numpy as jnp
  >>> cfg = Gemma2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
  ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
  ...     query_pre_attn_scalar=8, sliding_window=4)
  >>> ids = jnp.zeros((1, 5), jnp.int32)
  >>> params = Gemma(cfg).init(jax.random.key(0), ids)['params']
  >>> Gemma(cfg).apply({'params': params}, ids).shape
  (1, 5, 32)
  >>> cfg.layer_types
  ('sliding_attention', 'full_attention')
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxparams.models.attention import (FULL, LAYER_TYPES, SLIDING, decoder_mask, gqa_attention,
                                        sliding)
from jaxparams.models.layers import Embed, Linear
from jaxparams.models.llama import _freeze
from jaxparams.models.rope import apply_rotary, rope_cos_sin, rope_type

__all__ = ["Gemma2Config", "Gemma3Config", "Gemma", "GemmaRMSNorm", "scale_embeddings"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gemma2Config:
  """Gemma 2 hyperparameters (``Gemma2ForCausalLM``); field names follow HF ``config.json``.

  Example:
    >>> cfg = Gemma2Config(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...                    num_hidden_layers=3, num_attention_heads=2, head_dim=2)
    >>> cfg.layer_types
    ('sliding_attention', 'full_attention', 'sliding_attention')
    >>> Gemma2Config.from_hf_dict(cfg.to_hf_dict()) == cfg
    True
  """
  model_type: ClassVar[str] = "gemma2"
  _pattern: ClassVar[int] = 2
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int | None = None
  head_dim: int = 256
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple | None = None
  max_position_embeddings: int = 8192
  tie_word_embeddings: bool = True
  attention_bias: bool = False
  hidden_activation: str = "gelu_pytorch_tanh"
  query_pre_attn_scalar: float = 256
  sliding_window: int | None = 4096
  layer_types: tuple | None = None
  final_logit_softcapping: float | None = 30.0
  attn_logit_softcapping: float | None = 50.0
  bos_token_id: int | None = 2
  eos_token_id: int | tuple | None = 1
  pad_token_id: int | None = 0
  dtype: str = "float32"

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.layer_types is None:
      object.__setattr__(self, "layer_types", tuple(
          SLIDING if (i + 1) % self._pattern else FULL for i in range(self.num_hidden_layers)))
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if len(self.layer_types) != self.num_hidden_layers or any(
        t not in LAYER_TYPES for t in self.layer_types):
      raise ValueError(f"layer_types must list {self.num_hidden_layers} entries from "
                       f"{list(LAYER_TYPES)}, found {list(self.layer_types)[:8]}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                       f"num_key_value_heads ({self.num_key_value_heads})")
    if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
      raise ValueError(f"hidden_activation {self.hidden_activation!r} not supported; supported: "
                       "'gelu_pytorch_tanh'")
    rope_type(self.rope_scaling_dict)

  @property
  def rope_scaling_dict(self) -> dict | None:
    return None if self.rope_scaling is None else {k: v for k, v in self.rope_scaling}

  @property
  def qk_norm(self) -> bool:
    return False

  def layer_type(self, i: int) -> str:
    """``'sliding_attention'`` or ``'full_attention'`` for layer ``i``."""
    return FULL if self.sliding_window is None else self.layer_types[i]

  def rope_for(self, layer_type: str) -> tuple[float, dict | None]:
    """``(theta, scaling)`` of the layers of this type."""
    return self.rope_theta, self.rope_scaling_dict

  @classmethod
  def _rope_from_hf(cls, d: dict) -> dict:
    rope = d.get("rope_parameters") or d.get("rope_scaling")
    kw = {}
    if isinstance(rope, dict):
      if "rope_theta" in rope:
        kw["rope_theta"] = rope["rope_theta"]
      if rope.get("rope_type", rope.get("type", "default")) not in (None, "default"):
        kw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return kw

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "Gemma2Config":
    """Builds a config from an HF ``config.json`` dict (transformers 4 and 5 layouts)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names and k not in ("dtype", "rope_scaling")}
    if d.get("layer_types") is None and "sliding_window_pattern" in d:
      p = d["sliding_window_pattern"]
      kw["layer_types"] = [SLIDING if (i + 1) % p else FULL
                           for i in range(d["num_hidden_layers"])]
    if d.get("use_bidirectional_attention"):
      raise ValueError("use_bidirectional_attention=true (an encoder variant) is not supported")
    kw.update(cls._rope_from_hf(d))
    kw.update(overrides)
    return cls(**kw)

  def _rope_to_hf(self) -> dict:
    rope = {"rope_type": "default", **(self.rope_scaling_dict or {})}
    return {"rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling_dict,
            "rope_parameters": {"rope_theta": self.rope_theta, **rope}}

  def to_hf_dict(self) -> dict:
    """The HF ``config.json`` dict."""
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    return {
        "architectures": [("Gemma3" if self.model_type == "gemma3_text" else "Gemma2")
                          + "ForCausalLM"], "model_type": self.model_type,
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
        "rms_norm_eps": self.rms_norm_eps, **self._rope_to_hf(),
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings, "attention_bias": self.attention_bias,
        "hidden_activation": self.hidden_activation,
        "query_pre_attn_scalar": self.query_pre_attn_scalar,
        "sliding_window": self.sliding_window, "layer_types": list(self.layer_types),
        "final_logit_softcapping": self.final_logit_softcapping,
        "attn_logit_softcapping": self.attn_logit_softcapping,
        "bos_token_id": self.bos_token_id, "eos_token_id": eos, "pad_token_id": self.pad_token_id,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
    }

  def to_json(self) -> str:
    return json.dumps(self.to_hf_dict(), indent=2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gemma3Config(Gemma2Config):
  """Gemma 3 text decoder (``model_type='gemma3_text'``, ``Gemma3ForCausalLM``).

  ``rope_theta``/``rope_scaling`` rotate the global layers, ``rope_local_base_freq`` the local
  (sliding) ones; config.json may state them in the transformers 4 layout (``rope_theta``,
  ``rope_local_base_freq``, ``rope_scaling``, ``sliding_window_pattern``) or the 5 layout
  (``rope_parameters`` per layer type).

  Example:
    >>> cfg = Gemma3Config(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...     num_hidden_layers=6, num_attention_heads=2, head_dim=2,
    ...     rope_scaling={'rope_type': 'linear', 'factor': 8.0})
    >>> cfg.layer_types.count('full_attention'), cfg.rope_for('sliding_attention')
    (1, (10000.0, None))
    >>> Gemma3Config.from_hf_dict(cfg.to_hf_dict()) == cfg
    True
  """
  model_type: ClassVar[str] = "gemma3_text"
  _pattern: ClassVar[int] = 6
  rope_theta: float = 1_000_000.0
  rope_local_base_freq: float = 10_000.0
  max_position_embeddings: int = 131072
  final_logit_softcapping: float | None = None
  attn_logit_softcapping: float | None = None

  @property
  def qk_norm(self) -> bool:
    return True

  def rope_for(self, layer_type: str) -> tuple[float, dict | None]:
    if layer_type == SLIDING:
      return self.rope_local_base_freq, None
    return self.rope_theta, self.rope_scaling_dict

  @classmethod
  def _rope_from_hf(cls, d: dict) -> dict:
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and (FULL in rp or SLIDING in rp):
      kw = {}
      full, local = rp.get(FULL) or {}, rp.get(SLIDING) or {}
      if "rope_theta" in full:
        kw["rope_theta"] = full["rope_theta"]
      if "rope_theta" in local:
        kw["rope_local_base_freq"] = local["rope_theta"]
      if local.get("rope_type", "default") != "default":
        raise ValueError(f"rope scaling of the local layers ({local}) is not supported")
      if full.get("rope_type", full.get("type", "default")) not in (None, "default"):
        kw["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
      return kw
    kw = {k: d[k] for k in ("rope_theta", "rope_local_base_freq") if k in d}
    rs = d.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("rope_type", rs.get("type", "default")) not in (
        None, "default"):
      kw["rope_scaling"] = rs
    return kw

  def _rope_to_hf(self) -> dict:
    full = {"rope_type": "default", **(self.rope_scaling_dict or {}), "rope_theta": self.rope_theta}
    local = {"rope_type": "default", "rope_theta": self.rope_local_base_freq}
    return {"rope_parameters": {FULL: full, SLIDING: local}}


def scale_embeddings(x: jax.Array, hidden_size: int) -> jax.Array:
  """``x * sqrt(hidden_size)`` with the factor rounded to float32, then to ``x.dtype``, as HF
  does (a float32 buffer cast to the embedding's dtype).

  Example:
    >>> import jax.numpy as jnp
    >>> float(scale_embeddings(jnp.ones((1,), jnp.bfloat16), 640)[0])   # sqrt(640) = 25.298
    25.25
  """
  return x * jnp.asarray(np.float32(hidden_size ** 0.5), x.dtype)


class GemmaRMSNorm(nn.Module):
  """Gemma RMSNorm: ``x / rms(x) * (1 + scale)`` in float32, cast back (``scale`` init 0).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> n = GemmaRMSNorm()
    >>> v = n.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> n.apply(v, 2 * jnp.ones((1, 4))).round(5).tolist()
    [[1.0, 1.0, 1.0, 1.0]]
  """
  epsilon: float = 1e-6
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.epsilon)
    return (h * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class GemmaAttention(nn.Module):
  """Grouped-query attention with query pre-scaling, optional soft-cap and q/k norm."""
  config: Gemma2Config
  layer_type: str
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    c = self.config
    b, t, _ = x.shape
    hd, nh, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    lin = lambda n, name: Linear(n, use_bias=c.attention_bias, dot=self.dot, name=name)
    q = lin(nh * hd, "q_proj")(x).reshape(b, t, nh, hd)
    k = lin(nkv * hd, "k_proj")(x).reshape(b, t, nkv, hd)
    v = lin(nkv * hd, "v_proj")(x).reshape(b, t, nkv, hd)
    if c.qk_norm:
      q = GemmaRMSNorm(c.rms_norm_eps, name="q_norm")(q)
      k = GemmaRMSNorm(c.rms_norm_eps, name="k_norm")(k)
    theta, scaling = c.rope_for(self.layer_type)
    cos, sin = rope_cos_sin(positions, head_dim=hd, theta=theta, scaling=scaling,
                            max_position_embeddings=c.max_position_embeddings, dtype=x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = gqa_attention(q, k, v, mask, scale=c.query_pre_attn_scalar ** -0.5,
                        softcap=c.attn_logit_softcapping)
    return lin(c.hidden_size, "o_proj")(out)


class GemmaMLP(nn.Module):
  """GeGLU feed-forward: ``down_proj(gelu_tanh(gate_proj(x)) * up_proj(x))``."""
  config: Gemma2Config
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    lin = lambda n, name: Linear(n, dot=self.dot, name=name)
    h = jax.nn.gelu(lin(c.intermediate_size, "gate_proj")(x), approximate=True)
    return lin(c.hidden_size, "down_proj")(h * lin(c.intermediate_size, "up_proj")(x))


class GemmaBlock(nn.Module):
  """One decoder layer with norms before and after attention and MLP."""
  config: Gemma2Config
  layer_type: str
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    c = self.config
    norm = lambda name: GemmaRMSNorm(c.rms_norm_eps, name=name)
    h = GemmaAttention(c, self.layer_type, self.dot, name="attn")(
        norm("input_layernorm")(x), mask, positions)
    x = x + norm("post_attention_layernorm")(h)
    h = GemmaMLP(c, self.dot, name="mlp")(norm("pre_feedforward_layernorm")(x))
    return x + norm("post_feedforward_layernorm")(h)


class Gemma(nn.Module):
  """Gemma 2 / Gemma 3 causal language model returning logits ``[batch, seq, vocab]``.

  Call arguments as :class:`~jaxparams.models.Llama`: ``input_ids``, ``attention_mask`` (1 real,
  0 padding), ``positions``, ``return_hidden``.
  """
  config: Gemma2Config
  dot: Callable | None = None

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, return_hidden: bool = False) -> jax.Array:
    c = self.config
    b, t = input_ids.shape
    embed = Embed(c.vocab_size, c.hidden_size, name="embed_tokens")
    x = scale_embeddings(embed(input_ids), c.hidden_size).astype(jnp.dtype(c.dtype))
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    masks = {FULL: decoder_mask(t, attention_mask, b)}
    if c.sliding_window is not None:
      masks[SLIDING] = sliding(masks[FULL], c.sliding_window)
    for i in range(c.num_hidden_layers):
      lt = c.layer_type(i)
      x = GemmaBlock(c, lt, self.dot, name=f"layers_{i}")(x, masks[lt], positions)
    x = GemmaRMSNorm(c.rms_norm_eps, name="norm")(x)
    if return_hidden:
      return x
    logits = (embed.attend(x) if c.tie_word_embeddings
              else Linear(c.vocab_size, dot=self.dot, name="lm_head")(x))
    if c.final_logit_softcapping is not None:
      cap = c.final_logit_softcapping
      logits = jnp.tanh(logits / cap) * cap
    return logits
