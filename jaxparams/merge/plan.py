"""Turn a recipe plus the input checkpoints' headers into per-tensor merge tasks.

Mirrors mergekit 0.1.5's planner (``mergekit/plan.py``) on HF tensor names:
``models:`` becomes one slice spanning every layer; each output layer of a
slice reads layer ``start + offset`` of every source and is evaluated at
``t = offset / (n - 1)`` (``t = 1`` for a one-layer slice); embeddings and the
other non-layer tensors come from the first slice's sources (the final norm
and LM head from the last slice's) and are evaluated at ``t = 0``. Layers are
found by name (``...layers.<i>.`` / ``h.<i>.`` / ``blocks.<i>.``), so any
architecture with that naming works without a per-architecture table.

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxparams.io import save_safetensors, open_checkpoint
  >>> from jaxparams.merge.recipe import parse_recipe
  >>> d = tempfile.mkdtemp()
  >>> for m in 'ab':
  ...   save_safetensors({'model.layers.0.w': np.ones(2, np.float32),
  ...                     'model.layers.1.w': np.ones(2, np.float32)}, os.path.join(d, m))
  >>> r = parse_recipe({'merge_method': 'passthrough', 'slices': [
  ...     {'sources': [{'model': 'a', 'layer_range': [0, 2]}]},
  ...     {'sources': [{'model': 'b', 'layer_range': [1, 2]}]}]})
  >>> readers = {m: open_checkpoint(os.path.join(d, m)) for m in 'ab'}
  >>> [t.name for t in plan_merge(r, readers, method=None)]
  ['model.layers.0.w', 'model.layers.1.w', 'model.layers.2.w']
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence

from jaxparams.merge.recipe import UNSET, Recipe, resolve_setting
from jaxparams.merge.registry import get_method

__all__ = ["TensorTask", "plan_merge", "split_layer_name", "is_vocab_tensor", "count_layers"]

_LAYER_RE = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks)\.)(\d+)\.(.+)$")
_VOCAB_RE = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|word_embeddings|embed_in|embed_out|"
                       r"tok_embeddings)(\.|$)")
_POST_RE = re.compile(r"(^|\.)(norm|final_layernorm|final_layer_norm|ln_f|lm_head|embed_out|"
                      r"output|score|classifier)(\.|$)")


class _Reader(Protocol):

  def names(self) -> list[str]:
    ...

  def spec(self, name: str) -> Any:
    ...


@dataclasses.dataclass(frozen=True)
class TensorTask:
  """One output tensor: where its inputs come from and its resolved parameters.

  Attributes:
    name: the output tensor name.
    base: ``(model, tensor name)`` of the base input, or ``None``.
    models: ``(model, tensor name)`` of the other inputs, in recipe order.
    model_params: per-model values aligned with ``models`` (only the
      parameters the recipe sets).
    global_params: method-wide values the recipe sets for this tensor.
    t: the position used for gradients.
    vocab: whether rows are indexed by the vocabulary (embeddings, LM head).
  """
  name: str
  base: tuple[str, str] | None
  models: tuple[tuple[str, str], ...]
  model_params: Mapping[str, tuple[Any, ...]]
  global_params: Mapping[str, Any]
  t: float
  vocab: bool

  @property
  def inputs(self) -> tuple[tuple[str, str], ...]:
    """Every input, base first."""
    return ((self.base,) if self.base else ()) + self.models


def split_layer_name(name: str) -> tuple[str, int, str] | None:
  """``'model.layers.3.mlp.w'`` -> ``('model.layers.', 3, 'mlp.w')``; ``None`` off-layer.

  Example:
    >>> split_layer_name('model.layers.12.self_attn.q_proj.weight')
    ('model.layers.', 12, 'self_attn.q_proj.weight')
    >>> split_layer_name('lm_head.weight') is None
    True
  """
  m = _LAYER_RE.match(name)
  return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def is_vocab_tensor(name: str) -> bool:
  """Whether a (non-layer) tensor is indexed by token id along axis 0.

  Example:
    >>> is_vocab_tensor('model.embed_tokens.weight'), is_vocab_tensor('model.norm.weight')
    (True, False)
  """
  return split_layer_name(name) is None and _VOCAB_RE.search(name) is not None


def count_layers(names: Sequence[str]) -> int:
  """Number of layers (largest layer index + 1) among tensor names."""
  idx = [s[1] for s in map(split_layer_name, names) if s is not None]
  return max(idx) + 1 if idx else 0


def _layer_table(names: Sequence[str]) -> tuple[dict[int, list[tuple[str, str]]], list[str],
                                                list[str]]:
  layers: dict[int, list[tuple[str, str]]] = {}
  pre, post = [], []
  for n in names:
    s = split_layer_name(n)
    if s is None:
      (post if _POST_RE.search(n) else pre).append(n)
    else:
      layers.setdefault(s[1], []).append((s[0], s[2]))
  return layers, pre, post


def _stack_sizes(layers: Mapping[int, list[tuple[str, str]]]) -> dict[str, int]:
  """Layer count of every layer stack (prefix such as ``'model.layers.'``)."""
  out: dict[str, int] = {}
  for i, entries in layers.items():
    for prefix, _ in entries:
      out[prefix] = max(out.get(prefix, 0), i + 1)
  return out


def _shape(reader: _Reader, name: str) -> tuple[int, ...]:
  return tuple(reader.spec(name).shape)


def _numeric_globals(method: Any) -> set[str]:
  """mergekit names of the method's global parameters typed ``float``/``int`` (no strings)."""
  cfg = getattr(getattr(method, "record", None), "config", None)
  if not dataclasses.is_dataclass(cfg):
    return set()
  return {f.metadata.get("mergekit") or f.name for f in dataclasses.fields(cfg)
          if f.metadata.get("scope") == "global" and str(f.type) in ("float", "int")}


