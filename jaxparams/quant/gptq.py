"""GPTQ (Frantar et al., ICLR 2023) as one compiled loop.

Semantics follow the reference ``gptq.py`` / ``quant.py`` of IST-DASLab (an
independent JAX implementation, no code copied):

* ``H = 2 X^T X / n`` (:attr:`jaxparams.calib.InputStats.hessian`); dead inputs
  (``H_ii == 0``) get ``H_ii = 1`` and their weight rows are zeroed.
* act-order (``desc_act``): inputs are processed by decreasing ``diag(H)``.
* dampening ``damp_percent * mean(diag(H))`` on the diagonal; if the Cholesky
  factorisation fails (NaN), it is retried with 10x the dampening (a warning
  names the tensor); ``Hinv = chol(H^-1)`` upper.
* columns are quantized in blocks of ``block_size`` with lazy batch updates;
  per group the min/max grid (``quant.py`` convention, range contains 0, integer
  zero point) is computed at the first column of the group from the weights
  *as updated at the start of the current block* (exactly like the reference).
  ``static_groups`` computes all group grids up front on the original order.
* The whole thing is ``lax.fori_loop`` over blocks and columns: compile time
  does not grow with the width.

With act-order and dynamic groups the result carries ``g_idx`` (group of each
input row), as in HF GPTQ checkpoints.

Example:
  >>> import jax
  >>> from jaxparams.calib import InputStats
  >>> x = jax.random.normal(jax.random.key(0), (256, 64))
  >>> w = jax.random.normal(jax.random.key(1), (64, 32))
  >>> qa = gptq(w, InputStats.from_inputs(x), GPTQConfig(bits=4, group_size=32))
  >>> qa.scale.shape
  (2, 32)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxparams.calib import obs
from jaxparams.calib.stats import InputStats, as_hessian
from jaxparams.quant import common
from jaxparams.quant import record as qrec
from jaxparams.quant.qarray import QArray, make_int_qarray
from jaxparams.quant.stats import gptq_hessian

__all__ = ["GPTQConfig", "gptq", "gptq_hessian", "gptq_fake", "hessian_inverse_chol"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTQConfig:
  """GPTQ settings (defaults as the reference ``fasterquant``).

  Attributes:
    bits: 2, 3, 4 or 8.
    group_size: rows per group along K; -1/None = per-channel.
    symmetric: symmetric grid (``zero = (maxq + 1) / 2``), else asymmetric min/max.
    act_order: process inputs by decreasing Hessian diagonal (``desc_act``).
    static_groups: fix group grids before the updates (no ``g_idx`` with act-order).
    damp_percent: dampening as a fraction of the mean Hessian diagonal.
    block_size: columns per lazy-update block.
    max_damp_retries: how many times to retry with 10x dampening on a failed Cholesky.
    mse: error norm of the reference's ``mse`` grid search of each group's clipping range
      (``quant.py`` ``find_params``, GPTQModel's ``mse``; 2.4 there); 0 = min/max.
  """

  bits: int = 4
  group_size: int | None = 128
  symmetric: bool = False
  act_order: bool = False
  static_groups: bool = False
  damp_percent: float = 0.01
  block_size: int = 128
  max_damp_retries: int = 4
  mse: float = 0.0


def _minmax_rows(wg: jax.Array, bits: int, sym: bool, axis: int, mse: float = 0.0):
  lo, hi = jnp.min(wg, axis=axis), jnp.max(wg, axis=axis)
  if not mse:
    return common.minmax_params(lo, hi, bits, sym)
  s, z = common.clip_search(
      wg, lambda p: tuple(jnp.expand_dims(a, axis) for a in common.minmax_params(
          p * lo, p * hi, bits, sym)), bits, axis, mse)
  return jnp.squeeze(s, axis), jnp.squeeze(z, axis)


hessian_inverse_chol = obs.inverse_cholesky  # the OBS core's factor (kept name)


@functools.partial(jax.jit, static_argnames=("bits", "group", "sym", "act_order", "static_groups",
                                             "per_channel", "block", "max_retries", "mse"))
def _gptq_jit(w, h, damp_percent, *, bits, group, sym, act_order, static_groups, per_channel,
              block, max_retries, mse=0.0):
  k, n = w.shape
  maxq = float(2 ** bits - 1)
  ng = k // group
  w = w.astype(jnp.float32)
  h = h.astype(jnp.float32)

  # Per-channel grid: the reference computes it before zeroing dead inputs.
  pc_scale, pc_zero = _minmax_rows(w, bits, sym, axis=0, mse=mse)

  h, w = obs.fix_dead(h, w)

  if static_groups:
    st_scale, st_zero = _minmax_rows(w.reshape(ng, group, n), bits, sym, axis=1, mse=mse)

  if act_order:
    perm = jnp.argsort(-jnp.diagonal(h), stable=True)
    w = w[perm]
    h = h[perm][:, perm]
  else:
    perm = jnp.arange(k)

  u, tries = obs.inverse_cholesky(h, obs.damping(h, damp_percent), max_retries)

  u, w, nb = obs.pad_blocks(u, w, block)
  kp = nb * block
  perm_p = jnp.pad(perm, (0, kp - k))

  def quant(x, s, z):
    q = jnp.clip(jnp.round(x / s) + z, 0.0, maxq)
    return q, s * (q - z)

  n_starts = -(-block // group) + 1     # max group starts inside one block
  sub = 32 if block % 32 == 0 else block

  def block_params(wfull, b, scales, zeros, cur_s, cur_z):
    """Grids of every column of block b: ``[block, N]`` scale and zero."""
    i1 = b * block
    j = i1 + jnp.arange(block)
    if per_channel:
      return (jnp.broadcast_to(pc_scale, (block, n)), jnp.broadcast_to(pc_zero, (block, n)),
              scales, zeros)
    if static_groups:
      g = jnp.minimum(jax.lax.dynamic_slice(perm_p, (i1,), (block,)) // group, ng - 1)
      return st_scale[g], st_zero[g], scales, zeros
    # Dynamic groups: a group starting at column c in this block takes its grid from the
    # weights as they are at the start of the block (the reference's behaviour).
    c0 = -(-i1 // group) * group
    cm = c0 + group * jnp.arange(n_starts)
    valid = (cm < i1 + block) & (cm < k)
    segs = jax.vmap(lambda c: jax.lax.dynamic_slice(
        wfull, (jnp.minimum(c, k - group), 0), (group, n)))(cm)        # [M, G, N]
    ps, pz = _minmax_rows(segs, bits, sym, axis=1, mse=mse)                   # [M, N]
    gi = jnp.where(valid, cm // group, ng)
    scales = scales.at[gi].set(ps, mode="drop")
    zeros = zeros.at[gi].set(pz, mode="drop")
    gstart = (j // group) * group
    in_blk = gstart >= i1
    m = jnp.clip((gstart - c0) // group, 0, n_starts - 1)
    s1 = jnp.where(in_blk[:, None], ps[m], cur_s[None, :])
    z1 = jnp.where(in_blk[:, None], pz[m], cur_z[None, :])
    return s1, z1, scales, zeros

  def block_body(b, carry):
    wfull, qfull, scales, zeros, cur_s, cur_z, loss = carry
    i1 = b * block
    w1 = jax.lax.dynamic_slice(wfull, (i1, 0), (block, n))
    u1 = jax.lax.dynamic_slice(u, (i1, i1), (block, block))
    s1, z1, scales, zeros = block_params(wfull, b, scales, zeros, cur_s, cur_z)

    # Two-level lazy updates: columns are processed in sub-blocks of `sub` rows (only the
    # sub-block is updated per column); the rest of the block gets one matmul per sub-block.
    def sub_body(si, c):
      w1, q1, e1, loss = c
      r = si * sub
      ws = jax.lax.dynamic_slice(w1, (r, 0), (sub, n))
      us = jax.lax.dynamic_slice(u1, (r, r), (sub, sub))
      ss = jax.lax.dynamic_slice(s1, (r, 0), (sub, n))
      zs = jax.lax.dynamic_slice(z1, (r, 0), (sub, n))

      def col_body(i, cc):
        ws, qs, es, loss = cc
        j = i1 + r + i
        x = ws[i]
        d = us[i, i]
        q, deq = quant(x, ss[i], zs[i])
        err = (x - deq) / d
        ws = ws - us[i][:, None] * err[None, :]
        loss = loss + jnp.where(j < k, 0.5 * jnp.sum((x - deq) ** 2) / (d * d), 0.0)
        return ws, qs.at[i].set(q), es.at[i].set(err), loss

      zsub = jnp.zeros((sub, n), jnp.float32)
      _, qs, es, loss = jax.lax.fori_loop(0, sub, col_body, (ws, zsub, zsub, loss))
      q1 = jax.lax.dynamic_update_slice(q1, qs, (r, 0))
      e1 = jax.lax.dynamic_update_slice(e1, es, (r, 0))
      urows = jax.lax.dynamic_slice(u1, (r, 0), (sub, block))
      w1 = w1 - jnp.matmul(urows.T, es, precision=jax.lax.Precision.HIGHEST)
      return w1, q1, e1, loss

    zeros_blk = jnp.zeros((block, n), jnp.float32)
    w1, q1, e1, loss = jax.lax.fori_loop(0, block // sub, sub_body,
                                         (w1, zeros_blk, zeros_blk, loss))
    qfull = jax.lax.dynamic_update_slice(qfull, q1, (i1, 0))
    wfull = obs.lazy_update(wfull, u, e1, b, nb, block)
    return wfull, qfull, scales, zeros, s1[-1], z1[-1], loss

  init = (w, jnp.zeros((kp, n), jnp.float32), jnp.zeros((ng, n), jnp.float32),
          jnp.zeros((ng, n), jnp.float32), pc_scale, pc_zero, jnp.float32(0.0))
  _, qperm, scales, zeros, _, _, loss = jax.lax.fori_loop(0, nb, block_body, init)

  qperm = qperm[:k]
  invperm = jnp.argsort(perm)
  q = qperm[invperm]
  if per_channel:
    scales, zeros = pc_scale[None], pc_zero[None]
  elif static_groups:
    scales, zeros = st_scale, st_zero
  g_idx = invperm // group
  return q.astype(jnp.int32), scales, zeros, g_idx.astype(jnp.int32), loss, tries


def _gptq(w: jax.Array, hessian: Any, cfg: GPTQConfig, *, name: str = "") -> QArray:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  bits = int(cfg.bits)
  w = common.as_matrix(w, name=name)
  k, n = w.shape
  h = as_hessian(hessian, k=k, name=name)
  common.check_finite(h, name=name, what="Hessian")
  g = common.resolve_group_size(k, cfg.group_size, name=name)
  if cfg.block_size < 1:
    raise ValueError(f"gptq: block_size must be >= 1, got {cfg.block_size}")
  if not cfg.mse >= 0:
    raise ValueError(f"gptq: mse (the clip search's error norm) must be >= 0, got {cfg.mse}")
  if not cfg.damp_percent > 0:
    raise ValueError(f"gptq: damp_percent must be > 0, got {cfg.damp_percent}")
  per_channel = cfg.group_size in (None, -1, 0)
  q, scale, zero, g_idx, _, tries = _gptq_jit(
      w, h, jnp.float32(cfg.damp_percent), bits=bits, group=g, sym=bool(cfg.symmetric),
      act_order=bool(cfg.act_order), static_groups=bool(cfg.static_groups) and not per_channel,
      per_channel=per_channel, block=min(int(cfg.block_size), k),
      max_retries=int(cfg.max_damp_retries), mse=float(cfg.mse))
  obs.check_retries(tries, cfg.max_damp_retries, cfg.damp_percent, method="gptq", name=name)
  use_gidx = cfg.act_order and not cfg.static_groups and not per_channel
  return make_int_qarray(q, scale, zero, bits=bits, group_size=g, dtype=w.dtype,
                         g_idx=g_idx if use_gidx else None)


GPTQ_RECORD = qrec.quantizer("gptq", _gptq, GPTQConfig, needs="hessian",
                             description="GPTQ (OBS error feedback with H = 2X^TX/n)")


def gptq(w: jax.Array, hessian: InputStats | jax.Array, cfg: GPTQConfig = GPTQConfig(), *,
         name: str = "") -> QArray:
  """Quantizes ``w[K, N]`` with GPTQ given the input Hessian ``H[K, K]``.

  Args:
    w: float weight in flax layout ``[K, N]`` (``y = x @ w``).
    hessian: :class:`~jaxparams.calib.InputStats`, or the ``[K, K]`` Hessian ``2 X^T X / n``.
    cfg: :class:`GPTQConfig`.
    name: tree path for messages.

  Returns:
    QArray (kind 'int'); with ``act_order`` and dynamic groups it carries ``g_idx``.

  Raises:
    ValueError: bad bits/group size/shapes, NaN/inf in ``w`` or ``H``, or a Hessian
      that stays singular after ``max_damp_retries`` dampening increases.
  """
  return qrec.call(GPTQ_RECORD, w, cfg, hessian, name=name)


def gptq_fake(w: jax.Array, hessian, cfg: GPTQConfig = GPTQConfig(), *,
              name: str = "") -> jax.Array:
  """GPTQ quantize-dequantize: returns the float ``[K, N]`` approximation."""
  return gptq(w, hessian, cfg, name=name).dequantize(jnp.float32)
