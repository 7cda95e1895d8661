"""The math of LoRA extraction: the reduced SVD of a delta, mergekit's rank rule, the factors.

The bottom of :mod:`jaxparams.adapt` beside :mod:`~jaxparams.adapt.lora`: the ``lora_extract``
record (:mod:`jaxparams.adapt.records`) calls :func:`factorize`; :mod:`jaxparams.adapt.extract`
drives the record over trees and checkpoints and re-exports :func:`choose_rank`.

Example:
  >>> choose_rank(np.array([5.0, 1e-3, 1e-6]), max_rank=8, sv_epsilon=1e-4)
  2
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["choose_rank", "factorize"]


@jax.jit
def _svd(delta: jax.Array):
  return jnp.linalg.svd(delta.astype(jnp.float32), full_matrices=False)


def choose_rank(s: np.ndarray, *, max_rank: int, sv_epsilon: float = 0.0,
                energy: float | None = None) -> int:
  """mergekit's rank rule (``max_rank``, absolute ``sv_epsilon``) plus an optional energy share.

  Example:
    >>> choose_rank(np.array([5.0, 1e-3, 1e-6]), max_rank=8, sv_epsilon=1e-4)
    2
    >>> choose_rank(np.array([3.0, 2.0, 1.0]), max_rank=8, energy=0.9)
    2
  """
  s = np.asarray(s, np.float64)
  rank = min(int(max_rank), len(s))
  if sv_epsilon > 0:
    rank = min(int((s > sv_epsilon).sum()), rank)
  if energy is not None:
    if not 0 < energy <= 1:
      raise ValueError(f"energy must be in (0, 1], got {energy}")
    cum = np.cumsum(s ** 2) / max(float((s ** 2).sum()), 1e-300)
    rank = min(rank, int(np.searchsorted(cum, energy - 1e-12) + 1))
  return max(rank, 1)


def factorize(delta: jax.Array, c: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The math of the ``lora_extract`` record: ``(a [in, r], b [r, out], S)`` of a delta."""
  u, s, vh = _svd(delta)
  r = choose_rank(np.asarray(s), max_rank=c.max_rank, sv_epsilon=c.sv_epsilon, energy=c.energy)
  if c.distribute_scale:
    root = jnp.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vh[:r], s
  return u[:, :r] * s[:r], vh[:r], s
