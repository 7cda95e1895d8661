"""Pallas TPU (Mosaic) dequant-matmul: ``x[M, K] @ W[K, N]`` with W as packed 4/8-bit codes.

The kernel runs a ``(M / bm, N / bn, K / bk)`` grid (K innermost, "arbitrary") and
keeps an f32 accumulator in VMEM scratch. Per K step it reads one block of
uint32 words ``[bkw, bn]`` (``bk = P * bkw`` weights per column, ``P = 32 // bits``),
splits it with shifts and masks into ``P`` planes: plane ``j`` holds the rows
``k = w * P + j`` of the block. Instead of interleaving the planes back into
K order in registers (a sublane shuffle), the wrapper permutes the columns of
``x`` once, outside the kernel, so that the ``j``-th ``bkw``-wide slice of an x
block lines up with plane ``j``; then ``acc += x_j @ dequant(plane_j)`` for each
``j``. Because the group size is a multiple of ``P``, the ``P`` codes of one word
share a group, so the per-row scale/zero ``[bkw, bn]`` is built once per step
and reused for all planes.

Block shapes follow the TPU rule (the last two block dims divisible by
(8, 128) or equal to the array dims). Edges: K uses the largest word block that divides
``K / P`` (so ``K = 11008`` runs 32-word blocks rather than one 1376-word block that would
not fit VMEM); a wide N that 128 does not divide gets a partial last block (Pallas masks its
writes); every plan is checked against a VMEM budget. :func:`plan_blocks` raises
``ValueError`` for shapes it cannot tile, and :mod:`.api` then falls back to the XLA path.

Example (interpret mode, runs on CPU):
  >>> import jax, jax.numpy as jnp
  >>> from jaxparams.kernels.dequant_matmul import reference as ref
  >>> codes = jax.random.bits(jax.random.key(0), (32, 128), jnp.uint32)   # K=256, 4 bits
  >>> scale = jnp.full((2, 128), 0.01); zero = jnp.full((2, 128), 8.0)
  >>> x = jnp.ones((8, 256), jnp.float32)
  >>> y = dequant_matmul_tpu(x, codes, scale, zero, bits=4, group_size=128, interpret=True)
  >>> y.shape
  (8, 128)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

__all__ = ["TpuBlocks", "plan_blocks", "permute_x", "dequant_matmul_tpu"]

_BN_CHOICES = (512, 256, 128)
_BKW_CHOICES = (256, 128)


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
  """Static tiling plan: ``bm`` rows of x, ``bn`` output columns, ``bkw`` words of K per step."""

  bm: int
  bn: int
  bkw: int
  m_pad: int
  scale_rows: int     # scale rows used per K step
  scale_blocked: bool  # True: scale BlockSpec (scale_rows, bn); False: full rows, sliced in-kernel


def _round_up(a: int, b: int) -> int:
  return -(-a // b) * b


def _vmem_bytes(bm: int, bn: int, bkw: int, p: int, itemsize: int, scale_rows: int) -> int:
  """Rough VMEM use of one grid step: double-buffered x/codes/scale/zero/out blocks, the f32
  accumulator and the dequantized f32 temporaries (scale/zero rows and one plane)."""
  bk = bkw * p
  return (2 * bm * bk * itemsize + 2 * bkw * bn * 4 + 2 * 2 * scale_rows * bn * 4
          + 2 * bm * bn * itemsize + bm * bn * 4 + 3 * bkw * bn * 4)


VMEM_BUDGET = 12 * 2**20  # of the 16 MiB scoped VMEM of v4/v5e (32 MiB on v6e): keep headroom


def _block_kw_choices(kw: int, p: int, group_size: int) -> list[int]:
  """Word blocks that divide K/P, keep the x block a multiple of 128 lanes and fit the groups;
  largest first (at most 256 words), then K/P itself (a full-dimension block)."""
  step = max(8, 128 // p)
  out = [d for d in range(min(kw, 256) // step * step, 0, -step)
         if kw % d == 0 and ((d * p) % group_size == 0 or group_size % (d * p) == 0)]
  return out + ([kw] if kw not in out else [])


def plan_blocks(m: int, k: int, n: int, *, bits: int, group_size: int, dtype,
                block_m: int | None = None, block_n: int | None = None,
                block_kw: int | None = None) -> TpuBlocks:
  """Chooses TPU-legal blocks for ``[m, k] @ [k, n]``; ``ValueError`` if the shape does not tile.

  N: 512/256/128-column blocks, or all of N up to 512; a wider N that 128 does not divide (a
  30522-word vocabulary) gets 512-column blocks and a partial last block (its extra columns are
  computed from whatever lies past the array and never written back). K: the largest word block
  (<= 256 words) that divides K/P and fits the groups, else all of K in one block. Then ``bm``
  (and ``bn``) shrink until the step fits :data:`VMEM_BUDGET`; ``ValueError`` if it never does.
  """
  if bits not in (4, 8):
    raise ValueError(f"pallas_tpu dequant_matmul supports bits 4 and 8, got {bits}")
  p = 32 // bits
  if k % p or group_size % p or k % group_size:
    raise ValueError(f"K={k} and group_size={group_size} must be multiples of {p} (codes per "
                     f"word at {bits} bits) and group_size must divide K")
  kw = k // p
  if block_n is None:
    block_n = next((c for c in _BN_CHOICES if n % c == 0), n if n <= 512 else 512)
  if block_n != n and (block_n % 128 or (n % block_n and n < 512)):
    raise ValueError(f"block_n={block_n} must divide N={n} and be a multiple of 128 (or N)")
  if block_kw is None:
    block_kw = _block_kw_choices(kw, p, group_size)[0]
  if kw % block_kw or (block_kw % 8 and block_kw != kw):
    raise ValueError(f"block_kw={block_kw} words must divide K/P={kw} and be a multiple of 8 "
                     f"(or K/P)")
  bk = block_kw * p
  if bk % group_size and group_size % bk:
    raise ValueError(f"K block {bk} and group_size {group_size} must divide one another")
  itemsize = jnp.dtype(dtype).itemsize
  sub = 16 if itemsize == 2 else 8
  num_groups = k // group_size
  rows = max(bk // group_size, 1)
  blocked = rows == num_groups or (bk >= group_size and rows % 8 == 0)
  vmem_rows = rows if blocked else num_groups
  if block_m is None:
    block_m = min(_round_up(m, sub), 256)
    while (block_m > sub and _vmem_bytes(block_m, block_n, block_kw, p, itemsize, vmem_rows)
           > VMEM_BUDGET):
      block_m = max(sub, _round_up(block_m // 2, sub))
    while (block_n > 128 and block_n % 256 == 0
           and _vmem_bytes(block_m, block_n, block_kw, p, itemsize, vmem_rows) > VMEM_BUDGET):
      block_n //= 2
  if block_m % sub:
    raise ValueError(f"block_m={block_m} must be a multiple of {sub} for {jnp.dtype(dtype).name}")
  need = _vmem_bytes(block_m, block_n, block_kw, p, itemsize, vmem_rows)
  if need > VMEM_BUDGET:
    raise ValueError(f"blocks ({block_m}, {block_n}, {block_kw} words) need ~{need >> 20} MiB of "
                     f"VMEM, over the {VMEM_BUDGET >> 20} MiB budget")
  m_pad = _round_up(m, block_m)
  return TpuBlocks(bm=block_m, bn=block_n, bkw=block_kw, m_pad=m_pad, scale_rows=rows,
                   scale_blocked=blocked)


def permute_x(x: jax.Array, *, bits: int, bkw: int) -> jax.Array:
  """Reorders the K columns of ``x[M, K]`` within each K block to plane order.

  Inside a block of ``bk = P * bkw`` columns, column ``w * P + j`` moves to
  ``j * bkw + w``, matching plane ``j`` of the unpacked code words.
  """
  p = 32 // bits
  m, k = x.shape
  x = x.reshape(m, k // (p * bkw), bkw, p)
  return jnp.swapaxes(x, 2, 3).reshape(m, k)


def _expand_rows(a: jax.Array, rep: int) -> jax.Array:
  """Repeats each row of ``a[r, bn]`` ``rep`` times -> ``[r * rep, bn]``, Mosaic-friendly."""
  r, bn = a.shape
  if r == 1:
    return jnp.broadcast_to(a, (rep, bn))
  if rep % 8 == 0:  # whole (8, 128) tiles: a tile-aligned reshape
    return jnp.broadcast_to(a[:, None, :], (r, rep, bn)).reshape(r * rep, bn)
  # Sub-tile repeats: a one-hot [r * rep, r] matmul on the MXU (exact at HIGHEST precision).
  rows = jax.lax.broadcasted_iota(jnp.int32, (r * rep, r), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (r * rep, r), 1)
  onehot = ((rows >= cols * rep) & (rows < (cols + 1) * rep)).astype(jnp.float32)
  return jnp.dot(onehot, a, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def _kernel(*refs, bits: int, bkw: int, group_size: int, blocks: TpuBlocks, has_zero: bool,
            num_k: int):
  if has_zero:
    x_ref, c_ref, s_ref, z_ref, o_ref, acc_ref = refs
  else:
    x_ref, c_ref, s_ref, o_ref, acc_ref = refs
    z_ref = None
  p = 32 // bits
  kk = pl.program_id(2)

  @pl.when(kk == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  rows = blocks.scale_rows
  if blocks.scale_blocked:
    sl = slice(None)
  else:
    bk = bkw * p
    # lax.div (truncating) rather than `//`: kk >= 0, and floor division needs chip info to lower.
    start = kk * rows if bk >= group_size else jax.lax.div(kk, jnp.int32(group_size // bk))
    sl = pl.ds(start, rows)
  s = s_ref[sl, :]
  rep = bkw // rows
  s_exp = _expand_rows(s, rep)
  zs_exp = _expand_rows(z_ref[sl, :] * s, rep) if has_zero else None

  words = c_ref[...]
  mask = jnp.int32((1 << bits) - 1)
  x_dtype = x_ref.dtype
  precision = jax.lax.Precision.HIGHEST if x_dtype == jnp.float32 else None
  acc = acc_ref[...]
  for j in range(p):
    q = jax.lax.shift_right_logical(words, jnp.int32(j * bits)) & mask
    w = q.astype(jnp.float32) * s_exp
    if has_zero:
      w = w - zs_exp
    xj = x_ref[:, j * bkw:(j + 1) * bkw]
    acc = acc + jnp.dot(xj, w.astype(x_dtype), precision=precision,
                        preferred_element_type=jnp.float32)
  acc_ref[...] = acc

  @pl.when(kk == num_k - 1)
  def _store():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def dequant_matmul_tpu(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None,
                       *, bits: int, group_size: int, block_m: int | None = None,
                       block_n: int | None = None, block_kw: int | None = None,
                       interpret=False) -> jax.Array:
  """``x[M, K] @ dequantize(codes, scale, zero)`` with a Mosaic TPU Pallas kernel.

  Args:
    x: ``[M, K]`` bf16 or f32.
    codes: uint32 (or int32) words ``[K / P, N]``.
    scale: ``[K // G, N]``; zero: same shape or None.
    bits: 4 or 8. group_size: G (multiple of P, divides K).
    block_m, block_n, block_kw: optional tile overrides (see :func:`plan_blocks`).
    interpret: False, True, or a ``pltpu.InterpretParams`` (CPU emulation of TPU semantics).

  Returns:
    ``[M, N]`` in ``x.dtype``.
  """
  m, k = x.shape
  n = codes.shape[1]
  p = 32 // bits if bits in (4, 8) else 1
  if codes.shape != (k // p, n) or scale.shape != (k // group_size, n):
    raise ValueError(f"shape mismatch: x {x.shape}, codes {codes.shape} (expected {(k // p, n)}), "
                     f"scale {scale.shape} (expected {(k // group_size, n)})")
  blocks = plan_blocks(m, k, n, bits=bits, group_size=group_size, dtype=x.dtype,
                       block_m=block_m, block_n=block_n, block_kw=block_kw)
  bm, bn, bkw = blocks.bm, blocks.bn, blocks.bkw
  bk = bkw * p
  if codes.dtype != jnp.int32:
    codes = jax.lax.bitcast_convert_type(codes.astype(jnp.uint32), jnp.int32)
  xp = permute_x(x, bits=bits, bkw=bkw)
  if blocks.m_pad != m:
    xp = jnp.pad(xp, ((0, blocks.m_pad - m), (0, 0)))
  num_k = k // bk
  grid = (blocks.m_pad // bm, pl.cdiv(n, bn), num_k)

  if blocks.scale_blocked and blocks.scale_rows == k // group_size:
    s_spec = pl.BlockSpec((blocks.scale_rows, bn), lambda i, j, kk: (0, j))
  elif blocks.scale_blocked:
    s_spec = pl.BlockSpec((blocks.scale_rows, bn), lambda i, j, kk: (kk, j))
  else:
    s_spec = pl.BlockSpec((k // group_size, bn), lambda i, j, kk: (0, j))
  in_specs = [
      pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)),
      pl.BlockSpec((bkw, bn), lambda i, j, kk: (kk, j)),
      s_spec,
  ]
  args = [xp, codes, scale.astype(jnp.float32)]
  if zero is not None:
    in_specs.append(s_spec)
    args.append(zero.astype(jnp.float32))

  kernel = functools.partial(_kernel, bits=bits, bkw=bkw, group_size=group_size, blocks=blocks,
                             has_zero=zero is not None, num_k=num_k)
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((blocks.m_pad, n), x.dtype),
      grid=grid,
      in_specs=in_specs,
      out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
      scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name=f"dequant_matmul_w{bits}",
  )(*args)
  return out[:m] if blocks.m_pad != m else out
