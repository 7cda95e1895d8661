"""mergekit-compatible merge recipes: parse, validate, resolve parameters.

A recipe is the YAML mergekit reads (``mergekit-yaml RECIPE.yml OUT``),
accepted unchanged, or the same structure as an ml-collections config (a
``.py`` file with ``get_config()``) or a plain dict:

.. code-block:: yaml

  merge_method: ties
  base_model: ./base
  models:
    - model: ./math
      parameters: {weight: 0.6, density: [0.3, 0.7]}   # a gradient over layers
    - model: ./code
      parameters:
        weight: [{filter: self_attn, value: 0.2}, {value: 0.4}]  # per-tensor filters
  parameters: {normalize: true}
  dtype: float32
  tokenizer_source: base

Parameter values follow mergekit 0.1.5 (``mergekit/config.py``): a scalar; a
*gradient* (a list of numbers, interpolated piecewise-linearly at
``t = layer / (num_layers - 1)`` within a slice, ``t = 0`` for embeddings /
final norm / LM head; booleans and strings pick an element instead); or a list
of ``{filter: SUBSTRING, value: ...}`` conditions, the first whose ``filter`` is
a substring of the tensor name (or absent / ``'*'``) wins. Per-model values
take precedence over the output slice's, which take precedence over the global
``parameters``.

Example:
  >>> r = parse_recipe({'merge_method': 'linear',
  ...                   'models': [{'model': 'a', 'parameters': {'weight': 1.0}},
  ...                              {'model': 'b', 'parameters': {'weight': [0.0, 1.0]}}]})
  >>> r.model_names()
  ['a', 'b']
  >>> evaluate_setting([0.0, 1.0], 'model.layers.1.mlp.up_proj.weight', t=0.25)
  0.25
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxparams.io.limits import check_pad_to_multiple_of
from jaxparams.io.recipe_yaml import read_recipe_yaml
from jaxparams.merge.hub import is_hub_id, resolve_hub_model

__all__ = [
    "Recipe", "ModelInput", "SliceSource", "OutputSlice", "load_recipe", "parse_recipe",
    "evaluate_setting", "resolve_setting", "UNSET", "TOKENIZER_SOURCES", "DTYPE_NAMES",
]

#: Top-level keys a recipe may hold (mergekit 0.1.5's ``MergeConfiguration``).
_TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype",
             "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "modules", "name")
TOKENIZER_SOURCES = ("base", "union")
#: dtype spellings accepted for ``dtype`` / ``out_dtype`` (mergekit's, torch-style included).
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "torch.float32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "torch.float16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
    "float64": "float64", "fp64": "float64", "torch.float64": "float64",
}


_MAX_INT = 2**53  # integers beyond this lose precision as floats (and 10**400 has none)


class _Unset:
  def __repr__(self) -> str:
    return "UNSET"


#: Returned by :func:`resolve_setting` when no scope sets the parameter.
UNSET = _Unset()


@dataclasses.dataclass(frozen=True)
class ModelInput:
  """One entry of ``models:``: a checkpoint and its per-model parameters."""
  model: str
  parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SliceSource:
  """One ``sources:`` entry of an output slice: layers ``[start, stop)`` of a model."""
  model: str
  layer_range: tuple[int, int]
  parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OutputSlice:
  """One ``slices:`` entry: its sources (all with the same layer count)."""
  sources: tuple[SliceSource, ...]
  base_model: str | None = None
  parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_layers(self) -> int:
    return self.sources[0].layer_range[1] - self.sources[0].layer_range[0]


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A parsed, structurally validated merge recipe.

  Model references are kept as written; :meth:`resolve_model` turns one into a
  local folder. Exactly one of ``models`` and ``slices`` is set.
  """
  merge_method: str
  base_model: str | None = None
  models: tuple[ModelInput, ...] | None = None
  slices: tuple[OutputSlice, ...] | None = None
  parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  dtype: str | None = None
  out_dtype: str | None = None
  tokenizer_source: str | None = None
  pad_to_multiple_of: int | None = None
  chat_template: str | None = None
  source: str | None = None  # the file it was read from, for messages and relative paths

  def model_names(self) -> list[str]:
    """Every referenced model, base first when set, each once, in recipe order."""
    names: list[str] = []
    if self.base_model:
      names.append(self.base_model)
    if self.models:
      names += [m.model for m in self.models]
    for s in self.slices or ():
      names += [src.model for src in s.sources]
      if s.base_model:
        names.append(s.base_model)
    return list(dict.fromkeys(names))

  def parameter_names(self) -> set[str]:
    """Every parameter name the recipe sets, at any level."""
    names = set(self.parameters)
    for m in self.models or ():
      names |= set(m.parameters)
    for s in self.slices or ():
      names |= set(s.parameters)
      for src in s.sources:
        names |= set(src.parameters)
    return names

  def resolve_model(self, ref: str) -> Path:
    """A model reference as a local folder (or ``.safetensors`` file).

    Relative paths are taken from the current directory (as mergekit does),
    then from the recipe file's folder; a Hugging Face Hub id (``org/name``,
    ``org/name@revision``) that is neither is taken from huggingface_hub's
    local cache (:func:`jaxparams.merge.hub.resolve_hub_model`), never downloaded.

    Raises:
      FileNotFoundError: naming the reference (and, for a Hub id, the cache
        folder searched); ``model+lora`` refs are not supported.
    """
    p = Path(ref).expanduser()
    if p.exists():
      return p
    if self.source and not p.is_absolute():
      q = Path(self.source).parent / p
      if q.exists():
        return q
    hint = ""
    if "+" in ref:
      hint = " (mergekit's 'model+lora' references are not supported)"
    elif is_hub_id(ref):
      return resolve_hub_model(ref, self.source or "recipe")
    raise FileNotFoundError(f"{self.source or 'recipe'}: model {ref!r} not found{hint}.")


