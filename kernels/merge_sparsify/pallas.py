"""Pallas kernels of the fused merge: one source for both targets (``target='tpu'|'gpu'``).

Three kernels, each a single pass over the tensor:

* ``count``: for M key rows, count keys >= each of 15 candidate thresholds
  (one pass of the k-th-largest search; 8 passes find the exact threshold);
* ``stats``: per model ``sum |delta|`` and ``sum |kept delta|`` (L1 rescale);
* ``combine``: the fused sparsify (magnitude window, hash-RNG DARE/DELLA mask)
  + rescale + weighting + sign election + disjoint mean + ``base + lam * .``.

Reductions write one partial result per grid block (summed by XLA), so every
grid axis is parallel. Per-model scalars (weights, thresholds, seeds, ...)
live in SMEM. The tensor is flattened and zero-padded to whole tiles
(padding has delta 0: it is never kept, counted or summed).

Targets: tiles are (rows, 128) on both ``'tpu'`` (Mosaic TPU, 64 rows) and
``'gpu'`` (Mosaic GPU, ``jax.experimental.pallas.mosaic_gpu``, 16 rows: its
async copies move at most 256 elements per dimension). ``interpret=True`` runs
either on CPU. The kernels are the same code for both targets, so there is one file
(not a ``pallas_tpu.py`` and a ``pallas_gpu.py`` that would be copies of each other);
only :class:`Target` differs.

Example:
  >>> import jax.numpy as jnp
  >>> keys = jnp.arange(1, 11, dtype=jnp.uint32)[None]
  >>> [int(kth_largest_keys(keys, jnp.array([3]), target=t, interpret=True)[0])
  ...  for t in ('tpu', 'gpu')]
  [8, 8]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from jaxparams.kernels.merge_sparsify import reference as ref

__all__ = ["Target", "TPU", "GPU", "TARGETS", "get_target", "count_ge", "kth_largest_keys",
           "tie_cuts", "sparsify_merge"]

_N_CAND = 15
_LANES = 128
_NPAR = 8  # scalars per model in each parameter vector


@dataclasses.dataclass(frozen=True)
class Target:
  """How tiles, scalar memory and compiler params look on one platform."""

  name: str
  tile_elems: int  # elements per grid block
  explicit_layouts: bool = True  # Mosaic GPU register layouts (off in interpret mode)

  def for_mode(self, interpret: bool) -> "Target":
    return dataclasses.replace(self, explicit_layouts=not interpret)

  def tile_shape(self) -> tuple[int, ...]:
    return (self.tile_elems // _LANES, _LANES)

  def smem_spec(self):
    if self.name == "tpu":
      from jax.experimental.pallas import tpu as pltpu
      return pl.BlockSpec(memory_space=pltpu.SMEM)
    from jax.experimental.pallas import mosaic_gpu as plgpu
    return pl.BlockSpec(memory_space=plgpu.SMEM)

  def compiler_params(self):
    if self.name == "tpu":
      from jax.experimental.pallas import tpu as pltpu
      return pltpu.CompilerParams(dimension_semantics=("parallel",) * 2)
    from jax.experimental.pallas import mosaic_gpu as plgpu
    return plgpu.CompilerParams()

  def partial_shape(self) -> tuple[int, ...]:
    return (1, _LANES)


TPU = Target("tpu", 64 * _LANES)
GPU = Target("gpu", 16 * _LANES)  # Mosaic GPU async copies: <= 256 per dimension
TARGETS = {"tpu": TPU, "gpu": GPU}


def get_target(target: "Target | str") -> Target:
  """``'tpu'``/``'gpu'`` (or a :class:`Target`) -> :class:`Target`; ValueError otherwise."""
  if isinstance(target, Target):
    return target
  if target not in TARGETS:
    raise ValueError(f"unknown target {target!r}; valid: {sorted(TARGETS)}")
  return TARGETS[target]


def _pad_len(n: int, target: Target) -> int:
  t = target.tile_elems
  return max(t, -(-n // t) * t)


def _tile(x: jax.Array, target: Target) -> jax.Array:
  """(..., n) -> (..., n_padded) reshaped into the target's tile layout."""
  n = x.shape[-1]
  npad = _pad_len(n, target)
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, npad - n)])
  return x.reshape(x.shape[:-1] + (npad // _LANES, _LANES))


def _smem_vec(values, dtype) -> jax.Array:
  if isinstance(values, (list, tuple)):
    v = jnp.stack([jnp.asarray(x, dtype).reshape(()) for x in values])
  else:
    v = jnp.ravel(values).astype(dtype)
  size = max(32, -(-v.shape[0] // 32) * 32)  # whole 128-byte lines (Mosaic GPU copies)
  return jnp.pad(v, (0, size - v.shape[0]))


def _iota(target: Target, dtype, shape: tuple[int, ...], dim: int) -> jax.Array:
  if target.name == "gpu" and target.explicit_layouts:
    # Mosaic GPU cannot infer an iota's register layout: give it explicitly.
    from jax.experimental.pallas import mosaic_gpu as plgpu
    # Same vector size as Mosaic GPU's default strided layout for 32-bit data.
    size = int(np.prod(shape))
    vec = min(2, size // 128)
    while vec > 1 and size % (vec * 128):
      vec //= 2
    return plgpu.broadcasted_iota(dtype, shape, dim,
                                  layout=plgpu.Layout.WG_STRIDED(tuple(shape), vec_size=vec))
  return jax.lax.broadcasted_iota(dtype, shape, dim)


def _flat_index(target: Target, shape: tuple[int, ...]) -> jax.Array:
  g = pl.program_id(0).astype(jnp.uint32)
  rows = _iota(target, jnp.uint32, shape, 0)
  lanes = _iota(target, jnp.uint32, shape, 1)
  return (g * np.uint32(shape[0]) + rows) * np.uint32(_LANES) + lanes


def _lane_vector(values: list[jax.Array], target: Target, dtype) -> jax.Array:
  shape = target.partial_shape()
  lane = _iota(target, jnp.int32, shape, len(shape) - 1)
  out = jnp.zeros(shape, dtype)
  for j, v in enumerate(values):
    out = jnp.where(lane == j, v.astype(dtype), out)
  return out


# -- count kernel ------------------------------------------------------------------------------

def _count_kernel(cand_ref, keys_ref, out_ref, *, target: Target):
  m = pl.program_id(1)
  keys = keys_ref[0]
  counts = [jnp.sum((keys >= cand_ref[m * _N_CAND + d]).astype(jnp.int32))
            for d in range(_N_CAND)]
  out_ref[0, 0] = _lane_vector(counts, target, jnp.int32)


def count_ge(keys: jax.Array, cands: jax.Array, *, target: Target | str, interpret: bool = False
             ) -> jax.Array:
  """counts[m, d] = #(keys[m] >= cands[m, d]) for keys (M, n) uint32, cands (M, 15)."""
  target = get_target(target).for_mode(interpret)
  m_rows = keys.shape[0]
  tiled = _tile(keys, target)
  n_blocks = tiled.shape[1] // target.tile_shape()[0]
  tshape = target.tile_shape()
  nd = len(tshape)
  out = pl.pallas_call(
      functools.partial(_count_kernel, target=target),
      grid=(n_blocks, m_rows),
      in_specs=[target.smem_spec(),
                pl.BlockSpec((1,) + tshape, lambda g, m: (m, g) + (0,) * (nd - 1))],
      out_specs=pl.BlockSpec((1, 1) + target.partial_shape(),
                             lambda g, m: (m, g) + (0,) * len(target.partial_shape())),
      out_shape=jax.ShapeDtypeStruct((m_rows, n_blocks) + target.partial_shape(), jnp.int32),
      compiler_params=target.compiler_params(), interpret=interpret,
  )(_smem_vec(cands, jnp.uint32), tiled)
  out = out.reshape(m_rows, n_blocks, -1)
  return jnp.sum(out, axis=1)[:, :_N_CAND]


@functools.partial(jax.jit, static_argnames=("target", "interpret"))
def kth_largest_keys(keys: jax.Array, k: jax.Array, *, target: Target | str, interpret: bool = False
                     ) -> jax.Array:
  """Batched :func:`reference.kth_largest_key`: keys (M, n) uint32, k (M,) -> (M,)."""
  k = jnp.asarray(k, jnp.int32).reshape(-1)

  def one_pass(i, prefix):  # one kernel launch per 4-bit digit, most significant first
    shift = np.uint32(28) - np.uint32(4) * i.astype(jnp.uint32)
    cands = jax.vmap(lambda p: ref.candidate_keys(p, shift))(prefix)  # (M, 15)
    counts = count_ge(keys, cands, target=target, interpret=interpret)
    digit = jnp.sum(counts >= k[:, None], axis=1, dtype=jnp.uint32)
    return prefix | (digit << shift)

  return jax.lax.fori_loop(0, 8, one_pass, jnp.zeros(keys.shape[0], jnp.uint32))


@functools.partial(jax.jit, static_argnames=("target", "interpret"))
def tie_cuts(keys: jax.Array, t: jax.Array, k: jax.Array, *, target: Target | str,
             interpret: bool = False) -> jax.Array:
  """Batched :func:`reference.tie_cut` with the counting kernel: the tie cut is
  ``~(need-th largest of ~index over the tied keys)``."""
  k = jnp.asarray(k, jnp.int32).reshape(-1)
  idx = jnp.arange(keys.shape[1], dtype=jnp.uint32)[None]
  tied = keys == t[:, None]
  need = k - jnp.sum(keys > t[:, None], axis=1, dtype=jnp.int32)
  n_eq = jnp.sum(tied, axis=1, dtype=jnp.int32)
  inv = jnp.where(tied, ~idx, jnp.uint32(0))
  cut = ~kth_largest_keys(inv, jnp.maximum(need, 1), target=target, interpret=interpret)
  return jnp.where(need < n_eq, cut, ref.KEY_MAX)


# -- shared per-tile math ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Flags:
  n_models: int
  random: bool
  elementwise_p: bool
  rescale: str | None
  consensus: bool
  normalize: bool


def _kept(i, base, models_ref, p_ref, fp_ref, up_ref, idx, flags):
  delta = models_ref[i].astype(jnp.float32) - base
  bits = jax.lax.bitcast_convert_type(jnp.abs(delta), jnp.uint32)
  keep = (ref.in_top(bits, idx, up_ref[_NPAR * i], up_ref[_NPAR * i + 3])
          & ~ref.in_top(bits, idx, up_ref[_NPAR * i + 1], up_ref[_NPAR * i + 4]))
  p = None
  if flags.random:
    p = p_ref[i] if flags.elementwise_p else fp_ref[_NPAR * i + 2]
    keep = keep & (ref.hash_uniform(up_ref[_NPAR * i + 2], idx) < p)
  return delta, keep, p


def _stats_kernel(fp_ref, up_ref, base_ref, models_ref, *rest, flags: _Flags, target: Target):
  p_ref = rest[0] if flags.elementwise_p else None
  out_ref = rest[-1]
  base = base_ref[...].astype(jnp.float32)
  idx = _flat_index(target, base.shape)
  sums = []
  for i in range(flags.n_models):
    delta, keep, _ = _kept(i, base, models_ref, p_ref, fp_ref, up_ref, idx, flags)
    sums.append(jnp.sum(jnp.abs(delta)))
    sums.append(jnp.sum(jnp.where(keep, jnp.abs(delta), 0.0)))
  out_ref[0] = _lane_vector(sums, target, jnp.float32)


def _combine_kernel(fp_ref, up_ref, base_ref, models_ref, *rest, flags: _Flags, target: Target):
  p_ref = rest[0] if flags.elementwise_p else None
  out_ref = rest[-1]
  base = base_ref[...].astype(jnp.float32)
  idx = _flat_index(target, base.shape)
  ds, ws = [], []
  for i in range(flags.n_models):
    delta, keep, p = _kept(i, base, models_ref, p_ref, fp_ref, up_ref, idx, flags)
    kept = jnp.where(keep, delta, 0.0)
    if flags.rescale == "l1":
      kept = kept * fp_ref[_NPAR * i + 1]
    elif flags.rescale == "inverse":
      kept = jnp.where(keep, kept / jnp.where(keep, p, 1.0), 0.0)
    w = fp_ref[_NPAR * i]
    ds.append(kept * w)
    ws.append(w)
  total = functools.reduce(lambda a, b: a + b, ds)
  if flags.consensus:
    pos = total >= 0
    mixed = jnp.zeros_like(base)
    div = jnp.zeros_like(base)
    for d, w in zip(ds, ws):
      sel = jnp.where(pos, d > 0, d < 0)
      mixed = mixed + jnp.where(sel, d, 0.0)
      div = div + jnp.where(sel, w, 0.0)
    div = jnp.where(div == 0, 1.0, div)
  else:
    mixed = total
    wsum = functools.reduce(lambda a, b: a + b, ws)
    div = jnp.where(jnp.abs(wsum) < 1e-8, 1.0, wsum)
  if flags.normalize:
    mixed = mixed / div
  out_ref[...] = base + mixed * fp_ref[_NPAR * flags.n_models]


def _call(kernel, flags, target, interpret, out_shape, out_spec, fp, up, base_t, models_t, p_t):
  tshape = target.tile_shape()
  nd = len(tshape)
  n_blocks = base_t.shape[0] // tshape[0]
  in_specs = [target.smem_spec(), target.smem_spec(),
              pl.BlockSpec(tshape, lambda g: (g,) + (0,) * (nd - 1)),
              pl.BlockSpec((flags.n_models,) + tshape, lambda g: (0, g) + (0,) * (nd - 1))]
  args = [fp, up, base_t, models_t]
  if flags.elementwise_p:
    in_specs.append(pl.BlockSpec((flags.n_models,) + tshape, lambda g: (0, g) + (0,) * (nd - 1)))
    args.append(p_t)
  params = target.compiler_params()
  if target.name == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    params = pltpu.CompilerParams(dimension_semantics=("parallel",))
  return pl.pallas_call(
      functools.partial(kernel, flags=flags, target=target), grid=(n_blocks,),
      in_specs=in_specs, out_specs=out_spec(n_blocks), out_shape=out_shape(n_blocks),
      compiler_params=params, interpret=interpret)(*args)


@functools.partial(jax.jit, static_argnames=("rescale", "consensus", "normalize", "target",
                                             "interpret"))
def sparsify_merge(base: jax.Array, models: jax.Array, *, weights, lo, hi, lam=1.0, p=None,
                   seeds=None, rescale=None, consensus=True, normalize=True,
                   lo_cut=None, hi_cut=None, target: Target | str, interpret: bool = False
                   ) -> jax.Array:
  """Pallas version of :func:`reference.sparsify_merge_reference` (flat inputs)."""
  target = get_target(target).for_mode(interpret)
  n = base.shape[0]
  n_models = models.shape[0]
  random = p is not None
  elementwise_p = random and p.ndim == 2
  if rescale not in (None, "l1", "inverse"):
    raise ValueError(f"rescale must be None, 'l1' or 'inverse', got {rescale!r}")
  flags = _Flags(n_models, random, elementwise_p, rescale, consensus, normalize)
  weights = jnp.asarray(weights, jnp.float32)
  seeds = jnp.zeros((n_models,), jnp.uint32) if seeds is None else seeds
  p_scalar = (jnp.asarray(p, jnp.float32) if random and not elementwise_p
              else jnp.ones((n_models,), jnp.float32))
  lo_cut = jnp.full((n_models,), ref.KEY_MAX) if lo_cut is None else lo_cut
  hi_cut = jnp.zeros((n_models,), jnp.uint32) if hi_cut is None else hi_cut
  up = _smem_vec([v for i in range(n_models)
                  for v in (lo[i], hi[i], seeds[i], lo_cut[i], hi_cut[i], 0, 0, 0)], jnp.uint32)
  base_t = _tile(base.astype(jnp.float32)[None], target)[0]
  models_t = _tile(models.astype(jnp.float32), target)
  p_t = _tile(p.astype(jnp.float32), target) if elementwise_p else None
  tshape = target.tile_shape()
  nd = len(tshape)

  scale = jnp.ones((n_models,), jnp.float32)
  if rescale == "l1":
    fp0 = _smem_vec([v for i in range(n_models) for v in (weights[i], 1.0, p_scalar[i], 0, 0, 0, 0, 0)]
                    + [lam], jnp.float32)
    pshape = target.partial_shape()
    partial = _call(_stats_kernel, flags, target, interpret,
                    lambda nb: jax.ShapeDtypeStruct((nb,) + pshape, jnp.float32),
                    lambda nb: pl.BlockSpec((1,) + pshape, lambda g: (g,) + (0,) * len(pshape)),
                    fp0, up, base_t, models_t, p_t)
    sums = jnp.sum(partial.reshape(partial.shape[0], -1), axis=0)
    before, after = sums[0:2 * n_models:2], sums[1:2 * n_models:2]
    ok = (before >= 1e-7) & (after >= 1e-7)
    scale = jnp.where(ok, before / jnp.where(ok, after, 1.0), 1.0)
  fp = _smem_vec([v for i in range(n_models) for v in (weights[i], scale[i], p_scalar[i], 0, 0, 0, 0, 0)]
                 + [lam], jnp.float32)
  out = _call(_combine_kernel, flags, target, interpret,
              lambda nb: jax.ShapeDtypeStruct(base_t.shape, jnp.float32),
              lambda nb: pl.BlockSpec(tshape, lambda g: (g,) + (0,) * (nd - 1)),
              fp, up, base_t, models_t, p_t)
  return out.reshape(-1)[:n]
