"""AWQ: activation-aware per-input-channel scaling, then group RTN (Lin et al., MLSys 2024).

Follows ``llm-awq`` (``auto_scale.search_module_scale`` and ``auto_clip``) for a
single linear layer, written independently in JAX:

* ``x_mean = mean|x|`` per input channel; for ``ratio = i / n_grid``
  (``i = 0 .. n_grid-1``, i.e. alpha in [0, 1)) the scales are
  ``s = clip(x_mean ** ratio, 1e-4)``, normalised by ``sqrt(max(s) * min(s))``;
* candidate weight ``Q(W * s[:, None]) / s[:, None]`` (``Q`` = asymmetric group RTN);
* loss = output MSE on the calibration activations,
  ``mean((x @ (W_hat - W))**2)`` computed exactly from the Gram ``X^T X / n``;
  the best ratio wins (ties -> the smaller ratio, as the strict ``<`` upstream);
* optional clip search (``clip=True``, as ``auto_clip``): per group and output
  channel, shrink the symmetric clamp ``+-max|w|`` by ``1 - i / n_grid`` for
  ``i < max_shrink * n_grid`` and keep the one with the smallest output error.

Result: :class:`AWQResult` with ``qarray`` -- the quantized **scaled** weight
``W * s[:, None]`` -- and ``input_scale = s``. The layer computes
``y = (x / input_scale) @ qarray.dequantize()``; fold ``1 / input_scale`` into the
previous op (LayerNorm weight/bias or the previous linear's output columns), as
AWQ does, or use :meth:`AWQResult.dequantize` for the unscaled ``W_hat[K, N]``.

Example:
  >>> import jax
  >>> x = jax.random.normal(jax.random.key(0), (64, 32))
  >>> w = jax.random.normal(jax.random.key(1), (32, 8))
  >>> r = awq(w, x, AWQConfig(bits=4, group_size=16))
  >>> r.input_scale.shape, r.dequantize().shape
  ((32,), (32, 8))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray, make_int_qarray
from jaxparams.quant.rtn import RTNConfig, rtn_fake, rtn_params
from jaxparams.calib.stats import InputStats, accumulate

__all__ = ["AWQConfig", "AWQResult", "awq"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AWQConfig:
  """AWQ settings (defaults as llm-awq: 4-bit, group 128, asymmetric, n_grid 20).

  Attributes:
    bits: 2, 3, 4 or 8.
    group_size: rows per group along K; -1/None = per-channel.
    n_grid: grid points for alpha in [0, 1).
    clip: run the clip search after scaling.
    max_shrink: largest clip shrink (0.5 upstream).
    symmetric: symmetric RTN grid instead of zero-point (upstream default: asymmetric).
  """

  bits: int = 4
  group_size: int | None = 128
  n_grid: int = 20
  clip: bool = True
  max_shrink: float = 0.5
  symmetric: bool = False


@dataclasses.dataclass(frozen=True)
class AWQResult:
  """Quantized scaled weight and the per-input-channel scale to divide the inputs by.

  ``y = (x / input_scale) @ qarray.dequantize()``; ``ratio`` is the chosen alpha.
  """

  qarray: QArray
  input_scale: jax.Array
  ratio: jax.Array

  def dequantize(self, dtype=None) -> jax.Array:
    """The effective unscaled weight ``W_hat[K, N] = deq / input_scale[:, None]``."""
    w = self.qarray.dequantize(jnp.float32) / self.input_scale[:, None]
    return w.astype(dtype or self.qarray.dtype)


jax.tree_util.register_dataclass(AWQResult, data_fields=["qarray", "input_scale", "ratio"],
                                 meta_fields=[])


def _out_err(d: jax.Array, gram: jax.Array) -> jax.Array:
  """``mean_t,n (x_t @ d)^2 = sum_n d_n^T C d_n / N`` with ``C = X^T X / n``."""
  return jnp.sum(d * jnp.matmul(gram, d, precision=jax.lax.Precision.HIGHEST)) / d.shape[1]


@functools.partial(jax.jit, static_argnames=("cfg", "group"))
def _awq_jit(w, x_mean, gram, *, cfg: AWQConfig, group: int):
  k, n = w.shape
  w = w.astype(jnp.float32)
  rcfg = RTNConfig(bits=cfg.bits, group_size=group, symmetric=cfg.symmetric)
  ratios = jnp.arange(cfg.n_grid, dtype=jnp.float32) / cfg.n_grid

  def scales_for(r):
    s = jnp.maximum(jnp.power(x_mean, r), 1e-4)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))

  def loss_for(r):
    s = scales_for(r)
    w_hat = rtn_fake(w * s[:, None], rcfg) / s[:, None]
    return _out_err(w_hat - w, gram)

  losses = jax.lax.map(loss_for, ratios)
  best = jnp.argmin(losses)            # first minimum = strict '<' of the reference loop
  ratio = ratios[best]
  s = scales_for(ratio)
  ws = w * s[:, None]

  if cfg.clip:
    ng = k // group
    # Gram of the scaled inputs x / s, block-diagonal per group.
    gs = gram / (s[:, None] * s[None, :])
    idx = jnp.arange(ng)
    gblocks = gs.reshape(ng, group, ng, group)[idx, :, idx, :]          # [ng, G, G]
    wg = ws.reshape(ng, group, n)
    amax = jnp.max(jnp.abs(wg), axis=1, keepdims=True)                   # [ng, 1, N]
    n_shrink = max(1, int(cfg.max_shrink * cfg.n_grid))

    def clip_err(i):
      mx = amax * (1.0 - i / cfg.n_grid)
      wc = jnp.clip(wg, -mx, mx).reshape(k, n)
      d = (rtn_fake(wc, rcfg) - ws).reshape(ng, group, n)
      return jnp.einsum("gin,gij,gjn->gn", d, gblocks, d, precision=jax.lax.Precision.HIGHEST)

    errs = jax.lax.map(clip_err, jnp.arange(n_shrink, dtype=jnp.float32))  # [S, ng, N]
    bi = jnp.argmin(errs, axis=0)                                            # [ng, N]
    mx = amax[:, 0, :] * (1.0 - bi.astype(jnp.float32) / cfg.n_grid)
    ws = jnp.clip(wg, -mx[:, None, :], mx[:, None, :]).reshape(k, n)

  q, scale, zero = rtn_params(ws, rcfg, group)
  return q.astype(jnp.int32), scale, zero, s, ratio


def _awq(w: jax.Array, x_stats: Any, cfg: AWQConfig, *, name: str = "") -> AWQResult:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  bits = int(cfg.bits)
  if cfg.n_grid < 1 or not 0 <= cfg.max_shrink < 1:
    raise ValueError(f"awq: need n_grid >= 1 and 0 <= max_shrink < 1, got {cfg}")
  w = common.as_matrix(w, name=name)
  k = w.shape[0]
  if not isinstance(x_stats, InputStats):
    x = jnp.asarray(x_stats)
    if x.ndim < 2 or x.shape[-1] != k:
      raise ValueError(f"awq: calibration inputs for {name or 'weight'!r} have shape "
                       f"{tuple(x.shape)}, expected (..., {k})")
    x_stats = accumulate(None, x)
  if x_stats.abs_mean.shape != (k,):
    raise ValueError(f"awq: activation stats for {name or 'weight'!r} have "
                     f"{x_stats.abs_mean.shape} "
                     f"channels, expected ({k},)")
  common.check_finite(x_stats.hessian, name=name, what="activation statistics")
  g = common.resolve_group_size(k, cfg.group_size, name=name)
  q, scale, zero, s, ratio = _awq_jit(w, x_stats.abs_mean, x_stats.gram,
                                      cfg=dataclasses.replace(cfg, bits=bits), group=g)
  qa = make_int_qarray(q, scale, zero, bits=bits, group_size=g, dtype=w.dtype)
  return AWQResult(qarray=qa, input_scale=s, ratio=ratio)


AWQ_RECORD = qrec.quantizer("awq", _awq, AWQConfig, needs="act_stats",
                            description="activation-aware per-channel scaling")


def awq(w: jax.Array, x_stats: InputStats | jax.Array, cfg: AWQConfig = AWQConfig(), *,
        name: str = "") -> AWQResult:
  """AWQ-quantizes ``w[K, N]`` given calibration inputs or their :class:`~jaxparams.calib.InputStats`.

  Args:
    w: float weight ``[K, N]``.
    x_stats: :class:`~jaxparams.calib.InputStats` or raw inputs ``x[..., K]``.
    cfg: :class:`AWQConfig`.
    name: tree path for messages.

  Returns:
    :class:`AWQResult` (quantized scaled weight + ``input_scale``); see the module doc.
  """
  return qrec.call(AWQ_RECORD, w, cfg, x_stats, name=name)
