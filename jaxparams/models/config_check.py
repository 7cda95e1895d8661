"""Checks an HF ``config.json`` against its family and the checkpoint's headers, before any model
is built.

A config is data from a download: a field of the wrong type, a zero head count or a layer count
far beyond what the checkpoint holds must give one error naming ``config.json`` and the field,
not a traceback or a model graph that grows without bound. :func:`check_hf_config` looks only at
the JSON and the tensor headers (names and shapes), so its cost is bounded by the files.

Example:
  >>> from jaxparams.models.families import family
  >>> shapes = {'model.embed_tokens.weight': (16, 8), 'model.layers.0.mlp.up_proj.weight': (32, 8)}
  >>> cfg = {'model_type': 'llama', 'vocab_size': 16, 'hidden_size': 8, 'intermediate_size': 32,
  ...        'num_hidden_layers': 1000000, 'num_attention_heads': 2}
  >>> check_hf_config(cfg, family('llama'), shapes, 'ckpt/config.json')
  Traceback (most recent call last):
  ...
  ValueError: ckpt/config.json: num_hidden_layers is 1000000 but the checkpoint's headers hold ...
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

__all__ = ["check_hf_config", "DIMENSION_FIELDS"]

# Fields that are (or bound) a tensor dimension: none can exceed the largest dimension stored.
DIMENSION_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "type_vocab_size")
_NONNEGATIVE_FLOATS = ("rms_norm_eps", "layer_norm_eps")


def _kind(type_str: str) -> tuple[str | None, bool]:
  """``('int'|'float'|'bool'|None, optional)`` from a dataclass field's annotation string."""
  parts = [p.strip() for p in str(type_str).split("|")]
  optional = "None" in parts
  rest = [p for p in parts if p != "None"]
  return (rest[0] if len(rest) == 1 and rest[0] in ("int", "float", "bool") else None), optional


def _check_field(where: str, name: str, value: Any, kind: str, optional: bool) -> None:
  if value is None:
    if optional:
      return
    raise ValueError(f"{where}: field {name!r} must be {_WHAT[kind]}, found null")
  if kind == "bool":
    if not isinstance(value, bool):
      raise ValueError(f"{where}: field {name!r} must be true or false, found {value!r}")
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      kind == "int" and not isinstance(value, int)):
    raise ValueError(f"{where}: field {name!r} must be {_WHAT[kind]}, found {value!r:.60}")
  if not math.isfinite(value):
    raise ValueError(f"{where}: field {name!r} must be finite, found {value!r}")
  if name.endswith("_token_id"):
    return
  if name in _NONNEGATIVE_FLOATS:
    if value < 0:
      raise ValueError(f"{where}: field {name!r} must be >= 0, found {value!r}")
  elif value <= 0:
    raise ValueError(f"{where}: field {name!r} must be > 0, found {value!r}")


_WHAT = {"int": "an integer", "float": "a number", "bool": "true or false"}


def check_hf_config(cfg: Any, family: Any, shapes: Mapping[str, Sequence[int]],
                    where: str) -> None:
  """Validates ``cfg`` (the parsed ``config.json``) for ``family`` against header ``shapes``.

  Args:
    cfg: the parsed JSON.
    family: the :class:`~jaxparams.models.families.Family` record of its ``model_type``.
    shapes: ``{tensor_name: shape}`` from the checkpoint headers (names as stored).
    where: the config file, for messages.

  Raises:
    ValueError: naming ``where`` and the field: not a JSON object, a missing or mistyped field,
      a non-positive size, a size larger than any stored dimension, or more layers than the
      checkpoint holds.
  """
  if not isinstance(cfg, dict):
    raise ValueError(f"{where}: must be a JSON object, found {type(cfg).__name__}")
  fields = {f.name: f for f in dataclasses.fields(family.config_cls)}
  for name, f in fields.items():
    kind, optional = _kind(f.type)
    if name == "dtype":
      continue
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if name not in cfg:
      if required:
        raise ValueError(f"{where}: required field {name!r} is missing")
      continue
    if kind is not None:
      _check_field(where, name, cfg[name], kind, optional)
  for key in ("rope_scaling", "rope_parameters"):
    if cfg.get(key) is not None and not isinstance(cfg[key], dict):
      raise ValueError(f"{where}: field {key!r} must be an object or null, found "
                       f"{cfg[key]!r:.60}")
  largest = max((int(d) for s in shapes.values() for d in s), default=0)
  for name in DIMENSION_FIELDS:
    v = cfg.get(name)
    if name in fields and isinstance(v, int) and v > largest:
      raise ValueError(f"{where}: {name} is {v} but no tensor in the checkpoint has a dimension "
                       f"that large (largest: {largest})")
  n = cfg.get("num_hidden_layers")
  if isinstance(n, int):
    pat = re.compile(re.escape(family.layer_prefix).replace(r"\{i\}", r"(\d+)"))
    found = {m.group(1) for m in map(pat.match, map(family.normalize, shapes)) if m}
    if n > len(found):
      raise ValueError(f"{where}: num_hidden_layers is {n} but the checkpoint's headers hold "
                       f"{len(found)} layer(s) ({family.layer_prefix!r} for i in "
                       f"0..{len(found) - 1})")
