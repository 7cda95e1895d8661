"""Conversion between :class:`QArray` and ``qwix.QArray`` where the formats meet.

qwix keeps ``qvalue`` unpacked with the original shape (signed ``int4``/``int8``,
``uint4`` NF4 indices, or fp8), ``scale`` of the same rank that "generic
broadcasts" to it, and an optional integer ``zero_point``:
``x ~= (qvalue - zero_point) * scale``. Ours packs unsigned codes with float
zeros, so the mapping is ``qvalue = q - 2**(bits-1)``,
``zero_point = zero - 2**(bits-1)`` (omitted when symmetric).

Supported: kind 'int' with 4 or 8 bits and integer zero points (RTN, GPTQ without
``g_idx``), 'nf4' and fp8. Float zero points (HQQ, decoupleQ), 2/3-bit codes and
act-order ``g_idx`` have no qwix form and raise ValueError. ``qwix`` itself is
imported only by :func:`to_qwix`.

Example:
  >>> import jax
  >>> from jaxparams.quant.rtn import rtn, RTNConfig
  >>> qa = rtn(jax.random.normal(jax.random.key(0), (64, 8)), RTNConfig(bits=4, group_size=32))
  >>> f = to_qwix_fields(qa)
  >>> f['qvalue'].shape, str(f['qvalue'].dtype), f['scale'].shape
  ((64, 8), 'int4', (2, 8))
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.quant import packing
from jaxparams.quant.qarray import FP8_DTYPES, QArray, make_int_qarray

__all__ = ["to_qwix_fields", "to_qwix", "from_qwix"]

_INT_QTYPES = {4: jnp.int4, 8: jnp.int8}


def to_qwix_fields(qa: QArray) -> dict:
  """``{'qvalue', 'scale', 'zero_point', 'qtype'}`` of the equivalent qwix QArray."""
  if qa.g_idx is not None:
    raise ValueError("to_qwix: act-order g_idx has no qwix form; use static_groups=True or "
                     "dequantize")
  if qa.kind == "int":
    if qa.bits not in _INT_QTYPES:
      raise ValueError(f"to_qwix: {qa.bits}-bit codes have no native qwix type; supported: 4, 8")
    off = 2 ** (qa.bits - 1)
    qdt = _INT_QTYPES[qa.bits]
    qvalue = (qa.unpacked_codes() - off).astype(qdt)
    zp = None
    if qa.zero is not None:
      z = np.asarray(qa.zero)
      if not np.all(z == np.round(z)):
        raise ValueError("to_qwix: float zero points (HQQ/decoupleQ) cannot be stored in qwix's "
                         "integer zero_point; dequantize or use RTN/GPTQ")
      if not np.all(z == off):
        zp = (jnp.asarray(z) - off).astype(qdt)
    return dict(qvalue=qvalue, scale=qa.scale, zero_point=zp, qtype=qdt)
  if qa.kind == "nf4":
    return dict(qvalue=qa.unpacked_codes().astype(jnp.uint4), scale=qa.scale, zero_point=None,
                qtype="nf4")
  if qa.kind in FP8_DTYPES:
    return dict(qvalue=qa.codes, scale=qa.scale, zero_point=None, qtype=FP8_DTYPES[qa.kind])
  raise ValueError(f"to_qwix: unknown kind {qa.kind!r}")


def to_qwix(qa: QArray):
  """Builds a ``qwix.QArray`` (needs the optional ``qwix`` package)."""
  try:
    import qwix  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("to_qwix needs the optional package 'qwix' (pip install qwix)") from e
  return qwix.QArray(**to_qwix_fields(qa))


def from_qwix(q, *, dtype="float32") -> QArray:
  """Converts a qwix QArray (or any object with ``qvalue/scale/zero_point/qtype``) of a
  2-D weight ``[K, N]`` into a packed :class:`QArray`."""
  if isinstance(q, dict):
    q = types.SimpleNamespace(**q)
  qv = jnp.asarray(q.qvalue)
  if qv.ndim != 2:
    raise ValueError(f"from_qwix: expected a 2-D weight, got qvalue shape {tuple(qv.shape)}")
  k, n = qv.shape
  scale = jnp.asarray(q.scale, jnp.float32)
  if scale.ndim != 2 or k % scale.shape[0] or n % scale.shape[1]:
    raise ValueError(f"from_qwix: scale shape {tuple(scale.shape)} does not tile {(k, n)}")
  if scale.shape[1] not in (1, n):
    raise ValueError(f"from_qwix: scale tiles along N {tuple(scale.shape)} are not supported")
  ng = scale.shape[0]
  group = k // ng
  scale = jnp.broadcast_to(scale, (ng, n))
  qtype = getattr(q, "qtype", None) or qv.dtype
  zp = getattr(q, "zero_point", None)
  if isinstance(qtype, str) and qtype == "nf4":
    return QArray(codes=packing.pack(qv.astype(jnp.int32), 4), scale=scale, zero=None,
                  shape=(k, n), bits=4, group_size=group, kind="nf4", dtype=jnp.dtype(dtype).name)
  qdt = jnp.dtype(qtype)
  for kind, fdt in FP8_DTYPES.items():
    if qdt == jnp.dtype(fdt):
      return QArray(codes=qv.astype(fdt), scale=scale, zero=None, shape=(k, n), bits=8,
                    group_size=group, kind=kind, dtype=jnp.dtype(dtype).name)
  bits = {jnp.dtype(jnp.int4): 4, jnp.dtype(jnp.int8): 8}.get(qdt)
  if bits is None:
    raise ValueError(f"from_qwix: unsupported qtype {qtype!r}; supported: int4, int8, nf4, "
                     f"float8_e4m3fn, float8_e5m2")
  off = 2 ** (bits - 1)
  codes = qv.astype(jnp.int32) + off
  zero = jnp.full((ng, n), float(off), jnp.float32)
  if zp is not None:
    zero = jnp.broadcast_to(jnp.asarray(zp).astype(jnp.float32), (ng, n)) + off
  return make_int_qarray(codes, scale, zero, bits=bits, group_size=group, dtype=dtype)
