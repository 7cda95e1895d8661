"""The trainer's optimizer: what a compiled step depends on, the learning rate, AdamW.

:class:`OptimFeatures` is the part of a config a compiled train step depends on (clipping, Adam
betas, weight decay, and the optional MeZO / WTA-CRS / gradual-pruning features), as a frozen,
hashable dataclass: compiled steps are memoised on it. The learning rate is not in it: it is
computed on the host from the step (:func:`learning_rate`) and passed to the step, so a compiled
step does not depend on ``num_steps``.

Example:
  >>> from jaxparams.train.config import default_config
  >>> f = optim_features(default_config())
  >>> f.grad_clip, f.mezo, f.wtacrs, f.pruning
  (1.0, None, None, None)
  >>> hash(f) == hash(optim_features(default_config()))
  True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxparams import prune

__all__ = ["Mezo", "OptimFeatures", "Pruning", "Wtacrs", "learning_rate", "make_optimizer",
           "optim_features", "pruning_targets"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mezo:
  """``optim.name='mezo'``: zeroth-order SPSA (:mod:`jaxparams.train.zo`); ``config.zo``."""
  eps: float
  n_samples: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wtacrs:
  """``backward.name='wtacrs'``: WTA-CRS sampled weight gradients (:mod:`.wtacrs`)."""
  ratio: float
  min_rows: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pruning:
  """``config.pruning`` with ``sparsity > 0``: gradual magnitude pruning (optimizer-held masks)."""
  sparsity: float
  begin_step: int
  end_step: int
  update_freq: int
  power: float
  distribution: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimFeatures:
  """What a compiled train step depends on (see the module docstring).

  Attributes:
    grad_clip, b1, b2, weight_decay: AdamW after global-norm clipping (``config.optim``).
    mezo: set for zeroth-order training (then ``wtacrs`` and ``pruning`` are None).
    wtacrs: set for WTA-CRS sampled backward passes.
    pruning: set for gradual magnitude pruning.
  """
  grad_clip: float
  b1: float
  b2: float
  weight_decay: float
  mezo: Mezo | None = None
  wtacrs: Wtacrs | None = None
  pruning: Pruning | None = None


def optim_features(config: Any) -> OptimFeatures:
  """The :class:`OptimFeatures` of a trainer config (checked by ``check_config`` before)."""
  optim = config.optim
  base = dict(grad_clip=float(optim.grad_clip), b1=float(optim.b1), b2=float(optim.b2),
              weight_decay=float(optim.weight_decay))
  if optim.name == "mezo":
    return OptimFeatures(**base, mezo=Mezo(eps=float(config.zo.eps),
                                           n_samples=int(config.zo.n_samples)))
  wtacrs = None
  if config.backward.name == "wtacrs":
    wtacrs = Wtacrs(ratio=float(config.backward.ratio), min_rows=int(config.backward.min_rows))
  pruning = None
  prn = config.get("pruning")
  if prn is not None and float(prn.sparsity):
    pruning = Pruning(sparsity=float(prn.sparsity), begin_step=int(prn.begin_step),
                      end_step=int(prn.end_step), update_freq=int(prn.update_freq),
                      power=float(prn.power), distribution=str(prn.distribution))
  return OptimFeatures(**base, wtacrs=wtacrs, pruning=pruning)


def learning_rate(step: int, optim: Any, num_steps: int) -> float:
  """Linear warmup to ``lr`` then cosine decay to ``end_lr_ratio * lr`` at ``num_steps``.

  ``step`` is the number of completed updates (the rate used by update ``step + 1``). Warmup
  update ``s + 1`` uses ``lr * (s + 1) / warmup_steps``, so the first update is never wasted on a
  rate of 0 and update ``warmup_steps`` reaches the full rate.

  Example:
    >>> import ml_collections
    >>> o = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=10, end_lr_ratio=0.1))
    >>> [round(learning_rate(s, o, 110), 3) for s in (0, 4, 9, 60, 110)]
    [0.1, 0.5, 1.0, 0.55, 0.1]
  """
  warmup = min(int(optim.warmup_steps), max(num_steps - 1, 0))
  if step < warmup:
    return float(optim.lr) * (step + 1) / warmup
  frac = min((step - warmup) / max(num_steps - warmup, 1), 1.0)
  end = float(optim.lr) * float(optim.end_lr_ratio)
  return end + (float(optim.lr) - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def pruning_targets(pruning: Pruning) -> tuple[Callable[[Any], Any], prune.PolynomialSchedule]:
  """``(targets_fn, schedule)``: per-leaf target sparsities of ``params`` and the schedule."""
  schedule = prune.PolynomialSchedule(begin_step=pruning.begin_step, end_step=pruning.end_step,
                                      update_freq=pruning.update_freq, power=pruning.power)
  spread = prune.erk if pruning.distribution == "erk" else prune.uniform
  return (lambda params: spread(params, pruning.sparsity, where=prune.default_prune_where)), schedule


def make_optimizer(features: OptimFeatures) -> optax.GradientTransformation:
  """AdamW without its learning rate (the step multiplies by ``-lr``, passed in per step).

  ``clip_by_global_norm -> scale_by_adam -> add_decayed_weights(matrices only)``; with the
  final ``-lr`` scaling this is ``optax.adamw`` after clipping. Keeping the schedule out of the
  optimizer makes the compiled step independent of ``num_steps``. With MeZO there is no
  optimizer state, only a step counter (checkpointable). (Pruning masks are added by the step
  builder, which knows the params' shapes.)
  """
  if features.mezo is not None:
    return optax.GradientTransformation(lambda p: {"count": jnp.zeros([], jnp.int32)}, None)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  return optax.chain(optax.clip_by_global_norm(features.grad_clip),
                     optax.scale_by_adam(b1=features.b1, b2=features.b2),
                     optax.add_decayed_weights(features.weight_decay, mask=decay_mask))
