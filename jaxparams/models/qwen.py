"""Qwen2 / Qwen2.5 and Qwen3 decoders: the :class:`~jaxparams.models.Llama` module with switches.

* Qwen2 / Qwen2.5 (``model_type='qwen2'``): bias on q/k/v (not on o).
* Qwen3 (``model_type='qwen3'``): RMSNorm over ``head_dim`` on q and k before RoPE
  (``attention_bias`` on all four projections when the config asks for it).

Both read the sliding-window fields as transformers does: ``sliding_window`` only counts when
``use_sliding_window`` is true, and then layers ``i >= max_window_layers`` slide (or
``layer_types`` when the config lists them).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.models.llama import Llama
  >>> cfg = Qwen3Config.from_hf_dict({'vocab_size': 32, 'hidden_size': 16,
  ...     'intermediate_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2,
  ...     'head_dim': 8, 'use_sliding_window': True, 'sliding_window': 4, 'max_window_layers': 1})
  >>> cfg.layer_types, cfg.qk_norm
  (('full_attention', 'sliding_attention'), True)
  >>> p = Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 3), int))['params']
  >>> p['layers_0']['attn']['q_norm']['scale'].shape
  (8,)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxparams.models.attention import FULL, SLIDING
from jaxparams.models.llama import LlamaConfig

__all__ = ["Qwen2Config", "Qwen3Config"]


def _sliding_fields(d: dict) -> dict:
  """``sliding_window`` / ``layer_types`` as transformers' Qwen configs derive them."""
  window = d.get("sliding_window", 4096) if d.get("use_sliding_window", False) else None
  types = d.get("layer_types")
  if types is None and window is not None:
    n, first = d.get("num_hidden_layers"), d.get("max_window_layers", 28)
    types = [SLIDING if i >= first else FULL for i in range(n)]
  return {"sliding_window": window, "layer_types": types if window is not None else None}


def _hf_dict(cfg: LlamaConfig, model_type: str, arch: str) -> dict:
  d = LlamaConfig.to_hf_dict(cfg)
  d.update(model_type=model_type, architectures=[arch],
           use_sliding_window=cfg.sliding_window is not None,
           sliding_window=cfg.sliding_window,
           max_window_layers=cfg.num_hidden_layers,
           layer_types=[cfg.layer_type(i) for i in range(cfg.num_hidden_layers)])
  if cfg.layer_types is not None and SLIDING in cfg.layer_types:
    d["max_window_layers"] = cfg.layer_types.index(SLIDING)
  del d["mlp_bias"]
  return d


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen2Config(LlamaConfig):
  """Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): Llama with q/k/v bias.

  Example:
    >>> cfg = Qwen2Config(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2)
    >>> Qwen2Config.from_hf_dict(cfg.to_hf_dict()) == cfg
    True
  """
  model_type: ClassVar[str] = "qwen2"
  qkv_bias: bool = True

  @classmethod
  def _family_from_hf(cls, d: dict) -> dict:
    return {"qkv_bias": True, **_sliding_fields(d)}

  def to_hf_dict(self) -> dict:
    d = _hf_dict(self, "qwen2", "Qwen2ForCausalLM")
    del d["attention_bias"]
    return d


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen3Config(LlamaConfig):
  """Qwen3 (``Qwen3ForCausalLM``): Llama with q/k RMSNorm.

  Example:
    >>> cfg = Qwen3Config(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...                   num_hidden_layers=1, num_attention_heads=2, head_dim=4)
    >>> Qwen3Config.from_hf_dict(cfg.to_hf_dict()) == cfg
    True
  """
  model_type: ClassVar[str] = "qwen3"
  qk_norm: bool = True

  @classmethod
  def _family_from_hf(cls, d: dict) -> dict:
    return {"qk_norm": True, **_sliding_fields(d)}

  def to_hf_dict(self) -> dict:
    return _hf_dict(self, "qwen3", "Qwen3ForCausalLM")
