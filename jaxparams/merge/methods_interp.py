"""Interpolation methods: linear, slerp, nuslerp, multislerp, karcher, model_stock,
nearswap, passthrough (mergekit 0.1.5 semantics, float32 math).

Every ``*_tensor`` function is pure jnp and jit-compiled; float hyperparameters
are array arguments (no recompiles, differentiable), flags are static.

Example:
  >>> import jax.numpy as jnp
  >>> [round(v, 4) for v in slerp_tensor(jnp.array([1., 0.]), jnp.array([0., 1.]), 0.5).tolist()]
  [0.7071, 0.7071]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.merge.checks import weights_sum_nonzero
from jaxparams.merge.params import global_param, model_param
from jaxparams.merge.record import merge_record
from jaxparams.transform import in_range

__all__ = [
    "linear_tensor", "slerp_tensor", "nuslerp_tensor", "multislerp_tensor", "karcher_tensor",
    "model_stock_tensor", "nearswap_tensor", "passthrough_tensor", "RECORDS",
]

_f32 = jnp.float32


def _w(values: Any) -> jax.Array:
  if isinstance(values, (list, tuple)):
    return jnp.stack([jnp.asarray(v, _f32) for v in values])
  return jnp.asarray(values, _f32)


@functools.partial(jax.jit, static_argnames=("normalize",))
def linear_tensor(models: Sequence[jax.Array], weights: jax.Array, normalize: bool = True
                  ) -> jax.Array:
  """``sum w_i x_i`` (divided by ``sum w_i`` when normalize), fp32 accumulation.

  Example:
    >>> linear_tensor([jnp.ones(2), jnp.zeros(2)], jnp.array([3., 1.])).tolist()
    [0.75, 0.75]
  """
  dtype = models[0].dtype
  acc = jnp.float64 if dtype == jnp.float64 else _f32
  weights = jnp.asarray(weights, acc)
  out = jnp.zeros(models[0].shape, acc)
  for i, m in enumerate(models):
    out = out + m.astype(acc) * weights[i]
  if normalize:
    out = out / jnp.sum(weights)
  return out.astype(dtype)


@jax.jit
def slerp_tensor(base: jax.Array, other: jax.Array, t: jax.Array) -> jax.Array:
  """mergekit ``slerp``: whole-tensor SLERP from ``base`` (t=0) to ``other`` (t=1).

  Falls back to linear interpolation when ``|cos| > 0.9995``; norms <= 1e-8
  count as 1. Differentiable in ``t`` (and the inputs).
  """
  a = base.reshape(-1).astype(_f32)
  b = other.reshape(-1).astype(_f32)
  t = jnp.asarray(t, _f32)
  if a.size == 0:
    return ((1 - t) * a + t * b).reshape(base.shape).astype(base.dtype)
  na = jnp.linalg.norm(a)
  nb = jnp.linalg.norm(b)
  na = jnp.where(na > 1e-8, na, 1.0)
  nb = jnp.where(nb > 1e-8, nb, 1.0)
  dot = jnp.clip(jnp.sum((a / na) * (b / nb)), -1.0, 1.0)
  lin = jnp.abs(dot) > 0.9995
  theta = jnp.arccos(jnp.where(lin, 0.0, dot))
  s = jnp.sin(theta)
  s = jnp.where(lin, 1.0, s)
  ca = jnp.where(lin, 1 - t, jnp.sin((1 - t) * theta) / s)
  cb = jnp.where(lin, t, jnp.sin(t * theta) / s)
  return (ca * a + cb * b).reshape(base.shape).astype(base.dtype)


def _nuslerp_core(t, v0, v1, eps=1e-8):
  # SLERP along the last axis (rows), lerp where (nearly) colinear.
  def unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-7)
  cos = jnp.clip(jnp.sum(unit(v0) * unit(v1), axis=-1, keepdims=True), -1.0, 1.0)
  colinear = (1 - cos * cos) <= eps ** 2
  theta = jnp.arccos(jnp.where(colinear, 0.0, cos))
  s = jnp.sin(theta)
  s = jnp.where(colinear, 1.0, s)
  sl = (jnp.sin((1 - t) * theta) * v0 + jnp.sin(t * theta) * v1) / s
  return jnp.where(colinear, (1 - t) * v0 + t * v1, sl)


@functools.partial(jax.jit, static_argnames=("flatten", "row_wise"))
def nuslerp_tensor(base: jax.Array | None, m0: jax.Array, m1: jax.Array, weights: jax.Array, *,
                   flatten: bool = True, row_wise: bool = False) -> jax.Array:
  """mergekit ``nuslerp``: t = w1 / (w0 + w1) (0.5 if the sum is ~0); with a
  base, SLERP of the task vectors; ``flatten`` = whole tensor, else per row
  along the last axis (``row_wise``: along axis 0)."""
  weights = jnp.asarray(weights, _f32)
  total = weights[0] + weights[1]
  t = jnp.where(jnp.abs(total) < 1e-6, 0.5, weights[1] / jnp.where(total == 0, 1.0, total))
  v0, v1 = m0.astype(_f32), m1.astype(_f32)
  if base is not None:
    b = base.astype(_f32)
    v0, v1 = v0 - b, v1 - b
  shape = v0.shape
  if flatten:
    r = _nuslerp_core(t, v0.reshape(-1), v1.reshape(-1)).reshape(shape)
  elif row_wise and v0.ndim > 1:
    r = jnp.swapaxes(_nuslerp_core(t, jnp.swapaxes(v0, 0, -1), jnp.swapaxes(v1, 0, -1)), 0, -1)
  else:
    r = _nuslerp_core(t, v0, v1)
  if base is not None:
    r = base.astype(_f32) + r
  return r.astype(m0.dtype)


@functools.partial(jax.jit, static_argnames=("normalize_weights",))
def multislerp_tensor(base: jax.Array | None, models: Sequence[jax.Array], weights: jax.Array,
                      eps: jax.Array = 1e-8, *, normalize_weights: bool = True) -> jax.Array:
  """mergekit ``multislerp``: barycentric interpolation on the hypersphere.

  Returns NaN where mergekit raises (the weighted mean of >2 unit vectors is ~0);
  the record's ``finite`` check turns that into a ValueError in both drivers.
  """
  dtype = models[0].dtype
  if len(models) == 1:
    return models[0]
  x = jnp.stack([m.astype(_f32) for m in models])
  if base is not None:
    x = x - base.astype(_f32)[None]
  shape = x.shape[1:]
  flat = x.reshape(x.shape[0], -1)
  w = jnp.asarray(weights, _f32)
  if normalize_weights:
    w = w / jnp.sum(w)
  eps = jnp.asarray(eps, _f32)
  norms = jnp.linalg.norm(flat, axis=-1, keepdims=True)
  units = flat / (norms + eps)
  mean = jnp.sum(units * w[:, None], axis=0)
  mean_norm = jnp.linalg.norm(mean)
  degenerate = mean_norm < eps
  mean = mean / jnp.where(degenerate, 1.0, mean_norm)
  dots = jnp.sum(units * mean, axis=-1, keepdims=True)
  tangent = jnp.sum((units - dots * mean) * w[:, None], axis=0)
  tnorm = jnp.linalg.norm(tangent) + eps
  res = mean * jnp.cos(tnorm) + tangent * (jnp.sin(tnorm) / tnorm)
  res = res * jnp.sum(norms[:, 0] * w)
  if len(models) == 2:
    fallback = flat[0] * w[0] + flat[1] * w[1]
  else:
    fallback = jnp.full_like(res, jnp.nan)
  res = jnp.where(degenerate, fallback, res).reshape(shape)
  if base is not None:
    res = res + base.astype(_f32)
  return res.astype(dtype)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def karcher_tensor(models: Sequence[jax.Array], max_iter: int = 10, tol: jax.Array = 1e-5
                   ) -> jax.Array:
  """mergekit ``karcher``: equal-weight Riemannian (Frechet) mean on the sphere,
  scaled by the mean norm. Early stop when the tangent norm < ``tol``."""
  dtype = models[0].dtype
  if len(models) == 1:
    return models[0]
  tol = jnp.asarray(tol, _f32)
  n = len(models)
  x = jnp.stack([m.reshape(-1).astype(_f32) for m in models])
  norms = jnp.linalg.norm(x, axis=-1)
  units = jnp.where((norms == 0)[:, None], 0.0, x / jnp.where(norms == 0, 1.0, norms)[:, None])
  valid = norms > tol
  any_valid = jnp.any(valid)
  alphas = valid.astype(_f32) / jnp.maximum(jnp.sum(valid), 1)
  first = units[jnp.argmax(valid)]
  mean = jnp.sum(units * alphas[:, None], axis=0)
  mnorm = jnp.linalg.norm(mean)
  mean = jnp.where(mnorm < tol, first, mean / jnp.where(mnorm < tol, 1.0, mnorm))

  def body(state):
    i, m, _ = state
    dot = jnp.clip(units @ m, -1.0, 1.0)
    theta = jnp.arccos(dot)
    active = valid & (theta >= tol)
    s = jnp.where(active, jnp.sin(theta), 1.0)
    coef = jnp.where(active, alphas * theta / s, 0.0)
    tangent = jnp.sum(coef[:, None] * (units - dot[:, None] * m[None]), axis=0)
    tn = jnp.linalg.norm(tangent)
    stop = tn < tol
    new = jnp.cos(tn) * m + jnp.sin(tn) * (tangent / jnp.where(stop, 1.0, tn))
    un = jnp.linalg.norm(new)
    new = jnp.where(un > tol, new / jnp.where(un > tol, un, 1.0), new)
    return i + 1, jnp.where(stop, m, new), stop

  _, mean, _ = jax.lax.while_loop(lambda s: (s[0] < max_iter) & ~s[2], body,
                                  (jnp.int32(0), mean, jnp.bool_(False)))
  scale = jnp.sum(norms) / n
  out = jnp.where(any_valid, scale * mean, 0.0 * x[0])
  return out.reshape(models[0].shape).astype(dtype)


@functools.partial(jax.jit, static_argnames=("filter_wise",))
def model_stock_tensor(base: jax.Array, models: Sequence[jax.Array], *, filter_wise: bool = False
                       ) -> jax.Array:
  """mergekit ``model_stock``: ``t * mean(models) + (1 - t) * base`` with
  ``t = k cos / (1 + (k - 1) cos)``, cos the mean pairwise cosine of the task
  vectors (whole tensor, or per row along the last axis with ``filter_wise``)."""
  shape, dtype = base.shape, base.dtype
  w0 = base.astype(_f32)
  ws = [m.astype(_f32) for m in models]
  if filter_wise:
    if w0.ndim == 1:
      w0, ws = w0[None], [w[None] for w in ws]
  else:
    w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
  offs = [w - w0 for w in ws]
  cos = []
  for i, a in enumerate(offs):
    for b in offs[i + 1:]:
      prod = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
      cos.append(jnp.clip(jnp.sum(a * b, axis=-1) / jnp.maximum(prod, 1e-6), -1.0, 1.0))
  c = jnp.mean(jnp.stack(cos), axis=0)[..., None]
  k = len(ws)
  den = 1 + (k - 1) * c
  singular = jnp.abs(den) < 1e-6
  t = jnp.where(singular, 0.0, (k * c) / jnp.where(singular, 1.0, den))
  avg = functools.reduce(lambda p, q: p + q, ws) / k
  return (t * avg + (1 - t) * w0).reshape(shape).astype(dtype)


@jax.jit
def nearswap_tensor(base: jax.Array, other: jax.Array, t: jax.Array) -> jax.Array:
  """mergekit ``nearswap``: take ``other`` where it is within ``t`` of base,
  interpolating with weight ``clip(t / |base - other|, 0, 1)``."""
  a, b = base.astype(_f32), other.astype(_f32)
  w = jnp.clip(jnp.asarray(t, _f32) / jnp.maximum(jnp.abs(a - b), 1e-6), 0.0, 1.0)
  return (w * b + (1 - w) * a).astype(base.dtype)


def passthrough_tensor(x: jax.Array, scale: Any = None) -> jax.Array:
  """mergekit ``passthrough``: the single input, optionally scaled."""
  return x if scale is None else (x * jnp.asarray(scale, _f32)).astype(x.dtype)


# -- records: config (defaults once), checks, the per-tensor call in mergekit terms -------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearConfig:
  """``linear``: per-model ``weight``; ``normalize`` divides by their sum."""
  weight: tuple = model_param()
  normalize: bool = global_param(True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlerpConfig:
  """``slerp``: ``t`` in [0, 1] from the base (0) to the other model (1)."""
  t: float = global_param()


@dataclasses.dataclass(frozen=True, kw_only=True)
class NuslerpConfig:
  """``nuslerp``: two per-model weights; flatten (whole tensor) or per row."""
  weight: tuple = model_param()
  nuslerp_flatten: bool = global_param(True)
  nuslerp_row_wise: bool = global_param(False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultislerpConfig:
  """``multislerp``: per-model weights, normalised by default; ``eps`` guards norms."""
  weight: tuple = model_param()
  normalize_weights: bool = global_param(True)
  eps: float = global_param(1e-8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KarcherConfig:
  """``karcher``: iterations and tolerance of the Riemannian mean."""
  max_iter: int = global_param(10)
  tol: float = global_param(1e-5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelStockConfig:
  """``model_stock``: whole tensor, or per row (``filter_wise``)."""
  filter_wise: bool = global_param(False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NearswapConfig:
  """``nearswap``: distance threshold ``t`` (>= 0)."""
  t: float = global_param()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PassthroughConfig:
  """``passthrough``: optional ``scale`` of the single input."""
  scale: tuple = model_param(None)


def _c_linear(base, models, mp, gp, key):
  return linear_tensor(tuple(models), _w(mp["weight"]), normalize=bool(gp["normalize"]))


def _c_slerp(base, models, mp, gp, key):
  return slerp_tensor(base, models[0], jnp.asarray(gp["t"], _f32))


def _c_nuslerp(base, models, mp, gp, key):
  return nuslerp_tensor(base, models[0], models[1], _w(mp["weight"]),
                        flatten=bool(gp["nuslerp_flatten"]), row_wise=bool(gp["nuslerp_row_wise"]))


def _c_multislerp(base, models, mp, gp, key):
  return multislerp_tensor(base, tuple(models), _w(mp["weight"]), jnp.asarray(gp["eps"], _f32),
                           normalize_weights=bool(gp["normalize_weights"]))


def _c_karcher(base, models, mp, gp, key):
  return karcher_tensor(tuple(models), max_iter=int(gp["max_iter"]),
                        tol=jnp.asarray(gp["tol"], _f32))


def _c_model_stock(base, models, mp, gp, key):
  return model_stock_tensor(base, tuple(models), filter_wise=bool(gp["filter_wise"]))


def _c_nearswap(base, models, mp, gp, key):
  return nearswap_tensor(base, models[0], jnp.asarray(gp["t"], _f32))


def _c_passthrough(base, models, mp, gp, key):
  return passthrough_tensor(models[0], mp["scale"][0])


_weight_finite = in_range("weight")

RECORDS = (
    merge_record("linear", _c_linear, LinearConfig, base="ignored",
                 checks=(_weight_finite,
                         weights_sum_nonzero("linear", "weight", "normalize", "normalize")),
                 description="weighted average (model soup, FedAvg)"),
    merge_record("slerp", _c_slerp, SlerpConfig, max_models=1,
                 checks=(in_range("t", 0.0, 1.0),),
                 description="spherical interpolation between base (t=0) and one model (t=1)"),
    merge_record("nuslerp", _c_nuslerp, NuslerpConfig, base="optional", min_models=2,
                 max_models=2, checks=(_weight_finite,),
                 description="SLERP of two models (or their task vectors) by relative weight"),
    merge_record("multislerp", _c_multislerp, MultislerpConfig, base="optional",
                 checks=(_weight_finite, in_range("eps", 0.0, lo_open=True),
                         weights_sum_nonzero("multislerp", "weight", "normalize_weights",
                                             "normalize_weights")),
                 description="barycentric SLERP of several models"),
    merge_record("karcher", _c_karcher, KarcherConfig, base="ignored",
                 checks=(in_range("max_iter", 1.0), in_range("tol", 0.0, lo_open=True)),
                 description="Karcher (Riemannian) mean on the sphere"),
    merge_record("model_stock", _c_model_stock, ModelStockConfig, min_models=2,
                 description="Model Stock: interpolate base and average by task-vector angle"),
    merge_record("nearswap", _c_nearswap, NearswapConfig, max_models=1,
                 checks=(in_range("t", 0.0),),
                 description="take the model's value where it is close to the base"),
    merge_record("passthrough", _c_passthrough, PassthroughConfig, base="ignored",
                 max_models=1, checks=(in_range("scale"),),
                 description="copy one model's tensor (layer stacking)"),
)
