"""Parallel reads of neuron chunks from safetensors files, and page cache control.

:class:`ChunkReader` issues ``os.preadv`` calls from a thread pool (the syscall
releases the GIL, so reads overlap) straight into the destination rows of a
preallocated matrix. A read may scatter into several buffers (one ``preadv``
with one iovec per destination row: the unbundled layout, where a run of
neurons' gate rows is contiguous on disk but not in the neuron matrix). Files
are opened with ``POSIX_FADV_RANDOM`` (no readahead: every byte counted is a
byte the program asked for) and :meth:`ChunkReader.drop_cache` evicts them from
the page cache (``POSIX_FADV_DONTNEED``): the memory budget leaves no room for
the kernel to keep the model's pages.

Example:
  >>> import os, tempfile, numpy as np
  >>> f = os.path.join(tempfile.mkdtemp(), 'x.bin')
  >>> np.arange(16, dtype=np.float32).tofile(f)
  >>> dst = np.zeros(4, np.float32)
  >>> with ChunkReader([f]) as r:
  ...   r.read([(0, 8, [memoryview(dst[:2]), memoryview(dst[2:])])])
  >>> dst.tolist(), r.calls, r.bytes
  ([2.0, 3.0, 4.0, 5.0], 1, 16)
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

__all__ = ["ChunkReader", "aligned_empty"]


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
  """A zero array whose data starts on an ``align``-byte boundary.

  ``np.zeros`` of a large size maps zero pages lazily (calloc): resident memory grows only
  as rows are written.
  """
  dtype = np.dtype(dtype)
  n = int(np.prod(shape)) * dtype.itemsize
  raw = np.zeros(n + align, np.uint8)
  off = (-raw.ctypes.data) % align
  return raw[off:off + n].view(dtype).reshape(shape)


def _preadv_all(fd: int, bufs: list, offset: int) -> tuple[int, int]:
  """Reads until every buffer is full; returns (bytes, calls)."""
  total = sum(len(b) for b in bufs)
  got = calls = 0
  while got < total:
    n = os.preadv(fd, bufs, offset + got)
    calls += 1
    if n <= 0:
      raise ValueError(f"short read: fd {fd} at offset {offset + got}: wanted {total - got} more "
                       "bytes, the file ends")
    got += n
    if got < total:  # drop what was filled
      rest, skip = [], n
      for b in bufs:
        if skip >= len(b):
          skip -= len(b)
          continue
        rest.append(b[skip:])
        skip = 0
      bufs = rest
  return got, calls


class ChunkReader:
  """Reads ``(file_index, offset, [buffers])`` requests in parallel; counts bytes, calls, time.

  Args:
    paths: the files (each opened once, ``O_RDONLY``, ``POSIX_FADV_RANDOM``).
    threads: reader threads.
  """

  def __init__(self, paths: Sequence[str | os.PathLike], threads: int = 8):
    self.paths = [str(p) for p in paths]
    self.fds: list[int] = []
    for p in self.paths:
      fd = os.open(p, os.O_RDONLY)
      self.fds.append(fd)
      if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    self.threads = max(1, int(threads))
    self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
    self.bytes = self.calls = 0
    self.seconds = 0.0

  def drop_cache(self) -> None:
    """Evicts the files' pages from the page cache (``posix_fadvise(DONTNEED)``)."""
    if not hasattr(os, "posix_fadvise"):
      return
    for fd in self.fds:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

  def read(self, requests: Sequence[tuple[int, int, list]]) -> None:
    """Runs every request ``(file_index, offset, [writable buffers])``; blocks until done."""
    if not requests:
      return
    t0 = time.perf_counter()
    if self._pool is None or len(requests) == 1:
      res = [_preadv_all(self.fds[f], list(b), o) for f, o, b in requests]
    else:
      groups = [requests[i::self.threads] for i in range(self.threads)]
      run = lambda g: [_preadv_all(self.fds[f], list(b), o) for f, o, b in g]
      res = [r for part in self._pool.map(run, [g for g in groups if g]) for r in part]
    self.seconds += time.perf_counter() - t0
    self.bytes += sum(r[0] for r in res)
    self.calls += sum(r[1] for r in res)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None
    for fd in self.fds:
      os.close(fd)
    self.fds = []

  def __enter__(self) -> "ChunkReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
