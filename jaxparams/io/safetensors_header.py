"""Strict safetensors header parsing, exactly as the format (and its official reader) specifies.

The file is ``8-byte little-endian N`` + ``N bytes of UTF-8 JSON`` + the data
buffer. The JSON must be an object whose keys are tensor names (values:
``{"dtype": str, "shape": [uint64, ...], "data_offsets": [begin, end]}``) plus
an optional ``"__metadata__"`` map of str to str. Sorted by offsets, the tensors
must tile the data buffer exactly: contiguous, non-overlapping, each covering
``prod(shape) * bits(dtype) / 8`` bytes, the last one ending at the end of the
file. Numbers must be integers in ``[0, 2**64)``; NaN/Infinity, lone
surrogates, nesting deeper than the official reader's limit and duplicate keys
are refused (duplicate keys are refused even where the official reader keeps
the last one: which tensor is meant would be ambiguous).

Parsing is linear in the header size (no per-entry quadratic work), and every
error is one ``ValueError`` naming the file, never echoing raw file bytes.
"""

# Exact JSON types are checked with `type(x) is int` (a bool is not an int here).
# pylint: disable=unidiomatic-typecheck
from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["DTYPE_BITS", "MAX_HEADER_BYTES", "parse_header", "read_header_length"]

# Every dtype the official reader (safetensors 0.8) accepts, with its size in bits.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
MAX_HEADER_BYTES = 100_000_000  # the official reader's limit
_U64 = 2**64 - 1
_MAX_DEPTH = 127  # containers; the official reader (serde_json) refuses deeper nesting
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_FIELDS = ("dtype", "shape", "data_offsets")


def _short(name: Any) -> str:
  """A name for an error message: repr'd (escapes control characters), truncated."""
  r = repr(name)
  return r if len(r) <= 80 else r[:77] + "..."


class _HeaderError(ValueError):
  pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  d = dict(pairs)
  if len(d) != len(pairs):
    seen = set()
    for k, _ in pairs:
      if k in seen:
        raise _HeaderError(f"duplicate key {_short(k)}")
      seen.add(k)
  return d


def _constant(s: str) -> Any:
  raise _HeaderError(f"{s} is not allowed in a safetensors header")


def _float(s: str) -> float:
  v = float(s)
  if not math.isfinite(v):
    raise _HeaderError("number out of range")
  return v


def _neg_zero_int(s: str) -> Any:
  return -0.0 if s == "-0" else int(s)  # JSON -0 is a float for the official reader


def read_header_length(head: bytes, file_size: int, where: str) -> int:
  """Validates the 8-byte length prefix against the file size; returns N.

  The message never repeats the 8 bytes themselves (they may be any file's content).

  Example:
    >>> read_header_length((16).to_bytes(8, 'little'), 24, 'f')
    16
  """
  if len(head) < 8:
    raise ValueError(f"{where}: not a safetensors file: {file_size} bytes, shorter than the "
                     "8-byte header length.")
  n = int.from_bytes(head[:8], "little")
  if n > MAX_HEADER_BYTES or 8 + n > file_size:
    raise ValueError(f"{where}: not a safetensors file (or truncated): its 8-byte header "
                     f"length does not fit the file ({file_size} bytes) and the "
                     f"{MAX_HEADER_BYTES}-byte header limit.")
  if n < 2:
    raise ValueError(f"{where}: not a safetensors file: empty header.")
  return n


def _check_values(value: Any, where: str, depth: int) -> None:
  """Walks free JSON (unknown fields) for nesting depth and numbers out of range."""
  stack = [(value, depth)]
  while stack:
    v, d = stack.pop()
    if isinstance(v, (dict, list)):
      if d > _MAX_DEPTH:
        raise ValueError(f"{where}: corrupt safetensors header: nesting deeper than "
                         f"{_MAX_DEPTH} levels.")
      stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    elif type(v) is int and abs(v) > _U64:
      try:
        float(v)
      except OverflowError:
        raise ValueError(f"{where}: corrupt safetensors header: number out of range.") from None


