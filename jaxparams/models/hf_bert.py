"""HF <-> Flax name map for BERT checkpoints (``BertModel`` tensor names).

Checkpoints of ``BertFor*`` models prefix names with ``bert.``; :func:`strip_prefix` removes it.
With ``config.mlm_head`` the map adds HF ``BertForMaskedLM``'s head (``cls.predictions.*``; its
decoder weight and bias are tied to the word embeddings and ``cls.predictions.bias``, so stored
copies are skipped) and :func:`write_name` restores the ``bert.`` prefix when writing, as HF saves.

Example:
  >>> from jaxparams.models.bert import BertConfig
  >>> cfg = BertConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
  ...                  intermediate_size=8)
  >>> name_map(cfg)['layers_0/attn/query/kernel']
  ('encoder.layer.0.attention.self.query.weight', True)
"""

from __future__ import annotations

import re

from jaxparams.models.bert import BertConfig

__all__ = ["name_map", "IGNORED", "strip_prefix", "write_name"]

IGNORED = (re.compile(r"embeddings\.position_ids"),)
# Tied copies in BertForMaskedLM checkpoints (HF re-ties them on load).
_TIED_MLM = (re.compile(r"cls\.predictions\.decoder\.(weight|bias)"),)


def name_map(config: BertConfig) -> dict[str, tuple[str, bool]]:
  """``{flax_path: (hf_name, transpose)}``; ``transpose`` is True for Linear kernels."""
  m = {
      "embeddings/word_embeddings/embedding": ("embeddings.word_embeddings.weight", False),
      "embeddings/position_embeddings/embedding": ("embeddings.position_embeddings.weight", False),
      "embeddings/token_type_embeddings/embedding":
          ("embeddings.token_type_embeddings.weight", False),
      "embeddings/layer_norm/scale": ("embeddings.LayerNorm.weight", False),
      "embeddings/layer_norm/bias": ("embeddings.LayerNorm.bias", False),
  }
  linears = {"attn/query": "attention.self.query", "attn/key": "attention.self.key",
             "attn/value": "attention.self.value", "attn/output": "attention.output.dense",
             "mlp/intermediate": "intermediate.dense", "mlp/output": "output.dense"}
  norms = {"attn_norm": "attention.output.LayerNorm", "mlp_norm": "output.LayerNorm"}
  for i in range(config.num_hidden_layers):
    f, h = f"layers_{i}", f"encoder.layer.{i}"
    for fl, hl in linears.items():
      m[f"{f}/{fl}/kernel"] = (f"{h}.{hl}.weight", True)
      m[f"{f}/{fl}/bias"] = (f"{h}.{hl}.bias", False)
    for fl, hl in norms.items():
      m[f"{f}/{fl}/scale"] = (f"{h}.{hl}.weight", False)
      m[f"{f}/{fl}/bias"] = (f"{h}.{hl}.bias", False)
  if config.add_pooling_layer:
    m["pooler/kernel"] = ("pooler.dense.weight", True)
    m["pooler/bias"] = ("pooler.dense.bias", False)
  if getattr(config, "mlm_head", False):
    m["mlm_dense/kernel"] = ("cls.predictions.transform.dense.weight", True)
    m["mlm_dense/bias"] = ("cls.predictions.transform.dense.bias", False)
    m["mlm_layer_norm/scale"] = ("cls.predictions.transform.LayerNorm.weight", False)
    m["mlm_layer_norm/bias"] = ("cls.predictions.transform.LayerNorm.bias", False)
    m["mlm_bias"] = ("cls.predictions.bias", False)
  return m


def write_name(config: BertConfig, hf_name: str) -> str:
  """The stored name of ``hf_name``: ``bert.``-prefixed encoder names for a masked-LM model
  (HF ``BertForMaskedLM`` layout), unchanged otherwise."""
  if getattr(config, "mlm_head", False) and not hf_name.startswith("cls."):
    return "bert." + hf_name
  return hf_name


def strip_prefix(name: str) -> str:
  """``'bert.encoder...' -> 'encoder...'``."""
  return name[len("bert."):] if name.startswith("bert.") else name


def ignored(config: BertConfig, hf_name: str) -> bool:
  """Whether a checkpoint tensor is not a model parameter and may be skipped."""
  if getattr(config, "mlm_head", False) and any(p.fullmatch(hf_name) for p in _TIED_MLM):
    return True
  return any(p.fullmatch(hf_name) for p in IGNORED)
