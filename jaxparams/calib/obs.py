"""The Optimal Brain Surgeon (OBS) core shared by GPTQ, decoupleQ, SparseGPT and ROME-style edits.

For a layer ``y = x @ W`` (``W[K, N]``) and the input Hessian ``H = 2 X^T X / n``,
OBS-style methods walk the K input rows in order, replace row ``j`` by a
constrained value (quantized, pruned, ...) and push the error onto the rows not
yet processed through the upper Cholesky factor ``U`` of ``H^-1``
(``H^-1 = U^T U``): ``W[j+1:] -= U[j, j+1:]^T (w_j - q_j) / U[j, j]``. The pieces:

* :func:`fix_dead`: dead inputs (``H_jj == 0``) get ``H_jj = 1`` and their weight
  rows zeroed; :func:`damping`: ``percent * mean(diag H)``.
* :func:`inverse_cholesky`: ``U`` of ``(H + damp I)^-1``, retrying with 10x the
  dampening when the factorisation fails (jit-friendly ``while_loop``);
  :func:`check_retries` turns the retry count into a warning or an error.
* :func:`lazy_update`: the blocked ("lazy batch") update of the trailing rows
  after one block of ``block`` rows is done.
* :func:`sweep`: the whole blocked walk with a per-row callback (one row at a
  time inside a block, lazy updates between blocks).

Everything is pure ``jnp`` and runs under ``jit``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> x = jax.random.normal(jax.random.key(0), (64, 8))
  >>> h = 2 * x.T @ x / 64
  >>> u, tries = inverse_cholesky(h, 0.01 * jnp.mean(jnp.diagonal(h)), 4)
  >>> hinv = jnp.linalg.inv(h + 0.01 * jnp.mean(jnp.diagonal(h)) * jnp.eye(8))
  >>> bool(jnp.allclose(u.T @ u, hinv, atol=1e-4)), int(tries)
  (True, 0)
"""

from __future__ import annotations

import warnings
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["fix_dead", "damping", "inverse_cholesky", "check_retries", "lazy_update", "pad_blocks",
           "sweep"]

_HI = jax.lax.Precision.HIGHEST


