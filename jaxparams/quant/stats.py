"""Deprecated home of the calibration statistics: see :mod:`jaxparams.calib.stats`.

:func:`gptq_hessian` (alias :func:`accumulate_stats`) adds a batch of layer inputs
to a :class:`~jaxparams.calib.InputStats` (one type, one convention: fp32 sums
``X^T X``, ``sum |x|`` and the row count; GPTQ reads ``.hessian = 2 X^T X / n``,
AWQ ``.abs_mean``). ``ActStats`` is a deprecated alias of ``InputStats``.

Example:
  >>> import jax
  >>> x = jax.random.normal(jax.random.key(0), (32, 16))
  >>> s = gptq_hessian(x[:16])
  >>> s = gptq_hessian(x[16:], prev=s)
  >>> s.hessian.shape, int(s.count)
  ((16, 16), 32)
"""

from __future__ import annotations

import warnings

import jax

from jaxparams.calib.stats import InputStats, accumulate, as_hessian

__all__ = ["gptq_hessian", "accumulate_stats", "as_hessian"]


def gptq_hessian(x: jax.Array, prev: InputStats | None = None) -> InputStats:
  """Adds a batch of inputs ``x[..., K]`` (all leading axes are rows) to ``prev``.

  Pure ``jnp`` (traceable); see :meth:`jaxparams.calib.InputStats.update` for the
  validating version.

  Raises:
    ValueError: ``x`` has another number of features than ``prev``.
  """
  k = x.shape[-1]
  if prev is not None and prev.xtx.shape != (k, k):
    raise ValueError(f"calibration inputs have {k} features but the running statistics have "
                     f"{prev.xtx.shape[0]}")
  return accumulate(prev, x)


accumulate_stats = gptq_hessian


def __getattr__(name: str):
  if name == "ActStats":
    warnings.warn("jaxparams.quant.stats.ActStats is deprecated: use jaxparams.calib.InputStats "
                  "(fields xtx, abs_sum, count; .hessian = 2 X^T X / n)", DeprecationWarning,
                  stacklevel=2)
    return InputStats
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
