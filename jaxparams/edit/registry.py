"""The registry of editing methods: ROME, MEMIT, AlphaEdit, GRACE, WISE and FT-L as records.

An :class:`EditMethod` names a method, its frozen keyword-only parameter dataclass (the
defaults live there, once: :class:`~jaxparams.edit.methods.RomeParams`, ...), the library
function and how it edits (``form``: ``'weights'`` writes a :class:`~jaxparams.edit.delta.Delta`
on kernels and can be saved as an HF checkpoint; ``'adaptor'`` wraps a kernel that a model runs
through ``dot=``). The CLI (``jaxparams edit``), the benchmarks and
:func:`~jaxparams.edit.checkpoint.edit_checkpoint` read methods and parameters from here.

Parameters are set by name; nested dataclasses (ROME/MEMIT/AlphaEdit's target optimisation,
:class:`~jaxparams.edit.targets.TargetParams`) by a dotted name (``target.v_num_grad_steps``) or
a nested mapping. Unknown names, fields and values raise ``ValueError`` listing the valid ones.

Example:
  >>> names()
  ['alphaedit', 'ft', 'grace', 'memit', 'rome', 'wise']
  >>> hp = make_params('memit', {'mom2_update_weight': 5000, 'target.v_num_grad_steps': 10})
  >>> hp.mom2_update_weight, hp.target.v_num_grad_steps, hp.target.clamp_norm_factor
  (5000.0, 10, 0.75)
  >>> get('memt')
  Traceback (most recent call last):
  ...
  ValueError: unknown edit method 'memt' (did you mean 'memit'?); valid names: alphaedit, ft, grace, memit, rome, wise
  >>> make_params('rome', {'lamda': 1})
  Traceback (most recent call last):
  ...
  ValueError: edit method 'rome': unknown parameter 'lamda'; valid parameters: mom2_adjustment, target.clamp_norm_factor, target.fact_token, target.kl_factor, target.kl_prompts, target.stop_loss, target.v_lr, target.v_num_grad_steps, target.v_weight_decay
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import typing
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from jaxparams import io as jio
from jaxparams.edit import ft, grace, methods, wise

__all__ = ["EditMethod", "EditRegistry", "METHODS", "names", "checkpoint_names", "get",
           "make_params",
           "param_names", "read_params", "parse_assignments"]

FORMS = ("weights", "adaptor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EditMethod:
  """One editing method.

  Attributes:
    name: registry name (``jaxparams edit --method NAME``).
    params: the frozen keyword-only parameter dataclass (its defaults are the method's).
    fn: the library function (``jaxparams.edit.methods.rome``, ...).
    form: ``'weights'`` (a Delta on kernels; HF checkpoints) or ``'adaptor'`` (a wrapped kernel
      run through ``dot=``; in-memory only).
    batch: edits several requests in one call (ROME edits one).
    run: for methods :func:`~jaxparams.edit.checkpoint.edit_checkpoint` (the CLI) runs, the
      library call in one form: ``run(module, params, tokenizer, requests, *, cov, where,
      templates, hp) -> (new_params, Delta)`` (``cov``: ``{layer: E[k k^T]}``; ``templates``:
      the generated context templates, ``'{}'`` first); ``None`` otherwise.
    description: one line for listings.
  """

  name: str
  params: type
  fn: Callable[..., Any]
  form: str = "weights"
  batch: bool = True
  run: Callable[..., Any] | None = None
  description: str = ""

  def __post_init__(self):
    if self.form not in FORMS:
      raise ValueError(f"edit method {self.name!r}: form must be one of {FORMS}, got "
                       f"{self.form!r}")
    p = getattr(self.params, "__dataclass_params__", None)
    if p is None or not p.frozen:
      raise ValueError(f"edit method {self.name!r}: params must be a frozen dataclass")

  def defaults(self) -> Any:
    """The default parameters (an instance of :attr:`params`)."""
    return self.params()

  def param_names(self) -> list[str]:
    """Every settable parameter, nested ones dotted (``target.v_lr``), sorted."""
    return sorted(_leaf_names(self.params))

  def make_params(self, fields: Mapping[str, Any] | None = None, *, base: Any = None,
                  where: str = "") -> Any:
    """``base`` (default: the defaults) with ``fields`` set.

    Args:
      fields: ``{name: value}``; names may be dotted (``target.v_lr``) and values of nested
        dataclasses may be mappings (``{'target': {'v_lr': 0.1}}``). Lists become tuples; ints
        are accepted for floats.
      base: the parameters to start from.
      where: prefix of error messages (e.g. the parameters file).

    Raises:
      ValueError: an unknown parameter (listing the valid ones) or a value of the wrong type,
        naming ``where`` and the parameter.
    """
    out = self.defaults() if base is None else base
    if not isinstance(out, self.params):
      raise ValueError(f"edit method {self.name!r}: base must be a {self.params.__name__}, got "
                       f"{type(out).__name__}")
    pre = f"{where}: " if where else ""
    for name, value in _flatten(dict(fields or {})).items():
      out = _set(out, name.split("."), value, name, self, pre)
    return out


def _flatten(fields: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in fields.items():
    if not isinstance(k, str):
      raise ValueError(f"parameter names must be strings, got {k!r}")
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, name + "."))
    else:
      out[name] = v
  return out


def _field_types(cls: type) -> dict[str, Any]:
  try:
    return typing.get_type_hints(cls)
  except Exception:  # pylint: disable=broad-except
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _leaf_names(cls: type, prefix: str = "") -> list[str]:
  out = []
  for f in dataclasses.fields(cls):
    default = cls().__getattribute__(f.name) if _has_defaults(cls) else None
    if dataclasses.is_dataclass(default):
      out.extend(_leaf_names(type(default), f"{prefix}{f.name}."))
    else:
      out.append(prefix + f.name)
  return out


def _has_defaults(cls: type) -> bool:
  return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
             for f in dataclasses.fields(cls))


def _coerce(value: Any, current: Any, hint: Any, pre: str, name: str, method: str) -> Any:
  """``value`` as the type of the field (its current value / annotation), or ValueError."""
  bad = ValueError(f"{pre}edit method {method!r}: parameter {name}={value!r} should be "
                   f"{_type_name(current, hint)}")
  if isinstance(current, bool) or hint is bool:
    if isinstance(value, bool):
      return value
    raise bad
  if isinstance(current, int) and hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise bad
    return int(value)
  if isinstance(current, float) or hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad
    return float(value)
  if isinstance(current, str):
    if not isinstance(value, str):
      raise bad
    return value
  if isinstance(current, tuple):
    if isinstance(value, (list, tuple)):
      kinds = {type(x) for x in current}
      if kinds <= {float, int} and current and any(isinstance(x, float) for x in current):
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
          raise bad
        return tuple(float(x) for x in value)
      if kinds == {str} or not current:
        if not all(isinstance(x, str) for x in value) and current:
          raise bad
        return tuple(value)
      return tuple(value)
    raise bad
  return value


def _type_name(current: Any, hint: Any) -> str:
  if isinstance(current, tuple):
    return "a list"
  if isinstance(current, bool):
    return "true or false"
  return f"a{'n' if type(current).__name__[0] in 'aeiou' else ''} {type(current).__name__}"


def _set(obj: Any, parts: Sequence[str], value: Any, name: str, rec: EditMethod,
         pre: str) -> Any:
  valid = {f.name for f in dataclasses.fields(obj)}
  head = parts[0]
  if head not in valid:
    close = difflib.get_close_matches(name, rec.param_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{pre}edit method {rec.name!r}: unknown parameter {name!r}{hint}; valid "
                     f"parameters: {', '.join(rec.param_names())}")
  current = getattr(obj, head)
  if len(parts) > 1:
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"{pre}edit method {rec.name!r}: parameter {head!r} has no fields "
                       f"(got {name!r})")
    return dataclasses.replace(obj, **{head: _set(current, parts[1:], value, name, rec, pre)})
  if dataclasses.is_dataclass(current):
    raise ValueError(f"{pre}edit method {rec.name!r}: parameter {name!r} is a group; set its "
                     f"fields ({', '.join(n for n in rec.param_names() if n.startswith(name + '.'))})")
  v = _coerce(value, current, _field_types(type(obj)).get(head), pre, name, rec.name)
  try:
    return dataclasses.replace(obj, **{head: v})
  except (TypeError, ValueError) as e:
    raise ValueError(f"{pre}edit method {rec.name!r}: {name}={value!r}: {e}") from None


class EditRegistry:
  """Name -> :class:`EditMethod`; ``names()``; unknown names raise listing the valid ones."""

  def __init__(self, records: Iterable[EditMethod]):
    self._records: dict[str, EditMethod] = {}
    for r in records:
      if r.name in self._records:
        raise ValueError(f"edit method {r.name!r} is already registered")
      self._records[r.name] = r

  def names(self, form: str | None = None) -> list[str]:
    """All names, sorted (only those of ``form`` when given)."""
    return sorted(n for n, r in self._records.items() if form is None or r.form == form)

  def checkpoint_names(self) -> list[str]:
    """Names of the methods that edit checkpoints on disk (``jaxparams edit --method``), in
    registration order."""
    return [n for n, r in self._records.items() if r.run is not None]

  def get(self, name: str) -> EditMethod:
    """The method called ``name``; ``ValueError`` with a suggestion and the valid names."""
    try:
      return self._records[name]
    except (KeyError, TypeError):
      close = difflib.get_close_matches(str(name), self.names(), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"unknown edit method {name!r}{hint}; valid names: "
                       f"{', '.join(self.names())}") from None

  def __contains__(self, name: object) -> bool:
    return name in self._records

  def __iter__(self) -> Iterator[EditMethod]:
    return iter(self._records[n] for n in self.names())

  def __len__(self) -> int:
    return len(self._records)


def _run_rome(module, params, tokenizer, requests, *, cov, where, templates, hp):
  return methods.rome(module, params, tokenizer, requests[0], cov=cov, where=where,
                      templates=templates, hp=hp)


def _run_memit(module, params, tokenizer, requests, *, cov, where, templates, hp):
  return methods.memit(module, params, tokenizer, requests, cov=cov, where=where,
                       templates=[["{}"], templates[1:6]], hp=hp)


def _run_alphaedit(module, params, tokenizer, requests, *, cov, where, templates, hp):
  new, d, _ = methods.alphaedit(module, params, tokenizer, requests,
                                state=methods.alpha_state(cov, hp), where=where,
                                templates=[["{}"], templates[1:6]], hp=hp)
  return new, d


METHODS = EditRegistry([
    EditMethod(name="rome", params=methods.RomeParams, fn=methods.rome, batch=False,
               run=_run_rome,
               description="ROME: rank-one update of one MLP output kernel (one request)"),
    EditMethod(name="memit", params=methods.MemitParams, fn=methods.memit, run=_run_memit,
               description="MEMIT: batch update spread over MLP output kernels"),
    EditMethod(name="alphaedit", params=methods.AlphaEditParams, fn=methods.alphaedit,
               run=_run_alphaedit,
               description="AlphaEdit: MEMIT projected on the preserved keys' null space"),
    EditMethod(name="ft", params=ft.FTParams, fn=ft.finetune,
               description="FT-L: one kernel fine-tuned under an elementwise norm constraint"),
    EditMethod(name="grace", params=grace.GraceParams, fn=grace.edit_many, form="adaptor",
               description="GRACE: key-value codebook adaptor on one kernel (dot=)"),
    EditMethod(name="wise", params=wise.WiseParams, fn=wise.wise_edit, form="adaptor",
               description="WISE: side memory with activation routing on one kernel (dot=)"),
])
"""Every editing method, by name."""


def names(form: str | None = None) -> list[str]:
  """Names of the registered methods (of one ``form`` when given)."""
  return METHODS.names(form)


def checkpoint_names() -> list[str]:
  """Names of the methods ``jaxparams edit`` runs on checkpoints."""
  return METHODS.checkpoint_names()


def get(name: str) -> EditMethod:
  """The :class:`EditMethod` called ``name``."""
  return METHODS.get(name)


def param_names(name: str) -> list[str]:
  """Settable parameters of method ``name`` (dotted for nested ones)."""
  return get(name).param_names()


def make_params(name: str, fields: Mapping[str, Any] | None = None, *, base: Any = None,
                where: str = "") -> Any:
  """Parameters of method ``name``: defaults (or ``base``) with ``fields`` set."""
  return get(name).make_params(fields, base=base, where=where)


def read_params(path: str | pathlib.Path) -> dict[str, Any]:
  """A parameters file: a JSON (``.json``) or YAML mapping of parameter names to values.

  Raises:
    ValueError: the file is not a mapping or does not parse (naming the file).
  """
  path = pathlib.Path(path)
  if path.suffix.lower() == ".json":
    data = jio.read_json(path, what="parameters file")
  else:  # YAML (JSON too): strict types, size and alias expansion bounded
    from jaxparams.io.recipe_yaml import read_recipe_yaml  # pylint: disable=g-import-not-at-top
    data = read_recipe_yaml(path, what="parameters file")
  if data is None:
    return {}
  if not isinstance(data, Mapping):
    raise ValueError(f"{path}: a parameters file holds a mapping of parameter names to values, "
                     f"found {type(data).__name__}")
  return dict(data)


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
  """``['name=value', ...]`` (``--set``) -> ``{name: value}``; values read as YAML scalars
  (``0.1``, ``25``, ``true``, ``[5, 20, 10]``; anything else stays a string).

  Example:
    >>> parse_assignments(['target.v_lr=0.1', 'fp64=false', 'act_margin=[1, 2, 3]'])
    {'target.v_lr': 0.1, 'fp64': False, 'act_margin': [1, 2, 3]}
  """
  import yaml  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {}
  for item in items:
    name, sep, raw = str(item).partition("=")
    if not sep or not name.strip():
      raise ValueError(f"--set {item!r}: expected name=value (e.g. --set target.v_lr=0.1)")
    try:
      value = yaml.safe_load(raw)
    except yaml.YAMLError:
      value = raw
    if isinstance(value, str) or value is None and raw.strip() not in ("null", "~"):
      value = raw
    out[name.strip()] = value
  return out
