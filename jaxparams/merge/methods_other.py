"""sce, ram, ramplus_tl and arcee_fusion (mergekit 0.1.5 semantics).

Example:
  >>> import jax.numpy as jnp
  >>> ram_tensor(jnp.zeros(3), [jnp.array([1., 2., 0.]), jnp.array([0., 4., 0.])]).tolist()
  [1.0, 3.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.kernels.merge_sparsify import api as kapi
from jaxparams.kernels.merge_sparsify.reference import (float_keys, in_top, key_to_float,
                                                        magnitude_bits)
from jaxparams.merge.params import global_param
from jaxparams.merge.record import merge_record
from jaxparams.transform import in_range

__all__ = ["sce_tensor", "ram_tensor", "ramplus_tl_tensor", "arcee_fusion_tensor", "RECORDS"]

_f32 = jnp.float32


def _sign_consensus(tv: jax.Array) -> jax.Array:
  elected = jnp.where(jnp.sum(tv, axis=0) >= 0, 1.0, -1.0)
  return jnp.sign(tv) == elected[None]


@functools.partial(jax.jit, static_argnames=("select",))
def sce_tensor(base: jax.Array, models: Sequence[jax.Array], select_topk: jax.Array = 1.0, *,
               select: bool = False) -> jax.Array:
  """mergekit ``sce``: select the top ``select_topk`` fraction of positions by
  variance across models (``select=True`` when ``select_topk < 1``), sign
  consensus, and weights ``mean(tau_i^2)`` normalized over models."""
  b = base.astype(_f32)
  tv = jnp.stack([m.astype(_f32) - b for m in models])
  n_models = tv.shape[0]
  if select:
    topk = jnp.asarray(select_topk, _f32)
    var = jnp.var(tv, axis=0)
    nonzero = jnp.sum(var != 0, dtype=jnp.int32)
    k = jnp.floor(nonzero.astype(_f32) * topk).astype(jnp.int32)
    thr, cut = kapi.topk_cuts(var[None], jnp.maximum(k, 1)[None])
    idx = jnp.arange(var.size, dtype=jnp.uint32).reshape(var.shape)
    mask = in_top(magnitude_bits(var), idx, thr[0], cut[0]) & (k > 0)
    mask = jnp.where(topk <= 0, False, mask)
    tv = tv * mask[None].astype(_f32)
  erase = _sign_consensus(tv).astype(_f32)
  w = jnp.mean(jnp.square(tv).reshape(n_models, -1), axis=1)
  ws = jnp.sum(w)
  w = jnp.where(jnp.abs(ws) < 1e-6, 1.0 / n_models, w / jnp.where(ws == 0, 1.0, ws))
  ew = w.reshape((-1,) + (1,) * (tv.ndim - 1)) * erase
  merged = jnp.sum(tv * ew, axis=0) / jnp.maximum(jnp.sum(ew, axis=0), 1e-6)
  return (b + merged).astype(base.dtype)


def _ram_prep(base, models, epsilon):
  b = base.astype(_f32)
  tv = jnp.stack([m.astype(_f32).reshape(-1) - b.reshape(-1) for m in models])
  nz = jnp.abs(tv) > epsilon
  counts = jnp.sum(nz, axis=0, keepdims=True)
  return b, tv, nz, counts, counts > 1, counts == 1


@jax.jit
def ram_tensor(base: jax.Array, models: Sequence[jax.Array], epsilon: jax.Array = 1e-5
               ) -> jax.Array:
  """mergekit ``ram``: deltas unique to one model are kept, shared ones averaged."""
  b, tv, nz, counts, overlap, unique = _ram_prep(base, models, jnp.asarray(epsilon, _f32))
  z = tv * nz
  merged = jnp.sum(z * unique + z * overlap / jnp.maximum(counts, 1), axis=0)
  return (b + merged.reshape(b.shape)).astype(base.dtype)


@jax.jit
def ramplus_tl_tensor(base: jax.Array, models: Sequence[jax.Array], r: jax.Array = 0.1,
                      alpha: jax.Array = 0.2, epsilon: jax.Array = 1e-5) -> jax.Array:
  """mergekit ``ramplus_tl``: RAM with unique deltas scaled by
  ``1 + r * clip(shared_i / unique_i, 0, alpha)`` (counts within the tensor)."""
  epsilon = jnp.asarray(epsilon, _f32)
  b, tv, nz, counts, overlap, unique = _ram_prep(base, models, epsilon)
  shared_c = jnp.sum(nz & overlap, axis=1).astype(_f32)
  unique_c = jnp.sum(nz & unique, axis=1).astype(_f32)
  rho = shared_c / jnp.maximum(unique_c, epsilon)
  lam = 1 + jnp.asarray(r, _f32) * jnp.clip(rho, 0.0, jnp.asarray(alpha, _f32))
  z = tv * nz
  merged = jnp.sum(z * unique * lam[:, None] + z * overlap / jnp.maximum(counts, 1), axis=0)
  return (b + merged.reshape(b.shape)).astype(base.dtype)


def _quantile_sorted_index(q: float, n: int) -> int:
  # mergekit: (float32(q) * (n - 1)).long()
  return int(np.float32(q) * np.float32(n - 1))


def _rounder(dtype) -> Callable[[jax.Array], jax.Array]:
  """Rounds float32 values to ``dtype``'s precision (identity for 32/64-bit floats).

  mergekit computes in the merge's dtype: in torch every bfloat16/float16 op rounds its
  result. ``lax.reduce_precision`` reproduces that rounding on float32 values and, unlike a
  cast pair, is never simplified away by XLA's excess-precision rewrites.
  """
  dtype = jnp.dtype(dtype)
  if dtype.itemsize >= 4 or not jnp.issubdtype(dtype, jnp.floating):
    return lambda x: x
  info = jnp.finfo(dtype)
  return functools.partial(jax.lax.reduce_precision, exponent_bits=info.nexp,
                           mantissa_bits=info.nmant)


@jax.jit
def arcee_fusion_tensor(base: jax.Array, other: jax.Array) -> jax.Array:
  """mergekit ``arcee_fusion``: keep the model's delta where
  ``|delta| * KL(softmax(model) || softmax(base))`` (per row, last axis) is at
  least ``median + 1.5 IQR``. Quantiles are exact over the whole tensor (mergekit
  samples 1M elements with replacement for larger tensors, which is random).

  Computed in the inputs' dtype, op by op, as mergekit does in the merge's ``dtype``: for
  bfloat16/float16 inputs each step rounds to that precision (the importance threshold is a
  hard decision, so float32 math would keep other elements: 405 of 4,096 on a 64x64 bf16
  pair). A recipe's ``dtype: float32`` gives float32 math, in mergekit and here.
  """
  r = _rounder(base.dtype)
  b, m = base.astype(_f32), other.astype(_f32)
  if b.ndim == 0:
    b, m = b[None], m[None]
  diff = r(jnp.abs(r(m - b)))
  p = r(r(jax.nn.softmax(m, axis=-1)) + 1e-8)
  q = r(r(jax.nn.softmax(b, axis=-1)) + 1e-8)
  kl = r(jnp.sum(r(p * r(jnp.log(r(p / q)))), axis=-1, keepdims=True))
  imp = r(diff * kl).reshape(-1)
  n = imp.size
  keys = float_keys(imp)
  # ascending index j == (n - j)-th largest
  q1, med, q3 = (key_to_float(kapi.key_threshold(keys, n - _quantile_sorted_index(qq, n)))
                 for qq in (0.25, 0.5, 0.75))
  thr = r(med + r(1.5 * r(q3 - q1)))
  mask = (imp >= thr).reshape(b.shape).astype(_f32)
  return r(b + r(r(m - b) * mask)).reshape(base.shape).astype(base.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceConfig:
  """``sce``: keep the ``select_topk`` fraction of positions by variance (1 = all)."""
  int8_mask: bool = global_param(False)
  select_topk: float = global_param(1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RamConfig:
  """``ram``: ``epsilon`` is the magnitude below which a delta counts as zero."""
  epsilon: float = global_param(1e-5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RamplusConfig:
  """``ramplus_tl``: boost ``1 + r * clip(shared/unique, 0, alpha)``."""
  r: float = global_param(0.1)
  alpha: float = global_param(0.2)
  epsilon: float = global_param(1e-5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArceeFusionConfig:
  """``arcee_fusion`` has no parameters."""


def _c_sce(base, models, mp, gp, key):
  topk = gp["select_topk"]
  select = isinstance(topk, jax.core.Tracer) or float(topk) < 1
  return sce_tensor(base, tuple(models), jnp.asarray(topk, _f32), select=select)


def _c_ram(base, models, mp, gp, key):
  return ram_tensor(base, tuple(models), jnp.asarray(gp["epsilon"], _f32))


def _c_ramplus(base, models, mp, gp, key):
  return ramplus_tl_tensor(base, tuple(models), jnp.asarray(gp["r"], _f32),
                           jnp.asarray(gp["alpha"], _f32), jnp.asarray(gp["epsilon"], _f32))


def _c_fusion(base, models, mp, gp, key):
  return arcee_fusion_tensor(base, models[0])


def _base_if_empty(fn):
  def wrapped(base, models, mp, gp, key):
    return base if not models else fn(base, models, mp, gp, key)
  return wrapped


_eps = in_range("epsilon", 0.0)

RECORDS = (
    merge_record("sce", _base_if_empty(_c_sce), SceConfig, min_models=0,
                 checks=(in_range("select_topk", 0.0, 1.0),),
                 description="SCE: select by variance, calculate weights, erase sign conflicts"),
    merge_record("ram", _base_if_empty(_c_ram), RamConfig, min_models=0, checks=(_eps,),
                 description="Reinforced Agent Merging: keep unique deltas, average shared"),
    merge_record("ramplus_tl", _base_if_empty(_c_ramplus), RamplusConfig, min_models=0,
                 checks=(in_range("r", 0.0), in_range("alpha", 0.0), _eps),
                 description="RAM+ (tensor-local): boost unique deltas"),
    merge_record("arcee_fusion", _c_fusion, ArceeFusionConfig, max_models=1,
                 description="Arcee Fusion: keep important deltas (KL x |delta| > median+1.5IQR)"),
)
