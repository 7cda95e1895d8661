"""Lazy safetensors reading: strict headers first, one tensor at a time through ``pread``.

Reads a single ``.safetensors`` file or a Hugging Face folder (one
``model.safetensors`` or shards listed by ``model.safetensors.index.json``).
Names, shapes, dtypes and metadata come from the headers alone (validated as
strictly as the official reader: :mod:`jaxparams.io.safetensors_header`);
``read(name)`` copies just that tensor's bytes with positional reads, never
through ``mmap``: a file truncated or rewritten while it is open gives a clear
error naming it instead of a ``SIGBUS``. Shard names from an index must stay
inside the model folder (:func:`jaxparams.io.resolve_inside`). Errors name the
file and the tensor and never echo raw file bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jaxparams.io.dtypes import SUB_BYTE, to_numpy_dtype
from jaxparams.io.paths import resolve_inside
from jaxparams.io.pickle_guard import refuse_pickle
from jaxparams.io.safetensors_header import parse_header, read_header_length
from jaxparams.io.text_files import read_json

_log = logging.getLogger(__name__)

__all__ = ["TensorSpec", "SafetensorsFile", "SafetensorsReader", "open_checkpoint", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"
_MAX_OPEN_FILES = 32  # shards a reader keeps open at once
_CHUNK = 1 << 30  # bytes per pread call (Linux caps one call near 2 GiB)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """What the header says about one tensor (no data read)."""
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  file: Path
  offset: int  # absolute byte offset in ``file``
  nbytes: int
  dtype_name: str = ""  # the safetensors name ('BF16', 'F4', ...)


def _read_exact(fd: int, buf: memoryview, offset: int) -> int:
  got = 0
  while got < len(buf):
    n = os.preadv(fd, [buf[got:got + _CHUNK]], offset + got)
    if n == 0:
      break
    got += n
  return got


class SafetensorsFile:
  """One safetensors file: strictly validated header plus lazy positional tensor reads.

  Example:
    >>> import numpy as np, tempfile, os
    >>> from jaxparams.io import save_safetensors
    >>> d = tempfile.mkdtemp()
    >>> save_safetensors({'w': np.ones((2, 3), np.float32)}, os.path.join(d, 'out'))
    >>> f = SafetensorsFile(os.path.join(d, 'out', 'model.safetensors'))
    >>> f.spec('w').shape, float(f.read('w').sum())
    ((2, 3), 6.0)
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)
    refuse_pickle(self.path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such safetensors file.")
    with open(self.path, "rb") as f:
      st = os.fstat(f.fileno())
      size = st.st_size
      n = read_header_length(f.read(8), size, str(self.path))
      raw = f.read(n)
    if len(raw) != n:
      raise ValueError(f"{self.path}: short read of the header (the file changed while "
                       "being opened).")
    self._identity = (st.st_dev, st.st_ino, size)
    self.metadata, self._entries = parse_header(raw, size - 8 - n, str(self.path))
    self._data_start = 8 + n
    self._fd: int | None = None

  def names(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def spec(self, name: str) -> TensorSpec:
    try:
      e = self._entries[name]
    except KeyError:
      raise KeyError(f"{self.path}: no tensor named {name!r}.") from None
    start, end = e["data_offsets"]
    return TensorSpec(name, tuple(e["shape"]), to_numpy_dtype(e["dtype"]), self.path,
                      self._data_start + start, end - start, e["dtype"])

  def _open(self) -> int:
    if self._fd is None:
      try:
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
      except OSError as e:
        raise ValueError(f"{self.path}: cannot reopen for reading ({e.strerror}).") from None
      st = os.fstat(fd)
      if (st.st_dev, st.st_ino, st.st_size) != self._identity:
        os.close(fd)
        raise ValueError(f"{self.path}: the file was replaced, truncated or rewritten since its "
                         "header was read; reopen the checkpoint.")
      self._fd = fd
    return self._fd

  def read(self, name: str) -> np.ndarray:
    """Returns one tensor as a fresh (writable) array, read with ``pread``."""
    s = self.spec(name)
    where = f"{self.path}: tensor {name!r}"
    if s.dtype_name in SUB_BYTE:
      raise ValueError(f"{where}: dtype {s.dtype_name} stores several values per byte; jaxparams "
                       "reads its header but not its data.")
    try:
      out = np.empty(s.shape, s.dtype)
    except (ValueError, OverflowError, MemoryError) as e:
      raise ValueError(f"{where}: shape {s.shape} of {s.dtype_name} cannot be held in memory "
                       f"({e}).") from None
    if s.nbytes == 0:
      return out
    got = _read_exact(self._open(), memoryview(out.reshape(-1).view(np.uint8)), s.offset)
    if got != s.nbytes:
      raise ValueError(f"{where}: short read ({got} of {s.nbytes} bytes): the file was truncated "
                       "or rewritten while open.")
    return out

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


class SafetensorsReader:
  """A checkpoint: one safetensors file, or an HF folder (single or sharded).

  Use :func:`open_checkpoint` to build one. Methods: ``names()``,
  ``spec(name)``, ``read(name)``, ``items()`` (streams ``(name, array)``),
  ``config()``; attributes ``metadata`` and ``folder``.
  """

  def __init__(self, files: dict[str, SafetensorsFile], owner: dict[str, str],
               folder: Path | None, metadata: dict[str, Any]):
    self._files = files
    self._owner = owner  # tensor name -> file key
    self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
    self.folder = folder
    self.metadata = metadata

  def names(self) -> list[str]:
    return list(self._owner)

  def __contains__(self, name: str) -> bool:
    return name in self._owner

  def __len__(self) -> int:
    return len(self._owner)

  def _file(self, name: str) -> SafetensorsFile:
    try:
      return self._files[self._owner[name]]
    except KeyError:
      where = self.folder or next(iter(self._files.values())).path
      raise KeyError(f"{where}: no tensor named {name!r} in this checkpoint.") from None

  def spec(self, name: str) -> TensorSpec:
    return self._file(name).spec(name)

  def read(self, name: str) -> np.ndarray:
    f = self._file(name)
    key = self._owner[name]
    _log.debug("reading tensor %s from %s", name, f.path)
    self._recent[key] = None
    self._recent.move_to_end(key)
    while len(self._recent) > _MAX_OPEN_FILES:
      self._files[self._recent.popitem(last=False)[0]].close()
    return f.read(name)

  def items(self) -> Iterator[tuple[str, np.ndarray]]:
    for name in self._owner:
      yield name, self.read(name)

  @property
  def nbytes(self) -> int:
    return sum(self.spec(n).nbytes for n in self._owner)

  def config(self) -> dict[str, Any] | None:
    """The ``config.json`` beside the weights, if any."""
    if self.folder is None or not (self.folder / "config.json").is_file():
      return None
    resolve_inside(self.folder, "config.json", where=str(self.folder))
    from jaxparams.io.model_config import read_model_config  # pylint: disable=import-outside-toplevel
    return read_model_config(self.folder)  # the one strict reader of config.json

  def close(self) -> None:
    for f in self._files.values():
      f.close()

  def __enter__(self) -> "SafetensorsReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_checkpoint(path: str | Path) -> SafetensorsReader:
  """Opens a safetensors checkpoint lazily (headers only).

  Args:
    path: a ``.safetensors`` file, or a folder holding ``model.safetensors``,
      a sharded ``model.safetensors.index.json``, or safetensors files.

  Returns:
    A :class:`SafetensorsReader`.

  Raises:
    FileNotFoundError: missing path or shard (named).
    ValueError: pickle checkpoints, corrupt headers, truncated files, an index
      naming a tensor its shard lacks (file and tensor named).

  Example:
    >>> import numpy as np, tempfile, os
    >>> from jaxparams.io import save_safetensors
    >>> d = os.path.join(tempfile.mkdtemp(), 'ckpt')
    >>> save_safetensors({'a': np.arange(3, dtype=np.int32)}, d)
    >>> with open_checkpoint(d) as ckpt:
    ...   ckpt.names(), ckpt.read('a').tolist()
    (['a'], [0, 1, 2])
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or folder.")
  refuse_pickle(path)
  _log.info("opening checkpoint %s", path)
  if path.is_file():
    f = SafetensorsFile(path)
    return SafetensorsReader({f.path.name: f}, {n: f.path.name for n in f.names()}, None,
                             dict(f.metadata))
  index = path / INDEX_NAME
  if index.is_file():
    return _open_index(path, index)
  shards = sorted(path.glob("*.safetensors"))
  if not shards:
    raise FileNotFoundError(f"{path}: no .safetensors files (and no {INDEX_NAME}).")
  files = {p.name: SafetensorsFile(resolve_inside(path, p.name, where=str(path)))
           for p in shards}
  owner: dict[str, str] = {}
  for key, f in files.items():
    for n in f.names():
      if n in owner:
        raise ValueError(f"{path}: tensor {n!r} appears in both {owner[n]} and {key}.")
      owner[n] = key
  meta = dict(files[shards[0].name].metadata)
  return SafetensorsReader(files, owner, path, meta)


def _open_index(path: Path, index: Path) -> SafetensorsReader:
  """A sharded checkpoint: every shard named by the index, each inside ``path``."""
  idx = read_json(resolve_inside(path, INDEX_NAME, where=str(path)), what="safetensors index")
  weight_map = idx.get("weight_map") if isinstance(idx, dict) else None
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index}: not a valid safetensors index: expected an object with a "
                     "'weight_map' object of tensor name -> shard file.")
  bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None)
  if bad is not None:
    raise ValueError(f"{index}: weight_map[{bad[0]!r}] must be a shard file name (a string), "
                     f"found {type(bad[1]).__name__}.")
  meta = idx.get("metadata")
  if meta is not None and not isinstance(meta, dict):
    raise ValueError(f"{index}: 'metadata' must be an object, found {type(meta).__name__}.")
  files: dict[str, SafetensorsFile] = {}
  for shard in dict.fromkeys(weight_map.values()):
    shard_path = resolve_inside(path, shard, where=str(index), what="shard")
    if not shard_path.is_file():
      raise FileNotFoundError(f"{index}: shard {shard!r} is missing from {path}.")
    files[shard] = SafetensorsFile(shard_path)
  for name, shard in weight_map.items():
    if name not in files[shard]:
      raise ValueError(f"{index}: tensor {name!r} is mapped to {shard!r}, which has no such "
                       "tensor.")
  return SafetensorsReader(files, dict(weight_map), path, dict(meta or {}))
