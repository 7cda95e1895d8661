"""Bounds on user inputs, derived from the model, checked before anything is allocated.

A hostile or careless input must fail with one line before it costs memory: ``--layers
0-1000000000`` would build a billion-entry list, ``pad_to_multiple_of: 1000000000`` a 477 GiB
embedding, a 200k-word prompt an XLA out-of-memory. Each helper checks against what the model
allows (its layer count, its ``max_position_embeddings``) or a fixed ceiling, and raises
``ValueError`` naming the option, the value and the limit.

Example:
  >>> parse_index_ranges('0,2-3', count=4)
  [0, 2, 3]
  >>> parse_index_ranges('0-1000000000', count=4)
  Traceback (most recent call last):
  ...
  ValueError: --layers '0-1000000000': layer 1000000000 does not exist (the model has 4 layers: 0 to 3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["parse_index_ranges", "max_positions", "check_token_count", "check_file_size",
           "check_pad_to_multiple_of", "MAX_PAD_TO_MULTIPLE_OF", "MAX_SPEC_CHARS"]

#: Largest ``pad_to_multiple_of`` accepted (mergekit recipes use 8 to 128).
MAX_PAD_TO_MULTIPLE_OF = 1 << 16
#: Longest index specification (``--layers``) accepted.
MAX_SPEC_CHARS = 4096


def _index(word: str, spec: str, what: str, unit: str, count: int) -> int:
  word = word.strip()
  if not word.isascii() or not word.isdigit() or len(word) > 12:
    raise ValueError(f"{what} {spec!r}: {word!r} is not a {unit} number (expected e.g. 3, 3,4,5 "
                     "or 3-5; numbers from 0).")
  i = int(word)
  if i >= count:
    raise ValueError(f"{what} {spec!r}: {unit} {i} does not exist (the model has {count} "
                     f"{unit}s: 0 to {count - 1}).")
  return i


def parse_index_ranges(spec: str, *, count: int, what: str = "--layers",
                       unit: str = "layer") -> list[int]:
  """``'3'``, ``'3,4,5'`` or ``'3-5'`` -> sorted distinct indices, each checked ``< count``
  before any range is expanded.

  Raises:
    ValueError: empty, not numbers, negative, a reversed range, an index ``>= count``.
  """
  spec = str(spec)
  if len(spec) > MAX_SPEC_CHARS:
    raise ValueError(f"{what}: {len(spec)} characters, more than {MAX_SPEC_CHARS}.")
  out: set[int] = set()
  for part in spec.split(","):
    part = part.strip()
    if not part:
      continue
    if part.startswith("-"):
      raise ValueError(f"{what} {spec!r}: {part!r}: {unit} numbers start at 0 (negative "
                       "indices are not accepted).")
    if "-" in part:
      a, _, b = part.partition("-")
      lo, hi = _index(a, spec, what, unit, count), _index(b, spec, what, unit, count)
      if hi < lo:
        raise ValueError(f"{what} {spec!r}: range {part!r} goes backwards.")
      out.update(range(lo, hi + 1))
    else:
      out.add(_index(part, spec, what, unit, count))
  if not out:
    raise ValueError(f"{what} {spec!r}: no {unit}s given.")
  return sorted(out)


def max_positions(config: Any) -> int | None:
  """The longest sequence a model config allows (``max_position_embeddings``), or ``None``.

  Example:
    >>> class C: max_position_embeddings = 512
    >>> max_positions(C())
    512
  """
  for name in ("max_position_embeddings", "max_positions", "n_positions", "max_len"):
    v = getattr(config, name, None)
    if v is None and isinstance(config, dict):
      v = config.get(name)
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
      return v
  return None


def check_token_count(n_tokens: int, limit: int | None, *, what: str) -> None:
  """Refuses a sequence longer than the model's positions (``limit`` ``None``: no limit).

  Example:
    >>> check_token_count(600, 512, what='requests.jsonl:1: prompt')
    Traceback (most recent call last):
    ...
    ValueError: requests.jsonl:1: prompt is 600 tokens; the model takes at most 512 (max_position_embeddings).
  """
  if limit is not None and n_tokens > limit:
    raise ValueError(f"{what} is {n_tokens} tokens; the model takes at most {limit} "
                     "(max_position_embeddings).")


def check_file_size(path: str | Path, max_bytes: int, *, what: str) -> int:
  """Refuses a file larger than ``max_bytes`` (``stat``, before reading); returns its size."""
  size = os.stat(path).st_size
  if size > max_bytes:
    raise ValueError(f"{path}: {what} is {size} bytes, more than the limit of {max_bytes}.")
  return size


def check_pad_to_multiple_of(value: Any, *, where: str, rows: int | None = None) -> int | None:
  """A positive integer no larger than :data:`MAX_PAD_TO_MULTIPLE_OF` (and, given the
  vocabulary's ``rows``, no more than doubling it).

  Example:
    >>> check_pad_to_multiple_of(1000000000, where='r.yml: tokenizer.pad_to_multiple_of')
    Traceback (most recent call last):
    ...
    ValueError: r.yml: tokenizer.pad_to_multiple_of: 1000000000 is larger than 65536.
  """
  if value is None:
    return None
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{where} must be a positive integer, found {value!r}.")
  if value > MAX_PAD_TO_MULTIPLE_OF:
    raise ValueError(f"{where}: {value} is larger than {MAX_PAD_TO_MULTIPLE_OF}.")
  if rows is not None and value > max(rows, 64):
    raise ValueError(f"{where}: {value} is more than the vocabulary's {rows} rows (padding "
                     "would more than double the embedding).")
  return value
