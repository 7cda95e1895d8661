"""Pruning methods as transform records: one per-tensor definition for both drivers.

Data-free methods (``magnitude``, ``random``) take one tensor; calibrated methods (``wanda``,
``sparsegpt``) also take the layer's input statistics through the ``stats`` option (the ``[d_in]``
squared-input sums for Wanda, the ``[d_in, d_in]`` second moment for SparseGPT, or any object with
a ``xtx``/``hessian`` attribute). Kernels are Flax ``[d_in, d_out]`` by default; the streaming
driver passes ``input_axis=1`` for Hugging Face ``[out, in]`` weights.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., -4.], [-3., 2.], [0.5, 5.], [2., -1.]])
  >>> PRUNERS.get('magnitude')(w, {'sparsity': 0.5}).tolist()
  [[0.0, -4.0], [-3.0, 0.0], [0.0, 5.0], [2.0, 0.0]]
  >>> PRUNERS.names()
  ['magnitude', 'random', 'sparsegpt', 'wanda']
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxparams import transform as jt
from jaxparams.prune import masks
from jaxparams.prune import obs_pruning as sgpt
from jaxparams.prune import wanda as wnd

__all__ = ["MagnitudeConfig", "PRUNERS", "RandomConfig", "SparseGPTConfig", "WandaConfig",
           "stats_matrix", "stats_sq"]

SparseGPTConfig = sgpt.SparseGPTConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class MagnitudeConfig:
  """Magnitude pruning.

  Attributes:
    sparsity: fraction pruned (ignored with ``pattern``).
    pattern: N:M as ``(n, m)`` or ``'n:m'``: ``n`` pruned in every aligned group of ``m`` inputs.
    scope: ``'tensor'`` (one threshold per matrix, the Wanda/SparseGPT repos' baseline) or
      ``'row'`` (per output unit).
  """

  sparsity: float = 0.5
  pattern: Any = None
  scope: str = "tensor"

  def __post_init__(self):
    masks.check_sparsity(self.sparsity)
    object.__setattr__(self, "pattern", masks.parse_pattern(self.pattern, "magnitude"))
    if self.scope not in ("tensor", "row"):
      raise ValueError(f"magnitude: scope must be 'tensor' or 'row', got {self.scope!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomConfig:
  """Random pruning (exact count, uniformly chosen).

  Attributes:
    sparsity: fraction pruned.
  """

  sparsity: float = 0.5

  def __post_init__(self):
    masks.check_sparsity(self.sparsity)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WandaConfig:
  """Wanda.

  Attributes:
    sparsity: fraction pruned per output unit (ignored with ``pattern``).
    pattern: N:M as ``(n, m)`` or ``'n:m'``.
  """

  sparsity: float = 0.5
  pattern: Any = None

  def __post_init__(self):
    masks.check_sparsity(self.sparsity)
    object.__setattr__(self, "pattern", masks.parse_pattern(self.pattern, "wanda"))


def _to_flax(x: jax.Array, input_axis: int) -> jax.Array:
  if input_axis not in (0, 1):
    raise ValueError(f"input_axis must be 0 (Flax kernel) or 1 (HF weight), got {input_axis}")
  return x if input_axis == 0 else x.T


def stats_sq(stats: Any) -> jax.Array:
  """Per-input ``sum x^2`` from a vector, a matrix (its diagonal) or a statistics object.

  Example:
    >>> stats_sq(jnp.array([[4., 1.], [1., 9.]])).tolist()
    [4.0, 9.0]
  """
  m = getattr(stats, "xtx", None)
  if m is None:
    m = getattr(stats, "hessian", stats)
  m = jnp.asarray(m)
  return jnp.diagonal(m) if m.ndim == 2 else m


def stats_matrix(stats: Any) -> jax.Array:
  """The ``[d_in, d_in]`` second moment from a matrix or a statistics object.

  Example:
    >>> stats_matrix(jnp.eye(2)).shape
    (2, 2)
  """
  m = getattr(stats, "xtx", None)
  if m is None:
    m = getattr(stats, "hessian", stats)
  return jnp.asarray(m)


def _shape_check(ctx: jt.CheckContext) -> None:
  shape = ctx.shapes[0]
  if len(shape) != 2:
    raise ValueError(f"{ctx.where}: {ctx.record} prunes matrices, got shape {shape}")
  pattern = getattr(ctx.config, "pattern", None)
  if pattern is not None:
    # The input axis is not known here; both orientations are checked by the masks themselves.
    if all(d % pattern[1] for d in shape):
      raise ValueError(f"{ctx.where}: {pattern[0]}:{pattern[1]} needs the input dimension to be "
                       f"a multiple of {pattern[1]}, got shape {shape}")


matrix = jt.Check("matrix", static=_shape_check)


def _magnitude(x, config: MagnitudeConfig, *, input_axis: int = 0):
  w = _to_flax(x, input_axis)
  score = jnp.abs(w.astype(jnp.float32))
  if config.pattern is not None:
    keep = masks.nm_mask(score, *config.pattern)
  elif config.scope == "row":
    keep = masks.row_mask(score, config.sparsity)
  else:
    keep = masks.topk_mask(score, int(math.floor(w.size * config.sparsity)))
  return _to_flax(jnp.where(keep, w, jnp.zeros_like(w)), input_axis)


def _random(x, config: RandomConfig, *, key, input_axis: int = 0):
  keep = masks.random_mask(key, x.shape, config.sparsity)
  return jnp.where(keep, x, jnp.zeros_like(x))


def _wanda(x, config: WandaConfig, *, stats, input_axis: int = 0):
  w = _to_flax(x, input_axis)
  keep = wnd.wanda_mask(w, stats_sq(stats), sparsity=config.sparsity, pattern=config.pattern)
  return _to_flax(jnp.where(keep, w, jnp.zeros_like(w)), input_axis)


def _sparsegpt(x, config: SparseGPTConfig, *, stats, input_axis: int = 0):
  w = _to_flax(x, input_axis)
  out, _ = sgpt.sparsegpt(w, stats_matrix(stats), config)
  return _to_flax(out, input_axis)


_CHECKS = (matrix, jt.float_inputs, jt.finite)

PRUNERS = jt.Registry("pruning method", [
    jt.Transform(name="magnitude", fn=_magnitude, config=MagnitudeConfig, checks=_CHECKS,
                 options=("input_axis",),
                 description="keep the largest |w| (per tensor, per row, or N:M)"),
    jt.Transform(name="random", fn=_random, config=RandomConfig, checks=_CHECKS[1:],
                 needs_key=True, options=("input_axis",),
                 description="prune a uniformly random exact fraction"),
    jt.Transform(name="wanda", fn=_wanda, config=WandaConfig, checks=_CHECKS,
                 options=("stats", "input_axis"),
                 description="|w| * ||x|| per output unit, no update (needs calibration)"),
    jt.Transform(name="sparsegpt", fn=_sparsegpt, config=SparseGPTConfig, checks=_CHECKS,
                 options=("stats", "input_axis"),
                 description="OBS pruning with lazy block updates (needs calibration)"),
])

CALIBRATED = ("wanda", "sparsegpt")
