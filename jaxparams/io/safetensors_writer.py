"""Atomic, sharded safetensors writing with a Hugging Face index."""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from jaxparams.io.atomic import atomic_dir
from jaxparams.io.dtypes import to_safetensors_dtype
from jaxparams.io.interrupt import raise_if_interrupted
from jaxparams.io.paths import resolve_inside
from jaxparams.io.safetensors_reader import INDEX_NAME
from jaxparams.io.sizes import parse_size

_log = logging.getLogger(__name__)

__all__ = ["SafetensorsWriter", "save_safetensors", "write_safetensors_file", "TOKENIZER_FILES",
           "SENTENCE_TRANSFORMERS_FILES", "check_output_tensor"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "tokenizer.model", "merges.txt", "vocab.json",
                   "added_tokens.json", "generation_config.json")
# What sentence-transformers needs beside the weights (pooling, normalisation), one level deep.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json", "1_Pooling/config.json")


def write_safetensors_file(path: str | Path, tensors: Mapping[str, np.ndarray],
                           metadata: Mapping[str, str] | None = None) -> int:
  """Writes one safetensors file; returns the number of data bytes.

  Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'x.safetensors')
    >>> write_safetensors_file(p, {'a': np.zeros(4, np.float32)})
    16
  """
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  offset = 0
  arrays = []
  for name, arr in tensors.items():
    a = np.ascontiguousarray(arr)
    header[name] = {"dtype": to_safetensors_dtype(a.dtype, where=f"{path}: tensor {name!r}"),
                    "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)
  try:
    with open(path, "wb") as f:
      f.write(struct.pack("<Q", len(raw)))
      f.write(raw)
      for a in arrays:
        f.write(a.reshape(-1).view(np.uint8).data if a.size else b"")
  except OSError as e:  # disk full, file too large...: name the file
    if e.filename is not None or not e.errno:
      raise
    raise OSError(e.errno, e.strerror, str(path)) from None
  return offset


# Exponent bits per floating width: all set = Inf or NaN (IEEE 754, bfloat16 and float16 alike).
_EXPONENT = {2: {"float16": 0x7C00, "bfloat16": 0x7F80}, 4: 0x7F800000, 8: 0x7FF0000000000000}
_CHUNK = 1 << 24  # elements per pass: a bounded temporary, whatever the tensor's size


def _nonfinite_at(a: np.ndarray) -> int:
  """Index (flat) of the first NaN/Inf of a floating array, or -1; integer arrays: -1."""
  if a.dtype.kind not in "fV" and a.dtype.name not in ("bfloat16", "float16"):
    return -1
  size = a.dtype.itemsize
  if a.dtype in (np.float32, np.float64):  # numpy's vectorised isfinite (about 2x the bit test)
    flat = a.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
      ok = np.isfinite(flat[start:start + _CHUNK])
      if not ok.all():
        return start + int(np.argmin(ok))
    return -1
  if size == 2:
    mask = _EXPONENT[2].get(a.dtype.name)
  else:
    mask = _EXPONENT.get(size)
  if mask is None:  # float8 and other narrow types: ml_dtypes' isfinite
    flat = np.ravel(a)
    bad = np.flatnonzero(~np.isfinite(flat.astype(np.float32)))
    return int(bad[0]) if bad.size else -1
  bits = np.ascontiguousarray(a).reshape(-1).view(np.dtype(f"u{size}"))
  for start in range(0, bits.size, _CHUNK):
    part = bits[start:start + _CHUNK]
    bad = (part & np.array(mask, part.dtype)) == np.array(mask, part.dtype)
    if bad.any():
      return start + int(np.argmax(bad))
  return -1


def check_output_tensor(name: str, array: Any, *, where: str = "", shape: Any = None,
                        dtype: Any = None, finite: bool = True) -> None:
  """Refuses an output tensor that is not finite, or not of the expected shape/dtype.

  What every writer of a transformed checkpoint runs on each tensor before the folder is
  published (:class:`SafetensorsWriter` with ``check_outputs=True``): a NaN/Inf (e.g. a
  float32 result beyond the float16/bfloat16 range once cast) is an error naming the tensor.
  Integer tensors (packed quantized codes) have no finiteness to check.

  Args:
    name: the output tensor's name.
    array: its value.
    where: prefix of the message (the output folder).
    shape: the expected shape, or ``None``.
    dtype: the expected dtype, or ``None``.
    finite: check for NaN/Inf.

  Raises:
    ValueError: one line naming the tensor, expected and found.

  Example:
    >>> check_output_tensor('w', np.ones(2, np.float16))
    >>> check_output_tensor('w', np.array([1e5], np.float32).astype(np.float16), where='out')
    Traceback (most recent call last):
    ...
    ValueError: out: output tensor 'w' (float16, shape (1,)) contains NaN or Inf (element 0 is inf: a value beyond the float16 range, or a degenerate input); nothing was written
  """
  at = f"{where}: " if where else ""
  # shape/dtype only: an array-like's attributes suffice (a device array is not copied)
  a = array if not finite and hasattr(array, "shape") and hasattr(array, "dtype") else (
      np.asarray(array))
  if shape is not None and tuple(a.shape) != tuple(shape):
    raise ValueError(f"{at}output tensor {name!r} has shape {tuple(a.shape)}, expected "
                     f"{tuple(shape)}; nothing was written")
  if dtype is not None and np.dtype(a.dtype) != np.dtype(dtype):
    raise ValueError(f"{at}output tensor {name!r} has dtype {np.dtype(a.dtype).name}, expected "
                     f"{np.dtype(dtype).name}; nothing was written")
  i = _nonfinite_at(a) if finite else -1
  if i >= 0:
    v = np.ravel(a)[i]
    raise ValueError(f"{at}output tensor {name!r} ({a.dtype.name}, shape {tuple(a.shape)}) "
                     f"contains NaN or Inf (element {i} is {float(v)}: a value beyond the "
                     f"{a.dtype.name} range, or a degenerate input); nothing was written")


class SafetensorsWriter:
  """Writes a checkpoint folder tensor by tensor, atomically, sharded.

  Tensors are buffered up to ``max_shard_bytes`` and written shard by shard
  into a temporary sibling folder; on a clean exit shards are named
  ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``
  (or a single ``model.safetensors``) and the folder is renamed into place.
  On an exception or Ctrl-C nothing is left behind.

  Args:
    out_dir: the folder to create.
    max_shard_bytes: shard size limit (a larger single tensor gets its own shard): bytes or
      text such as ``'5GB'`` (:func:`jaxparams.io.parse_size`).
    overwrite: replace an existing folder (only at the final rename).
    metadata: safetensors ``__metadata__``; ``{'format': 'pt'}`` by default, which
      HF transformers requires.
    header_reserve: ``None`` (default) buffers a shard's tensors and writes the
      shard when it is full. A byte count writes each tensor to disk as it is
      added (host memory: one tensor, not one shard), behind a header area of
      that size that the shard's header fills at the end, padded with spaces
      as the safetensors format allows; a header that does not fit moves the
      data once (correct, slower). The streaming drivers use this.
    check_outputs: run :func:`check_output_tensor` on every tensor added (NaN/Inf refused,
      naming the tensor; nothing is published). The writers of merge, lora merge, quantize
      and edit turn it on; conversions (which must keep a source as it is) do not.

  Example:
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), 'ckpt')
    >>> with SafetensorsWriter(out, max_shard_bytes=8) as w:
    ...   w.add('a', np.zeros(2, np.float32)); w.add('b', np.ones(2, np.float32))
    >>> sorted(os.listdir(out))[0]
    'model-00001-of-00002.safetensors'
  """

  def __init__(self, out_dir: str | Path, *, max_shard_bytes: float | str = 5e9,
               overwrite: bool = False,
               metadata: Mapping[str, str] | None = None,
               header_reserve: int | None = None, check_outputs: bool = False):
    self.out_dir = Path(out_dir)
    self.check_outputs = check_outputs
    self.header_reserve = (None if header_reserve is None
                           else max(8, -(-int(header_reserve) // 8) * 8))
    self._file: Any = None  # write-through: the open shard file, its header entries, its size
    self._file_entries: dict[str, Any] = {}
    self._file_bytes = 0
    self.max_shard_bytes = parse_size(max_shard_bytes, what="max_shard_bytes")
    self.metadata = dict(metadata) if metadata is not None else {"format": "pt"}
    self._ctx = atomic_dir(self.out_dir, overwrite=overwrite)
    self.folder_tmp: Path | None = None
    self._pending: dict[str, np.ndarray] = {}
    self._pending_bytes = 0
    self._shards: list[tuple[str, list[str]]] = []
    self._names: set[str] = set()
    self.total_bytes = 0

  def __enter__(self) -> "SafetensorsWriter":
    self.folder_tmp = self._ctx.__enter__()
    return self

  def add(self, name: str, array: Any) -> None:
    """Queues one tensor (any array-like; jax arrays are copied to host)."""
    raise_if_interrupted()  # a safe point: a recorded SIGINT/SIGTERM stops the run here
    if self.folder_tmp is None:
      raise ValueError("SafetensorsWriter.add called outside its `with` block.")
    if name in self._names:
      raise ValueError(f"{self.out_dir}: tensor {name!r} written twice.")
    a = np.asarray(array)
    if self.check_outputs:
      check_output_tensor(name, a, where=str(self.out_dir))
    if self.header_reserve is not None:
      self._write_through(name, a)
      return
    if self._pending and self._pending_bytes + a.nbytes > self.max_shard_bytes:
      self._flush()
    self._names.add(name)
    _log.debug("writing tensor %s %s %s", name, a.dtype, a.shape)
    self._pending[name] = a
    self._pending_bytes += a.nbytes

  def _shard_path(self) -> Path:
    return self.folder_tmp / f"shard-{len(self._shards):05d}.safetensors"

  def _write_through(self, name: str, a: np.ndarray) -> None:
    path = self._shard_path()
    dtype = to_safetensors_dtype(a.dtype, where=f"{path}: tensor {name!r}")
    if self._file is not None and self._file_entries and (
        self._file_bytes + a.nbytes > self.max_shard_bytes):
      self._close_shard()
      path = self._shard_path()
    self._names.add(name)
    _log.debug("writing tensor %s %s %s", name, a.dtype, a.shape)
    try:
      if self._file is None:
        self._file = open(path, "wb")  # pylint: disable=consider-using-with
        self._file.seek(8 + self.header_reserve)
        self._file_entries, self._file_bytes = {}, 0
      if a.size:
        self._file.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    except OSError as e:  # disk full, file too large...: name the file
      if e.filename is not None or not e.errno:
        raise
      raise OSError(e.errno, e.strerror, str(path)) from None
    self._file_entries[name] = {"dtype": dtype, "shape": list(a.shape),
                                "data_offsets": [self._file_bytes, self._file_bytes + a.nbytes]}
    self._file_bytes += a.nbytes

  def _close_shard(self) -> None:
    """Fills the reserved header of the open shard (or moves its data when it does not fit)."""
    f, path = self._file, self._shard_path()
    self._file = None
    header: dict[str, Any] = {}
    if self.metadata:
      header["__metadata__"] = {str(k): str(v) for k, v in self.metadata.items()}
    header.update(self._file_entries)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    try:
      if len(raw) <= self.header_reserve:
        raw += b" " * (self.header_reserve - len(raw))
        f.seek(0)
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.close()
      else:  # the header outgrew its reserve: rewrite the file with the data after it
        f.close()
        _log.info("%s: header of %d bytes > reserved %d; moving the data", path, len(raw),
                  self.header_reserve)
        raw += b" " * (-len(raw) % 8)
        moved = path.with_suffix(".moving")
        path.rename(moved)
        with open(moved, "rb") as src, open(path, "wb") as dst:
          dst.write(struct.pack("<Q", len(raw)))
          dst.write(raw)
          src.seek(8 + self.header_reserve)
          shutil.copyfileobj(src, dst, 1 << 24)
        moved.unlink()
    except OSError as e:
      if e.filename is not None or not e.errno:
        raise
      raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
      if not f.closed:
        f.close()
    _log.info("%s: wrote shard %d (%d tensors, %d bytes)", self.out_dir, len(self._shards) + 1,
              len(self._file_entries), self._file_bytes)
    self.total_bytes += self._file_bytes
    self._shards.append((path.name, list(self._file_entries)))
    self._file_entries, self._file_bytes = {}, 0

  def _flush(self) -> None:
    if not self._pending:
      return
    tmp_name = f"shard-{len(self._shards):05d}.safetensors"
    _log.info("%s: writing shard %d (%d tensors, %d bytes)", self.out_dir, len(self._shards) + 1,
              len(self._pending), self._pending_bytes)
    self.total_bytes += write_safetensors_file(self.folder_tmp / tmp_name, self._pending,
                                               self.metadata)
    self._shards.append((tmp_name, list(self._pending)))
    self._pending, self._pending_bytes = {}, 0

  def write_json(self, filename: str, obj: Any) -> None:
    """Writes ``obj`` as JSON into the output folder."""
    (self.folder_tmp / filename).write_text(json.dumps(obj, indent=2) + "\n")

  def copy_from(self, src_folder: str | Path | None, filenames: Iterable[str] = TOKENIZER_FILES
                ) -> list[str]:
    """Copies the named files that exist in ``src_folder``; returns those copied.

    Names may contain a sub-folder (``'1_Pooling/config.json'``), created as needed.
    """
    if src_folder is None:
      return []
    copied = []
    for fn in filenames:
      src = resolve_inside(src_folder, fn, where=str(src_folder))
      if src.is_file():
        (self.folder_tmp / fn).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self.folder_tmp / fn)
        copied.append(fn)
    return copied

  def _finish(self) -> None:
    if self._file is not None:
      self._close_shard()
    self._flush()
    n = len(self._shards)
    if n == 0:
      write_safetensors_file(self.folder_tmp / "model.safetensors", {}, self.metadata)
      return
    if n == 1:
      (self.folder_tmp / self._shards[0][0]).rename(self.folder_tmp / "model.safetensors")
      return
    weight_map = {}
    for i, (tmp_name, names) in enumerate(self._shards):
      final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
      (self.folder_tmp / tmp_name).rename(self.folder_tmp / final)
      weight_map.update({name: final for name in names})
    self.write_json(INDEX_NAME, {"metadata": {"total_size": self.total_bytes},
                                 "weight_map": weight_map})

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is not None and self._file is not None:
      self._file.close()  # before the temporary folder is removed
      self._file = None
    if exc_type is None:
      try:
        self._finish()
      except BaseException as e:  # clean up the temporary folder, then re-raise
        self._ctx.__exit__(type(e), e, e.__traceback__)
        raise
    return bool(self._ctx.__exit__(exc_type, exc, tb))


def save_safetensors(flat: Mapping[str, Any], out_dir: str | Path, *,
                     config: Mapping[str, Any] | None = None, copy_from: str | Path | None = None,
                     **writer_kwargs: Any) -> None:
  """Writes a ``{name: array}`` dict as an HF-style safetensors folder.

  Args:
    flat: tensors by name (use ``jp.tree.flatten`` for a pytree).
    out_dir: folder to create (atomically).
    config: optional ``config.json`` content.
    copy_from: optional folder whose tokenizer files are copied.
    **writer_kwargs: ``max_shard_bytes``, ``overwrite``, ``metadata``.

  Example:
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), 'm')
    >>> save_safetensors({'w': np.eye(2, dtype=np.float32)}, out, config={'model_type': 'x'})
    >>> sorted(os.listdir(out))
    ['config.json', 'model.safetensors']
  """
  with SafetensorsWriter(out_dir, **writer_kwargs) as w:
    for name, arr in flat.items():
      w.add(name, arr)
    if config is not None:
      w.write_json("config.json", dict(config))
    w.copy_from(copy_from)
