"""Mosaic GPU (Hopper, ``plgpu``) dequant-matmul: ``x[M, K] @ W[K, N]``, W as packed 4/8-bit codes.

Written for Mosaic GPU, jax's default Pallas GPU backend (Triton is deprecated),
with ``plgpu.kernel`` + ``plgpu.emit_pipeline`` (``pallas_call`` on Mosaic GPU is
deprecated since jax 0.10.2), lane lowering semantics and explicit register
layouts / SMEM transforms.

Design (simple and correct first, not tuned):

* The kernel computes the *transposed* product ``out^T[N, M] = W^T @ x^T`` so
  that the weight tile is the wgmma M operand (64 or 128 rows of N) and the
  tokens are the wgmma N operand (8 to 64 columns): at decode batch sizes no
  tensor-core work is spent on padding and x tiles stay small. The wrapper
  transposes the ``[N, M]`` result (M x N elements, cheap next to the weights).
* Grid ``(N / tile_n, M_pad / tile_m)``, one warpgroup per CTA, a TMA pipeline
  over K steps of ``tile_k = 64 * P`` rows (``P = 32 // bits`` codes per word),
  i.e. 64 uint32 words per column and step.
* Per step the ``[64, tile_n]`` word tile is loaded into registers in the WGMMA
  layout, split with shifts/masks into ``P`` planes (plane ``j`` = rows
  ``k = w * P + j``), dequantized in f32 as ``q * s - z * s`` and stored as bf16
  into a swizzled SMEM tile, plane after plane. The wrapper permuted the columns
  of ``x`` the same way (:func:`permute_x`), so one wgmma over the whole step
  (``transpose_ref(w_smem) @ transpose_ref(x_smem)``) is the exact dot product.
* Scales/zeros: a step covers ``64 / (G / P)`` groups when ``G < tile_k``; their
  rows are loaded as WGMMA row-broadcast vectors and selected per word row with an
  iota mask (no cross-thread shuffles); when ``G >= tile_k`` one row is broadcast.

Edges (any K, N and M of a real model run here, nothing is copied per call but ``x``):

* M is padded to ``tile_m`` and K to ``tile_k`` with zero columns of ``x`` (activations only:
  ``M x K`` elements, small next to the weights).
* The weights are not copied: the last K step and the last N tile read past the ends of
  ``codes``/``scale``/``zero``, and TMA fills those out-of-bounds elements with zeros
  (``OOBFillMode.ZEROS``, Pallas' default). A zero scale and zero makes those weights exactly 0,
  and the matching ``x`` columns are 0 too. The output is allocated ``[N_pad, M_pad]`` and
  sliced. Exception: TMA needs every row stride to be a multiple of 16 bytes, so for
  ``N % 4 != 0`` (e.g. BERT's 30522-word vocabulary) the weights are padded with zeros
  in the wrapper (one copy per call). :func:`pad_operands` is that padded computation; the
  interpreter (which has no TMA) always runs it.
* Groups: when ``G`` neither divides nor is a multiple of ``tile_k`` (per-channel ``G = K`` for
  ``K = 384``, ``11008``, ...), the scale/zero rows are repeated to the finer group
  ``gcd(G, tile_k)`` (exact: the same weights; scales are ``K / G`` rows, cheap to repeat).

What remains on the XLA path (:func:`plan_tiles` raises, :mod:`.api` falls back): f32
activations, bits other than 4 and 8, and ``G`` not a multiple of ``P`` (the ``P`` codes of a
word would straddle two groups; no real checkpoint does this). ``G`` not dividing ``K`` is not a
kernel limit: the packed layout itself (``scale`` has ``K // G`` rows) cannot express it, so
every implementation rejects it. Each M tile re-dequantizes the weights, so large batches
(M > tile_m) are slower than a bf16 dot; no warp specialisation, no split-K, no Marlin-style
pre-shuffled weights yet.

Example (needs a Hopper GPU):
  >>> y = dequant_matmul_gpu(x, codes, scale, zero, bits=4, group_size=128)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

__all__ = ["GpuTiles", "plan_tiles", "permute_x", "pad_operands", "dequant_matmul_gpu"]

WORDS_PER_STEP = 64  # code words per column and K step: one WGMMA-layout register tile
_SWIZZLE = 128


@dataclasses.dataclass(frozen=True)
class GpuTiles:
  """Static tiling plan for the Mosaic GPU kernel."""

  tile_n: int
  tile_m: int
  tile_k: int
  m_pad: int
  max_concurrent_steps: int
  k_pad: int = 0          # K rounded up to tile_k (x padded, weights read out of bounds)
  n_pad: int = 0          # N rounded up to tile_n (output rows allocated, then sliced)
  group: int = 0          # the kernel's group size (divides or is a multiple of tile_k)
  scale_repeat: int = 1   # group_size // group: scale/zero rows repeated this many times
  pad_weights: bool = False  # N % 4 != 0: TMA strides need 16 bytes, pad codes/scales instead


def plan_tiles(m: int, k: int, n: int, *, bits: int, group_size: int, dtype,
               tile_n: int = 64, tile_m: int | None = None,
               max_concurrent_steps: int = 2) -> GpuTiles:
  """Chooses tiles for ``[m, k] @ [k, n]``; ``ValueError`` when the kernel cannot run this shape."""
  if bits not in (4, 8):
    raise ValueError(f"pallas_gpu dequant_matmul supports bits 4 and 8, got {bits}")
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ValueError(f"pallas_gpu dequant_matmul needs bf16/f16 activations, got {jnp.dtype(dtype)}")
  p = 32 // bits
  tile_k = WORDS_PER_STEP * p
  if group_size <= 0 or k % group_size:
    raise ValueError(f"group_size={group_size} must divide K={k}")
  if group_size % p:
    raise ValueError(f"group_size={group_size} must be a multiple of {p} (the {p} codes of one "
                     f"word share a group)")
  group = group_size
  if tile_k % group_size and group_size % tile_k:
    group = math.gcd(group_size, tile_k)  # a multiple of p: p * gcd(G / p, 64)
  if tile_n % 64:
    raise ValueError(f"tile_n={tile_n} must be a multiple of 64")
  k_pad = -(-k // tile_k) * tile_k
  n_pad = -(-n // tile_n) * tile_n
  m8 = -(-m // 8) * 8
  if tile_m is None:
    # Keep 2 stages of the x tile [tile_m, tile_k] bf16 within ~64 KiB of SMEM.
    tile_m = min(m8, 32 if bits == 4 else 64)
  if tile_m % 8 or not 8 <= tile_m <= 256:
    raise ValueError(f"tile_m={tile_m} must be a multiple of 8 in [8, 256]")
  m_pad = -(-m // tile_m) * tile_m
  steps = k_pad // tile_k
  return GpuTiles(tile_n=tile_n, tile_m=tile_m, tile_k=tile_k, m_pad=m_pad,
                  max_concurrent_steps=max(1, min(max_concurrent_steps, steps)),
                  k_pad=k_pad, n_pad=n_pad, group=group, scale_repeat=group_size // group,
                  pad_weights=n % 4 != 0)


def pad_operands(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *,
                 bits: int, tiles: GpuTiles, pad_weights: bool = True):
  """The operands the kernel computes with: ``x`` padded to ``[m_pad, k_pad]``, scale/zero rows
  repeated to ``tiles.group`` and, with ``pad_weights``, codes/scale/zero padded with zeros to
  ``k_pad``/``n_pad`` (what TMA's zero fill reads on the device). Returns
  ``(x, codes, scale, zero)``; ``reference(x, codes, scale, zero, group_size=tiles.group)``
  of the result, sliced to ``[:m, :n]``, equals the reference on the originals.
  """
  m, k = x.shape
  p = 32 // bits
  x = jnp.pad(x, ((0, tiles.m_pad - m), (0, tiles.k_pad - k)))
  scale = scale.astype(jnp.float32)
  zero = None if zero is None else zero.astype(jnp.float32)
  if tiles.scale_repeat > 1:
    scale = jnp.repeat(scale, tiles.scale_repeat, axis=0)
    zero = None if zero is None else jnp.repeat(zero, tiles.scale_repeat, axis=0)
  if pad_weights:
    n = codes.shape[1]
    dn = tiles.n_pad - n
    codes = jnp.pad(codes, ((0, tiles.k_pad // p - codes.shape[0]), (0, dn)))
    rows = max(tiles.k_pad // tiles.group, 1) - scale.shape[0]
    scale = jnp.pad(scale, ((0, rows), (0, dn)))
    zero = None if zero is None else jnp.pad(zero, ((0, rows), (0, dn)))
  return x, codes, scale, zero


def permute_x(x: jax.Array, *, bits: int, tile_k: int) -> jax.Array:
  """Within each block of ``tile_k`` columns, moves column ``w * P + j`` to ``j * (tile_k/P) + w``."""
  p = 32 // bits
  m, k = x.shape
  x = x.reshape(m, k // tile_k, tile_k // p, p)
  return jnp.swapaxes(x, 2, 3).reshape(m, k)


def _transforms(dtype):
  bw = jnp.dtype(dtype).itemsize * 8
  return (plgpu.TilingTransform((8, _SWIZZLE * 8 // bw)), plgpu.SwizzleTransform(_SWIZZLE))


def _load(ref, layout, plain: bool):
  # ``plain``: jax's GPU interpreter (0.10.2) cannot evaluate layout-annotated loads.
  return ref[...] if plain else plgpu.load(ref, (), layout=layout)


def _body(*refs, bits: int, tiles: GpuTiles, group_size: int, k: int, has_zero: bool,
          plain: bool = False):
  if has_zero:
    x_gmem, c_gmem, s_gmem, z_gmem, o_gmem, w_smem, o_smem = refs
  else:
    x_gmem, c_gmem, s_gmem, o_gmem, w_smem, o_smem = refs
    z_gmem = None
  p = 32 // bits
  tkw = WORDS_PER_STEP
  tile_n, tile_m, tile_k = tiles.tile_n, tiles.tile_m, tiles.tile_k
  wg = plgpu.Layout.WGMMA
  row_vec = wg.reduce(0)          # a [tile_n] vector broadcast along the word rows
  mask = jnp.int32((1 << bits) - 1)
  dtype = x_gmem.dtype
  ni = lax.axis_index("n")
  mi = lax.axis_index("m")
  gw = group_size // p            # words per group

  def row(ref, g):                # scale/zero row g of this step, broadcast to [tkw, tile_n]
    v = _load(ref.at[g], row_vec, plain)
    return lax.broadcast_in_dim(v, (tkw, tile_n), [1])

  def scope(acc_ref):
    def step(_, x_smem, c_smem, s_smem, *z_smem):
      if group_size >= tile_k:
        s = row(s_smem, 0)
        zs = row(z_smem[0], 0) * s if has_zero else None
      else:
        if plain:
          rows = lax.broadcasted_iota(jnp.int32, (tkw, tile_n), 0)
        else:
          rows = plgpu.broadcasted_iota(jnp.int32, (tkw, tile_n), 0, layout=wg)
        s = row(s_smem, 0)
        zs = row(z_smem[0], 0) * s if has_zero else None
        for g in range(1, tkw // gw):
          sel = rows >= g * gw
          sg = row(s_smem, g)
          s_new = jnp.where(sel, sg, s)
          if has_zero:
            zs = jnp.where(sel, row(z_smem[0], g) * sg, zs)
          s = s_new
      words = _load(c_smem, wg, plain)
      for j in range(p):
        q = lax.shift_right_logical(words, jnp.int32(j * bits)) & mask
        w = q.astype(jnp.float32) * s
        if has_zero:
          w = w - zs
        w_smem[j * tkw:(j + 1) * tkw, :] = w.astype(dtype)
      plgpu.commit_smem()
      if plain:  # the interpreter has no transposed wgmma operands: same product, plain dot
        acc_ref[...] += jnp.dot(w_smem[...].T, x_smem[...].T, preferred_element_type=jnp.float32)
      else:
        plgpu.wgmma(acc_ref, plgpu.transpose_ref(w_smem, (1, 0)),
                    plgpu.transpose_ref(x_smem, (1, 0)))
        plgpu.wgmma_wait(0)

    srows = max(tile_k // group_size, 1)
    if group_size <= tile_k:
      g_map = lambda kk: (kk, 0)
    else:
      g_map = lambda kk: (lax.div(kk, jnp.int32(group_size // tile_k)), 0)
    in_specs = [
        plgpu.BlockSpec((tile_m, tile_k), lambda kk: (0, kk), transforms=_transforms(dtype)),
        plgpu.BlockSpec((tkw, tile_n), lambda kk: (kk, 0), transforms=_transforms(jnp.int32)),
        plgpu.BlockSpec((srows, tile_n), g_map),
    ]
    n_sl = pl.ds(ni * tile_n, tile_n)
    args = [x_gmem.at[pl.ds(mi * tile_m, tile_m), :], c_gmem.at[:, n_sl], s_gmem.at[:, n_sl]]
    if has_zero:
      in_specs.append(plgpu.BlockSpec((srows, tile_n), g_map))
      args.append(z_gmem.at[:, n_sl])
    plgpu.emit_pipeline(step, grid=(k // tile_k,), in_specs=in_specs,
                        max_concurrent_steps=tiles.max_concurrent_steps)(*args)
    return acc_ref[...]

  if plain:
    def plain_scope(acc_ref):
      acc_ref[...] = jnp.zeros((tile_n, tile_m), jnp.float32)
      return scope(acc_ref)
    acc = pl.run_scoped(plain_scope, plgpu.SMEM((tile_n, tile_m), jnp.float32))
  else:
    acc = pl.run_scoped(scope, plgpu.ACC((tile_n, tile_m), jnp.float32))
  o_smem[...] = acc.astype(o_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[pl.ds(ni * tile_n, tile_n), pl.ds(mi * tile_m, tile_m)])
  plgpu.wait_smem_to_gmem(0)


def dequant_matmul_gpu(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None,
                       *, bits: int, group_size: int, tile_n: int = 64, tile_m: int | None = None,
                       max_concurrent_steps: int = 2, interpret=None) -> jax.Array:
  """``x[M, K] @ dequantize(codes, scale, zero)`` with a Mosaic GPU (Hopper wgmma) kernel.

  Args:
    x: ``[M, K]`` bf16/f16.
    codes: uint32 (or int32) words ``[K / P, N]``.
    scale: ``[K // G, N]``; zero: same shape or None.
    bits: 4 or 8; group_size: G.
    tile_n, tile_m, max_concurrent_steps: optional overrides (see :func:`plan_tiles`).
    interpret: passed to ``plgpu.kernel`` (jax's Mosaic GPU interpreter; see the module notes).

  Returns:
    ``[M, N]`` in ``x.dtype``.
  """
  m, k = x.shape
  n = codes.shape[1]
  tiles = plan_tiles(m, k, n, bits=bits, group_size=group_size, dtype=x.dtype, tile_n=tile_n,
                     tile_m=tile_m, max_concurrent_steps=max_concurrent_steps)
  p = 32 // bits
  if codes.shape != (-(-k // p), n) or scale.shape != (k // group_size, n):
    raise ValueError(f"shape mismatch: x {x.shape}, codes {codes.shape} (expected "
                     f"{(-(-k // p), n)}), scale {scale.shape} (expected {(k // group_size, n)})")
  if codes.dtype != jnp.int32:
    codes = lax.bitcast_convert_type(codes.astype(jnp.uint32), jnp.int32)
  # The interpreter has no TMA (no zero fill of out-of-bounds reads): pad the weights there.
  pad_weights = tiles.pad_weights or interpret is not None
  x, codes, scale, zero = pad_operands(x, codes, scale, zero, bits=bits, tiles=tiles,
                                       pad_weights=pad_weights)
  args = [permute_x(x, bits=bits, tile_k=tiles.tile_k), codes, scale]
  if zero is not None:
    args.append(zero)
  kernel = plgpu.kernel(
      functools.partial(_body, bits=bits, tiles=tiles, group_size=tiles.group, k=tiles.k_pad,
                        has_zero=zero is not None, plain=interpret is not None),
      out_type=jax.ShapeDtypeStruct((tiles.n_pad, tiles.m_pad), x.dtype),
      grid=(tiles.n_pad // tiles.tile_n, tiles.m_pad // tiles.tile_m),
      grid_names=("n", "m"),
      scratch_types=[
          plgpu.SMEM((tiles.tile_k, tiles.tile_n), x.dtype, transforms=_transforms(x.dtype)),
          plgpu.SMEM((tiles.tile_n, tiles.tile_m), x.dtype),
      ],
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
      interpret=interpret,
  )
  out_t = kernel(*args)
  return out_t[:n, :m].T
