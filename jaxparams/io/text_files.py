"""Text and JSON files from users or model folders: size-bounded, inside their folder, one-line
errors naming them.

Every reader of a small text input (configs, adapter configs, tokenizers, requests, recipes)
goes through :func:`read_bytes`: the size is taken with ``os.stat`` *before* anything is read
(and at most ``max_bytes + 1`` bytes are ever read, so a file growing meanwhile is caught too),
the file must be a regular file, and it must not resolve outside ``folder`` when one is given
(every reader of a model or adapter folder gives it; a symlink to
``/etc/passwd`` is refused without reading it, so no outside content can end up in a message or
an output). :func:`read_json` refuses ``NaN``/``Infinity`` literals, duplicate keys and deep
nesting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jaxparams.io.paths import allowed_roots

__all__ = ["read_bytes", "read_json", "read_text", "parse_json", "describe", "MAX_TEXT_BYTES"]

#: Default size limit of a small text input (a config, a recipe, a requests file).
MAX_TEXT_BYTES = 64 * 2**20


def describe(value: Any, width: int = 60) -> str:
  """A short description of a JSON value for messages: its JSON type and a clipped repr.

  Example:
    >>> describe([1, 2]), describe('x' * 100)[:20]
    ('list [1, 2]', "string 'xxxxxxxxxxxx")
  """
  kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
          dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
  if value is None:
    return "null"
  text = repr(value)
  if len(text) > width:
    text = text[:width] + "..."
  return f"{kind} {text}"


def read_bytes(path: str | Path, *, what: str = "file", max_bytes: int = MAX_TEXT_BYTES,
               folder: str | Path | None = None) -> bytes:
  """The bytes of a regular file, size-checked before reading, refused if it leads outside.

  Args:
    path: the file.
    what: what it is, for messages (``'adapter_config.json'``).
    max_bytes: refuse a larger file (checked with ``os.stat`` before any read).
    folder: the folder the file must really live in (symlinks resolved; a Hugging Face cache
      snapshot may also point into its ``blobs``): every file of a model or adapter folder
      passes it; ``None`` (a path the user named directly, e.g. a recipe): not checked.

  Raises:
    FileNotFoundError: no such file.
    ValueError: outside ``folder``, not a regular file, or larger than ``max_bytes``.

  Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); os.symlink('/etc/hostname', os.path.join(d, 'config.json'))
    >>> read_bytes(os.path.join(d, 'config.json'), what='config.json', folder=d)
    Traceback (most recent call last):
    ...
    ValueError: .../config.json: config.json is a symlink to /etc/hostname, outside its folder ...
  """
  path = Path(path)
  if not path.exists() and not path.is_symlink():
    raise FileNotFoundError(f"{path}: no such {what}")
  if folder is not None:
    real = path.resolve()
    if not any(real == r or real.is_relative_to(r) for r in allowed_roots(folder)):
      raise ValueError(f"{path}: {what} is a symlink to {real}, outside its folder "
                       f"{Path(folder).resolve()}; refusing to read it (copy the file instead).")
  if not path.is_file():
    raise ValueError(f"{path}: {what} is not a regular file")
  size = os.stat(path).st_size
  if size > max_bytes:
    raise ValueError(f"{path}: {what} is {size} bytes, more than the limit of {max_bytes} bytes")
  with open(path, "rb") as f:
    data = f.read(max_bytes + 1)
  if len(data) > max_bytes:  # grew while we looked
    raise ValueError(f"{path}: {what} is more than the limit of {max_bytes} bytes")
  return data


def read_text(path: str | Path, *, what: str = "file", max_bytes: int = MAX_TEXT_BYTES,
              folder: str | Path | None = None) -> str:
  r"""The UTF-8 text of a file (:func:`read_bytes`'s checks); a non-UTF-8 file is a ``ValueError``.

  Args:
    path: the file (a recipe, a config, a calibration text...).
    what: what it is, for the message (``'recipe'``).
    max_bytes: size limit, checked before reading.
    folder: the folder it must live in (``None``: not checked).

  Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'r.yml')
    >>> _ = open(p, 'wb').write(b'\xffbad')
    >>> read_text(p, what='recipe')
    Traceback (most recent call last):
    ...
    ValueError: .../r.yml: recipe is not valid UTF-8 text (byte 0 is 0xff).
  """
  data = read_bytes(path, what=what, max_bytes=max_bytes, folder=folder)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: {what} is not valid UTF-8 text (byte {e.start} is "
                     f"0x{data[e.start]:02x}).") from None


def _no_constant(name: str) -> Any:
  raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in pairs:
    if k in out:
      raise ValueError(f"duplicate key {k[:60]!r}")
    out[k] = v
  return out


def parse_json(text: str, where: str, what: str = "JSON file") -> Any:
  """``json.loads`` with one-line errors naming ``where``; NaN/Infinity, duplicate keys refused.

  Example:
    >>> parse_json('{"a": NaN}', 'c.json')
    Traceback (most recent call last):
    ...
    ValueError: c.json: JSON file is not valid JSON (NaN is not a JSON number).
  """
  try:
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
  except RecursionError:
    raise ValueError(f"{where}: {what}: JSON nested too deeply.") from None
  except json.JSONDecodeError as e:
    if "\n" in text.strip():  # a multi-line file: name the line, as an editor would
      raise ValueError(f"{where}:{e.lineno}: {what} is not valid JSON ({e.msg}, column "
                       f"{e.colno}).") from None
    raise ValueError(f"{where}: {what} is not valid JSON ({e}).") from None
  except ValueError as e:
    raise ValueError(f"{where}: {what} is not valid JSON ({e}).") from None


def read_json(path: str | Path, *, what: str = "JSON file", max_bytes: int = MAX_TEXT_BYTES,
              folder: str | Path | None = None) -> Any:
  """Reads a JSON file with one-line errors naming it (bad UTF-8, bad JSON, too deep, too large,
  outside its folder).

  Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'c.json')
    >>> _ = open(p, 'w').write('{"a": 1}')
    >>> read_json(p)
    {'a': 1}
  """
  return parse_json(read_text(path, what=what, max_bytes=max_bytes, folder=folder), str(path),
                    what)
