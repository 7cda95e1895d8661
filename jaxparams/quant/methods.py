"""Registry of per-matrix quantizers: name -> (function, config class, needs).

``needs`` says what calibration a method wants: ``'none'`` (RTN, NF4, FP8, HQQ),
``'hessian'`` (GPTQ, decoupleQ: an :class:`~jaxparams.calib.InputStats` or a
``[K, K]`` Hessian) or ``'act_stats'`` (AWQ: an ``InputStats`` or raw inputs).
One ``InputStats`` satisfies both.

Signatures: ``fn(w, cfg, *, name=)`` for ``needs == 'none'`` and
``fn(w, stats, cfg, *, name=)`` otherwise; :func:`quantize_matrix` hides the
difference. AWQ returns an :class:`~jaxparams.quant.awq.AWQResult`; every other
method returns a :class:`~jaxparams.quant.qarray.QArray`.

Example:
  >>> import jax
  >>> q = get_quantizer('rtn')
  >>> cfg = make_config('rtn', bits=4, group_size=32)
  >>> qa = quantize_matrix('rtn', jax.numpy.ones((64, 8)), cfg)
  >>> q.needs, qa.bits
  ('none', 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

from jaxparams.quant.awq import AWQConfig, awq
from jaxparams.quant.decoupleq import DecoupleQConfig, decoupleq
from jaxparams.quant.fp8 import FP8Config, fp8
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.hqq import HQQConfig, hqq
from jaxparams.quant.nf4 import NF4Config, nf4
from jaxparams.quant.rtn import RTNConfig, rtn

__all__ = ["Quantizer", "get_quantizer", "quantizer_names", "make_config", "quantize_matrix",
           "NEEDS"]

NEEDS = ("none", "hessian", "act_stats")


class Quantizer(NamedTuple):
  """A registered method."""

  name: str
  fn: Callable[..., Any]
  config_cls: type
  needs: str


def _registry() -> dict[str, Quantizer]:
  # Built on demand (no module-level mutable state).
  return {
      "rtn": Quantizer("rtn", rtn, RTNConfig, "none"),
      "nf4": Quantizer("nf4", nf4, NF4Config, "none"),
      "fp8": Quantizer("fp8", fp8, FP8Config, "none"),
      "hqq": Quantizer("hqq", hqq, HQQConfig, "none"),
      "gptq": Quantizer("gptq", gptq, GPTQConfig, "hessian"),
      "awq": Quantizer("awq", awq, AWQConfig, "act_stats"),
      "decoupleq": Quantizer("decoupleq", decoupleq, DecoupleQConfig, "hessian"),
  }


def quantizer_names() -> list[str]:
  """Names of the registered methods."""
  return list(_registry())


def get_quantizer(name: str) -> Quantizer:
  """Returns the :class:`Quantizer` for ``name``; ValueError lists the valid names."""
  reg = _registry()
  key = str(name).lower()
  if key not in reg:
    raise ValueError(f"unknown quantization method {name!r}; valid: {sorted(reg)}")
  return reg[key]


def make_config(name: str, **fields) -> Any:
  """Builds the config of method ``name``; unknown fields -> ValueError listing valid ones.

  ``bits`` is dropped for methods without it (nf4) when it equals their fixed width.
  """
  q = get_quantizer(name)
  valid = {f.name for f in dataclasses.fields(q.config_cls)}
  if name == "nf4" and fields.get("bits", 4) == 4:
    fields.pop("bits", None)
    if "group_size" in fields:
      fields["block_size"] = fields.pop("group_size")
  if name == "fp8" and fields.get("bits", 8) == 8:
    fields.pop("bits", None)
  unknown = sorted(set(fields) - valid)
  if unknown:
    raise ValueError(f"unknown field(s) {unknown} for method {name!r}; valid: {sorted(valid)}")
  return q.config_cls(**fields)


def quantize_matrix(method: str, w: jax.Array, cfg: Any = None, stats: Any = None, *,
                    name: str = "") -> Any:
  """Runs method ``method`` on one matrix with a uniform signature.

  Args:
    method: registered name.
    w: weight ``[K, N]``.
    cfg: the method's config (default config when None).
    stats: calibration (``InputStats``/Hessian/inputs) for methods that need it.
    name: tree path for messages.
  """
  q = get_quantizer(method)
  if cfg is None:
    cfg = q.config_cls()
  if not isinstance(cfg, q.config_cls):
    raise ValueError(f"method {method!r} expects a {q.config_cls.__name__}, "
                     f"got {type(cfg).__name__}")
  if q.needs == "none":
    return q.fn(w, cfg, name=name)
  if stats is None:
    raise ValueError(f"method {method!r} needs calibration ({q.needs}) for {name or 'weight'!r}; "
                     f"pass jaxparams.calib.InputStats.from_inputs(inputs)")
  return q.fn(w, stats, cfg, name=name)
