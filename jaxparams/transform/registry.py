"""A registry of transform records (one per area: merge methods, quantizers...).

Example:
  >>> import dataclasses
  >>> from jaxparams.transform.record import Transform
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class NoConfig:
  ...   pass
  >>> reg = Registry('demo')
  >>> reg.register(Transform(name='identity', fn=lambda x, c: x, config=NoConfig))
  >>> reg.names()
  ['identity']
  >>> reg.get('idnetity')
  Traceback (most recent call last):
  ...
  ValueError: unknown demo 'idnetity'; valid names: identity (did you mean 'identity'?)
"""

from __future__ import annotations

import difflib
from typing import Iterable, Iterator

from jaxparams.transform.record import Transform

__all__ = ["Registry"]


class Registry:
  """Name -> :class:`Transform`, filled once by the area that owns it.

  Args:
    kind: what the records are, for error messages (``'merge method'``).
    records: initial records.
  """

  def __init__(self, kind: str, records: Iterable[Transform] = ()):
    self.kind = kind
    self._records: dict[str, Transform] = {}
    for r in records:
      self.register(r)

  def register(self, record: Transform) -> None:
    """Adds ``record``; a second record with the same name is an error."""
    if not isinstance(record, Transform):
      raise ValueError(f"{self.kind} registry: expected a Transform, got {type(record).__name__}")
    if record.name in self._records:
      raise ValueError(f"{self.kind} {record.name!r} is already registered")
    self._records[record.name] = record

  def get(self, name: str) -> Transform:
    """The record called ``name``; ``ValueError`` listing the valid names if unknown."""
    try:
      return self._records[name]
    except (KeyError, TypeError):
      close = difflib.get_close_matches(str(name), self.names(), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"unknown {self.kind} {name!r}; valid names: "
                       f"{', '.join(self.names())}{hint}") from None

  def names(self) -> list[str]:
    """All names, sorted."""
    return sorted(self._records)

  def __contains__(self, name: object) -> bool:
    return name in self._records

  def __iter__(self) -> Iterator[Transform]:
    return iter(self._records[n] for n in self.names())

  def __len__(self) -> int:
    return len(self._records)
