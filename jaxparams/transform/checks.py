"""Checks a transform record runs on its inputs: shapes, dtypes, finiteness, ranges.

A :class:`Check` has up to two parts:

* ``static(ctx)`` runs on the host before the computation and sees the shapes,
  dtypes and the (concrete) config; it raises ``ValueError`` naming the tensor.
  Values that are traced (``jax.vmap``/``jax.jit`` over a hyperparameter) are
  skipped: they cannot be inspected.
* ``values(inputs, output)`` runs inside the computation (fused into the same
  jitted function) and returns one boolean per present input plus one for the
  output (true = fine); the driver reads
  the flags together with the output, so a finiteness check costs no extra
  host round trip. ``message(ctx, i)`` explains a failing item ``i``.

Example:
  >>> import jax.numpy as jnp
  >>> ctx = CheckContext(record='demo', path='w', labels=('input',), shapes=((2,),),
  ...                    dtypes=(jnp.dtype('float32'),), config=None)
  >>> finite.values((jnp.array([1., jnp.nan]),), jnp.zeros(2)).tolist()
  [False, True]
  >>> finite.message(ctx, 0)
  "tensor 'w': input contains NaN or Inf"
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Check", "CheckContext", "NonFiniteError", "same_shapes", "finite", "float_inputs",
           "in_range", "is_traced"]


class NonFiniteError(ValueError):
  """An input or the output of a transform contains NaN or Inf."""


@dataclasses.dataclass(frozen=True)
class CheckContext:
  """What a check may look at (no tensor values: those go to ``Check.values``).

  Attributes:
    record: the transform's name.
    path: the tensor's path or name (``layers/3/mlp/kernel``).
    labels: one label per input (``'base'``, ``'model 0'``, a model folder...).
    shapes: one shape per input (``None`` for an absent optional input).
    dtypes: one dtype per input.
    config: the record's config (values may be tracers).
    has_base: the first input is a base model (``inputs='base+models'``).
  """

  record: str
  path: str
  labels: tuple[str, ...]
  shapes: tuple[Any, ...]
  dtypes: tuple[Any, ...]
  config: Any
  has_base: bool = False

  @property
  def n_models(self) -> int:
    """Number of present non-base inputs."""
    return sum(s is not None for s in self.shapes) - int(self.has_base)

  @property
  def where(self) -> str:
    """``"tensor 'path'"`` (or the record name when there is no path)."""
    return f"tensor {self.path!r}" if self.path else f"transform {self.record!r}"


@dataclasses.dataclass(frozen=True)
class Check:
  """One check of a transform record (see the module docstring)."""

  name: str
  static: Callable[[CheckContext], None] | None = None
  values: Callable[[Sequence[jax.Array], Any], jax.Array] | None = None
  message: Callable[[CheckContext, int], str] | None = None
  error: type = ValueError


def is_traced(x: Any) -> bool:
  """True if ``x`` (or an element of a tuple/list) is a JAX tracer.

  Example:
    >>> is_traced(1.0), is_traced((1.0, 2.0))
    (False, False)
  """
  if isinstance(x, jax.core.Tracer):
    return True
  if isinstance(x, (list, tuple)):
    return any(isinstance(v, jax.core.Tracer) for v in x)
  return False


def _shapes_static(ctx: CheckContext) -> None:
  present = [(lb, tuple(s)) for lb, s in zip(ctx.labels, ctx.shapes) if s is not None]
  if len({s for _, s in present}) > 1:
    raise ValueError(f"{ctx.where}: shape mismatch between inputs: "
                     + ", ".join(f"{lb} {s}" for lb, s in present))


same_shapes = Check("same_shapes", static=_shapes_static)
"""All inputs have the same shape (error lists every input's shape)."""


def _leaves(output: Any) -> list[jax.Array]:
  return [x for x in jax.tree_util.tree_leaves(output) if x is not None]


def _finite_values(inputs: Sequence[jax.Array], output: Any) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(x)) for x in inputs if x is not None]
  outs = _leaves(output)
  flags.append(jnp.all(jnp.stack([jnp.all(jnp.isfinite(o)) for o in outs])) if outs
               else jnp.bool_(True))
  return jnp.stack(flags)


def _finite_message(ctx: CheckContext, i: int) -> str:
  present = [lb for lb, s in zip(ctx.labels, ctx.shapes) if s is not None]
  if i < len(present):
    return f"{ctx.where}: {present[i]} contains NaN or Inf"
  return (f"{ctx.where}: {ctx.record!r} produced NaN/Inf from finite inputs "
          "(a degenerate input, e.g. vectors whose weighted sum is zero, or an ill-conditioned "
          "parameter)")


finite = Check("finite", values=_finite_values, message=_finite_message, error=NonFiniteError)
"""No NaN/Inf in any input, nor in the output (one flag per input + one for the output)."""


def _float_static(ctx: CheckContext) -> None:
  for lb, s, dt in zip(ctx.labels, ctx.shapes, ctx.dtypes):
    if s is not None and not jnp.issubdtype(dt, jnp.floating):
      raise ValueError(f"{ctx.where}: {lb} has dtype {np.dtype(dt).name}; "
                       f"{ctx.record!r} needs floating-point tensors")


float_inputs = Check("float_inputs", static=_float_static)
"""Every input has a floating-point dtype."""


def in_range(field: str, lo: float | None = None, hi: float | None = None, *,
             lo_open: bool = False, hi_open: bool = False,
             when: Callable[[Any], bool] | None = None, alias: str | None = None) -> Check:
  """Check that config field ``field`` (a number, or one per model) is in a range.

  NaN is always out of range; ``lo``/``hi`` of ``None`` are unbounded (but
  infinities are refused unless a bound is ``+-math.inf``). Traced values are
  skipped. ``when(config)`` restricts the check; ``alias`` is the field's name
  in error messages (e.g. mergekit's ``lambda`` for a field ``lam``).

  Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...   density: float = 1.0
    >>> c = in_range('density', 0.0, 1.0)
    >>> ctx = CheckContext('demo', 'w', ('input',), ((2,),), ('float32',), C(density=1.5))
    >>> c.static(ctx)
    Traceback (most recent call last):
    ...
    ValueError: tensor 'w': 'demo' parameter density=1.5 is out of range [0.0, 1.0]
  """
  lo_v = -math.inf if lo is None else lo
  hi_v = math.inf if hi is None else hi
  shown = alias or field
  interval = f"{'(' if lo_open else '['}{lo_v}, {hi_v}{')' if hi_open else ']'}"

  def ok(v: float) -> bool:
    if math.isnan(v):
      return False
    if math.isinf(v) and not ((lo is not None and v == lo) or (hi is not None and v == hi)):
      return False
    above = v > lo_v if lo_open else v >= lo_v
    below = v < hi_v if hi_open else v <= hi_v
    return above and below

  def static(ctx: CheckContext) -> None:
    cfg = ctx.config
    if when is not None and not when(cfg):
      return
    value = getattr(cfg, field)
    if value is None or isinstance(value, (str, bool)):
      return
    values = list(value) if isinstance(value, (list, tuple)) else (
        list(np.ravel(value)) if not isinstance(value, jax.core.Tracer) and np.ndim(value)
        else [value])
    for i, v in enumerate(values):
      if isinstance(v, jax.core.Tracer) or v is None:
        continue
      if not ok(float(v)):
        which = f" (model {i})" if len(values) > 1 or isinstance(value, (list, tuple)) else ""
        raise ValueError(f"{ctx.where}: {ctx.record!r} parameter {shown}={float(v)!r}{which} "
                         f"is out of range {interval}")

  return Check(f"in_range({field})", static=static)
