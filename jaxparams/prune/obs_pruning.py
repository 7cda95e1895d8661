"""SparseGPT: one-shot OBS pruning with lazy block updates (Frantar & Alistarh, 2023).

Follows the reference ``SparseGPT.fasterprune`` on the shared OBS core of :mod:`jaxparams.calib.obs`
(dead inputs, dampening, the upper Cholesky factor of ``H^-1``): dead inputs (``H_jj = 0``) get ``H_jj = 1`` and a
zero weight column; ``H += percdamp * mean(diag H) * I``; ``U`` is the upper Cholesky factor of
``H^-1``. Columns are visited in blocks of ``block_size``. For unstructured sparsity, the mask of
each block is chosen once from ``w^2 / diag(U)^2`` with one threshold over the whole block (ties
pruned, as the reference does); for N:M, the ``n`` lowest scores of every aligned group of ``m``
inputs are pruned, scored on the weights as updated so far. Each pruned column's error is spread
over the later columns through the row of ``U``; after a block, the later blocks get the lazy
update ``W[:, i2:] -= Err1 @ U[i1:i2, i2:]``. Optional joint quantization uses the reference's
per-row min-max grid fixed on the unpruned weight (zero included), and keeps pruned entries 0.

One departure: at ``sparsity=0`` the reference's ``score <= threshold`` rule would still prune the
single lowest score of each block; here nothing is pruned, so density 1 returns the weights
unchanged (dead input columns aside).

Shapes follow Flax: the kernel is ``[d_in, d_out]``; the computation runs on its transpose.

Example:
  >>> import jax, jax.numpy as jnp
  >>> x = jax.random.normal(jax.random.key(0), (64, 16))
  >>> w = jax.random.normal(jax.random.key(1), (16, 4))
  >>> wp, loss = sparsegpt(w, x.T @ x, sparsity=0.5, block_size=8)
  >>> int((wp == 0).sum()) >= 32
  True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxparams.calib import obs
from jaxparams.prune import masks

__all__ = ["SparseGPTConfig", "sparsegpt"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseGPTConfig:
  """SparseGPT hyperparameters (the reference's defaults).

  Attributes:
    sparsity: fraction of weights pruned (unstructured; ignored with ``pattern``).
    pattern: ``(n, m)`` N:M sparsity (``n`` pruned of every ``m`` inputs), or None.
    block_size: columns per lazy-update block (128).
    percdamp: dampening as a fraction of ``mean(diag H)`` (0.01).
    bits: joint quantization bit width, or None for none (the reference's ``wbits`` 16).
    max_damp_retries: retries with 10x dampening if the Cholesky fails (the shared OBS core's
      rule; the reference has none and fails).
  """

  sparsity: float = 0.5
  pattern: Any = None
  block_size: int = 128
  percdamp: float = 0.01
  bits: int | None = None
  max_damp_retries: int = 4

  def __post_init__(self):
    masks.check_sparsity(self.sparsity)
    object.__setattr__(self, "pattern", masks.parse_pattern(self.pattern, "SparseGPT"))
    if self.pattern is not None and self.block_size % self.pattern[1]:
      raise ValueError(f"SparseGPT block_size {self.block_size} must be a multiple of "
                       f"M={self.pattern[1]}")
    if self.block_size < 1:
      raise ValueError(f"SparseGPT block_size must be >= 1, got {self.block_size}")
    if not self.percdamp >= 0:
      raise ValueError(f"SparseGPT percdamp must be >= 0, got {self.percdamp}")
    if self.bits is not None and not (isinstance(self.bits, int) and 1 <= self.bits <= 8):
      raise ValueError(f"SparseGPT bits must be None or an integer in [1, 8], got {self.bits}")


def _grid(w: jax.Array, bits: int):
  """The reference's asymmetric per-row min-max grid (zero always representable)."""
  maxq = 2 ** bits - 1
  xmin = jnp.minimum(w.min(axis=1), 0.0)
  xmax = jnp.maximum(w.max(axis=1), 0.0)
  both0 = (xmin == 0) & (xmax == 0)
  xmin = jnp.where(both0, -1.0, xmin)
  xmax = jnp.where(both0, 1.0, xmax)
  scale = (xmax - xmin) / maxq
  zero = jnp.round(-xmin / scale)
  return scale, zero, maxq


def _quant(x, scale, zero, maxq):
  q = jnp.clip(jnp.round(x / scale) + zero, 0, maxq)
  return scale * (q - zero)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _sparsegpt(w_kernel: jax.Array, h: jax.Array, cfg: SparseGPTConfig):
  """Takes the Flax kernel ``[d_in, d_out]``; the loop runs on its transpose (``[out, in]``)."""
  h, w_kernel = obs.fix_dead(h, w_kernel)
  u, tries = obs.inverse_cholesky(h, obs.damping(h, cfg.percdamp), cfg.max_damp_retries)
  w = w_kernel.T
  rows, cols = w.shape
  grid = _grid(w, cfg.bits) if cfg.bits is not None else None
  loss = jnp.zeros((rows,), jnp.float32)
  for i1 in range(0, cols, cfg.block_size):
    i2 = min(i1 + cfg.block_size, cols)
    bsz = i2 - i1
    w1 = w[:, i1:i2]
    u1 = u[i1:i2, i1:i2]
    d = jnp.diag(u1)
    if cfg.pattern is None and cfg.sparsity == 0:
      prune0 = jnp.zeros_like(w1, dtype=bool)   # density 1: nothing pruned (see module doc)
    elif cfg.pattern is None:
      score = (w1 ** 2 / d[None, :] ** 2).reshape(-1)
      thresh = jnp.sort(score)[int(score.size * cfg.sparsity)]
      prune0 = (w1 ** 2 / d[None, :] ** 2) <= thresh
    else:
      prune0 = jnp.zeros_like(w1, dtype=bool)
    n_nm, m_nm = cfg.pattern if cfg.pattern is not None else (0, 1)

    def column(i, state, u1=u1, d=d, bsz=bsz):
      w1, q1, e1, prune, lossb = state
      if cfg.pattern is not None:
        idx = i + jnp.arange(m_nm)
        cols_w = jax.lax.dynamic_slice(w1, (0, i), (rows, m_nm))
        cols_d = jax.lax.dynamic_slice(d, (i,), (m_nm,))
        group = cols_w ** 2 / cols_d[None, :] ** 2
        ranks = jnp.argsort(jnp.argsort(group, axis=1, stable=True), axis=1, stable=True)
        new = ranks < n_nm
        upd = prune.at[:, idx].set(new)
        prune = jnp.where(i % m_nm == 0, upd, prune)
      wcol = w1[:, i]
      q = jnp.where(prune[:, i], 0.0, wcol)
      if grid is not None:
        q = jnp.where(prune[:, i], 0.0, _quant(q, *grid))
      lossb = lossb + (wcol - q) ** 2 / d[i] ** 2 / 2
      err = (wcol - q) / d[i]
      w1 = w1 - err[:, None] * u1[i][None, :]
      q1 = q1.at[:, i].set(q)
      e1 = e1.at[:, i].set(err)
      return w1, q1, e1, prune, lossb

    init = (w1, jnp.zeros_like(w1), jnp.zeros_like(w1), prune0, jnp.zeros((rows,), jnp.float32))
    _, q1, e1, _, lossb = jax.lax.fori_loop(0, bsz, column, init)
    w = w.at[:, i1:i2].set(q1)
    if i2 < cols:
      w = w.at[:, i2:].add(-jnp.matmul(e1, u[i1:i2, i2:], precision=jax.lax.Precision.HIGHEST))
    loss = loss + lossb
  return w.T, jnp.sum(loss), tries


def sparsegpt(w: jax.Array, hessian: jax.Array, cfg: SparseGPTConfig | None = None,
              **fields) -> tuple[jax.Array, jax.Array]:
  """Prunes one ``[d_in, d_out]`` kernel with SparseGPT.

  Args:
    w: Flax kernel ``[d_in, d_out]``.
    hessian: ``[d_in, d_in]`` input second moment (any positive multiple of ``X^T X``).
    cfg: a :class:`SparseGPTConfig`; or give its fields as keywords.

  Returns:
    ``(pruned kernel in w's dtype, loss)`` where loss is the reference's summed OBS error.

  Example:
    >>> w = jnp.arange(16.0).reshape(4, 4) - 8
    >>> wp, _ = sparsegpt(w, jnp.eye(4), pattern=(2, 4), block_size=4)
    >>> (wp != 0).sum(axis=0).tolist()
    [2, 2, 2, 2]
  """
  if cfg is None:
    cfg = SparseGPTConfig(**fields)
  elif fields:
    cfg = dataclasses.replace(cfg, **fields)
  if w.ndim != 2:
    raise ValueError(f"SparseGPT expects a [d_in, d_out] kernel, got shape {tuple(w.shape)}")
  if hessian.shape != (w.shape[0], w.shape[0]):
    raise ValueError(f"SparseGPT: Hessian of shape {tuple(hessian.shape)} does not match the "
                     f"kernel's {w.shape[0]} inputs")
  if cfg.pattern is not None and w.shape[0] % cfg.pattern[1]:
    raise ValueError(f"SparseGPT {cfg.pattern[0]}:{cfg.pattern[1]} needs d_in a multiple of "
                     f"{cfg.pattern[1]}, got {w.shape[0]}")
  out, loss, tries = _sparsegpt(w.astype(jnp.float32), hessian.astype(jnp.float32), cfg)
  obs.check_retries(tries, cfg.max_damp_retries, cfg.percdamp, method="sparsegpt")
  return out.astype(w.dtype), loss
