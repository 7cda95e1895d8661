"""Parsing of the ``:arg`` string of ``--config=configs/NAME.py:arg`` (big_vision style).

``'runlocal'`` sets a boolean; ``'key=value,key2=value2'`` sets typed values; unknown keys raise.

Example:
  >>> a = parse_arg('runlocal,variant=small', runlocal=False, variant='base', steps=10)
  >>> (a.runlocal, a.variant, a.steps)
  (True, 'small', 10)
  >>> parse_arg(None, runlocal=False).runlocal
  False
"""

from __future__ import annotations

from typing import Any

import ml_collections

__all__ = ["parse_arg"]


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``arg`` against ``defaults`` (which give the valid keys and their types).

  Raises:
    ValueError: an unknown key, or a value that does not convert to the default's type.
  """
  out = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid: "
                       f"{', '.join(sorted(defaults))}")
    kind = type(defaults[key])
    if not sep:
      if kind is not bool:
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key!r} must be true/false, found {value!r}")
      out[key] = value.lower() in ("true", "1")
    else:
      try:
        out[key] = kind(value)
      except ValueError as e:
        raise ValueError(f"config argument {key}={value!r} is not a {kind.__name__}") from e
  return ml_collections.ConfigDict(out)
