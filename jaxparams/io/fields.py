"""A small strict validator for JSON fields: the type checks behind the io readers.

Why our own and not pydantic: pydantic is not a dependency, and its default ("lax") mode coerces
exactly the values these readers must refuse (``"16"`` -> 16, ``8.0`` -> 8, ``"no"`` -> False for
a bool); strict mode fixes that but still needs a message rewrite to name the file. The checks we
need are few (integer, number, boolean, string, string list, mapping of those, with ranges), so
each is one function here raising ``ValueError("<file>: field 'x' must be <expected>, found
<type value>")``; the readers build frozen dataclasses from the checked values.

``bool`` is never an integer or a number here (JSON ``true`` is not ``1``), a float is never an
integer (``8.7`` and ``8.0`` are refused for ``r``), numbers must be finite.

Example:
  >>> expect_int('a.json', 'r', 8.7, lo=1)
  Traceback (most recent call last):
  ...
  ValueError: a.json: field 'r' must be an integer in [1, 2147483647], found number 8.7
  >>> expect_bool('a.json', 'use_rslora', 'no')
  Traceback (most recent call last):
  ...
  ValueError: a.json: field 'use_rslora' must be true or false, found string 'no'
"""

from __future__ import annotations

import math
import re
from typing import Any

from jaxparams.io.text_files import describe

__all__ = ["expect_int", "expect_number", "expect_bool", "expect_str", "expect_str_list",
           "expect_mapping", "expect_object", "expect_regex", "MAX_INT"]

#: Upper bound of any integer field (sizes, ranks, counts): beyond this nothing can be allocated.
MAX_INT = 2**31 - 1


def _range(lo: float | None, hi: float | None) -> str:
  if lo is not None and hi is not None:
    return f" in [{lo}, {hi}]"
  if lo is not None:
    return f" >= {lo}"
  return f" <= {hi}" if hi is not None else ""


def expect_int(where: str, name: str, value: Any, *, lo: int | None = None,
               hi: int | None = MAX_INT) -> int:
  """``value`` if it is a JSON integer (not a bool, not a float) in ``[lo, hi]``."""
  if isinstance(value, bool) or not isinstance(value, int) or (
      lo is not None and value < lo) or (hi is not None and value > hi):
    raise ValueError(f"{where}: field {name!r} must be an integer{_range(lo, hi)}, found "
                     f"{describe(value)}")
  return value


def expect_number(where: str, name: str, value: Any, *, lo: float | None = None,
                  hi: float | None = None) -> float:
  """``value`` if it is a finite JSON number (not a bool) in ``[lo, hi]``."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
      value) or (lo is not None and value < lo) or (hi is not None and value > hi):
    raise ValueError(f"{where}: field {name!r} must be a finite number{_range(lo, hi)}, found "
                     f"{describe(value)}")
  return value


def expect_bool(where: str, name: str, value: Any) -> bool:
  """``value`` if it is JSON ``true`` or ``false`` (not ``"no"``, not ``0``)."""
  if not isinstance(value, bool):
    raise ValueError(f"{where}: field {name!r} must be true or false, found {describe(value)}")
  return value


def expect_str(where: str, name: str, value: Any, *, choices: tuple[str, ...] | None = None,
               optional: bool = False, max_len: int = 4096) -> str | None:
  """``value`` if it is a string (one of ``choices``); ``None`` allowed when ``optional``."""
  if value is None and optional:
    return None
  if isinstance(value, str) and len(value) > max_len:
    raise ValueError(f"{where}: field {name!r} must be a string of at most {max_len:,} "
                     f"characters, found one of {len(value):,}")
  if not isinstance(value, str) or (choices and value not in choices):
    exp = f"one of {list(choices)}" if choices else "a string"
    if optional:
      exp += " or null"
    raise ValueError(f"{where}: field {name!r} must be {exp}, found {describe(value)}")
  return value


def expect_regex(where: str, name: str, value: Any) -> str:
  """``value`` if it is a string that compiles as a Python regular expression."""
  expect_str(where, name, value)
  try:
    re.compile(value)
  except re.error as e:
    raise ValueError(f"{where}: field {name!r} is not a valid regular expression ({e})") from None
  return value


def expect_str_list(where: str, name: str, value: Any, *, optional: bool = True,
                    max_items: int = 100_000) -> tuple[str, ...] | None:
  """A list of strings as a tuple (``None`` when ``optional`` and null)."""
  if value is None and optional:
    return None
  if not isinstance(value, list) or len(value) > max_items or not all(
      isinstance(v, str) and len(v) <= 4096 for v in value):
    raise ValueError(f"{where}: field {name!r} must be a list of strings"
                     f"{' or null' if optional else ''}, found {describe(value)}")
  return tuple(value)


def expect_object(where: str, value: Any, what: str = "file") -> dict:
  """``value`` if it is a JSON object (the top level of a config file)."""
  if not isinstance(value, dict):
    lead = f"{what} " if what else ""
    raise ValueError(f"{where}: {lead}must be a JSON object, found {describe(value)}")
  return value


def expect_mapping(where: str, name: str, value: Any, check_value) -> dict[str, Any]:
  """A JSON object (or null -> ``{}``) whose values pass ``check_value(where, key_name, v)``."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise ValueError(f"{where}: field {name!r} must be an object or null, found "
                     f"{describe(value)}")
  return {k: check_value(where, f"{name}[{k[:60]}]", v) for k, v in value.items()}