def _check_strings(value: Any, where: str) -> None:
  """Refuses lone surrogates anywhere (they are not valid UTF-8 text)."""
  stack = [value]
  while stack:
    v = stack.pop()
    if isinstance(v, str):
      try:
        v.encode("utf-8")
      except UnicodeEncodeError:
        raise ValueError(f"{where}: corrupt safetensors header: a string holds a lone UTF-16 "
                         "surrogate (not valid UTF-8 text).") from None
    elif isinstance(v, dict):
      stack.extend(v.keys())
      stack.extend(v.values())
    elif isinstance(v, list):
      stack.extend(v)


def _uint(v: Any) -> bool:
  return type(v) is int and 0 <= v <= _U64


def _loads(text: str, raw: bytes, where: str) -> Any:
  """Strict JSON: duplicate keys, NaN/Infinity, out-of-range numbers and -0 refused."""
  parse_int = _neg_zero_int if "-0" in text else None
  try:
    header = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=parse_int)
    if isinstance(header, dict):
      # Fast duplicate-key check: every key is followed by one ':' outside strings; if the text
      # has no more ':' than the parsed objects have keys, no key was dropped as a duplicate.
      keys = len(header) + sum(map(len, (v for v in header.values() if type(v) is dict)))
      if raw.count(b":") != keys:
        header = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant,
                            parse_float=_float, parse_int=parse_int)
    return header
  except _HeaderError as e:
    raise ValueError(f"{where}: corrupt safetensors header: {e}.") from None
  except RecursionError:
    raise ValueError(f"{where}: corrupt safetensors header: nesting too deep.") from None
  except ValueError as e:  # JSONDecodeError; int() digit limits
    msg = e.msg if isinstance(e, json.JSONDecodeError) else "number out of range"
    pos = f" at byte {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
    raise ValueError(f"{where}: corrupt safetensors header: invalid JSON ({msg}{pos}).") from None


def _bad_entry(where: str, name: str, info: Any) -> ValueError:
  """The precise complaint about an entry the fast path did not accept."""
  if type(info) is not dict:
    return ValueError(f"{where}: tensor {_short(name)}: header entry is not an object with "
                      "dtype, shape and data_offsets.")
  for field in _FIELDS:
    if field not in info:
      return ValueError(f"{where}: tensor {_short(name)}: header entry lacks {field!r}.")
  dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
  if type(dtype) is not str or dtype not in DTYPE_BITS:
    return ValueError(f"{where}: tensor {_short(name)}: unknown safetensors dtype "
                      f"{_short(dtype)}; the format defines {', '.join(DTYPE_BITS)}.")
  if type(shape) is not list or not all(_uint(d) for d in shape):
    return ValueError(f"{where}: tensor {_short(name)}: shape must be a list of integers in "
                      "[0, 2**64).")
  if (type(offsets) is not list or len(offsets) != 2
      or not _uint(offsets[0]) or not _uint(offsets[1])):
    return ValueError(f"{where}: tensor {_short(name)}: data_offsets must be two integers in "
                      "[0, 2**64).")
  n = 1
  for d in shape:
    n *= d
    if n > _U64:
      return ValueError(f"{where}: tensor {_short(name)}: shape {_short(shape)} overflows "
                        "64 bits.")
  bits = DTYPE_BITS[dtype]
  if n * bits > _U64:
    return ValueError(f"{where}: tensor {_short(name)}: shape x dtype size overflows 64 bits.")
  return ValueError(f"{where}: tensor {_short(name)}: {n} x {bits}-bit {dtype} values do not "
                    "fill whole bytes.")


