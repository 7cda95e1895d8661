"""The registry of model families that :func:`from_hf` / :func:`to_hf` know.

One :class:`Family` record per HF ``model_type``: its config class, Flax module, HF name map and
the tensors a checkpoint may hold that are not parameters. Everything that needs a model's
forward pass (calibrated quantization, editing, adapters, growth, evaluation) goes through
:func:`jaxparams.models.from_hf`, which dispatches on this registry, so a family added here works
everywhere; the README's architecture list is :func:`families`.

Example:
  >>> families()
  ('BERT', 'Gemma 2', 'Gemma 3', 'Llama', 'Mistral', 'Phi-3', 'Qwen2 / Qwen2.5', 'Qwen3')
  >>> family('qwen2').config_cls.__name__, family('qwen2').module_cls.__name__
  ('Qwen2Config', 'Llama')
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxparams.models import hf_bert, hf_gemma, hf_llama
from jaxparams.models.bert import Bert, BertConfig
from jaxparams.models.gemma import Gemma, Gemma2Config, Gemma3Config
from jaxparams.models.llama import Llama, LlamaConfig
from jaxparams.models.mistral import MistralConfig
from jaxparams.models.phi3 import Phi3Config, fuse_projections
from jaxparams.models.qwen import Qwen2Config, Qwen3Config

__all__ = ["Family", "FAMILIES", "families", "family", "family_for_config", "model_types"]


@dataclasses.dataclass(frozen=True)
class Family:
  """How one HF ``model_type`` maps onto a reference Flax model.

  Attributes:
    name: display name (README, messages).
    model_type: HF ``config.json`` ``model_type``.
    config_cls: frozen config dataclass with ``from_hf_dict``/``to_hf_dict``.
    module_cls: Flax module, called ``module_cls(config, dot=...)``.
    name_map: ``config -> {flax_path: (hf_name, transpose)}``.
    ignored: ``(config, hf_name) -> bool`` for stored tensors that are not parameters.
    normalize: maps a stored tensor name to the name-map form (e.g. strips ``bert.``).
    layer_prefix: how HF names a layer's tensors, ``{i}`` = layer index (config checks count the
      layers in the checkpoint headers with it before any model is built).
    before_write: optional ``(params, config) -> (params, config)`` that ``to_hf`` applies first
      (Phi-3: fuses projections that :func:`~jaxparams.models.phi3.split_projections` split).
    write_name: optional ``(config, hf_name) -> stored name`` that ``to_hf`` applies (BERT
      masked-LM checkpoints store the encoder under ``bert.``).
  """
  name: str
  model_type: str
  config_cls: type
  module_cls: type
  name_map: Callable[[Any], dict[str, tuple[str, bool]]]
  ignored: Callable[[Any, str], bool]
  normalize: Callable[[str], str] = staticmethod(lambda n: n)
  layer_prefix: str = "model.layers.{i}."
  before_write: Callable[[Any, Any], tuple[Any, Any]] | None = None
  write_name: Callable[[Any, str], str] | None = None


def _decoder(name: str, config_cls: type, **kw) -> Family:
  return Family(name, config_cls.model_type, config_cls, Llama, hf_llama.name_map,
                hf_llama.ignored, **kw)


def _fuse_phi3(params: Any, config: Phi3Config) -> tuple[Any, Phi3Config]:
  return (params, config) if config.fused_projections else fuse_projections(params, config)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    _decoder("Llama", LlamaConfig),
    _decoder("Mistral", MistralConfig),
    _decoder("Qwen2 / Qwen2.5", Qwen2Config),
    _decoder("Qwen3", Qwen3Config),
    _decoder("Phi-3", Phi3Config, before_write=_fuse_phi3),
    Family("Gemma 2", "gemma2", Gemma2Config, Gemma, hf_gemma.name_map, hf_gemma.ignored),
    Family("Gemma 3", "gemma3_text", Gemma3Config, Gemma, hf_gemma.name_map, hf_gemma.ignored),
    Family("BERT", "bert", BertConfig, Bert, hf_bert.name_map, hf_bert.ignored,
           hf_bert.strip_prefix, "encoder.layer.{i}.", write_name=hf_bert.write_name),
)}


def families() -> tuple[str, ...]:
  """Display names of the supported families, sorted (the README's architecture list)."""
  return tuple(sorted(f.name for f in FAMILIES.values()))


def model_types() -> tuple[str, ...]:
  """The HF ``model_type`` values :func:`from_hf` accepts, sorted."""
  return tuple(sorted(FAMILIES))


def family(model_type: str) -> Family:
  """The record of an HF ``model_type``; unknown types raise listing the known ones."""
  if model_type not in FAMILIES:
    raise ValueError(f"model_type {model_type!r} is not supported; supported: "
                     f"{list(model_types())}")
  return FAMILIES[model_type]


def family_for_config(config: Any) -> Family:
  """The record whose config class is exactly ``type(config)``."""
  for f in FAMILIES.values():
    if type(config) is f.config_cls:  # pylint: disable=unidiomatic-typecheck
      return f
  raise ValueError(f"unsupported config type {type(config).__name__}; expected one of "
                   f"{sorted(f.config_cls.__name__ for f in FAMILIES.values())}")
