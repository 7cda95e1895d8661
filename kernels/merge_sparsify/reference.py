"""Pure-jnp reference of the fused sparsify + sign-election + disjoint-mean merge.

This file is the specification the Pallas kernels are tested against, and the
``implementation='xla'`` path of :mod:`api`.

Pipeline for ``N`` models over one flattened tensor of ``n`` elements (all
math in float32):

1. ``delta_i = model_i - base``.
2. Keep mask per model: inside the top set ``(lo_i, lo_cut_i)`` and outside
   the top set ``(hi_i, hi_cut_i)`` of ``bits(|delta_i|)`` (float32 bit
   patterns; a non-negative float's bit pattern is monotone in its value; a
   top-k set is ``key > t`` plus the ties ``key == t`` with flat index <= cut,
   so it has exactly k elements) and, for random methods, ``u_i(e) < p_i(e)`` where
   ``u_i(e)`` is a counter-based hash of ``(seed_i, e)`` mapped to [0, 1) so
   every implementation and every tiling draws the same numbers.
3. Rescale: ``'l1'`` multiplies the kept values by
   ``sum|delta_i| / sum|kept_i|`` (mergekit; skipped when either is < 1e-7),
   ``'inverse'`` divides by ``p`` (the DARE/DELLA papers).
4. ``D_i = w_i * kept_i``; with consensus the sign is elected on ``sum_i D_i``
   (0 counts as +), ``sel_i = sign(D_i) == elected``, the merged delta is
   ``sum sel_i D_i`` and the divisor ``sum sel_i w_i`` (0 -> 1); without
   consensus the merged delta is ``sum D_i`` and the divisor ``sum w_i``
   (``|.| < 1e-8`` -> 1).
5. ``out = base + lam * merged / divisor`` (division only with ``normalize``).

Top-k thresholds never sort: :func:`kth_largest_key` finds the exact k-th
largest ``uint32`` key with 8 counting passes (4 bits per pass, 15 candidate
thresholds counted at once) -- the algorithm of the Pallas ``count`` kernel;
:func:`kth_largest_key_histogram` gets the same key with two 65536-bin
histogram passes (the XLA path; 10x faster than the counting form on CPU);
:func:`key_cut_sorted` gets the same key and tie cut by one sort (the XLA
path for small tensors, where compiling dominates).

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.array([0.1, -3.0, 2.0, 0.5])
  >>> t = kth_largest_key(magnitude_bits(x), 2)
  >>> (magnitude_bits(x) >= t).tolist()
  [False, True, True, False]
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KEY_MAX", "magnitude_bits", "float_keys", "key_to_float", "kth_largest_key",
    "kth_largest_key_histogram", "key_cut_sorted", "tie_cut", "key_cut_chunked", "in_top", "candidate_keys",
    "hash_uniform", "della_probabilities", "sparsify_merge_reference", "keep_mask",
]

KEY_MAX = np.uint32(0xFFFFFFFF)  # an exclusive upper bound above every magnitude key
_DIGIT_BITS = 4
_SHIFTS = tuple(range(32 - _DIGIT_BITS, -1, -_DIGIT_BITS))  # 28, 24, ..., 0


def magnitude_bits(x: jax.Array) -> jax.Array:
  """uint32 keys of ``|x|`` (float32), monotone in the magnitude."""
  return jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.uint32)


def float_keys(x: jax.Array) -> jax.Array:
  """Order-preserving uint32 keys of signed float32 values."""
  b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  neg = (b >> 31) == 1
  return jnp.where(neg, ~b, b | np.uint32(0x80000000))


def key_to_float(k: jax.Array) -> jax.Array:
  """Inverse of :func:`float_keys`."""
  pos = (k >> 31) == 1
  b = jnp.where(pos, k & np.uint32(0x7FFFFFFF), ~k)
  return jax.lax.bitcast_convert_type(b, jnp.float32)


def candidate_keys(prefix: jax.Array, shift) -> jax.Array:
  """The 15 candidate thresholds ``prefix | d << shift`` for d = 1..15."""
  d = jnp.arange(1, 1 << _DIGIT_BITS, dtype=jnp.uint32)
  return prefix | (d << jnp.asarray(shift, jnp.uint32))


def kth_largest_key(keys: jax.Array | Sequence[jax.Array], k) -> jax.Array:
  """The largest uint32 ``T`` with ``count(keys >= T) >= k`` (the k-th largest key).

  ``keys`` may be a list of arrays (counted together, e.g. a whole model).
  ``k`` is an int32 scalar (may be traced). For ``k <= 0`` the result is
  ``0xFFFFFFFF``; callers wanting "keep nothing" must treat k <= 0 themselves.

  Example:
    >>> int(kth_largest_key(jnp.array([5, 1, 9, 7], jnp.uint32), 3))
    5
  """
  parts = [keys] if not isinstance(keys, (list, tuple)) else list(keys)
  parts = [jnp.ravel(p) for p in parts]
  k = jnp.asarray(k, jnp.int32)

  def body(i, prefix):
    shift = (np.uint32(32 - _DIGIT_BITS) - np.uint32(_DIGIT_BITS) * i.astype(jnp.uint32))
    cands = candidate_keys(prefix, shift)
    counts = sum(jnp.sum(p[:, None] >= cands[None, :], axis=0, dtype=jnp.int32) for p in parts)
    digit = jnp.sum(counts >= k, dtype=jnp.uint32)
    return prefix | (digit << shift)

  return jax.lax.fori_loop(0, len(_SHIFTS), body, jnp.uint32(0))


def _hist_high(keys: jax.Array) -> jax.Array:
  # Pass 1 histogram: the top 16 bits of each key.
  return jnp.bincount((keys >> 16).astype(jnp.int32), length=1 << 16)


def _pick_high(h1: jax.Array, kk: jax.Array) -> tuple[jax.Array, jax.Array]:
  # (b1, above): the bucket holding the kk-th largest key and #(keys above that bucket).
  ge1 = jnp.cumsum(h1[::-1])[::-1]  # ge1[b] = #(hi >= b)
  b1 = jnp.sum(ge1 >= kk) - 1  # largest bucket with #(hi >= b1) >= k
  return b1, ge1[b1] - h1[b1]


def _hist_low(keys: jax.Array, b1: jax.Array) -> jax.Array:
  # Pass 2 histogram: the low 16 bits of the keys in bucket b1.
  hi = (keys >> 16).astype(jnp.int32)
  lo = jnp.where(hi == b1, (keys & np.uint32(0xFFFF)).astype(jnp.int32), 1 << 16)
  return jnp.bincount(lo, length=(1 << 16) + 1)[: 1 << 16]


def _pick_low(h2, kk, k, n, b1, above) -> jax.Array:
  ge2 = jnp.cumsum(h2[::-1])[::-1] + above
  b2 = jnp.sum(ge2 >= kk) - 1
  out = (b1.astype(jnp.uint32) << 16) | b2.astype(jnp.uint32)
  out = jnp.where(k > n, jnp.uint32(0), out)
  return jnp.where(k <= 0, KEY_MAX, out)


def kth_largest_key_histogram(keys: jax.Array | Sequence[jax.Array], k) -> jax.Array:
  """Same result as :func:`kth_largest_key` by a two-pass radix select.

  Pass 1 histograms the top 16 bits (65536 bins), finds the bucket holding
  the k-th largest key; pass 2 histograms the low 16 bits of that bucket.
  Two reads of the data instead of eight, and a scatter-add instead of 15
  compares per element: the fastest exact selection for XLA on CPU (no sort).

  Example:
    >>> int(kth_largest_key_histogram(jnp.array([5, 1, 9, 7], jnp.uint32), 3))
    5
  """
  parts = [keys] if not isinstance(keys, (list, tuple)) else list(keys)
  keys = jnp.concatenate([jnp.ravel(p) for p in parts]) if len(parts) > 1 else jnp.ravel(parts[0])
  n = keys.size
  k = jnp.asarray(k, jnp.int32)
  kk = jnp.clip(k, 1, max(n, 1))
  b1, above = _pick_high(_hist_high(keys), kk)
  return _pick_low(_hist_low(keys, b1), kk, k, n, b1, above)


def key_cut_sorted(keys: jax.Array, k) -> tuple[jax.Array, jax.Array]:
  """``(kth_largest_key_histogram(keys, k), tie_cut(keys, t, k))`` by one sort (small tensors).

  Sorting ``(key descending, flat index ascending)`` puts the top-k set first, so the k-th
  element gives both the threshold key and, when the next element ties with it, the tie cut.
  XLA compiles one sort in a few tens of milliseconds on CPU; the histogram search and the
  reductions of :func:`tie_cut` take about a second: on a small tensor (a tiny model has many
  shapes, each compiled once) this is the cheaper way to the same exact pair, also for ``k``
  outside ``1..n``.

  Example:
    >>> keys = jnp.array([3, 1, 3, 3], jnp.uint32)
    >>> [int(v) for v in key_cut_sorted(keys, 2)]  # threshold 3, ties taken up to index 2
    [3, 2]
  """
  keys = jnp.ravel(keys)
  n = keys.size
  k = jnp.asarray(k, jnp.int32)
  if not n:
    t = kth_largest_key_histogram(keys, k)
    return t, jnp.uint32(KEY_MAX)
  neg, idx = jax.lax.sort((~keys, jnp.arange(n, dtype=jnp.uint32)), num_keys=2)
  kk = jnp.clip(k, 1, n)
  t = ~neg[kk - 1]
  tie_after = (kk < n) & (~neg[jnp.minimum(kk, n - 1)] == t)
  cut = jnp.where(tie_after, idx[kk - 1], KEY_MAX)
  # k outside 1..n, as the histogram search and tie_cut define them
  t = jnp.where(k > n, jnp.uint32(0), t)
  cut = jnp.where(k > n, KEY_MAX, cut)
  low_cut = jnp.where((k < 0) | (~neg[0] == KEY_MAX), jnp.uint32(0), KEY_MAX)
  return jnp.where(k <= 0, KEY_MAX, t), jnp.where(k <= 0, low_cut, cut)


def _tie_width(n: int) -> int:
  return min(4096, max(n, 1))  # tie_cut's block width


def _cut_in_block(row_eq: jax.Array, r, width: int, before, need) -> jax.Array:
  # The flat index of the need-th tie, in block r whose ties are row_eq (int32, width).
  inner = jnp.cumsum(row_eq) + before
  j = jnp.argmax(inner >= need)
  return (r * width + j).astype(jnp.uint32)


def tie_cut(keys: jax.Array, t: jax.Array, k) -> jax.Array:
  """Flat-index cut ``I`` so that ``in_top(keys, idx, t, I)`` has exactly k elements.

  With ``t`` the k-th largest key, all keys > t are in the top-k and the ties
  (keys == t) are taken in flat-index order up to k (lowest index first):
  ``I`` is the index of the last tie taken, ``0xFFFFFFFF`` when all ties fit.
  mergekit's ``argsort`` breaks ties in an unspecified (unstable-sort) order;
  both keep exactly k elements.

  Example:
    >>> keys = jnp.array([3, 1, 3, 3], jnp.uint32)
    >>> int(tie_cut(keys, jnp.uint32(3), 2))
    2
  """
  keys = jnp.ravel(keys)
  n = keys.size
  k = jnp.asarray(k, jnp.int32)
  eq = keys == t
  need = k - jnp.sum(keys > t, dtype=jnp.int32)
  n_eq = jnp.sum(eq, dtype=jnp.int32)
  width = _tie_width(n)
  rows = -(-n // width)

  def cut(_):
    # Two-level scan (XLA's cumsum over n elements is slow on CPU): count the
    # ties per block of `width`, find the block holding the need-th tie, then
    # scan inside that block only.
    blocks = jnp.pad(eq, (0, rows * width - n)).reshape(rows, width).astype(jnp.int32)
    per_block = jnp.sum(blocks, axis=1)
    csum = jnp.cumsum(per_block)
    r = jnp.argmax(csum >= need)
    before = csum[r] - per_block[r]
    return _cut_in_block(jax.lax.dynamic_index_in_dim(blocks, r, 0, keepdims=False), r, width,
                         before, need)

  return jax.lax.cond(need < n_eq, cut, lambda _: KEY_MAX, None)


def _over_chunks(keys_of: Callable[[Any, Any, int], jax.Array], arrays: Any, n: int, chunk: int,
                 f: Callable[[Any, jax.Array, Any], Any], acc: Any) -> Any:
  # f(acc, keys, start) over the whole chunks (a loop) and the shorter tail (static). `arrays`
  # ride in the loop state behind an optimization barrier: otherwise XLA hoists a whole-array
  # conversion out of the loop (loop-invariant code motion) and holds it, which chunking avoids.
  n_full, tail = divmod(n, chunk)
  if n_full:
    def body(i, state):
      a, xs = state
      xs = jax.lax.optimization_barrier(xs)
      return f(a, keys_of(xs, i * chunk, chunk), i * chunk), xs

    acc = jax.lax.fori_loop(0, n_full, body, (acc, arrays))[0]
  if tail:
    acc = f(acc, keys_of(arrays, n_full * chunk, tail), n_full * chunk)
  return acc


def key_cut_chunked(keys_of: Callable[[Any, Any, int], jax.Array], arrays: Any, n: int, k, *,
                    chunk: int = 1 << 20) -> tuple[jax.Array, jax.Array]:
  """``(kth_largest_key_histogram(keys, k), tie_cut(keys, t, k))`` of ``n`` keys made chunk by
  chunk: ``keys_of(arrays, start, size)`` returns the uint32 keys of elements
  ``start .. start+size-1`` from the pytree ``arrays`` (``start`` may be traced, ``size`` is
  static). Only one chunk of keys exists at a time (no
  ``n``-sized key, index or mask arrays); histograms and counts are integers, so both results
  equal the whole-array functions' exactly. ``chunk`` is rounded to whole tie blocks.

  Example:
    >>> keys = jnp.array([5, 1, 9, 7, 9, 2], jnp.uint32)
    >>> of = lambda x, s, size: jax.lax.dynamic_slice(x, (s,), (size,))
    >>> [int(v) for v in key_cut_chunked(of, keys, 6, 1)]
    [9, 2]
    >>> int(kth_largest_key_histogram(keys, 1)), int(tie_cut(keys, jnp.uint32(9), 1))
    (9, 2)
  """
  k = jnp.asarray(k, jnp.int32)
  width = _tie_width(n)
  chunk = max(width, chunk // width * width)
  kk = jnp.clip(k, 1, max(n, 1))
  h1 = _over_chunks(keys_of, arrays, n, chunk, lambda h, keys, _: h + _hist_high(keys),
                    jnp.zeros(1 << 16, jnp.int32))
  b1, above = _pick_high(h1, kk)
  h2 = _over_chunks(keys_of, arrays, n, chunk, lambda h, keys, _: h + _hist_low(keys, b1),
                    jnp.zeros(1 << 16, jnp.int32))
  t = _pick_low(h2, kk, k, n, b1, above)
  # The tie cut: #(keys > t), #(keys == t) and the ties per block of `width`.
  rows = -(-n // width)

  def count(acc, keys, start):
    gt, n_eq, per_block = acc
    eq = keys == t
    size = keys.shape[0]
    pad = -size % width
    sums = jnp.sum(jnp.pad(eq, (0, pad)).reshape(-1, width).astype(jnp.int32), axis=1)
    per_block = jax.lax.dynamic_update_slice(per_block, sums, (start // width,))
    return (gt + jnp.sum(keys > t, dtype=jnp.int32), n_eq + jnp.sum(eq, dtype=jnp.int32),
            per_block)

  gt, n_eq, per_block = _over_chunks(keys_of, arrays, n, chunk, count,
                                     (jnp.int32(0), jnp.int32(0), jnp.zeros(rows, jnp.int32)))
  need = k - gt

  def cut(_):
    csum = jnp.cumsum(per_block)
    r = jnp.argmax(csum >= need)
    before = csum[r] - per_block[r]
    # Block r (the last one may be short): read `width` keys ending no later than n, shift
    # them into place, and count nothing past n (tie_cut pads with False).
    start = jnp.minimum(r * width, n - width)
    eq = (keys_of(arrays, start, width) == t).astype(jnp.int32)
    row = jax.lax.dynamic_slice(jnp.concatenate([eq, jnp.zeros(width, jnp.int32)]),
                                (r * width - start,), (width,))
    return _cut_in_block(row, r, width, before, need)

  return t, jax.lax.cond(need < n_eq, cut, lambda _: KEY_MAX, None)


def in_top(bits: jax.Array, idx: jax.Array, t, cut) -> jax.Array:
  """Membership in a top-k set given by (threshold key, tie cut index)."""
  return (bits > t) | ((bits == t) & (idx <= cut))


def _mix32(x: jax.Array) -> jax.Array:
  # "lowbias32" integer finalizer (public domain, C. Wellons).
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_uniform(seed: jax.Array, index: jax.Array) -> jax.Array:
  """Counter-based uniform numbers in [0, 1): a pure function of (seed, index).

  Example:
    >>> u = hash_uniform(jnp.uint32(7), jnp.arange(4, dtype=jnp.uint32))
    >>> bool(((u >= 0) & (u < 1)).all())
    True
  """
  s = _mix32(seed.astype(jnp.uint32) + np.uint32(0x9E3779B9))
  x = _mix32(index.astype(jnp.uint32) ^ s)
  x = _mix32(x + s)
  return (x >> 8).astype(jnp.float32) * np.float32(1.0 / (1 << 24))


def della_probabilities(delta: jax.Array, density, epsilon) -> jax.Array:
  """DELLA keep probabilities (mergekit ``della_magprune``): per row (axis 1).

  ``p = (density - eps) + 2 eps * rank_norm`` with ``rank_norm`` the
  magnitude rank within the row scaled to [0, 1]. ``density >= 1`` keeps all
  (p = 1), ``density <= 0`` none (p = 0). Ranking is a per-row sort (ranks are
  intrinsically sort-based). Returns float32 of ``delta.shape``.
  """
  shape = delta.shape
  x = delta.reshape(1, -1) if delta.ndim < 2 else delta
  mag = jnp.abs(x.astype(jnp.float32))
  order = jnp.argsort(mag, axis=1, stable=True)
  m = x.shape[1]
  # inverse permutation by a scatter (one sort, not two): ranks 0..m-1
  rows = jnp.arange(x.shape[0])[:, None]
  ranks = jnp.zeros(x.shape, jnp.float32).at[rows, order].set(
      jnp.broadcast_to(jnp.arange(m, dtype=jnp.float32), x.shape), unique_indices=True)
  rank_norm = ranks / np.float32(max(m - 1, 1))
  density = jnp.asarray(density, jnp.float32)
  epsilon = jnp.asarray(epsilon, jnp.float32)
  p = (density - epsilon) + rank_norm * (2 * epsilon)
  p = jnp.where(density >= 1, 1.0, jnp.where(density <= 0, 0.0, p))
  return p.reshape(shape)


def keep_mask(delta: jax.Array, lo, hi, p=None, seed=None, lo_cut=KEY_MAX, hi_cut=0
              ) -> jax.Array:
  """Keep mask of one flattened model delta (see module docstring, step 2)."""
  bits = magnitude_bits(delta)
  idx = jnp.arange(delta.size, dtype=jnp.uint32).reshape(delta.shape)
  keep = in_top(bits, idx, lo, lo_cut) & ~in_top(bits, idx, hi, hi_cut)
  if p is not None:
    keep = keep & (hash_uniform(seed, idx) < p)
  return keep


def sparsify_merge_reference(base: jax.Array, models: jax.Array, *, weights: jax.Array,
                             lo: jax.Array, hi: jax.Array, lam=1.0, p: jax.Array | None = None,
                             seeds: jax.Array | None = None, rescale: str | None = None,
                             consensus: bool = True, normalize: bool = True,
                             lo_cut: jax.Array | None = None, hi_cut: jax.Array | None = None
                             ) -> jax.Array:
  """Reference fused merge over flattened tensors.

  Args:
    base: (n,) base tensor.
    models: (N, n) model tensors.
    weights: (N,) float weights.
    lo, hi: (N,) uint32 magnitude-key window per model: keep the top set
      ``(lo, lo_cut)`` minus the top set ``(hi, hi_cut)`` (see :func:`in_top`).
    lo_cut, hi_cut: (N,) uint32 tie cuts (default: all ties of ``lo`` kept,
      none of ``hi`` excluded, i.e. ``lo <= key < hi``).
    lam: scalar multiplier of the merged delta.
    p: None, (N,) or (N, n) keep probabilities (random sparsification).
    seeds: (N,) uint32 hash seeds (with ``p``).
    rescale: None, ``'l1'`` or ``'inverse'``.
    consensus: TIES sign election + disjoint mean.
    normalize: divide by the (selected) weight sum.

  Returns:
    (n,) float32 merged tensor.
  """
  base32 = base.astype(jnp.float32)
  n_models = models.shape[0]
  w = jnp.asarray(weights, jnp.float32)
  lam = jnp.asarray(lam, jnp.float32)
  idx = jnp.arange(base.size, dtype=jnp.uint32).reshape(base.shape)
  lo_cut = jnp.full((n_models,), KEY_MAX) if lo_cut is None else lo_cut
  hi_cut = jnp.zeros((n_models,), jnp.uint32) if hi_cut is None else hi_cut
  # Written model by model (element-wise chains fuse into one XLA loop; no (N, n) temporaries).
  ds = []
  for i in range(n_models):
    delta = models[i].astype(jnp.float32) - base32
    bits = magnitude_bits(delta)
    keep = in_top(bits, idx, lo[i], lo_cut[i]) & ~in_top(bits, idx, hi[i], hi_cut[i])
    pi = None
    if p is not None:
      pi = p[i]
      keep = keep & (hash_uniform(seeds[i], idx) < pi)
    kept = jnp.where(keep, delta, 0.0)
    if rescale == "l1":
      before = jnp.sum(jnp.abs(delta))
      after = jnp.sum(jnp.abs(kept))
      ok = (before >= 1e-7) & (after >= 1e-7)
      kept = kept * jnp.where(ok, before / jnp.where(ok, after, 1.0), 1.0)
    elif rescale == "inverse":
      kept = jnp.where(keep, kept / jnp.where(keep, pi, 1.0), 0.0)
    elif rescale is not None:
      raise ValueError(f"rescale must be None, 'l1' or 'inverse', got {rescale!r}")
    ds.append(kept * w[i])
  total = functools.reduce(lambda a, b: a + b, ds)
  if consensus:
    pos = total >= 0  # elected sign: + unless the weighted sum is negative
    mixed = jnp.zeros_like(base32)
    div = jnp.zeros_like(base32)
    for i, d in enumerate(ds):
      sel = jnp.where(pos, d > 0, d < 0)
      mixed = mixed + jnp.where(sel, d, 0.0)
      div = div + jnp.where(sel, w[i], 0.0)
    div = jnp.where(div == 0, 1.0, div)
  else:
    mixed = total
    wsum = jnp.sum(w)
    div = jnp.where(jnp.abs(wsum) < 1e-8, 1.0, wsum)
  if normalize:
    mixed = mixed / div
  return base32 + mixed * lam