def _where(recipe_src: str | None, path: str) -> str:
  return f"{recipe_src or 'recipe'}: {path}"


def _is_scalar(v: Any) -> bool:
  return isinstance(v, (bool, int, float, str))


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce_scalar(v: Any) -> Any:
  # PyYAML reads '1e-3' (no dot) as a string; mergekit's validators read it as a number.
  if isinstance(v, str):
    try:
      return float(v)
    except ValueError:
      return v
  return v


def _check_setting(setting: Any, where: str) -> Any:
  """Validates one parameter value's structure and normalizes it."""
  if _is_scalar(setting):
    v = _coerce_scalar(setting)
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_INT:
      digits = len(str(abs(v))) if abs(v) < 10**4000 else "over 4000"
      raise ValueError(f"{where}: integer of {digits} digits is out of range (at most "
                       f"{_MAX_INT}).")
    if _is_number(v) and not math.isfinite(v):
      raise ValueError(f"{where}: value {setting!r} is not finite.")
    return v
  if isinstance(setting, Mapping):
    setting = [setting]
  if isinstance(setting, (list, tuple)):
    if not setting:
      raise ValueError(f"{where}: empty list.")
    if all(_is_scalar(e) for e in setting):
      return [_check_setting(e, f"{where}[{i}]") for i, e in enumerate(setting)]
    out = []
    for i, cond in enumerate(setting):
      if not isinstance(cond, Mapping) or "value" not in cond:
        raise ValueError(
            f"{where}[{i}]: expected a scalar, a gradient (list of numbers) or a list of "
            f"{{filter: ..., value: ...}} conditions; found {cond!r}.")
      extra = set(cond) - {"filter", "value"}
      if extra:
        raise ValueError(f"{where}[{i}]: unknown key(s) {sorted(extra)}; a condition has "
                         "'filter' and 'value'.")
      flt = cond.get("filter")
      if flt is not None and not isinstance(flt, str):
        raise ValueError(f"{where}[{i}].filter: expected a string, found {flt!r}.")
      out.append({"filter": flt, "value": _check_setting(cond["value"], f"{where}[{i}].value")})
    return out
  raise ValueError(f"{where}: unsupported parameter value {setting!r}.")


