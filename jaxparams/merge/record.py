"""How a merge method becomes a :class:`~jaxparams.transform.Transform` record.

:func:`merge_record` wraps a per-tensor function written in mergekit's terms,
``compute(base, models, model_params, global_params, key, **options)``, into a
record whose config is the method's dataclass (:mod:`jaxparams.merge.params`),
with the checks every merge runs in both drivers, in this order: equal shapes,
non-floating tensors identical (they are copied, as mergekit does), the
method's own parameter checks, and NaN/Inf in the inputs and the output
(fused into the computation).

Example:
  >>> import dataclasses, jax.numpy as jnp
  >>> from jaxparams.merge.params import model_param
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class MeanConfig:
  ...   weight: tuple = model_param(1.0)
  >>> mean = merge_record('mean', lambda b, ms, mp, gp, key: sum(ms) / len(ms), MeanConfig,
  ...                     base='ignored')
  >>> mean(None, [jnp.ones(2), jnp.zeros(2)]).tolist()
  [0.5, 0.5]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from jaxparams.merge.checks import copy_non_float, non_float_identical
from jaxparams.merge.params import mergekit_params
from jaxparams.transform import Check, Transform, finite, same_shapes

__all__ = ["merge_record", "numeric_fields"]

ComputeFn = Callable[..., Any]


def numeric_fields(config_cls: type) -> tuple[str, ...]:
  """Config fields that may be array hyperparameters (not flags or strings)."""
  out = []
  for f in dataclasses.fields(config_cls):
    d = f.default
    if isinstance(d, bool) or isinstance(d, str):
      continue
    out.append(f.name)
  return tuple(out)


def merge_record(name: str, compute: ComputeFn, config: type, *, base: str = "required",
                 min_models: int = 1, max_models: int | None = None,
                 needs_key: bool | Callable[[Any], bool] = False, checks: Sequence[Check] = (),
                 options: tuple[str, ...] = (), description: str = "",
                 info: Mapping[str, Any] | None = None) -> Transform:
  """A merge method's record (see the module docstring)."""

  def merge(base_t, models, cfg, key=None, **opts):
    mp, gp = mergekit_params(cfg, len(models))
    return compute(base_t, list(models), mp, gp, key, **opts)

  merge.__name__ = f"{name}_merge"
  merge.__doc__ = compute.__doc__
  return Transform(
      name=name, fn=copy_non_float(merge), config=config,
      array_params=numeric_fields(config),
      checks=(same_shapes, non_float_identical, *checks, finite),
      inputs="base+models", base=base, min_models=min_models, max_models=max_models,
      needs_key=needs_key, options=options, description=description, info=dict(info or {}),
      kind="merge method")
