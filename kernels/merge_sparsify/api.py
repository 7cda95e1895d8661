"""Dispatcher of the fused sparsify + sign-election + disjoint-mean merge.

``implementation`` follows :mod:`jaxparams.kernels.dispatch` (the convention and fallback rule
of every op): ``None`` (Pallas on TPU / Hopper GPU, XLA otherwise), ``'xla'`` (the jnp
reference), ``'pallas'`` (on CPU: the TPU tiling in interpret mode, slow, for tests),
``'pallas_tpu'`` / ``'pallas_gpu'`` (force one target, e.g. for ``jax.export``). Every shape is
accepted (tensors are padded to whole tiles), so ``None`` never falls back for shape reasons.
Gradients of :func:`sparsify_merge` (w.r.t. base, models, weights, ``lam``, ``p``) are the
reference's on every implementation; the thresholds are integer keys (no gradient).

Example:
  >>> import jax.numpy as jnp
  >>> base = jnp.zeros(4); models = jnp.array([[1., -2., 3., 0.], [1., 2., -1., 0.]])
  >>> out = sparsify_merge(base, models, weights=jnp.ones(2),
  ...                      lo=jnp.zeros(2, jnp.uint32), hi=jnp.full(2, KEY_MAX))
  >>> out.tolist()  # TIES: column 1 sums to 0, elected +, the +2 wins
  [1.0, 2.0, 3.0, 0.0]
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxparams.kernels.dispatch import Implementations
from jaxparams.kernels.merge_sparsify import reference as ref
from jaxparams.kernels.merge_sparsify.reference import KEY_MAX

__all__ = [
    "KEY_MAX", "topk_threshold", "topk_thresholds", "key_threshold", "key_thresholds", "topk_cuts",
    "delta_topk_cuts", "SORT_MAX",
    "sparsify_merge", "resolve_implementation",
]


def _pallas_kth_keys(keys, k, *, target, interpret):
  from jaxparams.kernels.merge_sparsify import pallas  # pylint: disable=import-outside-toplevel
  return pallas.kth_largest_keys(keys, k, target=target, interpret=bool(interpret))


def _pallas_tie_cuts(keys, t, k, *, target, interpret):
  from jaxparams.kernels.merge_sparsify import pallas  # pylint: disable=import-outside-toplevel
  return pallas.tie_cuts(keys, t, k, target=target, interpret=bool(interpret))


def _pallas_sparsify_merge(base, models, arrays, *, static, target, interpret):
  from jaxparams.kernels.merge_sparsify import pallas  # pylint: disable=import-outside-toplevel
  return pallas.sparsify_merge(base, models, **arrays, **static, target=target,
                               interpret=bool(interpret))


#: At most this many keys, the XLA path sorts instead of the histogram search: the same exact
#: results, compiled in ~0.05 s instead of ~1-2 s on CPU (a tiny model's many shapes each
#: compile once), and no slower to run at this size.
SORT_MAX = 1 << 16


def _xla_kth_keys(keys, k):
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (keys.shape[0],))
  if keys.shape[1] <= SORT_MAX:
    return jax.vmap(ref.key_cut_sorted)(keys, k)[0]
  return jnp.stack([ref.kth_largest_key_histogram(keys[m], k[m]) for m in range(keys.shape[0])])


def _xla_tie_cuts(keys, t, k):
  return jnp.stack([ref.tie_cut(keys[m], t[m], k[m]) for m in range(keys.shape[0])])


def _on_targets(kernel, **bound):
  return {t: functools.partial(kernel, target=t, **bound) for t in ("tpu", "gpu")}


# The op's implementations, by name, in one place (every shape is accepted: no planner).
KTH_LARGEST_KEYS = Implementations("merge_sparsify", xla=_xla_kth_keys,
                                   pallas=_on_targets(_pallas_kth_keys), reference_vjp=False)
TIE_CUTS = Implementations("merge_sparsify", xla=_xla_tie_cuts, pallas=_on_targets(_pallas_tie_cuts),
                           reference_vjp=False)


def _sparsify_merge_impls(static: dict) -> Implementations:
  return Implementations(
      "merge_sparsify",
      xla=lambda b, m, a: ref.sparsify_merge_reference(b, m, **a, **static),
      pallas=_on_targets(_pallas_sparsify_merge, static=static))


def resolve_implementation(implementation: str | None) -> str:
  """``'xla'`` or ``'pallas'``: what ``implementation`` runs on the default backend."""
  return KTH_LARGEST_KEYS.choose(implementation).implementation


@functools.partial(jax.jit, static_argnames=("implementation",))
def key_thresholds(keys: jax.Array, k: jax.Array, *, implementation: str | None = None
                   ) -> jax.Array:
  """Batched: the k[m]-th largest key of each row of keys (M, n) -> (M,) uint32."""
  keys = keys.reshape(keys.shape[0], -1)
  return KTH_LARGEST_KEYS.select(implementation)(keys, k)


def key_threshold(keys: jax.Array | Sequence[jax.Array], k, *, implementation: str | None = None
                  ) -> jax.Array:
  """The k-th largest uint32 key: on XLA one sort for at most ``SORT_MAX`` keys, else the
  histogram radix select; the 8-pass counting kernel on Pallas; see :mod:`reference`."""
  choice = KTH_LARGEST_KEYS.choose(implementation)
  parts = list(keys) if isinstance(keys, (list, tuple)) else [keys]
  small = sum(p.size for p in parts) <= SORT_MAX
  if choice.implementation == "xla" and not small:  # the parts as they are (no concat)
    return ref.kth_largest_key_histogram(keys, k)
  flat = jnp.concatenate([jnp.ravel(p) for p in parts])
  if choice.implementation == "xla":
    return ref.key_cut_sorted(flat, k)[0]
  return KTH_LARGEST_KEYS.bind(choice)(flat[None], jnp.reshape(k, (1,)))[0]


def topk_threshold(x: jax.Array | Sequence[jax.Array], k, *, implementation: str | None = None
                   ) -> jax.Array:
  """Magnitude key of the k-th largest ``|x|`` (over all arrays given).

  Keep mask: ``magnitude_bits(x) >= topk_threshold(x, k)`` (exact top-k up
  to ties at the threshold, which are all kept).
  """
  parts = list(x) if isinstance(x, (list, tuple)) else [x]
  return key_threshold([ref.magnitude_bits(jax.lax.stop_gradient(p)) for p in parts], k,
                       implementation=implementation)


@functools.partial(jax.jit, static_argnames=("implementation",))
def topk_thresholds(x: jax.Array, k: jax.Array, *, implementation: str | None = None
                    ) -> jax.Array:
  """Batched :func:`topk_threshold` over the rows of x (M, ...) with k (M,)."""
  keys = ref.magnitude_bits(jax.lax.stop_gradient(x)).reshape(x.shape[0], -1)
  return key_thresholds(keys, k, implementation=implementation)


@functools.partial(jax.jit, static_argnames=("implementation",))
def topk_cuts(x: jax.Array, k: jax.Array, *, implementation: str | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of ``|x[m]|`` per row m: (threshold key, tie cut index), both (M,).

  The set ``in_top(magnitude_bits(x[m]), flat_index, t[m], cut[m])`` has
  exactly ``k[m]`` elements (ties at the threshold taken lowest index first).
  """
  keys = ref.magnitude_bits(jax.lax.stop_gradient(x)).reshape(x.shape[0], -1)
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (keys.shape[0],))
  if keys.shape[1] <= SORT_MAX and TIE_CUTS.choose(implementation).implementation == "xla":
    return jax.vmap(ref.key_cut_sorted)(keys, k)  # small: one sort gives both
  t = key_thresholds(keys, k, implementation=implementation)
  return t, TIE_CUTS.select(implementation)(keys, t, k)


