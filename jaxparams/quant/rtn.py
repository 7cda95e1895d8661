"""Round-to-nearest (RTN) integer quantization, per tensor / channel / group.

Grids (``q`` are unsigned codes in ``[0, 2**bits - 1]``, ``W ~= (q - zero) * scale``):

* asymmetric (default): per group ``lo = min(min(w), 0)``, ``hi = max(max(w), 0)``
  (an all-zero group uses [-1, 1]), ``scale = (hi - lo) / (2**bits - 1)``,
  ``zero = round(-lo / scale)`` -- the convention of GPTQ's ``quant.py`` and of
  the HF GPTQ checkpoints (integer zero points).
* symmetric: ``scale = absmax / (2**(bits-1) - 1)``, ``zero = 2**(bits-1)``, so
  ``+-absmax`` are exact and codes span ``[1, 2**bits - 1]`` (the usual absmax
  int8 convention).

``clip_ratio < 1`` shrinks ``lo``/``hi`` (or absmax) before computing the grid.

Example:
  >>> import jax, jax.numpy as jnp
  >>> w = jax.random.normal(jax.random.key(0), (128, 16))
  >>> qa = rtn(w, RTNConfig(bits=8, group_size=-1, symmetric=True))
  >>> float(jnp.abs(qa.dequantize() - w).max()) < 0.02
  True
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray, make_int_qarray

__all__ = ["RTNConfig", "RTN_RECORD", "rtn", "rtn_params", "rtn_fake"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RTNConfig:
  """Round-to-nearest settings.

  Attributes:
    bits: 2, 3, 4 or 8.
    group_size: rows per group along K; ``-1``/``None`` means per-channel.
    symmetric: absmax grid with ``zero = 2**(bits-1)`` instead of min/max.
    per_tensor: one scale (and zero) for the whole tensor (overrides group_size).
    clip_ratio: shrink factor in (0, 1] applied to the range before rounding.
    mse: error norm of a per-group clip search (GPTQ's ``mse`` option, 2.4 there; see
      :func:`jaxparams.quant.common.clip_search`); 0 = plain min/max (or ``clip_ratio``).
  """

  bits: int = 4
  group_size: int | None = 128
  symmetric: bool = False
  per_tensor: bool = False
  clip_ratio: float = 1.0
  mse: float = 0.0


def _grid(wg: jax.Array, bits: int, symmetric: bool, clip_ratio: float, axis):
  """Scale/zero for the reduction ``axis`` of ``wg`` (kept dims)."""
  if symmetric:
    amax = jnp.max(jnp.abs(wg), axis=axis, keepdims=True) * clip_ratio
    qmax = float(2 ** (bits - 1) - 1)
    scale = jnp.where(amax > 0, amax / qmax, 1.0)
    zero = jnp.full_like(scale, float(2 ** (bits - 1)))
    return scale.astype(jnp.float32), zero.astype(jnp.float32)
  lo = jnp.min(wg, axis=axis, keepdims=True) * clip_ratio
  hi = jnp.max(wg, axis=axis, keepdims=True) * clip_ratio
  return common.minmax_params(lo, hi, bits, symmetric=False)


def rtn_params(w: jax.Array, cfg: RTNConfig, group_size: int):
  """Returns ``(q, scale, zero)`` for ``w[K, N]``: codes ``[K, N]`` float, grids ``[K//G, N]``."""
  k, n = w.shape
  w32 = w.astype(jnp.float32)
  wg = w32.reshape(k // group_size, group_size, n)
  if cfg.per_tensor:
    scale, zero = _grid(wg, cfg.bits, cfg.symmetric, cfg.clip_ratio, axis=(0, 1, 2))
    scale = jnp.broadcast_to(scale, (k // group_size, 1, n))
    zero = jnp.broadcast_to(zero, (k // group_size, 1, n))
  elif cfg.mse > 0:
    scale, zero = common.clip_search(
        wg, lambda p: _grid(wg, cfg.bits, cfg.symmetric, cfg.clip_ratio * p, axis=1), cfg.bits,
        1, cfg.mse)
  else:
    scale, zero = _grid(wg, cfg.bits, cfg.symmetric, cfg.clip_ratio, axis=1)
  q = common.quantize_codes(wg, scale, zero, cfg.bits).reshape(k, n)
  return q, scale[:, 0, :], zero[:, 0, :]


_rtn_jit = jax.jit(rtn_params, static_argnums=(1, 2))


def _rtn(w: jax.Array, cfg: RTNConfig, *, name: str = "") -> QArray:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  bits = int(cfg.bits)
  if not 0 < cfg.clip_ratio <= 1:
    raise ValueError(f"rtn: clip_ratio must be in (0, 1], got {cfg.clip_ratio}")
  if not cfg.mse >= 0:
    raise ValueError(f"rtn: mse (the clip search's error norm) must be >= 0, got {cfg.mse}")
  w = common.as_matrix(w, name=name)
  k = w.shape[0]
  g = k if cfg.per_tensor else common.resolve_group_size(k, cfg.group_size, name=name)
  q, scale, zero = _rtn_jit(w, dataclasses.replace(cfg, bits=bits), g)
  return make_int_qarray(q.astype(jnp.int32), scale, zero, bits=bits, group_size=g, dtype=w.dtype)


RTN_RECORD = qrec.quantizer("rtn", _rtn, RTNConfig, jitted=True,
                            group_when=lambda c: not c.per_tensor,
                            description="round-to-nearest min/max grid per group")


def rtn(w: jax.Array, cfg: RTNConfig = RTNConfig(), *, name: str = "") -> QArray:
  """Round-to-nearest quantization of ``w[K, N]`` into a packed :class:`QArray`.

  Args:
    w: float weight, flax layout ``[K, N]`` (more dims are flattened to 2-D).
    cfg: :class:`RTNConfig`.
    name: tree path, used in error messages.

  Returns:
    QArray with kind 'int'. Per-tensor grids are stored broadcast to ``[1, N]``.

  Raises:
    ValueError: unsupported bits, group size not dividing K, or non-finite weights.
  """
  return qrec.call(RTN_RECORD, w, cfg, name=name)


def rtn_fake(w: jax.Array, cfg: RTNConfig = RTNConfig()) -> jax.Array:
  """Quantize-dequantize ``w`` with RTN (float32, same shape); jit-friendly."""
  k = w.shape[0]
  g = k if cfg.per_tensor else common.resolve_group_size(k, cfg.group_size)
  q, scale, zero = rtn_params(w, cfg, g)
  s = jnp.repeat(scale, g, axis=0)
  z = jnp.repeat(zero, g, axis=0)
  return (q - z) * s
