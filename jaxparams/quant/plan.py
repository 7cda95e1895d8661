"""Which leaf gets which method: rule specs, keep words, default keeps and the plan.

One parser for the library and the CLI (:mod:`jaxparams.quant.rule_file` reads YAML into
these specs): :func:`parse_spec`, :func:`is_keep` (keep words ``keep``, ``none``, ``fp``,
``full``, ``skip``), :func:`normalize_rules`, :data:`DEFAULT_KEEP` and :func:`plan_tree`.

Example:
  >>> import jax.numpy as jnp
  >>> plan, why = plan_tree({'a/kernel': jnp.ones((4, 4)), 'a/bias': jnp.ones(4)}, 'rtn')
  >>> plan['a/kernel'][0], plan['a/bias'], why['a/bias']
  ('rtn', None, 'not a matrix')
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from jaxparams import tree as jtree

__all__ = ["DEFAULT_KEEP", "is_keep", "is_calibrated", "parse_spec", "normalize_rules",
           "plan_tree"]

# Leaves kept in full precision unless ``keep=`` says otherwise: (pattern, reason).
DEFAULT_KEEP: tuple[tuple[str, str], ...] = (
    (r"re:(.*/)?bias", "bias"),
    (r"re:.*(embed|embedding|wte|wpe|position_emb|token_type).*", "embedding"),
    (r"re:.*(norm|ln_\d*|ln_f|layernorm).*", "norm"),
    (r"re:.*(lm_head|output_embed|classifier|pooler).*", "lm head / pooler"),
)

_KEEP_WORDS = (None, "keep", "none", "fp", "full", "skip")


@dataclasses.dataclass(frozen=True)
class _Method:
  """A quantizer's record, as the rule parser sees it."""
  name: str
  record: Any
  config_cls: type
  calibrated: bool


def _method_names() -> list[str]:
  from jaxparams.quant import methods  # pylint: disable=g-import-not-at-top
  return sorted(methods.quantizer_names())


def _get(name: str) -> _Method:
  """The quantizer called ``name`` (ValueError listing the valid names if unknown)."""
  from jaxparams.quant import methods  # pylint: disable=g-import-not-at-top
  q = methods.get_quantizer(name)
  r = methods.get_record(q.name)
  return _Method(q.name, r, r.config, q.needs != "none")


def is_calibrated(method: str) -> bool:
  """Whether method ``method`` needs calibration statistics (ValueError if unknown).

  Example:
    >>> is_calibrated('gptq'), is_calibrated('rtn')
    (True, False)
  """
  return _get(method).calibrated


def _config_class(entry: _Method, name: str) -> type:
  return entry.config_cls


def _make_config(entry: Any, name: str, fields: Mapping[str, Any] | None, where: str):
  from jaxparams.quant import methods  # pylint: disable=g-import-not-at-top
  try:
    return methods.make_config(name, **dict(fields or {}))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None


def is_keep(spec: Any) -> bool:
  """Whether a rule value means "keep full precision" (``None`` or a keep word).

  Example:
    >>> [is_keep(w) for w in (None, 'keep', 'FULL', 'fp', 'rtn')]
    [True, True, True, True, False]
  """
  return spec is None or (isinstance(spec, str) and spec.lower() in _KEEP_WORDS)


def parse_spec(spec: Any, *, where: str = "rule") -> tuple[str, Any] | None:
  """Normalizes a rule value to ``(method_name, config)``, or ``None`` for keep.

  Example:
    >>> parse_spec('keep') is None
    True
    >>> name, cfg = parse_spec({'method': 'rtn', 'bits': 8})
    >>> name, cfg.bits
    ('rtn', 8)
  """
  if is_keep(spec):
    return None
  if isinstance(spec, str):
    name, fields = spec, None
  elif isinstance(spec, Mapping):
    fields = dict(spec)
    name = fields.pop("method", None)
    if name is None:
      raise ValueError(f"{where}: a dict spec needs a 'method' key, got {spec!r}")
    if is_keep(name):
      return None
  elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
    name, fields = spec
  else:
    raise ValueError(f"{where}: cannot read quantization spec {spec!r}; use a method name, "
                     "(name, config), {'method': name, ...} or 'keep'")
  name = name.lower()
  try:
    entry = _get(name)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{where}: unknown method {name!r}; valid: {_method_names()}") from e
  if fields is None or isinstance(fields, Mapping):
    cfg = _make_config(entry, name, fields, where)
  elif dataclasses.is_dataclass(fields):
    cfg = fields
    cls = _config_class(entry, name)
    if not isinstance(cfg, cls):
      raise ValueError(f"{where}: method {name!r} takes a {cls.__name__}, got "
                       f"{type(cfg).__name__}")
  else:
    raise ValueError(f"{where}: config for {name!r} must be a dataclass or dict, got {fields!r}")
  return name, cfg


