"""HF <-> Flax name map for Gemma 2 / Gemma 3 checkpoints (``Gemma{2,3}ForCausalLM`` names).

Example:
  >>> from jaxparams.models.gemma import Gemma3Config
  >>> cfg = Gemma3Config(vocab_size=8, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
  ...                    num_attention_heads=2, head_dim=2)
  >>> name_map(cfg)['layers_0/attn/q_norm/scale']
  ('model.layers.0.self_attn.q_norm.weight', False)
"""

from __future__ import annotations

from jaxparams.models.gemma import Gemma2Config
from jaxparams.models.hf_llama import ignored

__all__ = ["name_map", "ignored"]

_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
          "post_feedforward_layernorm")


def name_map(config: Gemma2Config) -> dict[str, tuple[str, bool]]:
  """``{flax_path: (hf_name, transpose)}``; ``transpose`` is True for Linear kernels."""
  m = {"embed_tokens/embedding": ("model.embed_tokens.weight", False),
       "norm/scale": ("model.norm.weight", False)}
  for i in range(config.num_hidden_layers):
    f, h = f"layers_{i}", f"model.layers.{i}"
    for n in _NORMS:
      m[f"{f}/{n}/scale"] = (f"{h}.{n}.weight", False)
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
      m[f"{f}/attn/{p}/kernel"] = (f"{h}.self_attn.{p}.weight", True)
      if config.attention_bias:
        m[f"{f}/attn/{p}/bias"] = (f"{h}.self_attn.{p}.bias", False)
    if config.qk_norm:
      for p in ("q_norm", "k_norm"):
        m[f"{f}/attn/{p}/scale"] = (f"{h}.self_attn.{p}.weight", False)
    for p in ("gate_proj", "up_proj", "down_proj"):
      m[f"{f}/mlp/{p}/kernel"] = (f"{h}.mlp.{p}.weight", True)
  if not config.tie_word_embeddings:
    m["lm_head/kernel"] = ("lm_head.weight", True)
  return m
