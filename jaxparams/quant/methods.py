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
import jax.numpy as jnp

from jaxparams.quant.autoround import AutoRoundConfig, autoround
from jaxparams.quant.awq import AWQConfig, awq
from jaxparams.quant.decoupleq import DecoupleQConfig, decoupleq
from jaxparams.quant.fp8 import FP8Config, fp8
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.hqq import HQQConfig, hqq
from jaxparams.quant.nf4 import NF4Config, nf4
from jaxparams.quant.omniquant import OmniQuantConfig, omniquant, omniquant_block
from jaxparams.quant.rf8 import RF8Config, rf8
from jaxparams.quant.rtn import RTNConfig, rtn
from jaxparams.transform import Registry, Transform

__all__ = ["Quantizer", "get_quantizer", "quantizer_names", "make_config", "quantize_matrix",
           "NEEDS", "METHODS", "get_record"]

NEEDS = ("none", "hessian", "act_stats")


class Quantizer(NamedTuple):
  """A registered method (the raw per-matrix function; see :func:`get_record` for the record)."""

  name: str
  fn: Callable[..., Any]
  config_cls: type
  needs: str


@jax.jit
def _all_finite(w: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(w))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_call(fn: Callable, w: jax.Array, config: Any) -> Any:
  return fn(w, config)


def _data_free(fn: Callable, jitted: bool) -> Callable:
  """``fn(w, cfg, *, stats, name)`` of a calibration-free method.

  Plain-jnp methods (``jitted``) are validated eagerly on the abstract value and on
  finiteness, then run compiled (inside a trace they just run).
  """

  def run(w, cfg, *, stats=None, name=""):
    del stats  # only used for the report's output error
    if jitted and getattr(w, "ndim", 0) == 2 and not isinstance(w, jax.core.Tracer):
      jax.eval_shape(lambda a: fn(a, cfg, name=name), w)
      if not bool(_all_finite(w)):
        raise ValueError(f"weight {name!r} contains non-finite value(s) (NaN/inf); shape "
                         f"{tuple(w.shape)}")
      return _jit_call(fn, w, cfg)
    return fn(w, cfg, name=name)

  return run


def _calibrated(fn: Callable, method: str, needs: str) -> Callable:

  def run(w, cfg, *, stats=None, name=""):
    if stats is None:
      raise ValueError(f"method {method!r} needs calibration ({needs}) for {name or 'weight'!r}: "
                       "pass jaxparams.calib.InputStats (calibration={path: inputs} in "
                       "quantize_tree, or use jaxparams.quant.quantize_model)")
    return fn(w, stats, cfg, name=name)

  return run


_TABLE = (  # name, function, config, needs, plain jnp (driver jits it), description
    ("rtn", rtn, RTNConfig, "none", True, "round-to-nearest min/max grid per group"),
    ("nf4", nf4, NF4Config, "none", True, "4-bit NormalFloat code book, absmax blocks"),
    ("fp8", fp8, FP8Config, "none", True, "fp8 e4m3/e5m2 with per-channel/group scales"),
    ("rf8", rf8, RF8Config, "none", True, "RF8: two powers of two per weight, 8-bit codes"),
    ("hqq", hqq, HQQConfig, "none", False, "half-quadratic zero/scale optimisation"),
    ("gptq", gptq, GPTQConfig, "hessian", False, "GPTQ (OBS error feedback with H = 2X^TX/n)"),
    ("awq", awq, AWQConfig, "act_stats", False, "activation-aware per-channel scaling"),
    ("decoupleq", decoupleq, DecoupleQConfig, "hessian", False,
     "decoupleQ: integer and float parts solved apart"),
    ("omniquant", omniquant, OmniQuantConfig, "hessian", False,
     "OmniQuant: learned weight clipping (+ equivalent transformation), block-wise"),
    ("autoround", autoround, AutoRoundConfig, "hessian", False,
     "AutoRound: signed-gradient learned rounding and min-max clipping"),
)

# Methods with a block-wise form: the streaming driver trains them on each block's output.
_BLOCK_FNS = {"omniquant": omniquant_block}


@functools.lru_cache(maxsize=None)
def _registry() -> Registry:
  records = []
  for name, fn, cfg, needs, jitted, desc in _TABLE:
    run = _data_free(fn, jitted) if needs == "none" else _calibrated(fn, name, needs)
    info = {"needs": needs, "fn": fn}
    if name in _BLOCK_FNS:
      info["block"] = _BLOCK_FNS[name]
    records.append(Transform(name=name, fn=run, config=cfg, options=("stats", "name"),
                             description=desc, info=info))
  return Registry("quantization method", records)


class _Methods:
  """Read-only view of the registry (``METHODS.names()``, ``METHODS.get(name)``, ``in``)."""

  def names(self) -> list[str]:
    return [r[0] for r in _TABLE]

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
  if r.info["needs"] == "none":
    return r.info["fn"](w, r.coerce_config(cfg), name=name)
  return r(w, config=cfg, options={"stats": stats, "name": name}, path=name)