def delta_topk_cuts(base: jax.Array, models: Sequence[jax.Array], k: jax.Array, *,
                    implementation: str | None = None, chunk: int = 1 << 20,
                    sort_max: int = SORT_MAX) -> tuple[jax.Array, jax.Array]:
  """:func:`topk_cuts` of the float32 differences ``models[m] - base``, without making them.

  The same (threshold key, tie cut) pairs as ``topk_cuts(stack([m - base ...]), k)``. On XLA the
  keys are computed ``chunk`` elements at a time inside the search
  (:func:`reference.key_cut_chunked`): no ``(N, n)`` float32 differences, keys, indices or
  masks are held, so a model's largest tensor needs a few of its own sizes, not ~13. Tensors of
  at most ``sort_max`` elements are searched whole by sorting (same results, compiled faster).
  Pallas targets run :func:`topk_cuts` on the stacked differences.

  Example:
    >>> base = jnp.zeros(4); models = [jnp.array([1., -3., 2., .5]), jnp.array([0., 1., 1., 2.])]
    >>> t, cut = delta_topk_cuts(base, models, jnp.array([2, 2]))
    >>> [int(c) for c in cut]  # model 0: no tie at its threshold; model 1: the first 1.0 kept
    [4294967295, 1]
  """
  choice = TIE_CUTS.choose(implementation)
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (len(models),))
  if choice.implementation != "xla":  # Pallas: the stacked differences (no chunked search)
    stacked = jnp.stack([jnp.ravel(m.astype(jnp.float32) - base.astype(jnp.float32))
                         for m in models])
    return topk_cuts(stacked, k, implementation=implementation)
  flat_base = jnp.ravel(jax.lax.stop_gradient(base))
  n = flat_base.size

  def keys_of(pair, start, size):
    b, m = (jax.lax.dynamic_slice_in_dim(x, start, size) for x in pair)
    return ref.magnitude_bits(m.astype(jnp.float32) - b.astype(jnp.float32))

  if n <= sort_max:  # one sort of all models' keys
    keys = jnp.stack([keys_of((flat_base, jnp.ravel(jax.lax.stop_gradient(m))), 0, n)
                      for m in models])
    return jax.vmap(ref.key_cut_sorted)(keys, k)

  out = [ref.key_cut_chunked(keys_of, (flat_base, jnp.ravel(jax.lax.stop_gradient(m))), n, k[i],
                             chunk=chunk) for i, m in enumerate(models)]
  return jnp.stack([t for t, _ in out]), jnp.stack([c for _, c in out])


