"""The math of ``peft.utils.merge_utils``: magnitude and random (DARE) pruning, the majority
sign, the disjoint merge and the four merge functions built from them.

The bottom of :mod:`jaxparams.adapt` beside :mod:`~jaxparams.adapt.lora`: the ``peft_*`` records
(:mod:`jaxparams.adapt.records`) call :func:`peft_merge`; :mod:`jaxparams.adapt.combining`
re-exports these names. Semantics (PEFT's, not mergekit's) are described in
:mod:`jaxparams.adapt.combining`.

Example:
  >>> import jax.numpy as jnp
  >>> peft_merge('ties', [jnp.array([1., -2.]), jnp.array([3., 1.])], [1.0, 1.0],
  ...            density=1.0).tolist()
  [2.0, -2.0]
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

__all__ = ["magnitude_prune_tensor", "random_prune_tensor", "majority_sign_mask",
           "disjoint_merge", "peft_merge"]


def magnitude_prune_tensor(t: jax.Array, density: float) -> jax.Array:
  """Keeps the top ``int(density * t.size)`` entries by ``|t|`` (PEFT's ``magnitude_based_pruning``).

  Example:
    >>> import jax.numpy as jnp
    >>> magnitude_prune_tensor(jnp.array([1., -3., 2., 0.5]), 0.5).tolist()
    [0.0, -3.0, 2.0, 0.0]
  """
  if density >= 1:
    return t
  if density < 0:
    raise ValueError(f"density should be >= 0, got {density}")
  k = int(density * t.size)
  flat = t.reshape(-1)
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  mask = jnp.zeros(flat.shape, t.dtype).at[idx].set(1)
  return (flat * mask).reshape(t.shape)


def random_prune_tensor(t: jax.Array, density: float | jax.Array, *, rescale: bool,
                        key: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
  """DARE's drop: Bernoulli(``density``) mask (from ``key``, or ``mask`` given), ``/ density``."""
  if mask is None:
    if key is None:
      raise ValueError("random pruning needs key= (or an explicit mask=)")
    mask = jax.random.bernoulli(key, density, t.shape)
  out = t * jnp.asarray(mask).astype(t.dtype)
  return out / density if rescale else out


def majority_sign_mask(stacked: jax.Array, method: str = "total") -> jax.Array:
  """``sign(t_i) == majority`` where the majority is the sign of ``sum t`` or ``sum sign t``."""
  sign = jnp.sign(stacked)
  if method == "total":
    mag = stacked.sum(0)
  elif method == "frequency":
    mag = sign.sum(0)
  else:
    raise ValueError(f"majority_sign_method {method!r} not supported; supported: 'total', "
                     "'frequency'")
  return sign == jnp.where(mag >= 0, 1.0, -1.0).astype(stacked.dtype)


def disjoint_merge(weighted: jax.Array, mask: jax.Array) -> jax.Array:
  """``sum(weighted * mask) / max(count(mask), 1)``."""
  return (weighted * mask).sum(0) / jnp.maximum(mask.sum(0), 1).astype(weighted.dtype)


def peft_merge(kind: str, tensors: Sequence[jax.Array], weights: Any, *, density: float,
               majority_sign_method: str = "total", key: jax.Array | None = None,
               masks: Sequence[jax.Array] | None = None) -> jax.Array:
  """The math of ``peft.utils.merge_utils.{ties, dare_linear, dare_ties, magnitude_prune}``."""
  w = jnp.asarray(weights, jnp.float32)
  ts = list(tensors)
  if kind in ("ties", "magnitude_prune"):
    ts = [magnitude_prune_tensor(t, density) for t in ts]
  elif density < 1:  # DARE; PEFT returns the tensor unchanged for density >= 1
    if masks is None and key is None:
      raise ValueError(f"{kind!r} is random: pass key= (or masks=)")
    ks = [None] * len(ts) if key is None else list(jax.random.split(key, len(ts)))
    ms = [None] * len(ts) if masks is None else list(masks)
    ts = [random_prune_tensor(t, density, rescale=True, key=k, mask=m)
          for t, k, m in zip(ts, ks, ms)]
  stacked = jnp.stack(ts)
  weighted = stacked * w.reshape((-1,) + (1,) * (stacked.ndim - 1))
  if kind in ("ties", "dare_ties"):
    return disjoint_merge(weighted, majority_sign_mask(stacked, majority_sign_method))
  return weighted.sum(0)
