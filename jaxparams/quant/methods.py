"""Registry of per-matrix quantizers: each method is a :class:`jaxparams.transform.Transform`.

:data:`METHODS` holds one record per method (name, per-matrix function, frozen config
dataclass with the defaults, options ``stats``/``name``, ``info['needs']``); the tree
API (:func:`jaxparams.quant.quantize_tree`), the sequential model driver and the
streaming checkpoint driver all run the record, so each method is defined once.

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
import functools
from typing import Any, Callable, NamedTuple

import jax

from jaxparams.quant.autoround import AUTOROUND_RECORD, autoround
from jaxparams.quant.awq import AWQ_RECORD, awq
from jaxparams.quant.decoupleq import DECOUPLEQ_RECORD, decoupleq
from jaxparams.quant.fp8 import FP8_RECORD, fp8
from jaxparams.quant.gptq import GPTQ_RECORD, gptq
from jaxparams.quant.hqq import HQQ_RECORD, hqq
from jaxparams.quant.nf4 import NF4_RECORD, nf4
from jaxparams.quant.omniquant import OMNIQUANT_RECORD, omniquant, omniquant_block
from jaxparams.quant import record as qrec
from jaxparams.quant.record import NEEDS
from jaxparams.quant.rf8 import RF8_RECORD, rf8
from jaxparams.quant.rtn import RTN_RECORD, rtn
from jaxparams.transform import Registry, Transform

__all__ = ["Quantizer", "get_quantizer", "quantizer_names", "make_config", "quantize_matrix",
           "NEEDS", "METHODS", "get_record"]


class Quantizer(NamedTuple):
  """A registered method (the public checked per-matrix function; :func:`get_record` gives the
  record)."""

  name: str
  fn: Callable[..., Any]
  config_cls: type
  needs: str


_TABLE = (  # the record (math, config, checks, needs, description), the public function
    (RTN_RECORD, rtn), (NF4_RECORD, nf4), (FP8_RECORD, fp8), (RF8_RECORD, rf8),
    (HQQ_RECORD, hqq), (GPTQ_RECORD, gptq), (AWQ_RECORD, awq), (DECOUPLEQ_RECORD, decoupleq),
    (OMNIQUANT_RECORD, omniquant), (AUTOROUND_RECORD, autoround),
)

# Methods with a block-wise form: the streaming driver trains them on each block's output.
_BLOCK_FNS = {"omniquant": omniquant_block}


@functools.lru_cache(maxsize=None)
def _registry() -> Registry:
  records = []
  for rec, fn in _TABLE:
    info = dict(rec.info, fn=fn)
    if rec.name in _BLOCK_FNS:
      info["block"] = _BLOCK_FNS[rec.name]
    records.append(dataclasses.replace(rec, info=info))
  return Registry("quantization method", records)


class _Methods:
  """Read-only view of the registry (``METHODS.names()``, ``METHODS.get(name)``, ``in``)."""

  def names(self) -> list[str]:
    return [r.name for r, _ in _TABLE]

  def get(self, name: str) -> Transform:
    return _registry().get(str(name).lower())

  def __contains__(self, name: object) -> bool:
    return isinstance(name, str) and name.lower() in _registry()

  def __iter__(self):
    return iter(self.get(n) for n in self.names())


METHODS = _Methods()


def get_record(name: str) -> Transform:
  """The :class:`~jaxparams.transform.Transform` of method ``name``; ValueError lists the valid
  names."""
  return METHODS.get(name)


def quantizer_names() -> list[str]:
  """Names of the registered methods."""
  return METHODS.names()


def get_quantizer(name: str) -> Quantizer:
  """Returns the :class:`Quantizer` for ``name``; ValueError lists the valid names."""
  key = str(name).lower()
  if key not in METHODS:
    raise ValueError(f"unknown quantization method {name!r}; valid: {sorted(METHODS.names())}")
  r = METHODS.get(key)
  return Quantizer(r.name, r.info["fn"], r.config, r.info["needs"])


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
  if name in ("fp8", "rf8") and fields.get("bits", 8) == 8:
    fields.pop("bits", None)
  unknown = sorted(set(fields) - valid)
  if unknown:
    raise ValueError(f"unknown field(s) {unknown} for method {name!r}; valid: {sorted(valid)}")
  return q.config_cls(**fields)


def quantize_matrix(method: str, w: jax.Array, cfg: Any = None, stats: Any = None, *,
                    name: str = "") -> Any:
  """Runs method ``method``'s record on one matrix.

  Args:
    method: registered name.
    w: weight ``[K, N]``.
    cfg: the method's config (default config when None).
    stats: calibration (``InputStats``/Hessian/inputs) for methods that need it.
    name: tree path for messages.
  """
  r = get_record(method)
  if cfg is not None and not isinstance(cfg, r.config):
    raise ValueError(f"method {method!r} expects a {r.config.__name__}, "
                     f"got {type(cfg).__name__}")
  return qrec.call(r, w, cfg, stats, name=name)
