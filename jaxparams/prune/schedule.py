"""Sparsity schedules for pruning during training (jaxpruner's ``PolynomialSchedule``).

The sparsity at step ``t`` ramps from ``init_sparsity`` to ``target`` between ``begin_step``
and ``end_step``: ``target + (init - target) * (1 - progress) ** power`` with
``progress = clip((t - begin) / (end - begin), 0, 1)``; masks are recomputed only on steps
``begin + k * update_freq`` up to ``end_step`` (Zhu & Gupta's gradual magnitude pruning).

Example:
  >>> s = PolynomialSchedule(begin_step=0, end_step=100, update_freq=10)
  >>> [round(float(s.sparsity(0.8, t)), 3) for t in (0, 50, 100, 200)]
  [0.0, 0.7, 0.8, 0.8]
  >>> [bool(s.is_update_step(t)) for t in (0, 5, 10, 110)]
  [True, False, True, False]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["OneShotSchedule", "PolynomialSchedule"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolynomialSchedule:
  """Gradual pruning schedule.

  Attributes:
    begin_step: first step that prunes.
    end_step: step at which the target sparsity is reached.
    update_freq: steps between mask updates.
    power: exponent of the polynomial (3, Zhu & Gupta).
    init_sparsity: sparsity at ``begin_step``.
  """

  begin_step: int = 0
  end_step: int = 1000
  update_freq: int = 100
  power: float = 3.0
  init_sparsity: float = 0.0

  def __post_init__(self):
    if self.end_step <= self.begin_step:
      raise ValueError(f"PolynomialSchedule: end_step ({self.end_step}) must be > begin_step "
                       f"({self.begin_step})")
    if self.update_freq < 1:
      raise ValueError(f"PolynomialSchedule: update_freq must be >= 1, got {self.update_freq}")

  def sparsity(self, target: float | jax.Array, step: jax.Array) -> jax.Array:
    """Sparsity level at ``step`` for a leaf whose final sparsity is ``target``."""
    progress = jnp.clip((step - self.begin_step) / (self.end_step - self.begin_step), 0.0, 1.0)
    return target + (self.init_sparsity - target) * (1.0 - progress) ** self.power

  def is_update_step(self, step: jax.Array) -> jax.Array:
    """True on the steps where masks are recomputed."""
    return ((step >= self.begin_step) & (step <= self.end_step)
            & ((step - self.begin_step) % self.update_freq == 0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShotSchedule:
  """Prune once, at ``step`` (e.g. 0 for pruning at initialisation), then keep the masks.

  Example:
    >>> OneShotSchedule(step=0).sparsity(0.5, 3)
    0.5
  """

  step: int = 0

  def sparsity(self, target, step):
    """The target sparsity, at every step."""
    del step
    return target

  def is_update_step(self, step: jax.Array) -> jax.Array:
    """True at the one pruning step."""
    return step == self.step
