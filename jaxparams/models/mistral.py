"""Mistral (``MistralForCausalLM``): the :class:`~jaxparams.models.Llama` module with
sliding-window attention on every layer (``sliding_window``; ``None`` = full attention).

Example:
  >>> cfg = MistralConfig.from_hf_dict({'vocab_size': 8, 'hidden_size': 4,
  ...     'intermediate_size': 8, 'num_hidden_layers': 2, 'num_attention_heads': 2,
  ...     'sliding_window': 3})
  >>> cfg.layer_type(0), cfg.layer_type(1)
  ('sliding_attention', 'sliding_attention')
  >>> MistralConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
  True
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxparams.models.llama import LlamaConfig

__all__ = ["MistralConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MistralConfig(LlamaConfig):
  """Mistral hyperparameters (HF ``config.json`` names); see the module docstring."""
  model_type: ClassVar[str] = "mistral"

  @classmethod
  def _family_from_hf(cls, d: dict) -> dict:
    return {"sliding_window": d.get("sliding_window", 4096)}  # transformers' default

  def to_hf_dict(self) -> dict:
    d = LlamaConfig.to_hf_dict(self)
    d.update(model_type="mistral", architectures=["MistralForCausalLM"],
             sliding_window=self.sliding_window)
    for k in ("attention_bias", "mlp_bias"):
      del d[k]
    return d
