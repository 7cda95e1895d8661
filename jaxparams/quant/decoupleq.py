"""decoupleQ (Guo et al. 2024, arXiv 2404.12759): integer part and float part solved apart.

Each weight column ``n`` (an output channel) is written
``W_hat[k, n] = s[g, n] * q[k, n] + z[g, n]``
(group ``g`` of row ``k``), with integer ``q`` in ``[0, 2**bits - 1]``, and the
layer-output objective ``sum_n (W_hat - W)[:, n]^T H (W_hat - W)[:, n]`` (``H = 2 X^T X / n``)
is minimised by alternating (stage 1 of the paper, fixed iteration counts, one jit):

1. **integer part** with ``(s, z)`` fixed: relax ``q`` to the box ``[0, maxq]`` and solve
   the box-constrained quadratic by accelerated projected gradient (FISTA,
   ``pgd_iters`` steps, step ``1 / L`` with ``L`` from power iteration); then round
   the relaxed solution to integers column by column with error feedback through the
   Cholesky factor of ``H^-1`` (GPTQ-style rounding, as decoupleQ's default
   ``round_fn='gptq'``), optionally in act-order;
2. **float part** with ``q`` fixed: per output channel the ``2 * n_groups`` unknowns
   ``(s, z)`` have the closed-form least-squares solution of
   ``(A^T H A) theta = A^T H w`` (a batched linear solve, lightly damped);
3. keep, per output channel, the best iterate.

Initial ``(s, z)``: min/max grid with a per-channel shrink search on the same
objective. Stage 2 of the paper (block-wise training of the float parts) is a
model-level step and is not part of this per-matrix function.

Stored as QArray ``scale = s``, ``zero = -z / s`` (float, code units).

Example:
  >>> import jax
  >>> from jaxparams.calib import InputStats
  >>> x = jax.random.normal(jax.random.key(0), (256, 64))
  >>> w = jax.random.normal(jax.random.key(1), (64, 16))
  >>> qa = decoupleq(w, InputStats.from_inputs(x), DecoupleQConfig(bits=2, group_size=32, outer_iters=2))
  >>> qa.bits, qa.scale.shape
  (2, (2, 16))
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

__all__ = ["DecoupleQConfig", "decoupleq"]

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoupleQConfig:
  """decoupleQ settings.

  Attributes:
    bits: 2, 3, 4 or 8 (the method targets 2).
    group_size: rows per group along K; -1/None = per-channel.
    outer_iters: alternations of (integer solve, float least squares) (4 in the paper's script).
    pgd_iters: projected-gradient steps of the relaxed integer solve.
    act_order: round inputs by decreasing Hessian diagonal.
    damp_percent: dampening of H for the rounding (as GPTQ), fraction of mean(diag H).
    init_grid: shrink factors tried for the initial min/max grid (1 = none).
    block_size: rows per block of the rounding pass.
  """

  bits: int = 2
  group_size: int | None = 64
  outer_iters: int = 4
  pgd_iters: int = 50
  act_order: bool = True
  damp_percent: float = 0.01
  init_grid: int = 10
  block_size: int = 128


def _expand(a, group):
  return jnp.repeat(a, group, axis=0)


def _objective(d, h):
  """Per-channel ``d_n^T H d_n`` for ``d[K, N]``."""
  return jnp.sum(d * jnp.matmul(h, d, precision=_HI), axis=0)


def _round_feedback(t, u, s_rows, z_rows, maxq, block):
  """Rounds weight-space targets ``t[K, N]`` onto the fixed grid ``s*q+z`` row by row,
  feeding each row's error forward through the upper factor ``u`` of ``H^-1`` (OBS sweep)."""
  k = t.shape[0]
  kp = -(-k // block) * block
  pad = ((0, kp - k), (0, 0))
  s_rows = jnp.pad(s_rows, pad, constant_values=1.0)
  z_rows = jnp.pad(z_rows, pad)

  def row(j, x):
    s, z = s_rows[j], z_rows[j]
    q = jnp.clip(jnp.round((x - z) / s), 0.0, maxq)
    return q, s * q + z

  return obs.sweep(t, u, row, block=block)


def _lstsq_sz(q, w, h, group, chunk):
  """Closed-form (s, z) per group and channel for fixed integer codes ``q[K, N]``."""
  k, n = q.shape
  ng = k // group
  hsum = h.reshape(k, ng, group).sum(-1)                       # [K, ng]  sum_{l in g'} H[k, l]
  pzz = hsum.reshape(ng, group, ng).sum(1)                     # [ng, ng]
  hw = jnp.matmul(h, w, precision=_HI)                         # [K, N]
  hr = h.reshape(k, ng, group)

  def solve_chunk(args):
    qc, hwc = args                                             # [K, c]
    c = qc.shape[1]
    qr = qc.reshape(ng, group, c)
    t = jnp.einsum("kgl,gln->kgn", hr, qr, precision=_HI)       # [K, ng, c]
    pss = jnp.einsum("gin,gihn->ngh", qr, t.reshape(ng, group, ng, c), precision=_HI)
    psz = jnp.einsum("gin,gih->ngh", qr, hsum.reshape(ng, group, ng), precision=_HI)
    pzz_b = jnp.broadcast_to(pzz, (c, ng, ng))
    top = jnp.concatenate([pss, psz], axis=2)
    bot = jnp.concatenate([jnp.swapaxes(psz, 1, 2), pzz_b], axis=2)
    p = jnp.concatenate([top, bot], axis=1)                    # [c, 2ng, 2ng]
    p = 0.5 * (p + jnp.swapaxes(p, 1, 2))
    dmean = jnp.mean(jnp.diagonal(p, axis1=1, axis2=2), axis=1)
    p = p + (1e-6 * dmean + 1e-12)[:, None, None] * jnp.eye(2 * ng, dtype=p.dtype)
    hwr = hwc.reshape(ng, group, c)
    y = jnp.concatenate([jnp.einsum("gin,gin->ng", qr, hwr), hwr.sum(1).T], axis=1)
    theta = jnp.linalg.solve(p, y[..., None])[..., 0]          # [c, 2ng]
    return theta[:, :ng].T, theta[:, ng:].T

  nc = n // chunk
  qs = q.reshape(k, nc, chunk).transpose(1, 0, 2)
  hws = hw.reshape(k, nc, chunk).transpose(1, 0, 2)
  s, z = jax.lax.map(solve_chunk, (qs, hws))                   # [nc, ng, chunk]
  return s.transpose(1, 0, 2).reshape(ng, n), z.transpose(1, 0, 2).reshape(ng, n)


@functools.partial(jax.jit, static_argnames=("cfg", "group", "chunk"))
def _decoupleq_jit(w, h, *, cfg: DecoupleQConfig, group: int, chunk: int):
  k, n = w.shape
  ng = k // group
  maxq = float(2 ** cfg.bits - 1)
  w = w.astype(jnp.float32)
  h, w = obs.fix_dead(h, w)
  damp = obs.damping(h, cfg.damp_percent)
  hd = h + damp * jnp.eye(k, dtype=h.dtype)      # objective uses the damped H (as the rounding)

  # ---- initial grid: min/max with a per-channel shrink search on the objective
  wg = w.reshape(ng, group, n)
  wmin = jnp.min(wg, axis=1)
  wmax = jnp.max(wg, axis=1)

  def grid_for(p):
    lo, hi = wmin * p, wmax * p
    s = jnp.where(hi > lo, (hi - lo) / maxq, 1.0)
    return s, lo

  def quant_err(s, z):
    q = jnp.clip(jnp.round((w - _expand(z, group)) / _expand(s, group)), 0.0, maxq)
    return q, _objective(_expand(s, group) * q + _expand(z, group) - w, hd)

  ps = 1.0 - 0.5 * jnp.arange(cfg.init_grid, dtype=jnp.float32) / max(cfg.init_grid, 1)
  errs = jax.lax.map(lambda p: quant_err(*grid_for(p))[1], ps)      # [grid, N]
  pbest = ps[jnp.argmin(errs, axis=0)]                                # [N]
  s0, z0 = grid_for(pbest[None, :])
  q0, e0 = quant_err(s0, z0)

  # ---- rounding order and factor
  if cfg.act_order:
    perm = jnp.argsort(-jnp.diagonal(h), stable=True)
  else:
    perm = jnp.arange(k)
  invperm = jnp.argsort(perm)
  u, tries = obs.inverse_cholesky(h[perm][:, perm], damp, 4)

  # Lipschitz constant of grad f(t) = 2 H (t - w): power iteration on H.
  def pow_it(_, v):
    v = jnp.matmul(hd, v, precision=_HI)
    return v / (jnp.linalg.norm(v) + 1e-30)
  v = jax.lax.fori_loop(0, 30, pow_it, jnp.ones((k,), jnp.float32) / jnp.sqrt(k))
  lip = 2.0 * jnp.dot(v, jnp.matmul(hd, v, precision=_HI)) * 1.05 + 1e-30

  def alternate(_, state):
    s, z, q_best, s_best, z_best, e_best = state
    sr, zr = _expand(s, group), _expand(z, group)
    lo = jnp.minimum(zr, sr * maxq + zr)
    hi = jnp.maximum(zr, sr * maxq + zr)

    # (1a) relaxed integer part: FISTA on the box (in weight space t = s*q + z).
    t0 = jnp.clip(w, lo, hi)

    def fista(_, c):
      t, y, a = c
      grad = 2.0 * jnp.matmul(hd, y - w, precision=_HI)
      t_new = jnp.clip(y - grad / lip, lo, hi)
      a_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * a * a))
      y = t_new + ((a - 1.0) / a_new) * (t_new - t)
      return t_new, y, a_new

    t, _, _ = jax.lax.fori_loop(0, cfg.pgd_iters, fista, (t0, t0, jnp.float32(1.0)))
    # (1b) round with error feedback.
    q = _round_feedback(t[perm], u, sr[perm], zr[perm], maxq, cfg.block_size)[invperm]
    # (2) float part by least squares.
    s_new, z_new = _lstsq_sz(q, w, hd, group, chunk)
    ok = jnp.isfinite(s_new).all(axis=0) & jnp.isfinite(z_new).all(axis=0) & \
        (jnp.abs(s_new) > 1e-12).all(axis=0)
    s_new = jnp.where(ok[None], s_new, s)
    z_new = jnp.where(ok[None], z_new, z)
    e = _objective(_expand(s_new, group) * q + _expand(z_new, group) - w, hd)
    better = e < e_best
    q_best = jnp.where(better[None], q, q_best)
    s_best = jnp.where(better[None], s_new, s_best)
    z_best = jnp.where(better[None], z_new, z_best)
    e_best = jnp.where(better, e, e_best)
    return s_new, z_new, q_best, s_best, z_best, e_best

  _, _, q, s, z, e = jax.lax.fori_loop(0, cfg.outer_iters, alternate, (s0, z0, q0, s0, z0, e0))
  return q.astype(jnp.int32), s, -z / s, jnp.sum(e), tries


