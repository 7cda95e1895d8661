"""Registry of merge methods: mergekit 0.1.5 names, parameters and defaults.

Each :class:`MergeMethod` merges **one tensor** (``merge_tensor``): it checks
parameter names (unknown -> ``ValueError`` listing the valid ones), fills
defaults, checks ranges, shapes and finiteness (naming the tensor), then calls
a jit-compiled pure-jnp function. The streaming driver and the tree API
(:mod:`jaxparams.merge.tree_api`) both go through the same functions.

Example:
  >>> import jax.numpy as jnp
  >>> m = get_method('linear')
  >>> m.merge_tensor(None, [jnp.ones(3), 3 * jnp.ones(3)],
  ...                model_params={'weight': [1.0, 1.0]}).tolist()
  [2.0, 2.0, 2.0]
"""

from __future__ import annotations

import dataclasses
import functools
import types
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["REQUIRED", "MergeMethod", "get_method", "method_names", "tensor_key"]


class _Required:
  """Sentinel default of a parameter that must be given."""

  def __repr__(self) -> str:
    return "REQUIRED"

  def __reduce__(self):
    return "REQUIRED"


REQUIRED = _Required()


def tensor_key(key: jax.Array, name: str) -> jax.Array:
  """Per-tensor PRNG key: ``fold_in(key, crc32(name))``; used by both drivers.

  Example:
    >>> k = tensor_key(jax.random.key(0), 'layers/0/kernel')
    >>> bool((jax.random.key_data(k) == jax.random.key_data(
    ...     tensor_key(jax.random.key(0), 'layers/0/kernel'))).all())
    True
  """
  return jax.random.fold_in(key, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


# compute(base, models, model_params, global_params, key) -> array
ComputeFn = Callable[..., jax.Array]
# check(n_models, model_params, global_params, name) raises ValueError
CheckFn = Callable[[int, Mapping[str, Sequence[Any]], Mapping[str, Any], str], None]


@dataclasses.dataclass(frozen=True)
class MergeMethod:
  """One merge method.

  Attributes:
    name: mergekit ``merge_method`` name.
    needs_base: a base tensor is required.
    model_params: per-model parameter names -> defaults (``REQUIRED`` if none).
    global_params: global parameter names -> defaults.
    random: the method draws random masks (needs ``key``).
    base_policy: ``'required'``, ``'optional'`` (used when given) or
      ``'ignored'`` (mergekit treats a base model as an ordinary input: the
      recipe layer must put it into ``models``).
    min_models, max_models: number of non-base models accepted.
    description: one line for ``--help`` style listings.
  """

  name: str
  needs_base: bool
  model_params: dict[str, Any]
  global_params: dict[str, Any]
  random: bool
  base_policy: str = "required"
  min_models: int = 1
  max_models: int | None = None
  description: str = ""
  compute: ComputeFn | None = dataclasses.field(default=None, repr=False, compare=False)
  check: CheckFn | None = dataclasses.field(default=None, repr=False, compare=False)

  # -- parameter handling ----------------------------------------------------------------------
  def resolve_params(self, n_models: int, model_params: Mapping[str, Any] | None = None,
                     global_params: Mapping[str, Any] | None = None, *, name: str = ""
                     ) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Validates names, fills defaults, broadcasts scalars to per-model lists.

    Example:
      >>> mp, gp = get_method('ties').resolve_params(2, {'weight': 1.0})
      >>> mp['density'], gp['normalize']
      ([1.0, 1.0], True)
    """
    where = f" for tensor {name!r}" if name else ""
    model_params = dict(model_params or {})
    global_params = dict(global_params or {})
    for kind, given, valid in (("model", model_params, self.model_params),
                               ("global", global_params, self.global_params)):
      unknown = sorted(set(given) - set(valid))
      if unknown:
        raise ValueError(
            f"merge method {self.name!r}: unknown {kind} parameter(s) {unknown}{where}; "
            f"valid {kind} parameters: {sorted(valid) or 'none'}")
    mp: dict[str, list[Any]] = {}
    for pname, default in self.model_params.items():
      value = model_params.get(pname, default)
      if value is REQUIRED:
        raise ValueError(f"merge method {self.name!r}: model parameter {pname!r} is required"
                         f"{where} (give one value per model)")
      if _is_sequence(value):
        value = list(value)
        if len(value) != n_models:
          raise ValueError(f"merge method {self.name!r}: model parameter {pname!r} has "
                           f"{len(value)} values{where}, expected one per model ({n_models})")
      else:
        value = [value] * n_models
      mp[pname] = [default if v is None and default is not REQUIRED else v for v in value]
      if any(v is REQUIRED for v in mp[pname]):
        raise ValueError(f"merge method {self.name!r}: model parameter {pname!r} is required"
                         f"{where} for every model")
    gp: dict[str, Any] = {}
    for pname, default in self.global_params.items():
      value = global_params.get(pname, default)
      if value is REQUIRED:
        raise ValueError(f"merge method {self.name!r}: global parameter {pname!r} is "
                         f"required{where}")
      gp[pname] = value
    return mp, gp

  def validate_inputs(self, base: Any, models: Sequence[Any], *, name: str = "") -> None:
    """Checks the number of models and base presence (shapes/dtypes elsewhere)."""
    where = f" (tensor {name!r})" if name else ""
    if self.base_policy == "required" and base is None:
      raise ValueError(f"merge method {self.name!r} requires a base model{where}")
    n = len(models)
    if n < self.min_models or (self.max_models is not None and n > self.max_models):
      if self.max_models == self.min_models:
        want = f"exactly {self.min_models}"
      elif self.max_models is None:
        want = f"at least {self.min_models}"
      else:
        want = f"{self.min_models} to {self.max_models}"
      raise ValueError(f"merge method {self.name!r} needs {want} non-base model(s), got {n}"
                       f"{where}")

  # -- the per-tensor entry point --------------------------------------------------------------
  def merge_tensor(self, base: jax.Array | None, models: Sequence[jax.Array], *,
                   model_params: Mapping[str, Sequence[float]] | None = None,
                   global_params: Mapping[str, Any] | None = None,
                   key: jax.Array | None = None, name: str = "",
                   check_finite: bool = True) -> jax.Array:
    """Merges one tensor.

    Args:
      base: base tensor (``None`` when the method takes none).
      models: tensors of the non-base models, in recipe order.
      model_params: per-model parameters (a list per name, or a scalar for all).
      global_params: global parameters.
      key: PRNG key (random methods); use :func:`tensor_key` per tensor.
      name: tensor name, used in error messages.
      check_finite: raise on NaN/Inf in the inputs (default).

    Returns:
      The merged tensor, in the dtype of the base (else the first model).

    Raises:
      ValueError: unknown/missing/out-of-range parameters, wrong model count,
        shape mismatch or non-finite values (the message names the tensor).
    """
    if self.base_policy == "ignored":
      base = None
    models = list(models)
    self.validate_inputs(base, models, name=name)
    mp, gp = self.resolve_params(len(models), model_params, global_params, name=name)
    if self.check is not None:
      self.check(len(models), mp, gp, name)
    base = None if base is None else _to_device(base)
    models = [_to_device(m) for m in models]
    ref = base if base is not None else models[0]
    shapes = [("base", base)] if base is not None else []
    shapes += [(f"model {i}", m) for i, m in enumerate(models)]
    for label, t in shapes:
      if tuple(t.shape) != tuple(ref.shape):
        raise ValueError(f"tensor {name!r}: shape mismatch between inputs: "
                         + ", ".join(f"{lb} {tuple(x.shape)}" for lb, x in shapes))
    if check_finite:
      flags = np.asarray(_finite_flags(tuple(t for _, t in shapes)))
      bad = [label for (label, _), ok in zip(shapes, flags) if not ok]
      if bad:
        raise ValueError(f"tensor {name!r}: {bad[0]} contains NaN or Inf values"
                         + (f" (also {', '.join(bad[1:])})" if len(bad) > 1 else ""))
    if self.random and key is None and _random_active(self, mp):
      raise ValueError(f"merge method {self.name!r} is random: pass key= (e.g. "
                       f"jaxparams.merge.tensor_key(jax.random.key(seed), {name!r}))")
    out = self.compute(base, models, mp, gp, key)
    if check_finite and not bool(_finite_flags((out,))[0]):
      raise ValueError(f"tensor {name!r}: merge method {self.name!r} produced NaN/Inf "
                       f"(inputs are finite; e.g. multislerp of vectors whose weighted sum is "
                       f"zero, or an ill-conditioned parameter)")
    return out


def _to_device(x: Any) -> jax.Array:
  # device_put of a numpy array is cheaper than jnp.asarray on CPU (no extra copy).
  return x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x))


@jax.jit
def _finite_flags(arrays: tuple[jax.Array, ...]) -> jax.Array:
  # One dispatch and one host sync for all inputs of a tensor.
  return jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays])


def _random_active(method: MergeMethod, mp: Mapping[str, Sequence[Any]]) -> bool:
  dens = mp.get("density", [])
  return any(float(d) < 1.0 for d in dens)


def _is_sequence(x: Any) -> bool:
  if isinstance(x, (str, bytes)):
    return False
  if isinstance(x, (list, tuple)):
    return True
  return hasattr(x, "shape") and np.ndim(x) >= 1


# The registry is built once from the method modules (immutable mapping afterwards).
def _build() -> dict[str, MergeMethod]:
  from jaxparams.merge import methods_gta, methods_interp, methods_other
  out: dict[str, MergeMethod] = {}
  for mod in (methods_interp, methods_gta, methods_other):
    for m in mod.METHODS:
      out[m.name] = m
  return out


@functools.cache
def _registry() -> Mapping[str, MergeMethod]:
  return types.MappingProxyType(_build())


def method_names() -> list[str]:
  """All method names, sorted.

  Example:
    >>> 'ties' in method_names()
    True
  """
  return sorted(_registry())


def get_method(name: str) -> MergeMethod:
  """The method called ``name`` (mergekit spelling).

  Raises:
    ValueError: unknown name (the message lists the valid ones).
  """
  try:
    return _registry()[name]
  except KeyError:
    raise ValueError(f"unknown merge method {name!r}; valid methods: "
                     f"{', '.join(method_names())}") from None