def _check_params(params: Any, where: str) -> dict[str, Any]:
  if params is None:
    return {}
  if not isinstance(params, Mapping):
    raise ValueError(f"{where}: 'parameters' must be a mapping, found {type(params).__name__}.")
  return {str(k): _check_setting(v, f"{where}.{k}") for k, v in params.items()}


def _check_dtype(v: Any, where: str) -> str | None:
  if v is None:
    return None
  key = str(v).lower()
  if key not in DTYPE_NAMES:
    raise ValueError(f"{where}: unknown dtype {v!r}; valid: "
                     f"{sorted(set(DTYPE_NAMES.values()))}.")
  return DTYPE_NAMES[key]


def _model_ref(v: Any, where: str) -> str:
  if isinstance(v, Mapping) and "model" in v:  # mergekit's ModelReference as a dict
    v = v["model"]
    if isinstance(v, Mapping):
      v = v.get("path")
  if not isinstance(v, (str, Path)) or not str(v):
    raise ValueError(f"{where}: expected a model path, found {v!r}.")
  return str(v)


def parse_recipe(data: Mapping[str, Any], *, source: str | None = None) -> Recipe:
  """Validates the structure of a recipe given as a dict.

  Method-specific checks (known method, known parameter names and ranges)
  happen in :func:`jaxparams.merge.plan.plan_merge`, which knows the method.

  Raises:
    ValueError: unknown keys, both or neither of ``models``/``slices``, a bad
      parameter value, a bad ``layer_range``, an unknown dtype.
  """
  if hasattr(data, "to_dict"):  # ml_collections.ConfigDict
    data = data.to_dict()
  if not isinstance(data, Mapping):
    raise ValueError(f"{source or 'recipe'}: expected a mapping at the top level, "
                     f"found {type(data).__name__}.")
  unknown = set(data) - set(_TOP_KEYS)
  if unknown:
    raise ValueError(_where(source, f"unknown key(s) {sorted(unknown)}; valid: "
                            f"{sorted(_TOP_KEYS)}."))
  if data.get("modules"):
    raise ValueError(_where(source, "'modules:' (multi-module models) is not supported; "
                            "use 'models:' or 'slices:'."))
  pad_to = None
  tok_block = data.get("tokenizer")
  if tok_block is not None:
    # mergekit's newer form: {source: union|base|<model> (default union), pad_to_multiple_of: N}.
    if not isinstance(tok_block, Mapping):
      raise ValueError(_where(source, f"'tokenizer' must be a mapping, found {tok_block!r}."))
    extra = set(tok_block) - {"source", "pad_to_multiple_of", "tokens"}
    if extra:
      raise ValueError(_where(source, f"tokenizer: unknown key(s) {sorted(extra)}; valid: "
                              "['pad_to_multiple_of', 'source', 'tokens']."))
    if tok_block.get("tokens"):
      raise ValueError(_where(source, "tokenizer.tokens (per-token embedding overrides) is not "
                              "supported; use tokenizer.source and pad_to_multiple_of."))
    if data.get("tokenizer_source") is not None:
      raise ValueError(_where(source, "give either 'tokenizer_source' or 'tokenizer', not both."))
    pad_to = check_pad_to_multiple_of(tok_block.get("pad_to_multiple_of"),
                                      where=_where(source, "tokenizer.pad_to_multiple_of"))
    data = dict(data, tokenizer_source=tok_block.get("source") or "union")
  method = data.get("merge_method")
  if not isinstance(method, str) or not method:
    raise ValueError(_where(source, "'merge_method' is required (e.g. merge_method: ties)."))
  has_models, has_slices = bool(data.get("models")), bool(data.get("slices"))
  if has_models == has_slices:
    raise ValueError(_where(source, "exactly one of 'models' and 'slices' must be given."))
  base = data.get("base_model")
  base = _model_ref(base, _where(source, "base_model")) if base is not None else None

  models = None
  if has_models:
    if not isinstance(data["models"], (list, tuple)):
      raise ValueError(_where(source, "'models' must be a list."))
    models = []
    for i, m in enumerate(data["models"]):
      w = _where(source, f"models[{i}]")
      if isinstance(m, (str, Path)):
        m = {"model": str(m)}
      if not isinstance(m, Mapping) or "model" not in m:
        raise ValueError(f"{w}: expected {{model: PATH, parameters: {{...}}}}, found {m!r}.")
      extra = set(m) - {"model", "parameters"}
      if extra:
        raise ValueError(f"{w}: unknown key(s) {sorted(extra)}; valid: ['model', 'parameters'].")
      models.append(ModelInput(_model_ref(m["model"], w), _check_params(m.get("parameters"), w)))
    models = tuple(models)

  slices = None
  if has_slices:
    if not isinstance(data["slices"], (list, tuple)):
      raise ValueError(_where(source, "'slices' must be a list."))
    slices = []
    for i, s in enumerate(data["slices"]):
      w = _where(source, f"slices[{i}]")
      if not isinstance(s, Mapping) or not s.get("sources"):
        raise ValueError(f"{w}: expected {{sources: [...]}}, found {s!r}.")
      extra = set(s) - {"sources", "base_model", "parameters", "residual_weight"}
      if extra:
        raise ValueError(f"{w}: unknown key(s) {sorted(extra)}.")
      if s.get("residual_weight") is not None:
        raise ValueError(f"{w}: 'residual_weight' is not supported.")
      srcs = []
      for j, src in enumerate(s["sources"]):
        ws = f"{w}.sources[{j}]"
        if not isinstance(src, Mapping) or "model" not in src or "layer_range" not in src:
          raise ValueError(f"{ws}: expected {{model: PATH, layer_range: [start, stop]}}, "
                           f"found {src!r}.")
        extra = set(src) - {"model", "layer_range", "parameters"}
        if extra:
          raise ValueError(f"{ws}: unknown key(s) {sorted(extra)}.")
        lr = src["layer_range"]
        if (not isinstance(lr, (list, tuple)) or len(lr) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
            or lr[0] < 0 or lr[1] <= lr[0]):
          raise ValueError(f"{ws}.layer_range: expected [start, stop] with 0 <= start < stop, "
                           f"found {lr!r}.")
        srcs.append(SliceSource(_model_ref(src["model"], ws), (int(lr[0]), int(lr[1])),
                                _check_params(src.get("parameters"), ws)))
      lengths = {x.layer_range[1] - x.layer_range[0] for x in srcs}
      if len(lengths) != 1:
        raise ValueError(f"{w}: all sources of a slice must span the same number of layers; "
                         f"found {[x.layer_range for x in srcs]}.")
      sb = s.get("base_model")
      slices.append(OutputSlice(tuple(srcs), _model_ref(sb, w) if sb is not None else None,
                                _check_params(s.get("parameters"), w)))
    slices = tuple(slices)

  chat = data.get("chat_template")
  if chat is not None and (not isinstance(chat, str) or ("{{" not in chat and "{%" not in chat)):
    raise ValueError(_where(source, f"chat_template {chat!r}: only a literal Jinja template is "
                            "supported (mergekit's named templates such as 'chatml' are not)."))
  tok = data.get("tokenizer_source")
  if tok is not None:
    tok = _model_ref(tok, _where(source, "tokenizer_source"))
  recipe = Recipe(
      merge_method=method, base_model=base, models=models, slices=slices,
      parameters=_check_params(data.get("parameters"), _where(source, "parameters")),
      dtype=_check_dtype(data.get("dtype"), _where(source, "dtype")),
      out_dtype=_check_dtype(data.get("out_dtype"), _where(source, "out_dtype")),
      tokenizer_source=tok, pad_to_multiple_of=pad_to, chat_template=data.get("chat_template"),
      source=source)
  if tok is not None and tok not in TOKENIZER_SOURCES and tok not in recipe.model_names():
    raise ValueError(_where(source, f"tokenizer_source {tok!r} is neither 'base', 'union' nor "
                            f"one of the recipe's models {recipe.model_names()}."))
  return recipe