def parse_header(raw: bytes, data_size: int, where: str
                 ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
  """Parses and validates header bytes; returns ``(metadata, {name: entry})`` in header order.

  Each entry is the header's own object: ``{"dtype": str, "shape": [int],
  "data_offsets": [begin, end]}`` (offsets relative to the data buffer), validated.

  Args:
    raw: the N header bytes (after the 8-byte length).
    data_size: bytes after the header (file size - 8 - N).
    where: the file, for messages.

  Raises:
    ValueError: anything the format forbids, naming ``where`` (and the tensor).

  Example:
    >>> meta, entries = parse_header(
    ...     b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8, 'f.safetensors')
    >>> entries['a']['shape'], entries['a']['data_offsets']
    ([2], [0, 8])
  """
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    raise ValueError(f"{where}: corrupt safetensors header: not valid UTF-8.") from None
  header = _loads(text, raw, where)
  if not isinstance(header, dict):
    raise ValueError(f"{where}: corrupt safetensors header: not a JSON object.")
  if _SURROGATE.search(raw):
    _check_strings(header, where)

  metadata = header.pop("__metadata__", None)
  if metadata is None:
    metadata = {}
  elif not isinstance(metadata, dict) or not all(type(v) is str for v in metadata.values()):
    raise ValueError(f"{where}: corrupt safetensors header: '__metadata__' must be a map of "
                     "strings to strings.")

  # One pass: validate each entry and, while the entries come in offset order (the usual
  # case), check that they tile the data buffer. Plain loops, no objects: linear and fast.
  u64, bits_of, int_, list_, dict_ = _U64, DTYPE_BITS.get, int, list, dict
  pos = 0
  in_order = True
  for name, info in header.items():
    if type(info) is not dict_ or len(info) < 3:
      raise _bad_entry(where, name, info)
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    bits = bits_of(dtype) if type(dtype) is str else None
    if bits is None or type(shape) is not list_ or type(offsets) is not list_ or len(offsets) != 2:
      raise _bad_entry(where, name, info)
    n = 1
    for d in shape:
      if type(d) is not int_ or d < 0 or d > u64:
        raise _bad_entry(where, name, info)
      n *= d
      if n > u64:
        raise _bad_entry(where, name, info)
    start, end = offsets
    if (type(start) is not int_ or type(end) is not int_ or start < 0 or end < 0
        or start > u64 or end > u64):
      raise _bad_entry(where, name, info)
    nbits = n * bits
    if nbits > u64 or nbits & 7:
      raise _bad_entry(where, name, info)
    if len(info) > 3:
      _check_values({k: v for k, v in info.items() if k not in _FIELDS}, where, 2)
    if in_order:
      if start == pos and (end - start) << 3 == nbits:
        pos = end
      else:
        in_order = False
  if not in_order:
    pos = _check_tiling(header, where)
  if pos > data_size:
    name = next(n for n, e in header.items() if e["data_offsets"][1] > data_size)
    raise ValueError(f"{where}: tensor {_short(name)}: truncated file: its data ends at byte "
                     f"{header[name]['data_offsets'][1]} of the data buffer, which holds only "
                     f"{data_size} bytes.")
  if pos != data_size:
    raise ValueError(f"{where}: the tensors cover {pos} data bytes but the file holds "
                     f"{data_size} after the header (trailing bytes).")
  return metadata, header


def _check_tiling(header: dict[str, dict[str, Any]], where: str) -> int:
  """Sorted by offsets, tensors must be contiguous and of their size; returns the end."""
  entries = [(e["data_offsets"][0], e["data_offsets"][1],
              math.prod(e["shape"]) * DTYPE_BITS[e["dtype"]] >> 3, name)
             for name, e in header.items()]
  entries.sort(key=lambda x: (x[0], x[1]))
  pos = 0
  for start, end, size, name in entries:
    if start != pos or end < start:
      raise ValueError(f"{where}: tensor {_short(name)}: data_offsets [{start}, {end}] are not "
                       f"contiguous with the previous tensor (expected to start at {pos}): "
                       "overlapping, out of order or leaving a gap.")
    if end - start != size:
      raise ValueError(f"{where}: tensor {_short(name)}: data_offsets cover {end - start} bytes "
                       f"but its shape and dtype need {size}.")
    pos = end
  return pos
