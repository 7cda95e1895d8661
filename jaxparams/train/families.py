"""Model families the trainer can build from ``config.model``: name -> (config dataclass, module).

``config.model.name`` picks the family; every other field of ``config.model`` is a field of the
family's frozen config dataclass (unknown fields raise ``ValueError`` naming them).

Example:
  >>> import ml_collections
  >>> fam = get_family('tokenformer')
  >>> cfg = model_config_from(fam, ml_collections.ConfigDict(dict(name='tokenformer', d_model=32)))
  >>> cfg.d_model, model_config_from_json(fam, model_config_to_json(cfg)) == cfg
  (32, True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["Family", "get_family", "family_names", "model_config_from", "model_config_to_json",
           "model_config_from_json"]


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its config dataclass and ``make(model_config) -> flax module``.

  The module is called as ``module.apply({'params': p}, ids)`` and returns logits
  ``[batch, seq, vocab]``.
  """
  name: str
  config_cls: type
  make: Callable[[Any], Any]


def _families() -> dict[str, Family]:
  from jaxparams.models.llama import Llama, LlamaConfig  # pylint: disable=g-import-not-at-top
  from jaxparams.scale.tokenformer import TokenFormer, TokenFormerConfig  # pylint: disable=g-import-not-at-top
  from jaxparams.adapt import finetune  # pylint: disable=g-import-not-at-top
  return {"tokenformer": Family("tokenformer", TokenFormerConfig, TokenFormer),
          "llama": Family("llama", LlamaConfig, Llama),
          "lora": Family("lora", finetune.LoraFinetuneConfig, finetune.make)}


def family_names() -> list[str]:
  return sorted(_families())


def get_family(name: str) -> Family:
  """Raises ValueError listing the valid names for an unknown ``config.model.name``."""
  fams = _families()
  if name not in fams:
    raise ValueError(f"unknown model family {name!r} (config.model.name); valid: "
                     f"{', '.join(sorted(fams))}")
  return fams[name]


def _field_names(cls: type) -> list[str]:
  return [f.name for f in dataclasses.fields(cls)]


def model_config_from(family: Family, model: Any) -> Any:
  """Builds the family's config dataclass from ``config.model`` (minus ``name``)."""
  kw = {k: v for k, v in (model.to_dict() if hasattr(model, "to_dict") else dict(model)).items()
        if k != "name"}
  valid = _field_names(family.config_cls)
  unknown = sorted(set(kw) - set(valid))
  if unknown:
    raise ValueError(f"unknown field(s) {', '.join('config.model.' + u for u in unknown)} for "
                     f"model family {family.name!r} ({family.config_cls.__name__}); valid fields: "
                     f"{', '.join(valid)}")
  return family.config_cls(**kw)


def model_config_to_json(model_config: Any) -> dict[str, Any]:
  """JSON-safe dict of a model config dataclass."""
  return dataclasses.asdict(model_config)


def _tuples(x: Any) -> Any:
  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def model_config_from_json(family: Family, d: dict[str, Any]) -> Any:
  """Inverse of :func:`model_config_to_json` (JSON lists become tuples again)."""
  return family.config_cls(**{k: _tuples(v) for k, v in d.items()})
