"""Atomic output folders: write into a temporary sibling, publish with one rename at the end.

* The temporary sibling is ``.<name>.tmp-<host>-<pid>-<random>``, created with
  the process umask (not mkdtemp's 0700), so the published folder has the
  permissions any other new folder would have.
* Publishing never replaces what appeared at the output path during the run
  (``renameat2(RENAME_NOREPLACE)``): without ``overwrite`` the result is kept
  in a visible sibling ``<name>.new-<time>-<pid>`` and the error says where.
  With ``overwrite`` the old and new folders are swapped in one step
  (``RENAME_EXCHANGE``), so there is no moment with no output.
* Temporary folders of our naming whose process is dead (killed, e.g. SIGKILL)
  are removed by the next run writing the same output; ones we cannot judge
  (another host, older naming) are reported, never removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

from jaxparams.io.interrupt import finish_before_interrupt, raise_if_interrupted

__all__ = ["atomic_dir", "check_output_dir", "check_writable", "publish_dir", "sweep_stale"]

_log = logging.getLogger(__name__)
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_REPORT_AFTER_S = 24 * 3600
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-"
                   r"[0-9a-f]{8}$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-[A-Za-z0-9_]{8}$")  # mkdtemp names of v0.1


def _host() -> str:
  """This host and PID namespace (containers sharing a folder have different tags)."""
  try:
    pidns = os.readlink("/proc/self/ns/pid")
  except OSError:
    pidns = ""
  return hashlib.sha1(f"{socket.gethostname()}/{pidns}".encode()).hexdigest()[:8]


def _temp_path(out: Path, kind: str) -> Path:
  return out.parent / f".{out.name}.{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _age(p: Path) -> float:
  try:
    return time.time() - p.stat().st_mtime
  except OSError:
    return 0.0


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
  """Linux ``renameat2``; False where it is unavailable (other OS, old kernel, some filesystems)."""
  fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  if fn is None:
    return False
  if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
    return False
  raise OSError(err, os.strerror(err), str(dst))


def sweep_stale(out_dir: str | Path) -> list[Path]:
  """Removes dead runs' temporary folders for ``out_dir``; returns (and logs) those kept.

  A folder ``.<name>.tmp-<host>-<pid>-*`` of this host (and PID namespace)
  whose process no longer runs is removed; a dead run's ``.<name>.old-*`` (the previous output, set
  aside by an overwrite that was killed) is moved back if the output is
  missing. Folders of other hosts, of the older ``mkdtemp`` naming, or of a
  live pid older than a day are only reported.

  Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / f'.out.tmp-{_host()}-999999999-0a0b0c0d').mkdir()  # this host, no such pid
    >>> sweep_stale(d / 'out'), sorted(p.name for p in d.iterdir())
    ([], [])
  """
  out = Path(out_dir).absolute()
  if not out.parent.is_dir():
    return []
  kept: list[Path] = []
  found = []
  prefix = f".{out.name}."
  try:
    entries = [p for p in out.parent.iterdir() if p.name.startswith(prefix)]
  except OSError:
    return []
  for p in entries:
    m = _OURS.match(p.name)
    if m and m["name"] == out.name:
      found.append((m["kind"] != "old", p, m))
    elif (lm := _LEGACY.match(p.name)) and lm["name"] == out.name:
      kept.append(p)
  host = _host()
  for _, p, m in sorted(found, key=lambda x: x[0]):  # '.old-' first: restore before removing
    if m["host"] != host:
      kept.append(p)
      continue
    if _alive(int(m["pid"])):
      if _age(p) > _REPORT_AFTER_S:  # a run for a day, or the pid was reused: say so
        kept.append(p)
      continue  # a run in progress
    if m["kind"] == "old" and not os.path.lexists(out):
      os.replace(p, out)
      _log.warning("%s: restored the previous output from %s (an overwrite was killed).", out,
                   p.name)
      continue
    shutil.rmtree(p, ignore_errors=True)
  for p in kept:
    _log.warning("%s: left by an earlier jaxparams run that may still be writing (other host, "
                 "older naming or a day old); remove it if no run is writing %s.", p, out)
  return kept


def check_writable(out_dir: str | Path) -> Path:
  """Checks that ``out_dir`` can be created: its nearest existing ancestor is a writable folder.

  Raises:
    PermissionError: the folder that would hold it is not writable (named).
    NotADirectoryError: a path component is a file.

  Example:
    >>> import tempfile
    >>> check_writable(tempfile.mkdtemp() + '/a/b').name
    'b'
  """
  out = Path(out_dir).absolute()
  anc = out.parent
  while not anc.exists():
    anc = anc.parent
  if not anc.is_dir():
    raise NotADirectoryError(f"{anc}: is a file, so the output folder {out} cannot be created.")
  # the effective ids decide what the process may create (real ids differ under seteuid/sudo)
  if not os.access(anc, os.W_OK | os.X_OK,
                   effective_ids=os.access in os.supports_effective_ids):
    raise PermissionError(f"{anc}: not writable, so the output folder {out} cannot be created "
                          "there (check its permissions or choose another output).")
  return out


def check_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
  """Validates an output folder before any work starts (call it first).

  Sweeps dead runs' temporary folders (:func:`sweep_stale`), then checks the
  folder does not exist (unless ``overwrite``) and can be created
  (:func:`check_writable`).

  Raises:
    FileExistsError: if it exists and ``overwrite`` is false, or is not a folder.
    PermissionError: its parent is not writable.

  Example:
    >>> check_output_dir('/tmp/does-not-exist-jaxparams', overwrite=False).name
    'does-not-exist-jaxparams'
  """
  out = Path(out_dir)
  sweep_stale(out)
  if os.path.lexists(out) and not overwrite:
    raise FileExistsError(f"{out}: output folder already exists; pass overwrite=True "
                          "(--overwrite) to replace it.")
  if os.path.lexists(out) and not out.is_dir():
    raise FileExistsError(f"{out}: exists and is not a folder.")
  check_writable(out)
  return out


def publish_dir(tmp: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
  """Moves a finished temporary folder to ``out_dir`` in one rename.

  Never replaces anything at ``out_dir`` unless ``overwrite``; then old and new
  are exchanged atomically and the old one is removed afterwards.

  Raises:
    FileExistsError: ``out_dir`` exists (it appeared during the run) and not
      ``overwrite``; the result is kept in a visible sibling named in the message.

  Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / 'tmp').mkdir(); (d / 'out').mkdir()
    >>> publish_dir(d / 'tmp', d / 'out')
    Traceback (most recent call last):
    ...
    FileExistsError: ...
  """
  tmp, out = Path(tmp), Path(out_dir)
  try:
    if _renameat2(tmp, out, _RENAME_NOREPLACE):
      return out
    if not os.path.lexists(out):  # no renameat2 here: check, then rename (a short race remains)
      os.rename(tmp, out)
      return out
  except OSError as e:
    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
      raise
  if not overwrite:
    kept = out.parent / f"{out.name}.new-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
      os.rename(tmp, kept)
    except OSError:
      kept = tmp
    raise FileExistsError(f"{out}: appeared while this run was writing (another run, or a folder "
                          f"created meanwhile) and was left untouched; the result is in {kept}: "
                          "move it into place, or rerun with --overwrite.")
  # Replacing and removing the old output finish before a Ctrl-C/SIGTERM is raised: an interrupt
  # in between left the old output half-removed under the temporary name.
  with finish_before_interrupt("replacing the previous output"):
    if _renameat2(tmp, out, _RENAME_EXCHANGE):
      shutil.rmtree(tmp, ignore_errors=True)  # now holds the old output
      return out
    old = _temp_path(out, "old")  # no atomic exchange here: a dead run's .old- is restored
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  return out


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
  """Yields a temporary sibling folder that becomes ``out_dir`` on success.

  On an exception (including ``KeyboardInterrupt``) the temporary folder is
  removed and ``out_dir`` is untouched: no half-written checkpoint is left.
  Stop background writers into the folder before the exception leaves the
  ``with`` block. See the module docstring for what publishing guarantees.

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
  tmp = None
  try:
    while True:
      tmp = _temp_path(out, "tmp")
      try:
        tmp.mkdir()  # mode 0o777 minus the umask
        break
      except FileExistsError:
        continue
    yield tmp
    raise_if_interrupted()  # a signal Python swallowed (gc callback): never publish after it
  except BaseException:
    if tmp is not None:
      _remove_tree(tmp)
    raise
  publish_dir(tmp, out, overwrite=overwrite)


def _remove_tree(path: Path, tries: int = 20, wait_s: float = 0.05) -> None:
  """Removes ``path``; retries while a writer that is still stopping adds files to it."""
  for _ in range(tries):
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
      return
    time.sleep(wait_s)
