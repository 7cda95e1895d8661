"""The quantizer record: one per method, carrying the checks every method shares.

Each method file (``rtn.py``, ``gptq.py``, ...) holds its per-matrix math and builds its
:class:`~jaxparams.transform.Transform` with :func:`quantizer`; the record's checks are
defined here once and run by every driver (the tree driver of
:func:`~jaxparams.quant.quantize_tree`, :func:`~jaxparams.quant.quantize_matrix`, the public
per-method functions):

* :data:`matrix`: a floating-point weight of at least two dimensions;
* :func:`bits`: ``config.bits`` one of the method's widths;
* :func:`group_size`: the group size divides the input axis ``K`` (``-1``/``None`` per channel);
* :data:`~jaxparams.transform.finite`: no NaN/Inf in the weight (nor in the result), computed
  beside the result and read with it, not in a separate host pass.

The record's ``fn`` is ``fn(w, cfg, *, stats=None, name='')``: data-free methods ignore
``stats``; calibrated ones (``needs`` ``'hessian'``/``'act_stats'``) require it.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxparams.quant.rtn import RTN_RECORD, RTNConfig
  >>> [c.name for c in RTN_RECORD.checks]
  ['matrix', 'bits', 'group_size', 'finite']
  >>> RTN_RECORD(jnp.ones((96, 8)), RTNConfig(group_size=64), path='p/kernel')
  Traceback (most recent call last):
  ...
  ValueError: group_size=64 does not divide the input axis K=96 in 'p/kernel'; use a divisor of 96 or -1 for per-channel
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax

from jaxparams.quant import common
from jaxparams.transform import Check, CheckContext, Transform, finite

__all__ = ["INT_BITS", "NEEDS", "matrix", "bits", "group_size", "quantizer", "call",
           "require_stats"]

INT_BITS = (2, 3, 4, 8)
"""The integer widths of the min/max-grid methods (RTN, HQQ, GPTQ, AWQ, ...)."""

NEEDS = ("none", "hessian", "act_stats")


def _matrix_static(ctx: CheckContext) -> None:
  common.check_matrix(ctx.shapes[0], ctx.dtypes[0], name=ctx.path)


matrix = Check("matrix", static=_matrix_static)
"""A floating weight with at least two dimensions (more are flattened to ``[K, N]``)."""


def bits(allowed: tuple[int, ...] = INT_BITS) -> Check:
  """``config.bits`` is one of ``allowed`` (error names the method and the tensor)."""

  def static(ctx: CheckContext) -> None:
    common.check_bits(ctx.config.bits, allowed, name=ctx.path, method=ctx.record)

  return Check("bits", static=static)


def group_size(field: str = "group_size",
               when: Callable[[Any], bool] | None = None) -> Check:
  """``config.<field>`` is ``-1``/``None``/``0`` or a positive divisor of ``K``.

  ``K`` is the product of the weight's leading dimensions; ``when(config)`` false skips
  the check (e.g. RTN's ``per_tensor``).
  """

  def static(ctx: CheckContext) -> None:
    if when is not None and not when(ctx.config):
      return
    shape = ctx.shapes[0]
    if shape is None or len(shape) < 2:
      return
    common.resolve_group_size(math.prod(shape[:-1]), getattr(ctx.config, field), name=ctx.path)

  return Check("group_size", static=static)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_call(fn: Callable, w: jax.Array, config: Any) -> Any:
  return fn(w, config)


def _data_free(fn: Callable, jitted: bool) -> Callable:
  """``fn(w, cfg, *, stats, name)`` of a calibration-free method.

  Plain-jnp methods (``jitted``) run compiled as one function (inside a trace they just run).
  """

  def run(w, cfg, *, stats=None, name=""):
    del stats  # only used for the report's output error
    if jitted and getattr(w, "ndim", 0) == 2 and not isinstance(w, jax.core.Tracer):
      return _jit_call(fn, w, cfg)
    return fn(w, cfg, name=name)

  return run


def _missing(method: str, needs: str, name: str) -> ValueError:
  return ValueError(f"method {method!r} needs calibration ({needs}) for {name or 'weight'!r}: "
                    "pass jaxparams.calib.InputStats (calibration={path: inputs} in "
                    "quantize_tree, or use jaxparams.quant.quantize_model)")


def require_stats(record: Transform, stats: Any, *, name: str = "") -> None:
  """A calibrated method given no statistics: ``ValueError`` saying what to pass.

  Run before the record's checks, so a missing calibration is the first thing reported.
  """
  needs = record.info.get("needs", "none")
  if needs != "none" and stats is None:
    raise _missing(record.name, needs, name)


def _calibrated(fn: Callable, method: str, needs: str) -> Callable:

  def run(w, cfg, *, stats=None, name=""):
    if stats is None:
      raise _missing(method, needs, name)
    return fn(w, stats, cfg, name=name)

  return run


def quantizer(name: str, math_fn: Callable, config: type, *, needs: str = "none",
              jitted: bool = False, bit_widths: tuple[int, ...] | None = INT_BITS,
              group_field: str | None = "group_size",
              group_when: Callable[[Any], bool] | None = None,
              params_check: Callable[[Any, str], Any] | None = None,
              description: str = "") -> Transform:
  """The record of one per-matrix quantizer.

  Args:
    name: registry name.
    math_fn: the unchecked math: ``math_fn(w, cfg, *, name)`` (``needs='none'``) or
      ``math_fn(w, stats, cfg, *, name)``.
    config: the frozen keyword-only config dataclass.
    needs: ``'none'``, ``'hessian'`` or ``'act_stats'``.
    jitted: the data-free math is plain jnp: run it as one compiled function.
    bit_widths: allowed ``config.bits`` (``None``: the method has a fixed width).
    group_field: the config field holding the group size (``None``: no groups).
    group_when: restricts the group check (``config -> bool``).
    params_check: the method's own parameter validation, ``(config, tensor_path)`` raising
      ``ValueError``; run right after the matrix check, before bits and group size.
    description: one line for listings.
  """
  if needs not in NEEDS:
    raise ValueError(f"quantizer {name!r}: needs must be one of {NEEDS}, got {needs!r}")
  checks = [matrix]
  if params_check is not None:
    checks.append(Check(f"{name}_params", static=lambda ctx: params_check(ctx.config, ctx.path)))
  if bit_widths is not None:
    checks.append(bits(bit_widths))
  if group_field is not None:
    checks.append(group_size(group_field, group_when))
  checks.append(finite)
  run = _data_free(math_fn, jitted) if needs == "none" else _calibrated(math_fn, name, needs)
  return Transform(name=name, fn=run, config=config, checks=tuple(checks),
                   options=("stats", "name"), description=description,
                   info={"needs": needs, "math": math_fn})


def call(record: Transform, w: Any, cfg: Any, stats: Any = None, *, name: str = "") -> Any:
  """Runs ``record`` on one matrix (checks, then the math); the public per-method functions."""
  require_stats(record, stats, name=name)
  return record(w, config=cfg, options={"stats": stats, "name": name}, path=name)
