"""The one reader of calibration text files (one sample per line), strict like the tensor readers.

Every entry that takes calibration text from a file (``jaxparams quantize/prune --calibration``,
merge recipes' ``calibration:``, ``jaxparams edit --stats-text``, the library functions behind
them) reads it with :func:`read_calibration_text`:

* the size is checked (``stat``) before anything is read, and each line's length before any
  line is kept, so a hostile file cannot allocate more than ``max_bytes``;
* the file must be UTF-8 text: invalid UTF-8 and binary content (NUL or other control bytes)
  are refused with the file, the line and the byte;
* a symlink leading outside the folder the file sits in is refused, never followed;
* a file with no non-empty line is refused.

Errors are ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file and line.

Example:
  >>> import os, tempfile
  >>> p = os.path.join(tempfile.mkdtemp(), 'cal.txt')
  >>> _ = open(p, 'w').write('The cat sat.\\n\\n  A dog ran.  \\n')
  >>> read_calibration_text(p)
  ['The cat sat.', 'A dog ran.']
  >>> _ = open(p, 'wb').write(b'ok\\n\\x00\\x01binary')
  >>> read_calibration_text(p)
  Traceback (most recent call last):
  ...
  ValueError: .../cal.txt: line 2: calibration text contains binary data (byte 0x00 at offset 3); expected UTF-8 text, one sample per line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["read_calibration_text", "MAX_CALIBRATION_BYTES", "MAX_LINE_CHARS"]

#: Default size limit of a calibration text file (bytes).
MAX_CALIBRATION_BYTES = 256 * 2**20
#: Default length limit of one line (characters): far beyond any model's context in tokens.
MAX_LINE_CHARS = 1 << 20

# Control bytes that never occur in text (tab, newline, vertical tab, form feed, CR allowed).
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")


def _inside_folder(path: Path, what: str) -> None:
  """Refuses a symlink (the file or a link on its way) leading outside the file's folder."""
  if not path.is_symlink():
    return
  real = path.resolve()
  folder = path.absolute().parent.resolve()
  if not real.is_relative_to(folder):
    raise ValueError(f"{path}: {what} is a symlink to {real}, outside its folder {folder}; "
                     "refusing to read it (copy the file instead).")


def read_calibration_text(path: str | Path, *, what: str = "calibration text",
                          max_bytes: int = MAX_CALIBRATION_BYTES,
                          max_line_chars: int = MAX_LINE_CHARS,
                          max_lines: int | None = None, strip: bool = True,
                          keep_empty: bool = False) -> list[str]:
  """The lines of a calibration text file (one sample per line), checked.

  Args:
    path: the text file.
    what: what the file is, for messages (``'--calibration file'``).
    max_bytes: refuse larger files (checked before reading).
    max_line_chars: refuse a longer line (naming it).
    max_lines: keep at most this many lines (the first ones), ``None``: all.
    strip: strip surrounding whitespace of each line.
    keep_empty: keep empty lines (as ``str.splitlines`` would); by default they are dropped.

  Returns:
    The lines, in file order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a regular file, a symlink out of its folder, too large, binary, not UTF-8
      (file, line and byte named), a line too long, or no non-empty line.
  """
  path = Path(path)
  if not path.exists() and not path.is_symlink():
    raise FileNotFoundError(f"{path}: no such {what} file")
  _inside_folder(path, what)
  if not path.is_file():
    raise ValueError(f"{path}: {what} is not a regular file")
  size = os.stat(path).st_size
  if size > max_bytes:
    raise ValueError(f"{path}: {what} is {size} bytes, more than the limit of {max_bytes} bytes")
  with open(path, "rb") as f:
    data = f.read(max_bytes + 1)
  if len(data) > max_bytes:      # grew while we looked
    raise ValueError(f"{path}: {what} is more than the limit of {max_bytes} bytes")
  bad = _BINARY.search(data)
  if bad is not None:
    line = data.count(b"\n", 0, bad.start()) + 1
    raise ValueError(f"{path}: line {line}: {what} contains binary data (byte "
                     f"0x{data[bad.start()]:02x} at offset {bad.start()}); expected UTF-8 text, "
                     "one sample per line.")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}: line {line}: {what} is not valid UTF-8 (byte 0x{data[e.start]:02x} "
                     f"at offset {e.start}).") from None
  del data
  out = []
  for i, ln in enumerate(text.splitlines(), 1):
    if len(ln) > max_line_chars:
      raise ValueError(f"{path}: line {i}: {len(ln)} characters, more than the limit of "
                       f"{max_line_chars} per {what} line")
    if strip:
      ln = ln.strip()
    if ln or keep_empty:
      out.append(ln)
    if max_lines is not None and len(out) >= max_lines:
      break
  if not any(s.strip() for s in out):
    raise ValueError(f"{path}: {what} has no non-empty line")
  return out