def fix_dead(h: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Dead inputs (``H_jj == 0``) get ``H_jj = 1`` and their weight rows zeroed.

  Example:
    >>> import jax.numpy as jnp
    >>> h, w = fix_dead(jnp.diag(jnp.array([2.0, 0.0])), jnp.ones((2, 1)))
    >>> h.tolist(), w.tolist()
    ([[2.0, 0.0], [0.0, 1.0]], [[1.0], [0.0]])
  """
  dead = jnp.diagonal(h) == 0
  return h + jnp.diag(jnp.where(dead, 1.0, 0.0)), jnp.where(dead[:, None], 0.0, w)


def damping(h: jax.Array, damp_percent: jax.Array | float) -> jax.Array:
  """The dampening ``damp_percent * mean(diag H)`` added to the diagonal before inversion.

  Example:
    >>> import jax.numpy as jnp
    >>> float(damping(jnp.diag(jnp.array([2.0, 4.0])), 0.5))
    1.5
  """
  return damp_percent * jnp.mean(jnp.diagonal(h))


def inverse_cholesky(h: jax.Array, damp: jax.Array, max_retries: int
                     ) -> tuple[jax.Array, jax.Array]:
  """Upper Cholesky factor ``U`` of ``(H + damp*I)^-1`` (``U^T U``), retrying 10x damp on NaN.

  Args:
    h: symmetric ``H[K, K]``.
    damp: dampening added to the diagonal.
    max_retries: how many times to multiply the dampening by 10 after a failure.

  Returns:
    ``(U, tries)``: ``tries`` is the number of retries used (``> max_retries`` means
    it failed and ``U`` is not finite).
  """
  k = h.shape[0]
  eye = jnp.eye(k, dtype=h.dtype)

  def attempt(t):
    # With J the reversal permutation, chol(J H J) = L gives H = R R^T with R = J L J upper,
    # so H^-1 = (R^-1)^T R^-1 and U = R^-1 = J L^-1 J: one Cholesky + one triangular solve
    # (the reference's chol -> cholesky_inverse -> chol gives the same factor).
    hd = h + (damp * (10.0 ** t)) * eye
    lo = jnp.linalg.cholesky(hd[::-1, ::-1])
    linv = jax.scipy.linalg.solve_triangular(lo, eye, lower=True)
    return linv[::-1, ::-1]

  def bad(u):
    return ~jnp.all(jnp.isfinite(u))

  def cond(state):
    t, u = state
    return bad(u) & (t <= max_retries)

  def body(state):
    t, _ = state
    return t + 1, attempt((t + 1).astype(h.dtype))

  t, u = jax.lax.while_loop(cond, body, (jnp.int32(0), attempt(jnp.float32(0.0))))
  return u, t


def check_retries(tries: jax.Array, max_retries: int, damp_percent: float, *, method: str,
                  name: str = "") -> None:
  """Host-side report of :func:`inverse_cholesky`'s retry count (no-op under tracing).

  Raises:
    ValueError: the factorisation failed even after ``max_retries`` increases.

  Warns:
    RuntimeWarning: it needed more dampening than asked for (names the tensor).
  """
  if isinstance(tries, jax.core.Tracer):
    return
  t = int(tries)
  label = name or "weight"
  if t > max_retries:
    raise ValueError(f"{method}: Hessian of {label!r} is not positive definite even with "
                     f"dampening {damp_percent * 10 ** max_retries:g} x mean(diag H) "
                     f"({max_retries} retries); check the calibration inputs")
  if t > 0:
    warnings.warn(f"{method}: Hessian of {label!r} is singular at damp_percent="
                  f"{damp_percent:g}; retried with damp_percent={damp_percent * 10 ** t:g}",
                  RuntimeWarning, stacklevel=3)


def pad_blocks(u: jax.Array, w: jax.Array, block: int) -> tuple[jax.Array, jax.Array, int]:
  """Pads ``U`` (identity) and ``W`` (zeros) to a multiple of ``block`` rows.

  Returns:
    ``(u, w, nb)`` with ``nb`` blocks.
  """
  k = w.shape[0]
  nb = -(-k // block)
  kp = nb * block
  if kp != k:
    u = jax.scipy.linalg.block_diag(u, jnp.eye(kp - k, dtype=u.dtype))
    w = jnp.pad(w, ((0, kp - k), (0, 0)))
  return u, w, nb


def lazy_update(wfull: jax.Array, u: jax.Array, err: jax.Array, b: jax.Array, nb: int,
                block: int) -> jax.Array:
  """``W[i2:] -= U[i1:i2, i2:]^T @ err`` after block ``b`` (rows ``i1:i2``), in row chunks.

  Args:
    wfull: ``W[nb * block, N]`` (padded, see :func:`pad_blocks`).
    u: ``U[nb * block, nb * block]``.
    err: ``[block, N]`` scaled errors ``(w_j - q_j) / U_jj`` of the block's rows.
    b: the block index (traced).
    nb: number of blocks.
    block: rows per block.
  """
  i1 = b * block
  n = wfull.shape[1]

  def chunk(c, wf):
    r = c * block
    uc = jax.lax.dynamic_slice(u, (i1, r), (block, block))
    wc = jax.lax.dynamic_slice(wf, (r, 0), (block, n))
    wc = wc - jnp.matmul(uc.T, err, precision=_HI)
    return jax.lax.dynamic_update_slice(wf, wc, (r, 0))

  return jax.lax.fori_loop(b + 1, nb, chunk, wfull)


RowFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def sweep(w: jax.Array, u: jax.Array, row_fn: RowFn, *, block: int) -> jax.Array:
  """Walks the rows of ``W`` with error feedback; returns the stacked outputs of ``row_fn``.

  For each row ``j`` (in order), ``out_j, value_j = row_fn(j, w_j)`` gives the row's
  result (codes, mask, ...) and the value it is replaced by; the error
  ``(w_j - value_j) / U_jj`` is pushed onto the following rows of the block at once
  and onto later blocks by :func:`lazy_update`.

  Args:
    w: ``W[K, N]`` float32 (rows in processing order).
    u: upper ``U[K, K]`` with ``U^T U = H^-1`` in the same order.
    row_fn: ``(j, w_j[N]) -> (out_j[N], value_j[N])``, jnp-traceable; ``j`` may be a
      padding row ``>= K`` (its output is dropped).
    block: rows per lazy-update block.

  Returns:
    ``out[K, N]`` float32.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> u, _ = inverse_cholesky(2 * x.T @ x / 64, 0.01, 0)
    >>> w = jax.random.normal(jax.random.key(1), (8, 3))
    >>> q = sweep(w, u, lambda j, r: (jnp.round(r), jnp.round(r)), block=4)
    >>> bool(jnp.all(q == jnp.round(q))), q.shape
    (True, (8, 3))
  """
  k, n = w.shape
  u, w, nb = pad_blocks(u, w, block)

  def block_body(b, carry):
    wfull, ofull = carry
    i1 = b * block
    w1 = jax.lax.dynamic_slice(wfull, (i1, 0), (block, n))
    u1 = jax.lax.dynamic_slice(u, (i1, i1), (block, block))

    def col(i, c):
      w1, o1, e1 = c
      x = w1[i]
      out, val = row_fn(i1 + i, x)
      err = (x - val) / u1[i, i]
      w1 = w1 - u1[i][:, None] * err[None, :]
      return w1, o1.at[i].set(out), e1.at[i].set(err)

    zb = jnp.zeros((block, n), jnp.float32)
    _, o1, e1 = jax.lax.fori_loop(0, block, col, (w1, zb, zb))
    wfull = lazy_update(wfull, u, e1, b, nb, block)
    return wfull, jax.lax.dynamic_update_slice(ofull, o1, (i1, 0))

  _, out = jax.lax.fori_loop(0, nb, block_body, (w, jnp.zeros_like(w)))
  return out[:k]
