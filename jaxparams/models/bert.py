"""BERT encoder (post-LN, exact-erf GELU) as a Flax linen module, plus sentence embeddings.

The architecture is exactly HF ``BertModel`` (the all-MiniLM-L6-v2 backbone). Parameter paths::

  embeddings/word_embeddings/embedding        [vocab, hidden]
  embeddings/position_embeddings/embedding    [max_position_embeddings, hidden]
  embeddings/token_type_embeddings/embedding  [type_vocab_size, hidden]
  embeddings/layer_norm/{scale,bias}
  layers_{i}/attn/{query,key,value,output}/{kernel,bias}   kernels [in, out]
  layers_{i}/attn_norm/{scale,bias}
  layers_{i}/mlp/{intermediate,output}/{kernel,bias}
  layers_{i}/mlp_norm/{scale,bias}
  pooler/{kernel,bias}                         (only when add_pooling_layer)
  mlm_dense/{kernel,bias}, mlm_layer_norm/{scale,bias}, mlm_bias  (only when mlm_head)

With ``mlm_head`` the model is HF ``BertForMaskedLM``: it returns masked-LM logits
``[batch, seq, vocab]`` (decoder tied to the word embeddings, as HF's default
``tie_word_embeddings``); ``return_hidden=True`` gives the encoder's hidden states instead.

Example:
  >>> import jax, jax.numpy as jnp
  >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
  ...                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=8)
  >>> model = Bert(cfg)
  >>> ids = jnp.array([[2, 5, 7, 3]]); mask = jnp.ones_like(ids)
  >>> params = model.init(jax.random.key(0), ids)['params']
  >>> emb = sentence_embeddings(model, params, ids, mask)
  >>> emb.shape, round(float(jnp.linalg.norm(emb[0])), 5)
  ((1, 16), 1.0)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxparams.models.layers import Embed, LayerNorm, Linear

__all__ = ["BertConfig", "Bert", "BertLayer", "mean_pool", "l2_normalize", "sentence_embeddings"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
  """Hyperparameters of a BERT encoder; field names follow HF ``config.json``.

  Example:
    >>> cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
    ...                  num_attention_heads=12, intermediate_size=1536)
    >>> BertConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    True
  """
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  add_pooling_layer: bool = True
  dtype: str = "float32"
  mlm_head: bool = False

  def __post_init__(self):
    if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
      raise ValueError(f"hidden_act {self.hidden_act!r} not supported; supported: 'gelu', "
                       "'gelu_new', 'gelu_pytorch_tanh', 'relu'")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                       f"num_attention_heads ({self.num_attention_heads})")

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "BertConfig":
    """Builds a config from an HF ``config.json`` dict (only absolute position embeddings)."""
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"position_embedding_type {pos!r} not supported; supported: 'absolute'")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names and k != "dtype"}
    kw.update(overrides)
    if kw.get("mlm_head") and d.get("tie_word_embeddings", True) is False:
      raise ValueError("a masked-LM head with an untied decoder (tie_word_embeddings=false) is "
                       "not supported")
    return cls(**kw)

  def to_hf_dict(self) -> dict:
    """The HF ``config.json`` dict (``model_type='bert'``, ``BertModel``)."""
    d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("dtype",
                                                                         "add_pooling_layer",
                                                                         "mlm_head")}
    if self.mlm_head:
      d["tie_word_embeddings"] = True
    arch = "BertForMaskedLM" if self.mlm_head else "BertModel"
    return {"architectures": [arch], "model_type": "bert", **d,
            "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}

  def to_json(self) -> str:
    return json.dumps(self.to_hf_dict(), indent=2)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name == "relu":
    return jax.nn.relu
  return lambda x: jax.nn.gelu(x, approximate=True)


class BertEmbeddings(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, positions):
    c = self.config
    x = (Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
         + Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
         + Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids))
    return LayerNorm(c.layer_norm_eps, name="layer_norm")(x.astype(jnp.dtype(c.dtype)))


class BertAttention(nn.Module):
  config: BertConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    b, t, _ = x.shape
    nh = c.num_attention_heads
    hd = c.hidden_size // nh
    lin = lambda name: Linear(c.hidden_size, use_bias=True, dot=self.dot, name=name)
    q = lin("query")(x).reshape(b, t, nh, hd)
    k = lin("key")(x).reshape(b, t, nh, hd)
    v = lin("value")(x).reshape(b, t, nh, hd)
    scores = jnp.einsum("bqhd,bshd->bhqs", q, k).astype(jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqs,bshd->bqhd", probs, v).reshape(b, t, c.hidden_size)
    return lin("output")(out)


class BertMLP(nn.Module):
  config: BertConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    h = Linear(c.intermediate_size, use_bias=True, dot=self.dot, name="intermediate")(x)
    return Linear(c.hidden_size, use_bias=True, dot=self.dot, name="output")(
        _activation(c.hidden_act)(h))


class BertLayer(nn.Module):
  """Post-LN encoder layer: ``LN(x + attn(x))`` then ``LN(h + mlp(h))``."""
  config: BertConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    x = LayerNorm(c.layer_norm_eps, name="attn_norm")(x + BertAttention(c, self.dot,
                                                                         name="attn")(x, mask))
    return LayerNorm(c.layer_norm_eps, name="mlp_norm")(x + BertMLP(c, self.dot, name="mlp")(x))


class Bert(nn.Module):
  """BERT encoder returning the last hidden states ``[batch, seq, hidden]``.

  Attributes:
    config: A :class:`BertConfig`.
    dot: Optional matmul injected into every :class:`Linear`.

  Call arguments:
    input_ids: ``int[batch, seq]``.
    attention_mask: Optional ``[batch, seq]`` (1 = token, 0 = padding).
    token_type_ids: Optional ``int[batch, seq]`` (default zeros).
    return_pooled: If True return ``(hidden, pooled)`` where ``pooled = tanh(pooler(hidden[:, 0]))``
      (needs ``add_pooling_layer``). The pooler parameters are created at ``init`` whenever
      ``add_pooling_layer`` is set, so checkpoints round-trip.
    return_hidden: With ``config.mlm_head``, return the hidden states instead of the masked-LM
      logits (without a head the hidden states are always returned).
  """
  config: BertConfig
  dot: Callable | None = None

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, return_pooled: bool = False,
               return_hidden: bool = False) -> Any:
    c = self.config
    b, t = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), dtype=bool)
    if token_type_ids is None:
      token_type_ids = jnp.zeros((b, t), dtype=jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = BertEmbeddings(c, name="embeddings")(input_ids, token_type_ids, positions)
    mask = attention_mask.astype(bool)
    for i in range(c.num_hidden_layers):
      x = BertLayer(c, self.dot, name=f"layers_{i}")(x, mask)
    if c.add_pooling_layer and (return_pooled or self.is_initializing()):
      pooled = jnp.tanh(Linear(c.hidden_size, use_bias=True, dot=self.dot, name="pooler")(x[:, 0]))
      if return_pooled:
        return x, pooled
    elif return_pooled:
      raise ValueError("return_pooled=True needs BertConfig(add_pooling_layer=True)")
    if c.mlm_head and (not (return_hidden or return_pooled) or self.is_initializing()):
      logits = self._mlm_logits(x)
      if not (return_hidden or return_pooled):
        return logits
    return x

  def _mlm_logits(self, x: jax.Array) -> jax.Array:
    """HF ``BertLMPredictionHead``: dense, activation, LayerNorm, tied decoder + bias."""
    c = self.config
    h = Linear(c.hidden_size, use_bias=True, dot=self.dot, name="mlm_dense")(x)
    h = LayerNorm(c.layer_norm_eps, name="mlm_layer_norm")(_activation(c.hidden_act)(h))
    table = self.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    bias = self.param("mlm_bias", nn.initializers.zeros_init(), (c.vocab_size,), jnp.float32)
    logits = jnp.matmul(h, table.astype(h.dtype).T)
    return (logits.astype(jnp.float32) + bias.astype(jnp.float32))


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Mean of the token vectors where ``attention_mask`` is 1 (sentence-transformers pooling).

  Example:
    >>> import jax.numpy as jnp
    >>> mean_pool(jnp.array([[[1.0], [3.0], [100.0]]]), jnp.array([[1, 1, 0]])).tolist()
    [[2.0]]
  """
  m = attention_mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||_2, eps)`` along the last axis (as ``torch.nn.functional.normalize``)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embeddings(module: Bert, params: Any, input_ids: jax.Array,
                        attention_mask: jax.Array,
                        token_type_ids: jax.Array | None = None) -> jax.Array:
  """Mean-pooled, L2-normalised sentence embeddings ``[batch, hidden]`` (all-MiniLM-L6-v2 recipe).

  ``params`` is the ``'params'`` collection (a ``{'params': ...}`` variables dict is accepted too).
  """
  variables = params if isinstance(params, dict) and set(params) == {"params"} else {
      "params": params}
  hidden = module.apply(variables, input_ids, attention_mask, token_type_ids)
  return l2_normalize(mean_pool(hidden.astype(jnp.float32), attention_mask))
