"""One parser for byte sizes given by users (``--max-shard-size 5GB``), used by every command."""

from __future__ import annotations

import math

__all__ = ["parse_size"]

_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_size(size: str | int | float, *, what: str = "size") -> int:
  """Bytes from ``'5GB'``, ``'500M'``, ``'2GiB'``, ``'5e9'``, mergekit's ``'5B'`` or a number.

  Args:
    size: the text or number.
    what: the parameter's name for the message (``'--max-shard-size'``).

  Raises:
    ValueError: not a finite, positive size (``inf``, ``nan``, ``-1``, ``abc``), naming ``what``.

  Example:
    >>> parse_size('500M'), parse_size('2GB'), parse_size('5B'), parse_size('1KiB')
    (500000000, 2000000000, 5000000000, 1024)
  """
  if isinstance(size, bool):
    value = math.nan
  elif isinstance(size, (int, float)):
    value = size
  else:
    s = str(size).strip().upper().replace("_", "")
    mult = 1
    if len(s) > 1 and s.endswith("B") and (s[-2].isdigit() or s[-2] == "."):
      s, mult = s[:-1], 10**9  # mergekit: '5B' = five billion
    else:
      s = s.removesuffix("B")
      for unit in ("KI", "MI", "GI", "TI", "K", "M", "G", "T"):
        if s.endswith(unit):
          s, mult = s[:-len(unit)], _UNITS[unit]
          break
    try:
      value = float(s) * mult if len(s) <= 40 else math.nan
    except ValueError:
      value = math.nan
  if not math.isfinite(value) or value < 1 or value >= 2**63:
    raise ValueError(f"{what}: invalid size {size!r}; use a positive number of bytes or e.g. "
                     "5GB, 500MB, 2GiB.")
  return int(value)
