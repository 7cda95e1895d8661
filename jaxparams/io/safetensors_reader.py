"""Lazy safetensors reading: headers first, one tensor at a time through mmap.

Reads a single ``.safetensors`` file or a Hugging Face folder (one
``model.safetensors`` or shards listed by ``model.safetensors.index.json``).
Names, shapes, dtypes and metadata come from the headers alone; ``read(name)``
maps just that tensor's bytes. Errors name the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jaxparams.io.dtypes import to_numpy_dtype
from jaxparams.io.pickle_guard import refuse_pickle

__all__ = ["TensorSpec", "SafetensorsFile", "SafetensorsReader", "open_checkpoint", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """What the header says about one tensor (no data read)."""
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  file: Path
  offset: int  # absolute byte offset in ``file``
  nbytes: int


class SafetensorsFile:
  """One safetensors file: parsed header plus lazy, mmapped tensor reads.

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
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{self.path}: truncated file ({size} bytes): no safetensors header.")
      (n,) = struct.unpack("<Q", head)
      if n > _MAX_HEADER or 8 + n > size:
        raise ValueError(f"{self.path}: corrupt or truncated header: header length {n} bytes "
                         f"but the file has {size} bytes.")
      raw = f.read(n)
    try:
      header = json.loads(raw.decode("utf-8"))
      if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
      raise ValueError(f"{self.path}: corrupt safetensors header ({e}).") from None
    self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
    data_start = 8 + n
    data_size = size - data_start
    self._specs: dict[str, TensorSpec] = {}
    for name, info in header.items():
      where = f"{self.path}: tensor {name!r}"
      try:
        dtype = to_numpy_dtype(info["dtype"], where=where)
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(o) for o in info["data_offsets"])
      except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ValueError) and "unsupported" in str(e):
          raise
        raise ValueError(f"{where}: corrupt header entry {info!r}.") from None
      expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
      if end - start != expected or start < 0:
        raise ValueError(f"{where}: header says {end - start} bytes for shape {shape} "
                         f"{dtype}, expected {expected}.")
      if end > data_size:
        raise ValueError(f"{where}: truncated file: tensor ends at byte {data_start + end} "
                         f"but the file has {size} bytes.")
      self._specs[name] = TensorSpec(name, shape, dtype, self.path, data_start + start, expected)
    self._mm: mmap.mmap | None = None

  def names(self) -> list[str]:
    return list(self._specs)

  def spec(self, name: str) -> TensorSpec:
    try:
      return self._specs[name]
    except KeyError:
      raise KeyError(f"{self.path}: no tensor named {name!r}.") from None

  def read(self, name: str) -> np.ndarray:
    """Returns one tensor as a read-only array backed by the file's mmap."""
    s = self.spec(name)
    if s.nbytes == 0:
      return np.zeros(s.shape, s.dtype)
    if self._mm is None:
      with open(self.path, "rb") as f:
        self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    count = s.nbytes // s.dtype.itemsize
    return np.frombuffer(self._mm, dtype=s.dtype, count=count, offset=s.offset).reshape(s.shape)

  def close(self) -> None:
    # Arrays handed out keep the mapping alive through their buffer; just drop our handle.
    self._mm = None


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
    return self._file(name).read(name)

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
    path = self.folder / "config.json"
    try:
      return json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f"{path}: invalid JSON ({e}).") from None

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
  if path.is_file():
    f = SafetensorsFile(path)
    return SafetensorsReader({f.path.name: f}, {n: f.path.name for n in f.names()}, None,
                             dict(f.metadata))
  index = path / INDEX_NAME
  if index.is_file():
    try:
      idx = json.loads(index.read_text())
      weight_map = idx["weight_map"]
    except (ValueError, KeyError) as e:
      raise ValueError(f"{index}: not a valid safetensors index ({e}).") from None
    files: dict[str, SafetensorsFile] = {}
    for shard in dict.fromkeys(weight_map.values()):
      shard_path = path / shard
      if not shard_path.is_file():
        raise FileNotFoundError(f"{index}: shard {shard!r} is missing from {path}.")
      files[shard] = SafetensorsFile(shard_path)
    for name, shard in weight_map.items():
      if name not in files[shard]._specs:  # pylint: disable=protected-access
        raise ValueError(f"{index}: tensor {name!r} is mapped to {shard!r}, which has no such "
                         "tensor.")
    return SafetensorsReader(files, dict(weight_map), path, dict(idx.get("metadata") or {}))
  shards = sorted(path.glob("*.safetensors"))
  if not shards:
    raise FileNotFoundError(f"{path}: no .safetensors files (and no {INDEX_NAME}).")
  files = {p.name: SafetensorsFile(p) for p in shards}
  owner: dict[str, str] = {}
  for key, f in files.items():
    for n in f.names():
      if n in owner:
        raise ValueError(f"{path}: tensor {n!r} appears in both {owner[n]} and {key}.")
      owner[n] = key
  meta = dict(files[shards[0].name].metadata)
  return SafetensorsReader(files, owner, path, meta)