def _decoupleq(w: jax.Array, hessian: Any, cfg: DecoupleQConfig, *, name: str = "") -> QArray:
  # The math; bits, group size, shape, dtype and finiteness are the record's checks.
  bits = int(cfg.bits)
  if cfg.outer_iters < 1 or cfg.pgd_iters < 0 or cfg.init_grid < 1:
    raise ValueError(f"decoupleq: need outer_iters >= 1, pgd_iters >= 0, init_grid >= 1; got {cfg}")
  w = common.as_matrix(w, name=name)
  k, n = w.shape
  h = as_hessian(hessian, k=k, name=name)
  common.check_finite(h, name=name, what="Hessian")
  g = common.resolve_group_size(k, cfg.group_size, name=name)
  ng = k // g
  chunk = n
  while chunk > 1 and k * ng * chunk > (1 << 24) and chunk % 2 == 0:
    chunk //= 2
  run_cfg = dataclasses.replace(cfg, bits=bits, block_size=min(cfg.block_size, k))
  q, s, zero, _, tries = _decoupleq_jit(w, h, cfg=run_cfg, group=g, chunk=chunk)
  obs.check_retries(tries, 4, cfg.damp_percent, method="decoupleq", name=name)
  return make_int_qarray(q, s, zero, bits=bits, group_size=g, dtype=w.dtype)


DECOUPLEQ_RECORD = qrec.quantizer("decoupleq", _decoupleq, DecoupleQConfig, needs="hessian",
                                  description="decoupleQ: integer and float parts solved apart")


def decoupleq(w: jax.Array, hessian: InputStats | jax.Array,
              cfg: DecoupleQConfig = DecoupleQConfig(), *, name: str = "") -> QArray:
  """decoupleQ-quantizes ``w[K, N]`` given the input Hessian (see the module docstring).

  Raises:
    ValueError: bad bits / group size / Hessian shape, or non-finite inputs.
  """
  return qrec.call(DECOUPLEQ_RECORD, w, cfg, hessian, name=name)
