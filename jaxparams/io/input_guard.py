"""Inputs that change while a run reads them: detected, so a mixed old/new result is never published.

A checkpoint rewritten in place during a merge (another job saving over it, a sync tool) would
give tensors read partly before and partly after the change. :func:`snapshot_inputs` records,
for every regular file of the input folders, its device, inode, size, modification and change
times (``ctime`` cannot be set back by a tool, unlike ``mtime``) and a digest of its first and
last 64 KiB (timestamps tick every few ms); :func:`check_unchanged`, called
just before the output is published, compares them and raises naming the file that changed.

Example:
  >>> import os, tempfile
  >>> d = tempfile.mkdtemp(); p = os.path.join(d, 'model.safetensors')
  >>> _ = open(p, 'wb').write(b'12345678')
  >>> snap = snapshot_inputs([d])
  >>> check_unchanged(snap, context='merge')  # nothing changed
  >>> _ = open(p, 'ab').write(b'more')
  >>> check_unchanged(snap, context='merge')
  Traceback (most recent call last):
  ...
  ValueError: merge: input .../model.safetensors changed while it was being read (size 8 -> 12 bytes); the result would mix old and new tensors, so it was not published. Rerun once the input is stable.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["snapshot_inputs", "check_unchanged", "FileStamp"]

#: (device, inode, size, mtime_ns, ctime_ns, digest of the first and last 64 KiB) of a file.
FileStamp = tuple[int, int, int, int, int, str]
#: Bytes hashed at each end of a file.
EDGE_BYTES = 1 << 16


def _edges_digest(path: Path, size: int) -> str:
  """SHA-256 of the first and last :data:`EDGE_BYTES` (a safetensors header, the last tensor):
  catches a same-size rewrite within the timestamps' granularity (a few ms)."""
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      h.update(f.read(EDGE_BYTES))
      if size > EDGE_BYTES:
        f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
        h.update(f.read(EDGE_BYTES))
  except OSError:
    return ""
  return h.hexdigest()[:16]


def _stamp(path: Path) -> FileStamp | None:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
          _edges_digest(path, st.st_size))


def _files(p: Path) -> list[Path]:
  if p.is_dir():
    try:
      return sorted(q for q in p.iterdir() if q.is_file())
    except OSError:
      return []
  return [p] if p.is_file() else []


def snapshot_inputs(paths: Iterable[str | Path]) -> dict[Path, FileStamp | None]:
  """Stamps of every regular file directly inside each folder (or of each file) given."""
  out: dict[Path, FileStamp | None] = {}
  for p in paths:
    for f in _files(Path(p)):
      out[f] = _stamp(f)
  return out


def check_unchanged(snapshot: Mapping[Path, FileStamp | None], *, context: str = "") -> None:
  """Raises ``ValueError`` naming the first file whose stamp differs from ``snapshot``."""
  for f, before in snapshot.items():
    after = _stamp(f)
    if after == before:
      continue
    if after is None:
      how = "removed"
    elif before is None:
      how = "created"
    elif after[:2] != before[:2]:
      how = "replaced by another file"
    elif after[2] != before[2]:
      how = f"size {before[2]} -> {after[2]} bytes"
    elif after[5] != before[5]:
      how = "rewritten in place (its first or last bytes differ)"
    else:
      how = "rewritten in place (modification time changed)"
    where = f"{context}: " if context else ""
    raise ValueError(f"{where}input {f} changed while it was being read ({how}); the result "
                     "would mix old and new tensors, so it was not published. Rerun once the "
                     "input is stable.")
