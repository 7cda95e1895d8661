"""Closed-form weight updates of ROME, MEMIT and AlphaEdit on one ``[d_k, d_v]`` kernel.

Kernels follow the house convention ``y = k @ W`` (``W: [d_k, d_v]``, keys ``k: [d_k]``), so the
reference code's ``W_torch = W.T``; every update below is returned in the kernel's layout.

* ROME (``rome/rome_main.py``, ``compute_u.py``, ``compute_v.py``): ``u = C^-1 k_avg / ||.||``,
  ``right = (v* - W^T k*) / (k* . u)``, ``Delta = u right^T``; then ``W'^T k* = v*`` exactly.
* MEMIT (``memit/memit_main.py``): ``adj_k = (lam C + K K^T)^-1 K``, ``Delta = adj_k R^T``
  (``R = residual / layers left``), solved in float64 when x64 is enabled, else float32.
* AlphaEdit (``AlphaEdit/AlphaEdit_main.py``): ``P = U_0 U_0^T`` over singular vectors of ``C``
  with singular value below the threshold, ``Delta = (P (K K^T + C_p) + a I)^-1 P K R^T``, so
  ``Delta^T k = 0`` for every preserved key ``k`` with ``P k = 0``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> W = jax.random.normal(jax.random.key(0), (8, 4)); C = jnp.eye(8)
  >>> k = jnp.ones(8); v = jnp.arange(4.)
  >>> d = rome_delta(W, C, k, k, v)
  >>> bool(jnp.allclose((W + d).T @ k, v, atol=1e-5))
  True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["rome_delta", "memit_delta", "alphaedit_delta", "null_space_projector",
           "solve_psd", "memit_lambda", "alphaedit_l2", "NULLSPACE_MODES", "LAMBDA_MODES"]


def _f64() -> bool:
  return bool(jax.config.jax_enable_x64)


def solve_psd(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a^-1 b``: float64 when x64 is enabled (the reference's ``torch.linalg.solve`` on
  doubles), else float32; LU with partial pivoting either way."""
  f = jnp.float64 if _f64() else jnp.float32
  return jnp.linalg.solve(a.astype(f), b.astype(f))


@jax.jit
def rome_delta(kernel: jax.Array, cov: jax.Array, k_avg: jax.Array, k_star: jax.Array,
               v_star: jax.Array) -> jax.Array:
  """ROME rank-one update ``[d_k, d_v]`` so that ``(kernel + delta)^T k_star = v_star``.

  Args:
    kernel: ``W [d_k, d_v]``.
    cov: Key second moment ``C = E[k k^T]`` ``[d_k, d_k]`` (inverted here, as
      ``compute_u.get_inv_cov``; pass the identity for ``mom2_adjustment=False``).
    k_avg: Key averaged over context templates (defines the left vector ``u``).
    k_star: Key of the edit prompt itself (``cur_input`` in ``compute_v``).
    v_star: Target output ``h_init + delta`` at that token.
  """
  dt = kernel.dtype
  w = kernel.astype(jnp.float32)
  u = jnp.linalg.solve(cov.astype(jnp.float32), k_avg.astype(jnp.float32))
  u = u / jnp.linalg.norm(u)
  cur_out = k_star.astype(jnp.float32) @ w
  right = (v_star.astype(jnp.float32) - cur_out) / jnp.dot(k_star.astype(jnp.float32), u)
  return jnp.outer(u, right).astype(dt)


@functools.partial(jax.jit, static_argnames=())
def memit_delta(keys: jax.Array, resid: jax.Array, cov: jax.Array, lam: float | jax.Array
                ) -> jax.Array:
  """MEMIT batch update ``[d_k, d_v]``: ``(lam C + K K^T)^-1 K R^T``.

  Args:
    keys: ``K [d_k, n]`` (one template-averaged key per edit).
    resid: ``R [d_v, n]`` (target residual already divided by the number of layers left).
    cov: ``C [d_k, d_k]``.
    lam: ``mom2_update_weight``.
  """
  f = jnp.float64 if _f64() else jnp.float32
  k = keys.astype(f)
  adj = solve_psd(lam * cov.astype(f) + k @ k.T, k)
  return (adj @ resid.astype(f).T).astype(jnp.float32)


NULLSPACE_MODES = ("absolute", "relative", "energy")
"""How :func:`null_space_projector` reads its threshold: ``'absolute'`` (eigenvalue below the
value, the reference's 2e-2), ``'relative'`` (below ``value x`` the largest eigenvalue),
``'energy'`` (the smallest eigen-directions holding at most ``value`` of ``trace(C)``)."""

LAMBDA_MODES = ("absolute", "relative")
"""How MEMIT's lambda / AlphaEdit's L2 are read: ``'absolute'`` (the number itself, as the
reference's 15000 / 10) or ``'relative'`` (times the edit keys' own scale: see
:func:`memit_lambda` and :func:`alphaedit_l2`)."""


def check_mode(mode: str, valid: tuple[str, ...], what: str) -> str:
  """``mode`` if valid, else ValueError listing the valid ones."""
  if mode not in valid:
    raise ValueError(f"{what} must be one of {', '.join(valid)}; found {mode!r}")
  return mode