class _Slice(NamedTuple):
  """One output slice: ``sources`` are ``(model, (first, end) layer range, parameters)``."""
  sources: tuple[tuple[str, tuple[int, int], Mapping[str, Any]], ...]
  base: str | None
  params: Mapping[str, Any]


def _check_parameter_names(recipe: Recipe, method: Any) -> None:
  """Every parameter the recipe sets is one of the method's (model-wise or global)."""
  model_keys, global_keys = set(method.model_params), set(method.global_params)
  unknown = recipe.parameter_names() - model_keys - global_keys
  if unknown:
    raise ValueError(
        f"{recipe.source or 'recipe'}: unknown parameter(s) {sorted(unknown)} for merge_method "
        f"{recipe.merge_method!r}; valid: {sorted(model_keys | global_keys)}.")


def _check_same_tensor_sets(readers: Mapping[str, _Reader], ref: str, models: Sequence[str],
                            src: str) -> None:
  ref_set = set(readers[ref].names())
  for model in models:
    if model == ref:
      continue
    other = set(readers[model].names())
    missing, extra = sorted(ref_set - other), sorted(other - ref_set)
    if missing or extra:
      what = (f"tensor {missing[0]!r} is in {ref!r} but missing from {model!r}" if missing else
              f"tensor {extra[0]!r} is in {model!r} but missing from {ref!r}")
      n = len(missing) + len(extra)
      raise ValueError(f"{src}: the models have different tensor sets: {what}"
                       f"{f' ({n - 1} more differ)' if n > 1 else ''}.")


def _slices(recipe: Recipe, readers: Mapping[str, _Reader], src: str) -> list[_Slice]:
  """The recipe's slices; ``models:`` is one slice over every layer (base appended when not
  listed, as mergekit does), after checking that the models hold the same tensors."""
  if recipe.models is None:
    return [_Slice(tuple((s.model, s.layer_range, s.parameters) for s in sl.sources),
                   sl.base_model or recipe.base_model, sl.parameters) for sl in recipe.slices]
  entries = [(m.model, m.parameters) for m in recipe.models]
  if recipe.base_model and recipe.base_model not in [e[0] for e in entries]:
    entries.append((recipe.base_model, {}))
  ref = recipe.base_model or entries[0][0]
  _check_same_tensor_sets(readers, ref, [m for m, _ in entries], src)
  nl = count_layers(readers[ref].names())
  return [_Slice(tuple((m, (0, nl), p) for m, p in entries), recipe.base_model, {})]


def _layer_tables(slices: Sequence[_Slice], readers: Mapping[str, _Reader], src: str
                  ) -> dict[str, tuple[dict[int, list[tuple[str, str]]], list[str], list[str]]]:
  """:func:`_layer_table` of every source model; a layer range past a model's end is refused."""
  tables = {}
  for sl in slices:
    for model, lr, _ in sl.sources:
      if model not in tables:
        names = readers[model].names()
        tables[model] = _layer_table(names)
        nl = count_layers(names)
        if lr[1] > nl:
          raise ValueError(f"{src}: layer_range {list(lr)} of model {model!r} goes past its "
                           f"{nl} layers.")
      elif lr[1] > count_layers(readers[model].names()):
        raise ValueError(f"{src}: layer_range {list(lr)} of model {model!r} goes past its "
                         f"{count_layers(readers[model].names())} layers.")
  return tables