def sparsify_merge(base: jax.Array, models: jax.Array | Sequence[jax.Array], *, weights: jax.Array,
                   lo: jax.Array, hi: jax.Array, lam=1.0, p: jax.Array | None = None,
                   seeds: jax.Array | None = None, rescale: str | None = None,
                   consensus: bool = True, normalize: bool = True,
                   lo_cut: jax.Array | None = None, hi_cut: jax.Array | None = None,
                   implementation: str | None = None) -> jax.Array:
  """Fused merge of one tensor; returns float32 of ``base.shape``.

  Arguments as in :func:`reference.sparsify_merge_reference`, but ``models``
  may be a list of arrays shaped like ``base`` and ``p`` may be (N,) or
  (N, *base.shape).
  """
  shape = base.shape
  if isinstance(models, (list, tuple)):
    models = jnp.stack([jnp.ravel(m) for m in models])
  else:
    models = models.reshape(models.shape[0], -1)
  flat_base = jnp.ravel(base)
  if p is not None:
    p = jnp.asarray(p, jnp.float32)
    if p.ndim > 1:
      p = p.reshape(p.shape[0], -1)
  arrays = dict(weights=jnp.asarray(weights, jnp.float32), lo=jnp.asarray(lo, jnp.uint32),
                hi=jnp.asarray(hi, jnp.uint32), lam=lam, p=p, seeds=seeds, lo_cut=lo_cut,
                hi_cut=hi_cut)
  static = dict(rescale=rescale, consensus=consensus, normalize=normalize)
  run = _sparsify_merge_impls(static).select(implementation)
  return run(flat_base, models, arrays).reshape(shape)
