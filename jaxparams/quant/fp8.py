"""FP8 weight casts (e4m3fn / e5m2) with per-channel or per-group scales.

``scale = absmax / fp8_max`` per group of rows (per output channel by default);
``codes = (w / scale).astype(fp8)`` stored unpacked ``[K, N]``; ``zero`` is None.

Example:
  >>> import jax
  >>> w = jax.random.normal(jax.random.key(0), (64, 8))
  >>> qa = fp8(w, FP8Config(fmt='e4m3'))
  >>> qa.kind, str(qa.codes.dtype)
  ('fp8_e4m3', 'float8_e4m3fn')
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import FP8_DTYPES, QArray

__all__ = ["FP8Config", "FP8_RECORD", "fp8", "FP8_MAX"]

FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FP8Config:
  """FP8 settings.

  Attributes:
    fmt: 'e4m3' (float8_e4m3fn, max 448) or 'e5m2' (max 57344).
    group_size: rows per scale along K; -1/None = per-channel.
  """

  fmt: str = "e4m3"
  group_size: int | None = -1


def _fp8(w: jax.Array, cfg: FP8Config, *, name: str = "") -> QArray:
  # The math; group size, shape, dtype and finiteness are the record's checks.
  if cfg.fmt not in FP8_MAX:
    raise ValueError(f"fp8: unknown fmt {cfg.fmt!r}; valid: {sorted(FP8_MAX)}")
  w = common.as_matrix(w, name=name)
  k, n = w.shape
  g = common.resolve_group_size(k, cfg.group_size, name=name)
  kind = f"fp8_{cfg.fmt}"
  codes, scale = _fp8_jit(w, g, cfg.fmt)
  return QArray(codes=codes, scale=scale, zero=None, shape=(k, n), bits=8, group_size=g,
                kind=kind, dtype=jnp.dtype(w.dtype).name)


FP8_RECORD = qrec.quantizer("fp8", _fp8, FP8Config, jitted=True, bit_widths=None,
                            description="fp8 e4m3/e5m2 with per-channel/group scales")


def fp8(w: jax.Array, cfg: FP8Config = FP8Config(), *, name: str = "") -> QArray:
  """Casts ``w[K, N]`` to fp8 after dividing by a per-channel/group absmax scale."""
  return qrec.call(FP8_RECORD, w, cfg, name=name)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fp8_jit(w, g, fmt):
  k, n = w.shape
  w32 = w.astype(jnp.float32).reshape(k // g, g, n)
  amax = jnp.max(jnp.abs(w32), axis=1, keepdims=True)
  scale = jnp.where(amax > 0, amax / FP8_MAX[fmt], 1.0)
  codes = (w32 / scale).astype(FP8_DTYPES[f"fp8_{fmt}"]).reshape(k, n)
  return codes, scale[:, 0, :]
