"""mergekit's parameter vocabulary on top of the records' config dataclasses.

A merge method's config is a frozen keyword-only dataclass (the record's
``config``); its fields are mergekit's parameters. A field's metadata says
whether it is per model (``model_param``: one value per non-base model, a
scalar is broadcast) or method-wide (``global_param``), and its mergekit name
when that is not a Python identifier (``lambda`` -> field ``lam``). Defaults
live in the dataclass, once; :func:`resolve_config` fills them from mergekit
style ``model_params``/``global_params`` and :func:`mergekit_params` gives
them back to the per-tensor math.

Example:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class C:
  ...   weight: tuple = model_param()
  ...   density: tuple = model_param(1.0)
  ...   lam: float = global_param(1.0, name='lambda')
  >>> model_defaults(C), global_defaults(C)
  ({'weight': REQUIRED, 'density': 1.0}, {'lambda': 1.0})
  >>> cfg = resolve_config('demo', C, 2, {'weight': 0.5}, {'lambda': 2.0})
  >>> cfg
  C(weight=(0.5, 0.5), density=(1.0, 1.0), lam=2.0)
  >>> mergekit_params(cfg, 2)
  ({'weight': [0.5, 0.5], 'density': [1.0, 1.0]}, {'lambda': 2.0})
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

__all__ = ["REQUIRED", "model_param", "global_param", "model_defaults", "global_defaults",
           "resolve_config", "mergekit_params", "field_name"]


class _Required:
  """Marks a parameter without a default (mergekit's required parameters)."""

  def __repr__(self) -> str:
    return "REQUIRED"

  def __reduce__(self):
    return "REQUIRED"


REQUIRED = _Required()


def model_param(default: Any = REQUIRED) -> Any:
  """A per-model config field (one value per non-base model)."""
  meta = {"scope": "model", "mergekit": None}
  if default is REQUIRED:
    return dataclasses.field(metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def global_param(default: Any = REQUIRED, *, name: str | None = None) -> Any:
  """A method-wide config field; ``name`` is its mergekit name if it differs."""
  meta = {"scope": "global", "mergekit": name}
  if default is REQUIRED:
    return dataclasses.field(metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def _fields(config_cls: type, scope: str) -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(config_cls) if f.metadata.get("scope") == scope]


def _mk(f: dataclasses.Field) -> str:
  return f.metadata.get("mergekit") or f.name


def _default(f: dataclasses.Field) -> Any:
  return REQUIRED if f.default is dataclasses.MISSING else f.default


def model_defaults(config_cls: type) -> dict[str, Any]:
  """mergekit per-model parameter names -> defaults (``REQUIRED`` if none)."""
  return {_mk(f): _default(f) for f in _fields(config_cls, "model")}


def global_defaults(config_cls: type) -> dict[str, Any]:
  """mergekit global parameter names -> defaults (``REQUIRED`` if none)."""
  return {_mk(f): _default(f) for f in _fields(config_cls, "global")}


def field_name(config_cls: type, mergekit_name: str) -> str:
  """The config field of a mergekit parameter name (``'lambda'`` -> ``'lam'``)."""
  for f in dataclasses.fields(config_cls):
    if _mk(f) == mergekit_name:
      return f.name
  raise ValueError(f"{config_cls.__name__} has no parameter {mergekit_name!r}")


def _is_sequence(x: Any) -> bool:
  if isinstance(x, (str, bytes)):
    return False
  if isinstance(x, (list, tuple)):
    return True
  return hasattr(x, "shape") and np.ndim(x) >= 1


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _check_type(method: str, kind: str, pname: str, annotation: Any, v: Any, where: str) -> Any:
  """A recipe value against the field's declared type: numbers are not booleans or words, and a
  boolean is a boolean (or mergekit's spellings ``true``/``yes``/``1``...); arrays and tracers
  (the tree API's weights) pass through."""
  ann = str(annotation).replace(" ", "")
  bad = (f"merge method {method!r}: {kind} parameter {pname!r}{where}: expected "
         "{}, found {!r}")
  if ann == "bool":
    if isinstance(v, (bool, np.bool_)):
      return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
      return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
      return v.strip().lower() in _TRUE
    if isinstance(v, (str, int, float)):
      raise ValueError(bad.format("true or false", v))
    return v
  if ann in ("float", "int", "tuple"):
    if isinstance(v, (bool, np.bool_)) or isinstance(v, (str, bytes)):
      raise ValueError(bad.format("a number", v))
  return v


def resolve_config(method: str, config_cls: type, n_models: int,
                   model_params: Mapping[str, Any] | None = None,
                   global_params: Mapping[str, Any] | None = None, *, name: str = "") -> Any:
  """Builds the config from mergekit-style parameters: names validated, defaults
  filled, per-model values broadcast to one per model (tuples).

  Raises:
    ValueError: unknown parameter (valid ones listed), a missing required one,
      or a per-model list of the wrong length (naming the tensor).
  """
  where = f" for tensor {name!r}" if name else ""
  model_params = dict(model_params or {})
  global_params = dict(global_params or {})
  mfields, gfields = _fields(config_cls, "model"), _fields(config_cls, "global")
  for kind, given, valid in (("model", model_params, [_mk(f) for f in mfields]),
                             ("global", global_params, [_mk(f) for f in gfields])):
    unknown = sorted(set(given) - set(valid))
    if unknown:
      raise ValueError(
          f"merge method {method!r}: unknown {kind} parameter(s) {unknown}{where}; "
          f"valid {kind} parameters: {sorted(valid) or 'none'}")
  values: dict[str, Any] = {}
  for f in mfields:
    pname, default = _mk(f), _default(f)
    value = model_params.get(pname, default)
    if value is REQUIRED:
      raise ValueError(f"merge method {method!r}: model parameter {pname!r} is required"
                       f"{where} (give one value per model)")
    if _is_sequence(value):
      value = list(value)
      if len(value) != n_models:
        raise ValueError(f"merge method {method!r}: model parameter {pname!r} has "
                         f"{len(value)} values{where}, expected one per model ({n_models})")
    else:
      value = [value] * n_models
    value = [default if v is None and default is not REQUIRED else v for v in value]
    if any(v is REQUIRED for v in value):
      raise ValueError(f"merge method {method!r}: model parameter {pname!r} is required"
                       f"{where} for every model")
    value = [_check_type(method, "model", pname, f.type, v, where) for v in value]
    values[f.name] = tuple(value)
  for f in gfields:
    pname, default = _mk(f), _default(f)
    value = global_params.get(pname, default)
    if value is REQUIRED:
      raise ValueError(f"merge method {method!r}: global parameter {pname!r} is "
                       f"required{where}")
    if not isinstance(value, list):
      value = _check_type(method, "global", pname, f.type, value, where)
    values[f.name] = tuple(value) if isinstance(value, list) else value
  return config_cls(**values)


def mergekit_params(config: Any, n_models: int | None = None
                    ) -> tuple[dict[str, list[Any]], dict[str, Any]]:
  """(per-model parameters as lists, global parameters) under mergekit names.

  A per-model field holding one scalar (a config made directly with
  ``make_config``) is broadcast to ``n_models``; a default is filled for ``None``.
  """
  mp = {}
  for f in _fields(type(config), "model"):
    v = getattr(config, f.name)
    if not _is_sequence(v):
      v = [v] * (n_models if n_models is not None else 1)
    default = _default(f)
    mp[_mk(f)] = [default if x is None and default is not REQUIRED else x for x in v]
  gp = {_mk(f): getattr(config, f.name) for f in _fields(type(config), "global")}
  return mp, gp
