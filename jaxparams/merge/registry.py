"""The registry of merge methods: the twenty mergekit 0.1.5 methods as transform records.

Each method is one :class:`~jaxparams.transform.Transform` (built in
``methods_interp.py``, ``methods_gta.py``, ``methods_other.py``): its
per-tensor function, its config dataclass (mergekit's parameters and defaults,
once), its checks. :data:`METHODS` holds them; :func:`get_method` returns a
:class:`MergeMethod`, the record seen through mergekit's vocabulary (per-model
and global parameters), with :meth:`MergeMethod.merge_tensor` for one tensor.
The tree API and the streaming driver run the same records.

Example:
  >>> import jax.numpy as jnp
  >>> m = get_method('linear')
  >>> m.merge_tensor(None, [jnp.ones(3), 3 * jnp.ones(3)],
  ...                model_params={'weight': [1.0, 1.0]}).tolist()
  [2.0, 2.0, 2.0]
  >>> METHODS.get('ties').config.normalize  # defaults live in the record's config
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxparams.merge import methods_gta, methods_interp, methods_other
from jaxparams.merge.params import (REQUIRED, global_defaults, mergekit_params, model_defaults,
                                    resolve_config)
from jaxparams.transform import Registry, Transform, tensor_key

__all__ = ["REQUIRED", "METHODS", "MergeMethod", "get_method", "get_record", "method_names",
           "tensor_key"]

METHODS = Registry("merge method",
                   methods_interp.RECORDS + methods_gta.RECORDS + methods_other.RECORDS)
"""Every merge method's record, by mergekit name."""


def _to_device(x: Any) -> jax.Array:
  # device_put of a numpy array is cheaper than jnp.asarray on CPU (no extra copy).
  return x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x))


@dataclasses.dataclass(frozen=True)
class MergeMethod:
  """A merge record seen through mergekit's parameter vocabulary.

  Everything here is read from :attr:`record`; nothing is defined twice.
  """

  record: Transform

  @property
  def name(self) -> str:
    """mergekit ``merge_method`` name."""
    return self.record.name

  @property
  def description(self) -> str:
    """One line for listings."""
    return self.record.description

  @property
  def base_policy(self) -> str:
    """``'required'``, ``'optional'`` (used when given) or ``'ignored'``."""
    return self.record.base

  @property
  def needs_base(self) -> bool:
    """A base tensor is required."""
    return self.record.base == "required"

  @property
  def random(self) -> bool:
    """The method draws random masks (needs ``key``)."""
    return self.record.needs_key is not False

  @property
  def min_models(self) -> int:
    """Fewest non-base models."""
    return self.record.min_models

  @property
  def max_models(self) -> int | None:
    """Most non-base models (``None``: no limit)."""
    return self.record.max_models

  @property
  def model_params(self) -> dict[str, Any]:
    """Per-model parameter names -> defaults (``REQUIRED`` if none)."""
    return model_defaults(self.record.config)

  @property
  def global_params(self) -> dict[str, Any]:
    """Global parameter names -> defaults."""
    return global_defaults(self.record.config)

  def resolve_config(self, n_models: int, model_params: Mapping[str, Any] | None = None,
                     global_params: Mapping[str, Any] | None = None, *, name: str = "") -> Any:
    """The record's config from mergekit-style parameters (validated, defaults filled)."""
    return resolve_config(self.name, self.record.config, n_models, model_params, global_params,
                          name=name)

  def resolve_params(self, n_models: int, model_params: Mapping[str, Any] | None = None,
                     global_params: Mapping[str, Any] | None = None, *, name: str = ""
                     ) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Validates names, fills defaults, broadcasts scalars to per-model lists.

    Example:
      >>> mp, gp = get_method('ties').resolve_params(2, {'weight': 1.0})
      >>> mp['density'], gp['normalize']
      ([1.0, 1.0], True)
    """
    return mergekit_params(self.resolve_config(n_models, model_params, global_params, name=name),
                           n_models)

  def validate_inputs(self, base: Any, models: Sequence[Any], *, name: str = "") -> None:
    """Checks the number of models and the base's presence."""
    self.record._arrange((base, list(models)), name)  # pylint: disable=protected-access

  def merge_tensor(self, base: jax.Array | None, models: Sequence[jax.Array], *,
                   model_params: Mapping[str, Sequence[float]] | None = None,
                   global_params: Mapping[str, Any] | None = None,
                   key: jax.Array | None = None, name: str = "",
                   check_finite: bool = True) -> jax.Array:
    """Merges one tensor (the record's ``apply`` + ``verify``).

    Args:
      base: base tensor (``None`` when the method takes none).
      models: tensors of the non-base models, in recipe order.
      model_params: per-model parameters (a list per name, or a scalar for all).
      global_params: global parameters.
      key: PRNG key (random methods); use :func:`tensor_key` per tensor.
      name: tensor name, used in error messages.
      check_finite: raise on NaN/Inf in the inputs or the output (default).

    Returns:
      The merged tensor, in the dtype of the base (else the first model).

    Raises:
      ValueError: unknown/missing/out-of-range parameters, wrong model count,
        shape mismatch or non-finite values (the message names the tensor).
    """
    rec = self.record
    if rec.base == "ignored":
      base = None
    models = list(models)
    self.validate_inputs(base, models, name=name)
    cfg = self.resolve_config(len(models), model_params, global_params, name=name)
    base = None if base is None else _to_device(base)
    models = [_to_device(m) for m in models]
    skip = () if check_finite else ("finite",)
    return rec(base, models, config=cfg, key=key, path=name, skip=skip)


def get_record(name: str) -> Transform:
  """The record of merge method ``name`` (``ValueError`` listing the valid names)."""
  return METHODS.get(name)


def method_names() -> list[str]:
  """All method names, sorted.

  Example:
    >>> 'ties' in method_names()
    True
  """
  return METHODS.names()


def get_method(name: str) -> MergeMethod:
  """The method called ``name`` (mergekit spelling).

  Raises:
    ValueError: unknown name (the message lists the valid ones).
  """
  if name not in METHODS:
    # The data-aware records' table (it imports only the transform layer; not their driver).
    from jaxparams.merge.learned.records import RECORDS as DATA_AWARE  # pylint: disable=import-outside-toplevel
    import difflib  # pylint: disable=import-outside-toplevel
    close = difflib.get_close_matches(str(name), method_names() + DATA_AWARE.names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown merge method {name!r}; valid methods: "
                     f"{', '.join(method_names())}; with calibration data (recipe "
                     f"'parameters: {{calibration: FILE}}'): {', '.join(DATA_AWARE.names())}"
                     f"{hint}")
  return MergeMethod(METHODS.get(name))