def _first_model(sl: _Slice) -> str:
  """The slice's base model when it is a source, else its first source."""
  for m, _, _ in sl.sources:
    if m == sl.base:
      return m
  return sl.sources[0][0]


def _outputs(recipe: Recipe, slices: Sequence[_Slice], tables: Mapping[str, Any]
             ) -> Iterator[tuple[str, _Slice, list[str], float]]:
  """``(output name, slice, input names, t)`` in output order: pre-layer tensors (embeddings)
  from the first slice, each slice's layers renumbered, post-layer tensors from the last."""
  first = slices[0]
  _, pre, _ = tables[_first_model(first)]
  for n in pre:
    yield n, first, [n] * len(first.sources), 0.0
  out_layer = 0
  for sl in slices:
    layers, _, _ = tables[_first_model(sl)]
    ref_lr = [lr for m, lr, _ in sl.sources if m == _first_model(sl)][0]
    n_layers = ref_lr[1] - ref_lr[0]
    # models: one slice over every layer; with several layer stacks (a vision and a text
    # tower) each stack is its own module with its own layer count, as in mergekit.
    per_stack = _stack_sizes(layers) if recipe.models is not None else {}
    for off in range(n_layers):
      for prefix, rest in layers.get(ref_lr[0] + off, []):
        n = per_stack.get(prefix, n_layers)
        t = off / (n - 1) if n > 1 else 1.0
        in_names = [f"{prefix}{lr[0] + off}.{rest}" for _, lr, _ in sl.sources]
        yield f"{prefix}{out_layer}.{rest}", sl, in_names, t
      out_layer += 1
  last = slices[-1]
  _, _, post = tables[_first_model(last)]
  for n in post:
    yield n, last, [n] * len(last.sources), 0.0


