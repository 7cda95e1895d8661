"""Quantization rules from command-line flags and YAML rules files (used by the CLI and notebooks).

* :func:`flag_fields`: the config fields that ``--bits/--group-size/--act-order/--symmetric``
  mean for one method (nf4 takes a block size; fp8 is 8-bit only).
* :func:`read_rules`: a YAML list of ``{pattern: GLOB, method: NAME, ...}`` into
  ``[(pattern, spec)]`` for :func:`jaxparams.quant.quantize_tree` /
  :func:`jaxparams.quant.quantize_checkpoint`. Each spec goes through the library's one
  parser (:func:`jaxparams.quant.rules.parse_spec`), so the keep words (``keep``,
  ``none``, ``fp``, ``full``, ``skip``) and method names are the library's.

Example:
  >>> flag_fields('nf4', 4, 64)
  {'block_size': 64}
  >>> flag_fields('gptq', 3, 64, act_order=True)['act_order']
  True
  >>> flag_fields('fp8', 8, -1)
  {'group_size': None}
  >>> flag_fields('hqq', 4, 64, symmetric=True)
  Traceback (most recent call last):
  ...
  ValueError: --symmetric does not apply to --method hqq; methods that take it: autoround, awq, gptq, omniquant, rtn
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxparams.quant import methods as qmethods
from jaxparams.quant import rules as qrules

__all__ = ["flag_fields", "read_rules", "method_names"]


def method_names() -> list[str]:
  """The registered quantization methods (the CLI's ``--method`` choices)."""
  return qmethods.quantizer_names()


def flag_fields(method: str, bits: int, group_size: int, *, act_order: bool | None = None,
                symmetric: bool = False) -> dict[str, Any]:
  """The config fields the command-line flags mean for ``method``.

  ``--symmetric`` and ``--act-order`` apply to the methods whose config has that field
  (``symmetric``: rtn, gptq, awq; ``act_order``: gptq, decoupleq) and are refused for
  the others, rather than ignored. GPTQ runs with act-order unless ``act_order=False``
  (``--no-act-order``): on all-MiniLM-L6-v2 it lifts the mean cosine at 4-bit g128 from 0.977
  to 0.981 and at 3-bit g64 from 0.915 to 0.931 (issue 16's table).

  Raises:
    ValueError: a width the method does not have (nf4 is 4-bit, fp8 8-bit), a flag the
      method does not have, or an unknown method (listing the valid ones).
  """
  q = qmethods.get_quantizer(method)
  has = {f.name for f in dataclasses.fields(q.config_cls)}
  for flag, field, on in (("--symmetric", "symmetric", symmetric),
                          ("--act-order", "act_order", act_order)):
    if on and field not in has:
      takes = sorted(m for m in method_names()
                     if field in {f.name for f in
                                  dataclasses.fields(qmethods.get_quantizer(m).config_cls)})
      raise ValueError(f"{flag} does not apply to --method {method}; methods that take it: "
                       f"{', '.join(takes)}")
  group = None if group_size in (-1, 0) else group_size
  if method == "nf4":
    if bits != 4:
      raise ValueError(f"--method nf4 is 4-bit only, got --bits {bits}")
    return {"block_size": group}
  if method in ("fp8", "rf8"):
    if bits not in (4, 8):   # 4 is the CLI default: fp8 and rf8 ignore it
      raise ValueError(f"--method {method} is 8-bit only, got --bits {bits}")
    return {"group_size": group}
  fields: dict[str, Any] = {"bits": bits, "group_size": group}
  if method == "gptq":   # act-order on unless refused (--no-act-order): measured to help
    fields["act_order"] = True if act_order is None else bool(act_order)
  elif act_order:
    fields["act_order"] = True
  if symmetric:
    fields["symmetric"] = True
  return fields


def read_rules(path: str | Path, default_method: str, default_fields: dict[str, Any]
               ) -> list[tuple[str, Any]]:
  """Reads a YAML rules file into ``[(pattern, spec)]`` (validated by the library parser).

  Entries without ``method`` use ``default_method`` with ``default_fields``; an entry
  naming another method inherits ``bits``/``group_size`` from the defaults (not for
  nf4/fp8, which have fixed widths). A keep word as ``method`` keeps full precision.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a non-empty list of mappings with ``pattern``; unknown methods or
      fields (listing the valid ones).
  """
  from jaxparams.io.recipe_yaml import read_recipe_yaml  # pylint: disable=g-import-not-at-top
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such rules file")
  data = read_recipe_yaml(path, what="rules file")
  if isinstance(data, dict) and "rules" in data:
    data = data["rules"]
  if not isinstance(data, list) or not data:
    raise ValueError(f"{path}: expected a non-empty YAML list of rules "
                     "({pattern: ..., method: ..., bits: ...})")
  out = []
  for i, r in enumerate(data):
    if not isinstance(r, dict) or "pattern" not in r:
      raise ValueError(f"{path}: rule {i} must be a mapping with 'pattern', got {r!r}")
    r = dict(r)
    pat = str(r.pop("pattern"))
    method = r.pop("method", default_method)
    if qrules.is_keep(method):
      out.append((pat, None))
      continue
    method = str(method).lower()
    fields = dict(default_fields) if method == default_method else {}
    if method != default_method and "bits" in default_fields and method not in ("nf4", "fp8", "rf8"):
      fields["bits"] = default_fields["bits"]
      fields["group_size"] = default_fields.get("group_size", 128)
    fields.update(r)
    spec = (method, fields)
    try:
      qrules.parse_spec(spec, where=f"rule {i} ({pat!r})")
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None
    out.append((pat, spec))
  return out