def load_recipe(recipe: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
  """Loads a recipe from a mergekit YAML file, an ml-collections ``.py`` config,
  a dict / ``ConfigDict``, or returns a :class:`Recipe` as is.

  Example:
    >>> load_recipe({'merge_method': 'passthrough',
    ...              'slices': [{'sources': [{'model': 'm', 'layer_range': [0, 2]}]}]}
    ...             ).slices[0].num_layers
    2
  """
  if isinstance(recipe, Recipe):
    return recipe
  if isinstance(recipe, (str, Path)):
    path = Path(recipe)
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no such recipe file.")
    if path.suffix == ".py":
      spec = importlib.util.spec_from_file_location(f"_jaxparams_recipe_{path.stem}", path)
      mod = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(mod)
      if not hasattr(mod, "get_config"):
        raise ValueError(f"{path}: an ml-collections config file must define get_config().")
      return parse_recipe(mod.get_config(), source=str(path))
    return parse_recipe(read_recipe_yaml(path, what="recipe"), source=str(path))
  return parse_recipe(recipe)


def evaluate_setting(setting: Any, tensor_name: str, t: float = 0.0) -> Any:
  """Resolves filters and gradients of one (validated) parameter value.

  Args:
    setting: a scalar, a gradient list, or a list of ``{filter, value}`` dicts.
    tensor_name: the HF tensor name that filters are matched against (substring).
    t: position in the slice, ``layer / (num_layers - 1)``; 0 for non-layer tensors.

  Returns:
    The value, or ``None`` if no condition matches.

  Example:
    >>> evaluate_setting([{'filter': 'mlp', 'value': [0, 1, 0]}, {'value': 7}],
    ...                  'model.layers.2.mlp.down_proj.weight', t=0.5)
    1.0
    >>> evaluate_setting([{'filter': 'mlp', 'value': 1}], 'lm_head.weight') is None
    True
  """
  if isinstance(setting, Mapping):
    setting = [setting]
  if _is_scalar(setting):
    return setting
  if not setting:
    return None
  if all(_is_scalar(e) for e in setting):
    n = len(setting)
    if not all(_is_number(e) for e in setting):
      return setting[int(t * (n - 1))]
    scaled = t * (n - 1)
    i0 = int(scaled)
    i1 = min(n - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * setting[i0] + frac * setting[i1]
  for cond in setting:
    flt = cond.get("filter")
    if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
      return evaluate_setting(cond["value"], tensor_name, t)
  return None


def resolve_setting(name: str, scopes: Sequence[Mapping[str, Any] | None], tensor_name: str,
                    t: float = 0.0) -> Any:
  """The value of parameter ``name`` from the first scope that sets it (and matches).

  Scopes go from highest precedence (the model's own) to lowest (global).
  Returns :data:`UNSET` when none applies.

  Example:
    >>> resolve_setting('weight', [{'weight': 0.3}, {'weight': 1.0}], 'x')
    0.3
    >>> resolve_setting('density', [{}, None], 'x')
    UNSET
  """
  for scope in scopes:
    if scope and name in scope:
      v = evaluate_setting(scope[name], tensor_name, t)
      if v is not None:
        return v
  return UNSET
