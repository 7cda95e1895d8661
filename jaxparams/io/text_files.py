"""Text and JSON files from users or model folders, with one-line errors naming them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json", "read_text"]


def read_text(path: str | Path, *, what: str = "file") -> str:
  r"""The UTF-8 text of a file; a non-UTF-8 file is a ``ValueError`` naming it.

  Args:
    path: the file (a recipe, a config, a calibration text...).
    what: what it is, for the message (``'recipe'``).

  Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'r.yml')
    >>> _ = open(p, 'wb').write(b'\xffbad')
    >>> read_text(p, what='recipe')
    Traceback (most recent call last):
    ...
    ValueError: .../r.yml: recipe is not valid UTF-8 text (byte 0 is 0xff).
  """
  path = Path(path)
  data = path.read_bytes()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: {what} is not valid UTF-8 text (byte {e.start} is "
                     f"0x{data[e.start]:02x}).") from None


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
  """Reads a JSON file with one-line errors naming it (bad UTF-8, bad JSON, too deep).

  Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'c.json')
    >>> _ = open(p, 'w').write('{"a": 1}')
    >>> read_json(p)
    {'a': 1}
  """
  text = read_text(path, what=what)
  try:
    return json.loads(text)
  except RecursionError:
    raise ValueError(f"{path}: {what}: JSON nested too deeply.") from None
  except ValueError as e:
    raise ValueError(f"{path}: {what} is not valid JSON ({e}).") from None