class _Planner:
  """Checks the inputs of each output tensor and resolves its parameters into a TensorTask."""

  def __init__(self, recipe: Recipe, readers: Mapping[str, _Reader], method: Any, src: str):
    self.recipe, self.readers, self.src = recipe, readers, src
    self.name = recipe.merge_method
    self.model_keys = dict(method.model_params)
    self.global_keys = dict(method.global_params)
    self.needs_base = method.needs_base
    self.numeric_globals = _numeric_globals(method)
    # The base model's role comes from the record ('ignored': an ordinary input, as mergekit).
    self.ignore_base = method.base_policy == "ignored"
    self.tasks: list[TensorTask] = []
    self.out_names: set[str] = set()
    self.name_sets: dict[str, set[str]] = {}

  def has(self, model: str, n: str) -> bool:
    if model not in self.name_sets:
      self.name_sets[model] = set(self.readers[model].names())
    return n in self.name_sets[model]

  def check_inputs(self, out_name: str, sources, in_names: Sequence[str], vocab: bool) -> None:
    """Written once; every input present; equal shapes (vocabulary rows may differ when a
    ``tokenizer_source`` aligns them)."""
    src = self.src
    if out_name in self.out_names:
      raise ValueError(f"{src}: output tensor {out_name!r} would be written twice.")
    self.out_names.add(out_name)
    for (model, _, _), n in zip(sources, in_names):
      if not self.has(model, n):
        raise ValueError(f"{src}: tensor {n!r} is missing from model {model!r} "
                         f"(needed for output tensor {out_name!r}).")
    shapes = [_shape(self.readers[m], n) for (m, _, _), n in zip(sources, in_names)]
    for (model, _, _), shp in zip(sources[1:], shapes[1:]):
      if shp == shapes[0]:
        continue
      m0 = sources[0][0]
      if vocab and shp[1:] == shapes[0][1:]:
        if self.recipe.tokenizer_source is None:
          raise ValueError(
              f"{src}: vocabulary sizes differ for tensor {in_names[0]!r}: {shapes[0][0]} rows in "
              f"{m0!r} but {shp[0]} in {model!r}; set tokenizer_source: base|union|<model> so "
              "the rows can be aligned to one vocabulary.")
        continue
      raise ValueError(f"{src}: tensor {in_names[0]!r} has shape {shapes[0]} in model {m0!r} "
                       f"but {shp} in model {model!r}.")

  def base_index(self, out_name: str, sources, base_ref: str | None) -> int | None:
    """Index of the base among the sources (None: no base, or the method ignores it)."""
    base_i = None
    if base_ref is not None and not self.ignore_base:
      for i, (m, _, _) in enumerate(sources):
        if m == base_ref:
          base_i = i
          break
    if self.needs_base and base_i is None:
      raise ValueError(f"{self.src}: merge_method {self.name!r} needs a base model for tensor "
                       f"{out_name!r}{'' if base_ref else '; set base_model'}"
                       f"{'' if base_ref is None else f' ({base_ref!r} is not among the inputs)'}.")
    return base_i

  def global_params(self, out_name: str, slice_params, t: float) -> dict[str, Any]:
    gparams = {}
    for k in self.global_keys:
      v = resolve_setting(k, [slice_params, self.recipe.parameters], out_name, t)
      if v is not UNSET:
        if isinstance(v, str) and k in self.numeric_globals:
          raise ValueError(f"{self.src}: parameter {k!r} is {v!r}, not a number (tensor "
                           f"{out_name!r}).")
        gparams[k] = v
    return gparams

  def model_params(self, sources, slice_params, in_names: Sequence[str], others: list[int],
                   t: float) -> dict[str, tuple[Any, ...]]:
    src = self.src
    mparams = {}
    for k, default in self.model_keys.items():
      vals = [resolve_setting(k, [sources[i][2], slice_params, self.recipe.parameters],
                              in_names[i], t) for i in others]
      if all(v is UNSET for v in vals):
        continue
      filled = []
      for i, v in zip(others, vals):
        if isinstance(v, str):  # every per-model parameter is a number
          raise ValueError(f"{src}: parameter {k!r} of model {sources[i][0]!r} is {v!r}, not a "
                           f"number (tensor {in_names[i]!r}).")
        if v is UNSET:
          if default is None or not isinstance(default, (bool, int, float, str)):
            raise ValueError(f"{src}: parameter {k!r} is set for some models but not for "
                             f"{sources[i][0]!r} (tensor {in_names[i]!r}); it has no default.")
          v = default
        filled.append(v)
      mparams[k] = tuple(filled)
    return mparams

  def add(self, out_name: str, sl: _Slice, in_names: Sequence[str], t: float) -> None:
    sources = sl.sources
    vocab = is_vocab_tensor(out_name)
    self.check_inputs(out_name, sources, in_names, vocab)
    base_i = self.base_index(out_name, sources, sl.base)
    others = [i for i in range(len(sources)) if i != base_i]
    gparams = self.global_params(out_name, sl.params, t)
    mparams = self.model_params(sources, sl.params, in_names, others, t)
    self.tasks.append(TensorTask(
        name=out_name,
        base=(sources[base_i][0], in_names[base_i]) if base_i is not None else None,
        models=tuple((sources[i][0], in_names[i]) for i in others),
        model_params=mparams, global_params=gparams, t=t, vocab=vocab))


def plan_merge(recipe: Recipe, readers: Mapping[str, _Reader], method: Any = None
               ) -> list[TensorTask]:
  """Plans every output tensor of ``recipe`` over opened checkpoints.

  The steps: the recipe's parameter names are the method's; its slices (``models:`` = one slice
  over every layer, the models holding the same tensors); every source's layer table (layer
  ranges within the model); then each output tensor in order, its inputs checked and its
  parameters resolved (:class:`_Planner`).

  Args:
    recipe: a parsed recipe.
    readers: an opened checkpoint (anything with ``names()`` and ``spec(name)``)
      for every model reference of the recipe.
    method: the :class:`~jaxparams.merge.registry.MergeMethod` (its record's
      base policy and parameters are used); ``None``: the registry's method
      named by ``recipe.merge_method``.

  Raises:
    ValueError: unknown parameter (valid ones listed); a base model missing
      for a method that needs one; models with different tensor sets or shapes
      (tensor and models named); vocabulary sizes that differ without a
      ``tokenizer_source``; a ``layer_range`` past a model's last layer.
  """
  if method is None:
    method = get_method(recipe.merge_method)
  _check_parameter_names(recipe, method)
  src = recipe.source or "recipe"
  slices = _slices(recipe, readers, src)
  tables = _layer_tables(slices, readers, src)
  planner = _Planner(recipe, readers, method, src)
  for out_name, sl, in_names, t in _outputs(recipe, slices, tables):
    planner.add(out_name, sl, in_names, t)
  return planner.tasks