@functools.partial(jax.jit, static_argnames=("mode",))
def null_space_projector(cov: jax.Array, threshold: float | jax.Array,
                         mode: str = "absolute") -> jax.Array:
  """AlphaEdit's ``P = U_0 U_0^T`` over the left singular vectors of ``cov`` kept by
  ``threshold`` read in ``mode`` (:data:`NULLSPACE_MODES`); ``'absolute'``: singular value below
  ``threshold`` (``experiments/evaluate.py:get_project``).

  Example:
    >>> import jax.numpy as jnp
    >>> c = jnp.diag(jnp.array([10., 1., 0.05, 0.01]))
    >>> [int(jnp.trace(null_space_projector(c, t, m)).round()) for t, m in
    ...  [(2e-2, 'absolute'), (0.1, 'relative'), (0.01, 'energy')]]
    [1, 2, 2]
  """
  u, s, _ = jnp.linalg.svd(cov.astype(jnp.float32), full_matrices=False)
  if mode == "absolute":
    keep = s < threshold
  elif mode == "relative":
    keep = s < threshold * s[0]
  elif mode == "energy":   # s descending: tail[i] = energy of directions i.. (the smallest)
    tail = jnp.cumsum(s[::-1])[::-1]
    keep = tail <= threshold * jnp.sum(s)
  else:
    raise ValueError(f"null-space mode must be one of {', '.join(NULLSPACE_MODES)}; found "
                     f"{mode!r}")
  return (u * keep.astype(u.dtype)[None, :]) @ u.T


@jax.jit
def _mahalanobis(keys: jax.Array, cov: jax.Array) -> jax.Array:
  k = keys.astype(jnp.float32)
  return jnp.mean(jnp.sum(k * solve_psd(cov, k).astype(jnp.float32), 0))


def memit_lambda(keys: jax.Array, cov: jax.Array, weight: float, mode: str = "absolute"
                 ) -> jax.Array:
  """MEMIT's ``lambda``: ``weight`` (``'absolute'``, the reference's 15000), or ``weight x``
  the edit keys' mean ``k^T C^-1 k`` (``'relative'``): a lone key then keeps a fraction
  ``1 / (1 + weight)`` of its residual whatever the key width, key scale or the number of tokens
  behind ``C`` (``k^T C^-1 k`` is about ``d`` for keys drawn like ``C``'s).

  Example:
    >>> import jax.numpy as jnp
    >>> float(memit_lambda(jnp.ones((4, 3)), 2 * jnp.eye(4), 0.5, 'relative'))
    1.0
  """
  check_mode(mode, LAMBDA_MODES, "MEMIT lambda_mode")
  if mode == "absolute":
    return jnp.asarray(weight, jnp.float32)
  return weight * _mahalanobis(keys, cov)


def alphaedit_l2(keys: jax.Array, projector: jax.Array, l2: float, mode: str = "absolute"
                 ) -> jax.Array:
  """AlphaEdit's ``L2``: ``l2`` (``'absolute'``, the reference's 10), or ``l2 x`` the edit keys'
  mean null-space energy ``||P k||^2`` (``'relative'``): a lone key then keeps ``1 / (1 + l2)``
  of its residual, whatever the keys' scale (floored at ``1e-6`` of the keys' mean squared norm,
  so that an empty null space gives a zero update).

  Example:
    >>> import jax.numpy as jnp
    >>> float(alphaedit_l2(jnp.ones((4, 3)), jnp.eye(4), 0.5, 'relative'))
    2.0
  """
  check_mode(mode, LAMBDA_MODES, "AlphaEdit l2_mode")
  if mode == "absolute":
    return jnp.asarray(l2, jnp.float32)
  k = keys.astype(jnp.float32)
  pk = projector.astype(jnp.float32) @ k
  # floor: an empty null space (P = 0) gives a zero update, not a singular solve
  floor = 1e-6 * jnp.mean(jnp.sum(k * k, 0)) + 1e-30
  return jnp.maximum(l2 * jnp.mean(jnp.sum(pk * pk, 0)), floor)


@jax.jit
def alphaedit_delta(keys: jax.Array, resid: jax.Array, projector: jax.Array,
                    cache_c: jax.Array, l2: float | jax.Array) -> jax.Array:
  """AlphaEdit update ``[d_k, d_v]``: ``solve(P (K K^T + C_p) + l2 I, P K R^T)``.

  Args:
    keys: ``K [d_k, n]``.
    resid: ``R [d_v, n]``.
    projector: ``P [d_k, d_k]`` from :func:`null_space_projector`.
    cache_c: ``C_p = sum K_p K_p^T`` of earlier sequential edits ``[d_k, d_k]``.
    l2: ``L2`` (``alpha``).
  """
  f = jnp.float64 if _f64() else jnp.float32
  k, r, p = keys.astype(f), resid.astype(f), projector.astype(f)
  a = p @ (k @ k.T + cache_c.astype(f)) + l2 * jnp.eye(k.shape[0], dtype=f)
  return jnp.linalg.solve(a, p @ k @ r.T).astype(jnp.float32)
