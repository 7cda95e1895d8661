"""Safetensors dtype names <-> numpy dtypes (bf16 and fp8 through ml_dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["to_numpy_dtype", "to_safetensors_dtype", "SUPPORTED"]

_TABLE = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_REVERSE = {v: k for k, v in _TABLE.items()}
SUPPORTED = tuple(_TABLE)


def to_numpy_dtype(name: str, *, where: str = "") -> np.dtype:
  """Maps a safetensors dtype string (``'BF16'``) to a numpy dtype.

  Raises:
    ValueError: for an unsupported dtype, naming ``where`` (file and tensor).

  Example:
    >>> to_numpy_dtype('F32')
    dtype('float32')
  """
  try:
    return _TABLE[name]
  except KeyError:
    raise ValueError(
        f"{where}: unsupported safetensors dtype {name!r}; supported: {', '.join(SUPPORTED)}"
    ) from None


def to_safetensors_dtype(dtype: np.dtype, *, where: str = "") -> str:
  """Maps a numpy dtype to its safetensors name.

  Example:
    >>> to_safetensors_dtype(np.dtype('int8'))
    'I8'
  """
  dtype = np.dtype(dtype)
  try:
    return _REVERSE[dtype]
  except KeyError:
    raise ValueError(f"{where}: dtype {dtype} cannot be stored in safetensors; "
                     f"supported: {', '.join(str(d) for d in _TABLE.values())}") from None
