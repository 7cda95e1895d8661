"""Atomic output folders: write into a temporary sibling, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_dir", "check_output_dir"]


def check_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
  """Validates an output folder before any work starts.

  Raises:
    FileExistsError: if it exists and ``overwrite`` is false.

  Example:
    >>> check_output_dir('/tmp/does-not-exist-jaxparams', overwrite=False).name
    'does-not-exist-jaxparams'
  """
  out = Path(out_dir)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out}: output folder already exists; pass overwrite=True "
                          "(--overwrite) to replace it.")
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"{out}: exists and is not a folder.")
  return out


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
  """Yields a temporary sibling folder that becomes ``out_dir`` on success.

  On an exception (including ``KeyboardInterrupt``) the temporary folder is
  removed and ``out_dir`` is untouched: no half-written checkpoint is left.

  Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / 'out'
    >>> with atomic_dir(d) as tmp:
    ...   _ = (tmp / 'x.txt').write_text('hi')
    >>> (d / 'x.txt').read_text()
    'hi'
  """
  out = check_output_dir(out_dir, overwrite).absolute()
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if out.exists():
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / "old")
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)
  else:
    os.replace(tmp, out)
