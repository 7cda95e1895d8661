"""The transform record: one method, written once, for one tensor.

A :class:`Transform` holds the per-tensor pure function, its frozen
keyword-only config dataclass (defaults live there, once), the names of the
config fields that are array hyperparameters (traced arguments: changing them
does not recompile, ``jax.vmap``/``jax.grad`` reach them), its checks, its
input arity (one tensor, or a base plus N models), whether it draws random
numbers and a description. :meth:`Transform.apply` is what both drivers
(:mod:`~jaxparams.transform.tree_driver`, :mod:`~jaxparams.transform.stream_driver`)
call; nothing else validates.

Calling conventions of ``fn`` (``key=`` only when ``needs_key`` is not False,
``**options`` only those named in ``options``)::

  inputs='one':          fn(x, config, key=..., **options) -> array | {suffix: array}
  inputs='base+models':  fn(base, models, config, key=..., **options) -> array

Example:
  >>> import dataclasses, jax.numpy as jnp
  >>> from jaxparams.transform import checks
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class ScaleConfig:
  ...   factor: float = 2.0
  >>> scale = Transform(name='scale', fn=lambda x, c: x * c.factor, config=ScaleConfig,
  ...                   array_params=('factor',), checks=(checks.finite,))
  >>> scale(jnp.ones(2), scale.make_config(factor=3.0)).tolist()
  [3.0, 3.0]
  >>> scale.make_config(facter=3.0)
  Traceback (most recent call last):
  ...
  ValueError: transform 'scale': unknown parameter(s) ['facter']; valid parameters: ['factor']
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable, Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.transform.checks import Check, CheckContext

__all__ = ["Transform", "param_fields"]

_INPUTS = ("one", "base+models")
_TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
                 jax.errors.TracerIntegerConversionError, jax.errors.TracerArrayConversionError)
_BASE = ("none", "required", "optional", "ignored")


@functools.partial(jax.jit, static_argnums=0)
def _value_flags(vchecks: tuple[Check, ...], flat: tuple[Any, ...], out: Any) -> jax.Array:
  # One dispatch for every value check of a call (eager) / inlined under an outer trace.
  return jnp.concatenate([jnp.atleast_1d(c.values(flat, out)) for c in vchecks])


def param_fields(config_cls: type) -> dict[str, dataclasses.Field]:
  """The config dataclass's fields by name (its parameter schema).

  Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True, kw_only=True)
    ... class C:
    ...   t: float
    ...   eps: float = 1e-8
    >>> {n: f.default for n, f in param_fields(C).items()}['eps']
    1e-08
  """
  return {f.name: f for f in dataclasses.fields(config_cls)}


def _freeze(v: Any) -> Any:
  if isinstance(v, list):
    return tuple(_freeze(x) for x in v)
  return v


def _shape(x: Any) -> tuple[int, ...] | None:
  return None if x is None else tuple(np.shape(x))


def _dtype(x: Any) -> Any:
  return None if x is None else jnp.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Transform:
  """One per-tensor method (see the module docstring).

  Attributes:
    name: registry name.
    fn: the pure per-tensor function.
    config: the frozen keyword-only config dataclass (fields = parameters).
    array_params: config fields that are array hyperparameters (traced).
    checks: run by both drivers, in order (static parts first, then values).
    inputs: ``'one'`` or ``'base+models'``.
    base: for ``'base+models'``: ``'required'``, ``'optional'`` (used when
      given) or ``'ignored'`` (a given base is dropped); ``'none'`` otherwise.
    min_models, max_models: number of non-base models accepted.
    needs_key: the method draws random numbers: ``True``, or a predicate on
      the config (e.g. only when ``density < 1``).
    options: keyword options passed to ``fn`` that are not hyperparameters
      (``implementation=`` of a kernel, ...).
    description: one line for listings.
    info: free-form extra facts for the area that owns the record (mergekit
      parameter scopes, aliases...).
    kind: what the record is, for error messages (``'transform'``; an area may name its own,
      e.g. ``'merge method'``).
  """

  name: str
  fn: Callable[..., Any]
  config: type
  array_params: tuple[str, ...] = ()
  checks: tuple[Check, ...] = ()
  inputs: str = "one"
  base: str = "none"
  min_models: int = 1
  max_models: int | None = None
  needs_key: bool | Callable[[Any], bool] = False
  options: tuple[str, ...] = ()
  description: str = ""
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
  kind: str = "transform"

  def __post_init__(self):
    if self.inputs not in _INPUTS:
      raise ValueError(f"transform {self.name!r}: inputs must be one of {_INPUTS}, "
                       f"got {self.inputs!r}")
    if self.base not in _BASE:
      raise ValueError(f"transform {self.name!r}: base must be one of {_BASE}, got {self.base!r}")
    if not dataclasses.is_dataclass(self.config):
      raise ValueError(f"transform {self.name!r}: config must be a dataclass type")
    unknown = sorted(set(self.array_params) - set(param_fields(self.config)))
    if unknown:
      raise ValueError(f"transform {self.name!r}: array_params {unknown} are not config fields; "
                       f"fields: {sorted(param_fields(self.config))}")

  # -- config -----------------------------------------------------------------------------------
  def defaults(self) -> dict[str, Any]:
    """Parameter names -> defaults (``dataclasses.MISSING`` for required ones)."""
    out = {}
    for n, f in param_fields(self.config).items():
      if f.default is not dataclasses.MISSING:
        out[n] = f.default
      elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        out[n] = f.default_factory()  # type: ignore[misc]
      else:
        out[n] = dataclasses.MISSING
    return out

  def make_config(self, **fields: Any) -> Any:
    """The config with ``fields`` set (lists become tuples); defaults for the rest.

    Raises:
      ValueError: an unknown field (listing the valid ones) or a missing required one.
    """
    valid = param_fields(self.config)
    unknown = sorted(set(fields) - set(valid))
    if unknown:
      raise ValueError(f"transform {self.name!r}: unknown parameter(s) {unknown}; "
                       f"valid parameters: {sorted(valid) or 'none'}")
    missing = sorted(n for n, d in self.defaults().items()
                     if d is dataclasses.MISSING and n not in fields)
    if missing:
      raise ValueError(f"transform {self.name!r}: required parameter(s) {missing} not given")
    try:
      return self.config(**{k: _freeze(v) for k, v in fields.items()})
    except (TypeError, ValueError) as e:
      msg = str(e)
      if msg.startswith(f"{self.name}: "):  # the config's own check names the method already
        msg = msg[len(self.name) + 2:]
      raise ValueError(f"transform {self.name!r}: {msg}") from None

  def coerce_config(self, config: Any) -> Any:
    """``None`` -> defaults, a mapping -> :meth:`make_config`, an instance -> itself."""
    if config is None:
      return self.make_config()
    if isinstance(config, Mapping):
      return self.make_config(**config)
    if not isinstance(config, self.config):
      raise ValueError(f"transform {self.name!r}: config must be a {self.config.__name__} "
                       f"(or a dict of its fields), got {type(config).__name__}")
    return config

  def split_config(self, config: Any, traced: Collection[str]) -> tuple[Any, dict[str, Any]]:
    """(hashable static config with ``traced`` fields blanked, {field: value}).

    The drivers pass the second part as jit arguments and rebuild the config
    with :meth:`join_config` inside the traced function.
    """
    static = copy.copy(config)
    values = {}
    for name in traced:
      values[name] = getattr(config, name)
      object.__setattr__(static, name, None)
    return static, values

  @staticmethod
  def join_config(static: Any, values: Mapping[str, Any]) -> Any:
    """The inverse of :meth:`split_config` (values may be tracers)."""
    out = copy.copy(static)
    for name, v in values.items():
      object.__setattr__(out, name, v)
    return out

  def wants_key(self, config: Any) -> bool:
    """Whether ``config`` makes the method random (a key is required)."""
    if callable(self.needs_key):
      return bool(self.needs_key(config))
    return bool(self.needs_key)

  # -- inputs and checks ------------------------------------------------------------------------
  def labels(self, n_models: int, has_base: bool) -> tuple[str, ...]:
    """Default input labels: ``('input',)`` or ``('base', 'model 0', ...)``."""
    if self.inputs == "one":
      return ("input",)
    return (("base",) if has_base else ()) + tuple(f"model {i}" for i in range(n_models))

  def _arrange(self, args: Sequence[Any], path: str) -> tuple[Any, ...]:
    where = f" (tensor {path!r})" if path else ""
    if self.inputs == "one":
      if len(args) != 1:
        raise ValueError(f"transform {self.name!r} takes one tensor, got {len(args)}{where}")
      return (args[0],)
    if len(args) != 2:
      raise ValueError(f"transform {self.name!r} takes (base, models), got {len(args)} "
                       f"positional inputs{where}")
    base, models = args
    if self.base == "ignored":
      base = None
    if self.base == "required" and base is None:
      raise ValueError(f"{self.kind} {self.name!r} requires a base model{where}")
    models = tuple(models)
    n = len(models)
    if n < self.min_models or (self.max_models is not None and n > self.max_models):
      if self.max_models == self.min_models:
        want = f"exactly {self.min_models}"
      elif self.max_models is None:
        want = f"at least {self.min_models}"
      else:
        want = f"{self.min_models} to {self.max_models}"
      raise ValueError(f"{self.kind} {self.name!r} needs {want} non-base model(s), got {n}"
                       f"{where}")
    return (base, models)

  def _flat_inputs(self, arranged: tuple[Any, ...]) -> list[Any]:
    if self.inputs == "one":
      return [arranged[0]]
    base, models = arranged
    return ([base] if base is not None else []) + list(models)

  def context(self, arranged: tuple[Any, ...], config: Any, path: str = "",
              labels: Sequence[str] | None = None) -> CheckContext:
    """The :class:`CheckContext` of one call (labels default to :meth:`labels`)."""
    flat = self._flat_inputs(arranged)
    if labels is None:
      labels = (self.labels(len(arranged[1]), arranged[0] is not None)
                if self.inputs != "one" else self.labels(1, False))
    return CheckContext(record=self.name, path=path, labels=tuple(labels),
                        shapes=tuple(_shape(x) for x in flat),
                        dtypes=tuple(_dtype(x) for x in flat), config=config,
                        has_base=self.inputs != "one" and arranged[0] is not None)

  def run_static_checks(self, ctx: CheckContext, skip: Collection[str] = ()) -> None:
    """Runs the static parts of the checks (host side; raises ``ValueError``)."""
    for c in self.checks:
      if c.static is not None and c.name not in skip:
        c.static(ctx)

  def value_checks(self, skip: Collection[str] = ()) -> tuple[Check, ...]:
    """The checks with a value part, in order (``skip`` names left out)."""
    return tuple(c for c in self.checks if c.values is not None and c.name not in skip)

  def verify(self, flags: Any, ctx: CheckContext, skip: Collection[str] = ()) -> None:
    """Raises ``ValueError`` for the first failing value-check flag (host side).

    ``flags`` is the second result of :meth:`apply` (a concrete array).
    """
    flags = np.asarray(flags)
    if flags.all():
      return
    i = 0
    n_in = sum(s is not None for s in ctx.shapes)
    for c in self.value_checks(skip):
      n = n_in + 1
      part = flags[i:i + n]
      bad = np.flatnonzero(~part)
      if bad.size:
        msg = c.message(ctx, int(bad[0])) if c.message else f"{ctx.where}: check {c.name} failed"
        raise c.error(msg)
      i += n

  # -- the one entry point ----------------------------------------------------------------------
  def apply(self, *args: Any, config: Any = None, key: jax.Array | None = None, path: str = "",
            labels: Sequence[str] | None = None, options: Mapping[str, Any] | None = None,
            skip: Collection[str] = (), static_checks: bool = True) -> tuple[Any, jax.Array]:
    """Validates config and inputs, runs the static checks, calls ``fn``.

    Works eagerly and under ``jax.jit``/``vmap``/``grad``. The value checks
    (NaN/Inf...) are computed alongside the result and returned as a flag
    vector, not read: call :meth:`verify` with the concrete flags (the
    drivers read them together with the output, so they cost no extra host
    round trip).

    Args:
      *args: ``x`` (``inputs='one'``) or ``base, models``.
      config: the config (``None``: defaults; a dict: :meth:`make_config`).
      key: PRNG key (required when :meth:`wants_key`).
      path: the tensor's name, for error messages.
      labels: one label per present input (default ``'base'``/``'model i'``).
      options: keyword options of ``fn`` (only names in ``self.options``).
      skip: names of checks not to run (e.g. ``('finite',)``).
      static_checks: run the static checks (the streaming driver runs them
        itself on the host, with concrete values, before its jitted call).

    Returns:
      ``(output, flags)``; ``flags`` are all true when the value checks pass.
    """
    config = self.coerce_config(config)
    arranged = self._arrange(args, path)
    ctx = self.context(arranged, config, path, labels)
    if static_checks:
      self.run_static_checks(ctx, skip)
    kwargs = dict(options or {})
    bad = sorted(set(kwargs) - set(self.options))
    if bad:
      raise ValueError(f"transform {self.name!r}: unknown option(s) {bad}; valid options: "
                       f"{sorted(self.options) or 'none'}")
    if self.needs_key is not False:
      try:
        wanted = key is None and self.wants_key(config)
      except _TRACE_ERRORS:  # a traced parameter decides: the function copes with key=None
        wanted = False
      if wanted:
        raise ValueError(f"{self.kind} {self.name!r} is random: pass key= (e.g. "
                         f"jaxparams.transform.tensor_key(jax.random.key(seed), {path!r}))"
                         if self.inputs != "one" else
                         f"{self.kind} {self.name!r} is random: pass key=")
      kwargs["key"] = key
    out = self.fn(*arranged, config, **kwargs)
    flat = self._flat_inputs(arranged)
    vchecks = self.value_checks(skip)
    if vchecks:
      flags = _value_flags(vchecks, tuple(flat), out)
    else:
      flags = jnp.ones((0,), bool)
    return out, flags

  def __call__(self, *args: Any, config: Any = None, **kwargs: Any) -> Any:
    """:meth:`apply` then :meth:`verify` (one tensor, eager): returns the output.

    ``config`` may also be given positionally after the inputs.
    """
    n = 1 if self.inputs == "one" else 2
    if len(args) == n + 1 and config is None:
      args, config = args[:n], args[n]
    out, flags = self.apply(*args, config=config, **kwargs)
    if not isinstance(flags, jax.core.Tracer):
      config = self.coerce_config(config)
      ctx = self.context(self._arrange(args, kwargs.get("path", "")), config,
                         kwargs.get("path", ""), kwargs.get("labels"))
      self.verify(flags, ctx, kwargs.get("skip", ()))
    return out
