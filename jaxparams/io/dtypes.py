"""Safetensors dtype names <-> numpy dtypes (bf16, fp8, fp6, fp4 through ml_dtypes).

Every dtype the official safetensors reader accepts has a numpy counterpart here.
The sub-byte ones (``F4``, ``F6_E2M3``, ``F6_E3M2``) are stored packed in the
file, several values per byte: their headers are read (shapes, sizes) but their
data is refused by name, and they cannot be written.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["to_numpy_dtype", "to_safetensors_dtype", "parse_dtype", "SUPPORTED", "SUB_BYTE"]

_TABLE = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "C64": np.dtype(np.complex64),
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
# Packed sub-byte dtypes: header only (see the module docstring).
SUB_BYTE = {
    "F4": np.dtype(ml_dtypes.float4_e2m1fn),
    "F6_E2M3": np.dtype(ml_dtypes.float6_e2m3fn),
    "F6_E3M2": np.dtype(ml_dtypes.float6_e3m2fn),
}


def to_numpy_dtype(name: str, *, where: str = "") -> np.dtype:
  """Maps a safetensors dtype string (``'BF16'``) to a numpy dtype.

  Raises:
    ValueError: for an unsupported dtype, naming ``where`` (file and tensor).

  Example:
    >>> to_numpy_dtype('F32')
    dtype('float32')
  """
  if name in _TABLE:
    return _TABLE[name]
  if name in SUB_BYTE:
    return SUB_BYTE[name]
  raise ValueError(
        f"{where}: unsupported safetensors dtype {name!r}; supported: "
        f"{', '.join(SUPPORTED + tuple(SUB_BYTE))}")


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


_ALIASES = {"float": "float32", "half": "float16", "double": "float64", "bf16": "bfloat16",
            "fp32": "float32", "fp16": "float16", "fp64": "float64", "fp8": "float8_e4m3fn"}


def parse_dtype(text: str, *, what: str = "dtype") -> np.dtype:
  """A dtype from user text (``'bfloat16'``, ``'float16'``, ``'BF16'``, ``'fp32'``...).

  Args:
    text: a numpy/ml_dtypes name, a safetensors name or a common alias.
    what: the parameter's name for the message (``'--dtype'``).

  Raises:
    ValueError: unknown name, listing the valid ones.

  Example:
    >>> parse_dtype('bf16'), parse_dtype('F32')
    (dtype(bfloat16), dtype('float32'))
  """
  t = str(text).strip()
  if t in _TABLE:
    return _TABLE[t]
  name = _ALIASES.get(t.lower(), t.lower())
  for dt in _TABLE.values():
    if dt.name == name:
      return dt
  valid = sorted({dt.name for dt in _TABLE.values()} | set(_ALIASES))
  raise ValueError(f"{what}: unknown dtype {t!r}; valid: {', '.join(valid)}.")
