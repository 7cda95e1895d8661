"""HF <-> Flax name map for Llama-family checkpoints (``LlamaForCausalLM`` tensor names).

Example:
  >>> from jaxparams.models.llama import LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=8, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
  ...                   num_attention_heads=2)
  >>> name_map(cfg)['layers_0/attn/q_proj/kernel']
  ('model.layers.0.self_attn.q_proj.weight', True)
"""

from __future__ import annotations

import re

from jaxparams.models.llama import LlamaConfig

__all__ = ["name_map", "IGNORED"]

# Tensors that HF checkpoints may hold but that are not parameters of the Flax model.
IGNORED = (re.compile(r".*rotary_emb\.inv_freq"),)


def name_map(config: LlamaConfig) -> dict[str, tuple[str, bool]]:
  """``{flax_path: (hf_name, transpose)}``; ``transpose`` is True for Linear kernels.

  Covers the families built on :class:`LlamaConfig` switches (Qwen2/3, Mistral, Phi-3):
  q/k/v biases, q/k norms and fused ``qkv_proj``/``gate_up_proj``.
  """
  m = {"embed_tokens/embedding": ("model.embed_tokens.weight", False),
       "norm/scale": ("model.norm.weight", False)}
  qkv_bias = config.attention_bias or config.qkv_bias
  attn = ("qkv_proj",) if config.fused_projections else ("q_proj", "k_proj", "v_proj")
  mlp = (("gate_up_proj",) if config.fused_projections else ("gate_proj", "up_proj")) + (
      "down_proj",)
  for i in range(config.num_hidden_layers):
    f, h = f"layers_{i}", f"model.layers.{i}"
    m[f"{f}/input_layernorm/scale"] = (f"{h}.input_layernorm.weight", False)
    m[f"{f}/post_attention_layernorm/scale"] = (f"{h}.post_attention_layernorm.weight", False)
    for p in attn + ("o_proj",):
      m[f"{f}/attn/{p}/kernel"] = (f"{h}.self_attn.{p}.weight", True)
      if config.attention_bias or (qkv_bias and p != "o_proj"):
        m[f"{f}/attn/{p}/bias"] = (f"{h}.self_attn.{p}.bias", False)
    if config.qk_norm:
      for p in ("q_norm", "k_norm"):
        m[f"{f}/attn/{p}/scale"] = (f"{h}.self_attn.{p}.weight", False)
    for p in mlp:
      m[f"{f}/mlp/{p}/kernel"] = (f"{h}.mlp.{p}.weight", True)
      if config.mlp_bias:
        m[f"{f}/mlp/{p}/bias"] = (f"{h}.mlp.{p}.bias", False)
  if not config.tie_word_embeddings:
    m["lm_head/kernel"] = ("lm_head.weight", True)
  return m


def ignored(config: LlamaConfig, hf_name: str) -> bool:
  """Whether a checkpoint tensor is not a model parameter and may be skipped."""
  if config.tie_word_embeddings and hf_name == "lm_head.weight":
    return True  # some tied checkpoints still store the (identical) head
  return any(p.fullmatch(hf_name) for p in IGNORED)
