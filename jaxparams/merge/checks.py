"""Checks shared by the merge records (beside :mod:`jaxparams.transform.checks`).

* :data:`non_float_identical` -- mergekit copies a non-floating tensor (an
  integer position-id buffer, a boolean mask) when every input holds the same
  one and refuses it when they differ ("Non-floating buffer ... differs between
  inputs", ``mergekit/merge_methods/buffers.py``). The merge records do the
  same in both drivers: :func:`copy_non_float` returns the first input, and
  this check (fused into the computation) refuses differing ones, naming them.
* :func:`weights_sum_nonzero` -- normalising by a zero weight sum.
* :func:`finite_params` -- NaN/Inf hyperparameters (per-model or global).

Example:
  >>> import jax.numpy as jnp
  >>> non_float_identical.values([jnp.arange(3), jnp.arange(3)], jnp.arange(3)).tolist()
  [True, True, True]
  >>> non_float_identical.values([jnp.arange(3), jnp.zeros(3, int)], None).tolist()
  [True, False, True]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.transform.checks import Check, CheckContext

__all__ = ["non_float_identical", "copy_non_float", "weights_sum_nonzero", "is_float"]


def is_float(x: Any) -> bool:
  """Whether ``x`` has a floating-point dtype."""
  return jnp.issubdtype(x.dtype, jnp.floating)


def _identical_values(inputs: Sequence[jax.Array], output: Any) -> jax.Array:
  xs = [x for x in inputs if x is not None]
  if all(is_float(x) for x in xs):
    return jnp.ones((len(xs) + 1,), bool)
  first = xs[0]
  flags = [jnp.bool_(True)] + [
      jnp.bool_(x.dtype == first.dtype) & jnp.all(x == first) for x in xs[1:]]
  return jnp.stack(flags + [jnp.bool_(True)])


def _identical_static(ctx: CheckContext) -> None:
  present = [(lb, dt) for lb, s, dt in zip(ctx.labels, ctx.shapes, ctx.dtypes) if s is not None]
  if any(not jnp.issubdtype(dt, jnp.floating) for _, dt in present):
    for lb, dt in present[1:]:
      if dt != present[0][1]:
        raise ValueError(f"{ctx.where}: non-float tensor has dtype {np.dtype(dt).name} in {lb} "
                         f"but {np.dtype(present[0][1]).name} in {present[0][0]}; it cannot be "
                         "merged (mergekit refuses non-floating buffers that differ).")


def _identical_message(ctx: CheckContext, i: int) -> str:
  present = [lb for lb, s in zip(ctx.labels, ctx.shapes) if s is not None]
  return (f"{ctx.where}: non-float tensor differs between {present[0]} and {present[i]}; it "
          "cannot be merged (mergekit refuses non-floating buffers that differ).")


non_float_identical = Check("non_float_identical", static=_identical_static,
                            values=_identical_values, message=_identical_message)
"""Non-floating inputs must be identical (they are copied, as mergekit does)."""


def copy_non_float(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Wraps a merge function: non-floating inputs are copied from the first input."""
  def merge(base, models, config, **kwargs):
    first = base if base is not None else (models[0] if models else None)
    xs = ([base] if base is not None else []) + list(models)
    if first is not None and not all(is_float(x) for x in xs):
      return first
    return fn(base, models, config, **kwargs)
  merge.__name__ = getattr(fn, "__name__", "merge")
  merge.__doc__ = fn.__doc__
  return merge


def _concrete(values: Sequence[Any]) -> bool:
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def weights_sum_nonzero(method: str, weights: str, flag: str, flag_name: str) -> Check:
  """Refuse weights summing to zero when config field ``flag`` normalises by their sum."""
  def static(ctx: CheckContext) -> None:
    cfg = ctx.config
    w = getattr(cfg, weights)
    w = list(w) if isinstance(w, (list, tuple)) else [w] * max(ctx.n_models, 1)
    if getattr(cfg, flag) and _concrete(w) and not any(np.ndim(v) for v in w):
      if float(np.sum(np.asarray(w, np.float64))) == 0.0:
        raise ValueError(f"merge method {method!r}: weights {[float(v) for v in w]} sum to zero "
                         f"with {flag_name}=true ({ctx.where}); set {flag_name}: false or "
                         "change them")
  return Check(f"weights_sum_nonzero({weights})", static=static)
