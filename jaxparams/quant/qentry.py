"""One quantized tensor in the jaxparams layout: its JSON entry, its stored parts, and back.

The layout is described in :mod:`jaxparams.quant.checkpoint`. :func:`layout_entry` and
:func:`encode_parts` give what is stored for one :class:`~jaxparams.quant.QArray` (or AWQ
result); :func:`check_entry` validates an entry read from a file and :func:`decode_entry`
rebuilds the QArray from its parts, checking every shape against the entry;
:func:`dequantize_leaf` gives the stored full-precision tensor back.

Example:
  >>> import jax
  >>> from jaxparams.quant.rtn import rtn, RTNConfig
  >>> qa = rtn(jax.random.normal(jax.random.key(0), (64, 8)), RTNConfig(bits=4, group_size=32))
  >>> e = layout_entry(qa, transpose=True, method='rtn')
  >>> e['orig_shape'], sorted(encode_parts(qa))
  ([8, 64], ['qcodes', 'qscale', 'qzero'])
  >>> back = decode_entry('w', e, encode_parts(qa), 'here')
  >>> bool((back.codes == qa.codes).all())
  True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.quant import packing
from jaxparams.quant.qarray import QArray
from jaxparams.quant.qformat import GPTQ_CONFIG_FILE, LAYOUT_FILE, config_quant

__all__ = ["FORMAT", "VERSION", "SUFFIXES", "read_layout", "layout_entry", "encode_parts", "check_entry",
           "decode_entry", "dequantize_leaf"]

FORMAT = "jaxparams.quant"
VERSION = 1
#: Suffixes of the stored parts of a quantized tensor ``<name>.qcodes`` ...
SUFFIXES = (".qcodes", ".qscale", ".qzero", ".qg_idx", ".qinput_scale")
_FP8 = {"fp8_e4m3": jnp.float8_e4m3fn, "fp8_e5m2": jnp.float8_e5m2}


def layout_entry(q: Any, *, transpose: bool = False, method: str | None = None) -> dict[str, Any]:
  """The ``jaxparams_quant.json`` entry of one quantized tensor."""
  shape = _meta(q)["shape"]
  orig = list(shape[::-1]) if transpose else list(shape)
  return _meta(q, transpose=bool(transpose), orig_shape=orig,
               **({"method": method} if method is not None else {}))


def encode_parts(q: Any) -> dict[str, np.ndarray]:
  """``{part: array}`` stored for one quantized tensor (``qcodes``, ``qscale``, ...)."""
  return _encode(q)


def _meta(q: Any, **extra: Any) -> dict[str, Any]:
  qa = q if isinstance(q, QArray) else q.qarray
  m = {"shape": list(qa.shape), "bits": qa.bits, "group_size": qa.group_size, "kind": qa.kind,
       "dtype": qa.dtype, **extra}
  if not isinstance(q, QArray):
    m["input_scale"] = True
    m["awq_ratio"] = float(np.asarray(jax.device_get(q.ratio)))
  return m


def _encode(q: Any) -> dict[str, np.ndarray]:
  if not isinstance(q, QArray):
    out = _encode(q.qarray)
    out["qinput_scale"] = np.asarray(jax.device_get(q.input_scale), np.float32)
    return out
  qa = q
  codes = np.asarray(jax.device_get(qa.codes))
  if qa.kind in _FP8:
    codes = codes.view(np.uint8)
  out = {"qcodes": codes, "qscale": np.asarray(jax.device_get(qa.scale), np.float32)}
  if qa.zero is not None:
    out["qzero"] = np.asarray(jax.device_get(qa.zero), np.float32)
  if qa.g_idx is not None:
    out["qg_idx"] = np.asarray(jax.device_get(qa.g_idx), np.int32)
  return out


def _expected_shapes(m: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  k, n = int(m["shape"][0]), int(m["shape"][1])
  g = int(m["group_size"])
  if m["kind"] in _FP8 or m["kind"] == "rf8":
    codes = (k, n)
  else:
    codes = (packing.packed_rows(k, int(m["bits"])), n)
  return {"qcodes": codes, "qscale": (k // g if g else 0, n), "qzero": (k // g if g else 0, n),
          "qg_idx": (k,), "qinput_scale": (k,)}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_entry(name: str, m: Any, where: str) -> None:
  """Validates the types and ranges of one tensor entry of the layout JSON (a tampered or
  hand-edited file gives this ``ValueError``, naming the file, tensor and field).

  Example:
    >>> check_entry('w', {'shape': [4, 2], 'bits': 4, 'group_size': 2, 'kind': 'int',
    ...                   'dtype': 'float32'}, 'q')
    >>> check_entry('w', {'shape': [4, None], 'bits': 4, 'group_size': 2, 'kind': 'int',
    ...                   'dtype': 'float32'}, 'q')
    Traceback (most recent call last):
    ...
    ValueError: q/jaxparams_quant.json: tensor 'w': 'shape' must be two positive integers, got [4, None]
  """
  at = f"{where}/{LAYOUT_FILE}: tensor {name!r}"
  if not isinstance(m, Mapping):
    raise ValueError(f"{at}: entry must be a JSON object, got {type(m).__name__}")
  for key in ("shape", "bits", "group_size", "kind", "dtype"):
    if key not in m:
      raise ValueError(f"{at}: lacks {key!r}")
  shape = m["shape"]
  if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(v) and 0 < v < 2**40
                                                               for v in shape)):
    raise ValueError(f"{at}: 'shape' must be two positive integers, got {shape!r:.60}")
  if not (_is_int(m["bits"]) and m["bits"] in (2, 3, 4, 8)):
    raise ValueError(f"{at}: 'bits' must be 2, 3, 4 or 8, got {m['bits']!r:.40}")
  if not (_is_int(m["group_size"]) and 0 < m["group_size"] < 2**40):
    raise ValueError(f"{at}: 'group_size' must be a positive integer, got {m['group_size']!r:.40}")
  if not isinstance(m["kind"], str):
    raise ValueError(f"{at}: 'kind' must be a string, got {m['kind']!r:.40}")
  try:
    np.dtype(m["dtype"]) if isinstance(m["dtype"], str) and m["dtype"] != "bfloat16" else None
  except TypeError:
    raise ValueError(f"{at}: 'dtype' {m['dtype']!r:.40} is not a dtype name") from None
  if not isinstance(m["dtype"], str):
    raise ValueError(f"{at}: 'dtype' must be a dtype name, got {m['dtype']!r:.40}")
  for key in ("transpose", "input_scale"):
    if key in m and not isinstance(m[key], bool):
      raise ValueError(f"{at}: {key!r} must be true or false, got {m[key]!r:.40}")
  if "orig_shape" in m and not (isinstance(m["orig_shape"], list) and
                                all(_is_int(v) and v >= 0 for v in m["orig_shape"]) and
                                int(np.prod(m["orig_shape"], dtype=np.int64)) == shape[0] * shape[1]):
    raise ValueError(f"{at}: 'orig_shape' {m['orig_shape']!r:.60} does not hold {shape[0]} x "
                     f"{shape[1]} values")
  if "awq_ratio" in m and not isinstance(m["awq_ratio"], (int, float)):
    raise ValueError(f"{at}: 'awq_ratio' must be a number, got {m['awq_ratio']!r:.40}")


def _decode(name: str, m: Mapping[str, Any], parts: Mapping[str, np.ndarray], where: str) -> Any:
  """Rebuilds a QArray from its stored parts, checking every shape against the metadata."""
  check_entry(name, m, where)
  kind = m["kind"]
  if kind not in ("int", "nf4", "rf8", *_FP8):
    raise ValueError(f"{where}: tensor {name!r} has unknown kind {kind!r}")
  k, n = int(m["shape"][0]), int(m["shape"][1])
  g = int(m["group_size"])
  if g < 1 or k % g:
    raise ValueError(f"{where}: tensor {name!r}: group_size {g} does not divide K={k}")
  want = _expected_shapes(m)
  for part in ("qcodes", "qscale"):
    if part not in parts:
      raise ValueError(f"{where}: quantized tensor {name!r} lacks {name}.{part}")
  for part, arr in parts.items():
    if tuple(arr.shape) != want[part]:
      raise ValueError(f"{where}: {name}.{part} has shape {tuple(arr.shape)}, expected "
                       f"{want[part]} for a {m['bits']}-bit {kind} tensor of shape {(k, n)} with "
                       f"group_size {g} (mismatched layout)")
  codes = parts["qcodes"]
  if kind in _FP8:
    if codes.dtype != np.uint8:
      raise ValueError(f"{where}: {name}.qcodes must be U8 for {kind}, got {codes.dtype}")
    codes = jnp.asarray(codes.view(np.dtype(_FP8[kind])))
  elif kind == "rf8":
    if codes.dtype != np.uint8:
      raise ValueError(f"{where}: {name}.qcodes must be U8 for rf8, got {codes.dtype}")
    codes = jnp.asarray(codes)
  else:
    if codes.dtype not in (np.uint32, np.int32):
      raise ValueError(f"{where}: {name}.qcodes must be U32 packed words, got {codes.dtype}")
    codes = jnp.asarray(codes.view(np.uint32))
  zero = parts.get("qzero")
  g_idx = parts.get("qg_idx")
  if bool(m.get("input_scale")) != ("qinput_scale" in parts):
    raise ValueError(f"{where}: {name}: {LAYOUT_FILE} says input_scale={bool(m.get('input_scale'))}"
                     f" but {name}.qinput_scale is {'present' if 'qinput_scale' in parts else 'absent'}"
                     " (mismatched layout)")
  qa = QArray(codes=codes, scale=jnp.asarray(parts["qscale"], jnp.float32),
                zero=None if zero is None else jnp.asarray(zero, jnp.float32),
                shape=(k, n), bits=int(m["bits"]), group_size=g, kind=kind,
                dtype=str(m["dtype"]), g_idx=None if g_idx is None else jnp.asarray(g_idx,
                                                                                 jnp.int32))
  if "qinput_scale" in parts:
    from jaxparams.quant.awq import AWQResult  # pylint: disable=g-import-not-at-top
    return AWQResult(qarray=qa, input_scale=jnp.asarray(parts["qinput_scale"], jnp.float32),
                     ratio=jnp.float32(m.get("awq_ratio", float("nan"))))
  return qa


decode_entry = _decode
expected_shapes = _expected_shapes


def dequantize_leaf(leaf: Any, meta: Mapping[str, Any], dtype: Any = None) -> np.ndarray:
  """The stored full-precision tensor of one quantized leaf: ``dequantize()``, transposed and
  reshaped back to ``orig_shape`` when its layout entry says so."""
  w = np.asarray(leaf.dequantize(dtype))
  if meta.get("transpose"):
    w = w.T
  if "orig_shape" in meta:
    w = w.reshape(meta["orig_shape"])
  return np.ascontiguousarray(w)


def read_layout(folder: Path) -> dict[str, Any]:
  """The checked ``jaxparams_quant.json`` of a jaxparams-layout folder (format and version)."""
  f = folder / LAYOUT_FILE
  if not f.is_file():
    if (folder / GPTQ_CONFIG_FILE).is_file() or config_quant(folder):
      raise ValueError(f"{folder}: this is an HF GPTQ checkpoint ({GPTQ_CONFIG_FILE}), not the "
                       f"jaxparams layout; read it with jaxparams.quant.import_gptq")
    raise ValueError(f"{folder}: no {LAYOUT_FILE}; not a jaxparams quantized checkpoint")
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  layout = jio.read_json(f, what="quantized layout", folder=folder)
  if not isinstance(layout, dict):
    raise ValueError(f"{f}: must be a JSON object")
  if layout.get("format") != FORMAT or not isinstance(layout.get("tensors"), dict):
    raise ValueError(f"{f}: expected format {FORMAT!r} with a 'tensors' dict, got "
                     f"format={layout.get('format')!r}")
  if not _is_int(layout.get("version")) or layout.get("version") != VERSION:
    raise ValueError(f"{f}: layout version {layout.get('version')!r} is not supported "
                     f"(supported: {VERSION})")
  return layout
