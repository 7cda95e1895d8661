"""Byte sizes as mergekit and humans write them (``5GB``, ``500M``, mergekit's ``5B``)."""

from __future__ import annotations

__all__ = ["parse_size"]


def parse_size(size: str | int | float) -> int:
  """Bytes from ``'5GB'``, ``'500M'``, ``'5e9'``, mergekit's ``'5B'`` (billion) or a number.

  Example:
    >>> parse_size('500M'), parse_size('2GB'), parse_size('5B'), parse_size(1024)
    (500000000, 2000000000, 5000000000, 1024)
  """
  if isinstance(size, (int, float)):
    return int(size)
  s = str(size).strip().upper()
  mult = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
  try:
    if len(s) > 1 and s.endswith("B") and (s[-2].isdigit() or s[-2] == "."):
      return int(float(s[:-1]) * 10**9)  # mergekit: '5B' = five billion
    s = s.removesuffix("B").removesuffix("I")
    if s and s[-1] in mult:
      return int(float(s[:-1]) * mult[s[-1]])
    return int(float(s))
  except ValueError:
    raise ValueError(f"invalid size {size!r}; use e.g. 5GB, 500M or a number of bytes.") from None