def normalize_rules(rules: Any) -> list[tuple[Any, Any]]:
  """Accepts a spec (applied to ``'**'``), a list of ``(pattern, spec)``, or a list of dicts
  ``{'pattern': ..., 'method': ..., **config}`` (YAML form); returns ``[(pattern, spec)]``."""
  if rules is None:
    raise ValueError("quantize_tree: rules are required (e.g. [('**/kernel', 'rtn')])")
  if isinstance(rules, (str, Mapping)) and not (isinstance(rules, Mapping) and
                                                 "pattern" in rules):
    return [("**", rules)]
  if (isinstance(rules, tuple) and len(rules) == 2 and isinstance(rules[0], str)
      and (dataclasses.is_dataclass(rules[1]) or isinstance(rules[1], Mapping))):
    return [("**", rules)]
  if not isinstance(rules, (list, tuple)):
    raise ValueError(f"quantize_tree: rules must be a list of (pattern, spec), got {rules!r}")
  out = []
  for i, r in enumerate(rules):
    if isinstance(r, Mapping):
      r = dict(r)
      if "pattern" not in r:
        raise ValueError(f"rule {i}: a dict rule needs 'pattern', got {r!r}")
      pat = r.pop("pattern")
      out.append((pat, r if r.get("method") is not None else None))
    elif isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], (str, re.Pattern)):
      out.append((r[0], r[1]))
    else:
      raise ValueError(f"rule {i}: expected (pattern, spec) or a dict with 'pattern', got {r!r}")
  if not out:
    raise ValueError("quantize_tree: the rule list is empty")
  return out


def _is_matrix(x: Any) -> bool:
  return (hasattr(x, "shape") and hasattr(x, "dtype") and len(x.shape) >= 2
          and jnp.issubdtype(x.dtype, jnp.floating))


def plan_tree(flat: Mapping[str, Any], rules: Any, *,
              keep: Sequence[Any] = DEFAULT_KEEP) -> tuple[dict[str, tuple[str, Any] | None],
                                                          dict[str, str]]:
  """Decides what every leaf gets, without quantizing.

  Returns:
    ``(plan, reasons)``: ``plan[path]`` is ``(method, config)`` or ``None`` (keep);
    ``reasons[path]`` says why.

  Raises:
    ValueError (``jp.tree.NoMatchError``): a rule claims no candidate leaf; bad specs.
  """
  rules = normalize_rules(rules)
  keep_rules = [(k, "default") if isinstance(k, (str, re.Pattern)) else tuple(k) for k in keep]
  keep_match = [(jtree.compile_pattern(p), why) for p, why in keep_rules]
  reasons: dict[str, str] = {}
  candidates: dict[str, Any] = {}
  for path, leaf in flat.items():
    if not _is_matrix(leaf):
      reasons[path] = "not a matrix"
      continue
    why = next((w for m, w in keep_match if m(path)), None)
    if why is not None:
      reasons[path] = f"default: {why}"
      continue
    candidates[path] = leaf
  parsed = [(pat, parse_spec(spec, where=f"rule {i} ({pat!r})"))
            for i, (pat, spec) in enumerate(rules)]
  indexed = [(pat, i) for i, (pat, _) in enumerate(parsed)]
  try:
    if not candidates:
      raise jtree.NoMatchError("no leaf can be quantized (no floating matrix outside the kept "
                               "defaults)")
    which = jtree.resolve_rules(candidates, indexed, flat=True, strict=True)
  except jtree.NoMatchError as e:
    kept = [p for p, r in reasons.items() if r.startswith("default")]
    raise jtree.NoMatchError(
        f"quantize_tree: {e} (candidates are floating leaves with >= 2 dims not kept by "
        f"default; kept by default: {kept[:6]}{' ...' if len(kept) > 6 else ''}; pass keep=() "
        "to quantize those too)") from None
  plan: dict[str, tuple[str, Any] | None] = {}
  for path in flat:
    if path in which:
      i = which[path]
      plan[path] = parsed[i][1]
      reasons[path] = f"rule {i}" if parsed[i][1] is not None else f"rule {i}: keep"
    else:
      plan[path] = None
      reasons.setdefault(path, "no rule")
  return plan, reasons
