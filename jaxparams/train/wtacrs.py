"""WTA-CRS: a Linear whose weight gradient uses winner-take-all column-row sampling.

For ``y = x @ W`` over ``n`` token rows, ``∇W = Σ_i x_iᵀ g_i`` (``g = ∂L/∂y``). Liu et al. (NeurIPS
2023) estimate it from ``k ≪ n`` rows, so only ``k`` rows of ``x`` are kept for the backward pass:

* probabilities ``p_i ∝ ‖x_i‖·‖g_i‖`` (in the layer ``‖g_i‖`` is unknown at forward time, so
  ``p ∝ ‖x_i‖``, the paper's fallback; any ``p`` keeps the estimate unbiased);
* **winner-take-all**: the ``c`` most probable rows are taken exactly, with
  ``c = argmin_{c<k} (1 - P_c)/(k - c)`` (``P_c``: sum of the top-``c`` probabilities; ``c = 0``,
  plain CRS, when ``1/k`` is already the minimum);
* the other ``s = k - c`` rows are drawn with replacement from ``q_j = p_j / (1 - P_c)`` outside
  the winners and weighted ``(1 - P_c) / (s p_j)``.

``ĝ = Σ_{winners} x_cᵀ g_c + (1-P_c)/s Σ_t x_{j_t}ᵀ g_{j_t} / p_{j_t}`` is unbiased. The forward
output and ``∂L/∂x = g Wᵀ`` are exact; the saved activations are the ``k`` weighted rows (``k/n``
of the exact layer's). :func:`make_dot` plugs it into every Linear of a model through ``dot=``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> x = jax.random.normal(jax.random.key(0), (64, 8))
  >>> g = jax.random.normal(jax.random.key(1), (64, 4))
  >>> est = jnp.mean(jnp.stack([estimate_weight_grad(x, g, jax.random.key(s), k=16)
  ...                           for s in range(400)]), 0)
  >>> bool(jnp.linalg.norm(est - x.T @ g) < 0.1 * jnp.linalg.norm(x.T @ g))
  True
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["num_rows", "sampling_plan", "estimate_weight_grad", "wtacrs_matmul", "make_dot"]


def num_rows(n: int, ratio: float, min_rows: int = 1) -> int:
  """``k = min(max(floor(ratio·n), min_rows), n)`` rows kept (the paper's rule).

  Example:
    >>> num_rows(512, 0.3)
    153
  """
  if not 0 < ratio <= 1:
    raise ValueError(f"WTA-CRS ratio must be in (0, 1], found {ratio}")
  return int(min(max(int(ratio * n), int(min_rows)), n))


def sampling_plan(p: jax.Array, k: int, key: jax.Array, *,
                  winner_take_all: bool = True) -> tuple[jax.Array, jax.Array]:
  """Row indices ``int32[k]`` and their weights ``float32[k]`` for probabilities ``p[n]``.

  ``winner_take_all=False`` gives plain column-row sampling (``k`` draws, weight ``1/(k p_j)``).
  ``Σ_t weight_t · row(idx_t)`` is an unbiased estimate of ``Σ_i row(i)``.
  """
  p = jnp.asarray(p, jnp.float32)
  p = p / jnp.sum(p)
  order = jnp.argsort(-p)
  ps = p[order]
  t = jnp.arange(k)
  if winner_take_all:
    top = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(ps)])[:k]   # P_0 .. P_{k-1}
    c = jnp.argmin((1.0 - top) / (k - t))
    p_c = top[c]
  else:
    c, p_c = jnp.int32(0), jnp.float32(0.0)
  rest = jnp.maximum(1.0 - p_c, 0.0)
  outside = (jnp.arange(p.shape[0]) >= c) & (ps > 0)
  logits = jnp.where(outside, jnp.log(jnp.where(outside, ps, 1.0)), -jnp.inf)
  draws = jax.random.categorical(key, logits, shape=(k,))
  pos = jnp.where(t < c, t, draws)
  s = (k - c).astype(jnp.float32)
  p_draw = ps[draws]
  sampled_w = jnp.where((rest > 0) & (p_draw > 0), rest / (s * jnp.where(p_draw > 0, p_draw, 1.0)),
                        0.0)
  weights = jnp.where(t < c, 1.0, sampled_w)
  return order[pos].astype(jnp.int32), weights.astype(jnp.float32)


def estimate_weight_grad(x: jax.Array, g: jax.Array, key: jax.Array, *, k: int,
                         p: jax.Array | None = None, winner_take_all: bool = True) -> jax.Array:
  """Sampled estimate of ``xᵀ g`` (``x[n, d_in]``, ``g[n, d_out]``) from ``k`` rows.

  ``p`` defaults to the variance-minimising ``‖x_i‖·‖g_i‖``.
  """
  if p is None:
    p = jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(g, axis=-1) + 1e-8
  idx, w = sampling_plan(p, k, key, winner_take_all=winner_take_all)
  return (x[idx] * w[:, None].astype(x.dtype)).T @ g[idx]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def wtacrs_matmul(x: jax.Array, w: jax.Array, key: jax.Array, ratio: float = 0.3,
                  min_rows: int = 1) -> jax.Array:
  """``x @ w`` (``x[..., d_in]``, ``w[d_in, d_out]``) whose ``∂/∂w`` is a WTA-CRS estimate.

  The rows are sampled at forward time with ``p ∝ ‖x_i‖`` (``key``); only the ``k`` weighted rows
  and their indices are saved for the backward pass.
  """
  return jnp.matmul(x, w.astype(x.dtype))


def _fwd(x, w, key, ratio, min_rows):
  x2 = x.reshape(-1, x.shape[-1])
  k = num_rows(x2.shape[0], ratio, min_rows)
  p = jax.lax.stop_gradient(jnp.linalg.norm(x2.astype(jnp.float32), axis=-1)) + 1e-8
  idx, weights = sampling_plan(p, k, key)
  saved = x2[idx] * weights[:, None].astype(x.dtype)
  return jnp.matmul(x, w.astype(x.dtype)), (saved, idx, w)


def _bwd(ratio, min_rows, res, g):
  del ratio, min_rows
  saved, idx, w = res
  g2 = g.reshape(-1, g.shape[-1])
  grad_w = (saved.T @ g2[idx].astype(saved.dtype)).astype(w.dtype)
  grad_x = jnp.matmul(g, w.astype(g.dtype).T)
  return grad_x, grad_w, None


wtacrs_matmul.defvjp(_fwd, _bwd)


def make_dot(key: jax.Array, *, ratio: float = 0.3, min_rows: int = 1
             ) -> Callable[[jax.Array, Any], jax.Array]:
  """A ``dot(x, kernel)`` for the models' ``dot=`` injection: every call is a WTA-CRS Linear.

  Each call (each Linear, in tracing order) samples with its own key ``fold_in(key, call)``.
  Build it inside the traced step (the key changes per step).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxparams.models import MLP
    >>> x = jnp.ones((32, 8))
    >>> params = MLP((16, 4)).init(jax.random.key(0), x)['params']
    >>> def loss(p, key):
    ...   return jnp.sum(MLP((16, 4), dot=make_dot(key, ratio=0.25)).apply({'params': p}, x))
    >>> jax.grad(loss)(params, jax.random.key(1))['layers_0']['kernel'].shape
    (8, 16)
  """
  counter = itertools.count()
  return lambda x, kernel: wtacrs_matmul(x, kernel, jax.random.fold_in(key, next(counter)),
                                         ratio, min_rows)
