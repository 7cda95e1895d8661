"""The fused merge kernel (jaxparams.kernels.merge_sparsify): Pallas == reference.

The checks every op shares come from ``kernel_contract.py``: the Pallas kernels in interpret
mode on CPU (both the TPU and the GPU tiling) equal the reference on every merge mode, the api's
implementations, gradients through the fused merge, and ``jax.export`` lowering for ``tpu``
(Mosaic TPU) and ``cuda`` (Mosaic GPU). This file adds the top-k search and hash checks.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.merge  # noqa: F401  (jp.merge)
from jaxparams.kernels.merge_sparsify import api, pallas
from jaxparams.kernels.merge_sparsify import reference as ref

RNG = np.random.default_rng(11)

_spec = importlib.util.spec_from_file_location(
    "kernel_contract", pathlib.Path(__file__).with_name("kernel_contract.py"))
_contract = sys.modules.setdefault("kernel_contract", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_contract)
KernelContract, Case, _ = _contract.load()


@pytest.mark.parametrize("target,n", [("tpu", 1), ("tpu", 9000), ("gpu", 300)])
def test_kth_largest_keys_equals_reference(target, n):
  keys = jnp.asarray(RNG.integers(0, 2 ** 32, size=(3, n), dtype=np.uint64).astype(np.uint32))
  k = jnp.array([1, max(1, n // 3), n])
  got = pallas.kth_largest_keys(keys, k, target=target, interpret=True)
  want = jax.vmap(ref.kth_largest_key)(keys, k)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  hist = api.key_thresholds(keys, k, implementation="xla")  # XLA path: histogram radix select
  np.testing.assert_array_equal(np.asarray(hist), np.asarray(want))
  # and the reference is the k-th largest (what a sort would give)
  srt = -np.sort(-np.asarray(keys).astype(np.int64), axis=1)
  np.testing.assert_array_equal(np.asarray(want), srt[np.arange(3), np.asarray(k) - 1])


@pytest.mark.parametrize("density", [0.01, 0.3, 0.9])
def test_threshold_mask_equals_mergekit_topk(density):
  x = RNG.standard_normal((33, 17)).astype(np.float32)
  k = max(1, int(density * x.size))
  thr = api.topk_threshold(jnp.asarray(x), k)
  mask = np.asarray(ref.magnitude_bits(jnp.asarray(x)) >= thr)
  want = np.zeros(x.size, bool)
  want[np.argsort(-np.abs(x).ravel(), kind="stable")[:k]] = True  # mergekit: argsort top-k
  np.testing.assert_array_equal(mask.ravel(), want)


def _case(mode, n, n_models=3):
  base = jnp.asarray(RNG.standard_normal(n), jnp.float32)
  # rounded deltas: many exact ties at the top-k thresholds
  models = base + jnp.round(4 * jnp.asarray(RNG.standard_normal((n_models, n)), jnp.float32)) / 40
  deltas = models - base
  kw = dict(weights=jnp.array([0.9, 0.4, -0.6][:n_models]), lam=0.8)
  lo, lo_cut = api.topk_cuts(deltas, jnp.array([max(1, n // 2)] * n_models))
  hi = jnp.full((n_models,), api.KEY_MAX)
  seeds = jnp.array([3, 5, 7][:n_models], jnp.uint32)
  if mode == "ties":
    kw.update(lo=lo, hi=hi, lo_cut=lo_cut)
  elif mode == "breadcrumbs_l1":
    hi, hi_cut = api.topk_cuts(deltas, jnp.array([max(1, n // 20)] * n_models))
    kw.update(lo=lo, hi=hi, lo_cut=lo_cut, hi_cut=hi_cut, rescale="l1", consensus=False)
  elif mode == "dare_ties_l1":
    kw.update(lo=jnp.zeros((n_models,), jnp.uint32), hi=hi, p=jnp.array([0.3, 0.5, 0.8]),
              seeds=seeds, rescale="l1")
  elif mode == "della_inverse":
    p = jnp.stack([ref.della_probabilities(d, 0.5, 0.2) for d in deltas])
    kw.update(lo=jnp.zeros((n_models,), jnp.uint32), hi=hi, p=p, seeds=seeds,
              rescale="inverse", consensus=False, normalize=False)
  return base, models, kw


_STATIC = ("rescale", "consensus", "normalize")


def _contract_case(mode, n):
  base, models, kw = _case(mode, n)
  return Case({"base": base, "models": models, **{k: v for k, v in kw.items() if k not in _STATIC}},
              {k: kw[k] for k in _STATIC if k in kw})


class TestContract(KernelContract):
  # 200: one TPU tile; 8300: several TPU tiles + padding; 2100: several GPU (16 x 128) tiles
  CASES = {f"{mode}-{n}": _contract_case(mode, n)
           for mode in ("ties", "breadcrumbs_l1", "dare_ties_l1", "della_inverse")
           for n in (200, 2100, 8300)}
  INTERPRET_TARGETS = ("tpu", "gpu")
  INTERPRET_PAIRS = [(f"{mode}-{n}", t) for mode in ("ties", "breadcrumbs_l1", "dare_ties_l1",
                                                     "della_inverse")
                     for n, t in ((200, "tpu"), (8300, "tpu"), (2100, "gpu"))]
  API_CASE = "dare_ties_l1-200"
  DIFF = ("base", "models", "weights", "lam")
  TOL = 2e-6

  @staticmethod
  def _split(case):
    a = dict(case.arrays)
    return a.pop("base"), a.pop("models"), {**a, **case.static}

  def reference(self, case):
    base, models, kw = self._split(case)
    static = {k: kw.pop(k) for k in _STATIC if k in kw}
    return jax.jit(lambda b, m, kw: ref.sparsify_merge_reference(b, m, **kw, **static))(
        base, models, kw)

  def kernel(self, case, target):
    base, models, kw = self._split(case)
    return pallas.sparsify_merge(base, models, target=target, interpret=True, **kw)

  def api(self, case, implementation):
    base, models, kw = self._split(case)
    return api.sparsify_merge(base, models, implementation=implementation, **kw)

  def export(self, platform):
    target = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
    n = 5000

    def f(b, m, p):
      lo, lo_cut = api.topk_cuts(m - b, jnp.array([100, 200, 300]), implementation=target)
      hi = jnp.full((3,), api.KEY_MAX)
      merge = lambda **kw: api.sparsify_merge(b, m, lo=lo, hi=hi, implementation=target, **kw)
      ties = merge(weights=jnp.array([1.0, 0.5, -0.7]), lo_cut=lo_cut)
      dare = merge(weights=jnp.ones(3), p=jnp.array([.3, .5, .8]),
                   seeds=jnp.arange(3, dtype=jnp.uint32), rescale="l1")
      della = merge(weights=jnp.ones(3), p=p, seeds=jnp.arange(3, dtype=jnp.uint32),
                    rescale="inverse", consensus=False)
      return ties, dare, della

    return f, (jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((3, n), jnp.float32),
               jax.ShapeDtypeStruct((3, n), jnp.float32))


def test_merge_methods_through_pallas_equal_xla():
  base = {"w": jnp.asarray(RNG.standard_normal((24, 16)), jnp.float32)}
  ms = [{"w": base["w"] + 0.1 * jnp.asarray(RNG.standard_normal((24, 16)), jnp.float32)}
        for _ in range(2)]
  key = jax.random.key(4)
  for fn, kw in ((jp.merge.ties, dict(density=0.3)),
                 (jp.merge.dare_ties, dict(density=0.4, key=key)),
                 (jp.merge.della, dict(density=0.5, epsilon=0.2, key=key))):
    a = fn(base, ms, weights=[0.7, 0.5], implementation="pallas", **kw)["w"]
    b = fn(base, ms, weights=[0.7, 0.5], implementation="xla", **kw)["w"]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_tie_cuts_equal_reference_and_keep_exactly_k(target):
  keys = jnp.asarray(RNG.integers(0, 6, size=(2, 700)).astype(np.uint32))
  k = jnp.array([100, 333])
  t = jax.vmap(ref.kth_largest_key)(keys, k)
  want = jax.vmap(ref.tie_cut)(keys, t, k)
  got = pallas.tie_cuts(keys, t, k, target=target, interpret=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  idx = jnp.arange(700, dtype=jnp.uint32)
  for m in range(2):
    assert int(jnp.sum(ref.in_top(keys[m], idx, t[m], want[m]))) == int(k[m])


def test_histogram_select_edge_cases():
  keys = jnp.asarray(RNG.integers(0, 4, size=50).astype(np.uint32))  # many exact ties
  ks = jnp.array([-1, 0, 1, 7, 25, 50, 51])
  hist = jax.jit(jax.vmap(ref.kth_largest_key_histogram, in_axes=(None, 0)))(keys, ks)
  count = jax.jit(jax.vmap(ref.kth_largest_key, in_axes=(None, 0)))(keys, ks)
  np.testing.assert_array_equal(np.asarray(hist), np.asarray(count))
  srt = np.sort(np.asarray(keys))[::-1]
  np.testing.assert_array_equal(np.asarray(hist)[2:6], srt[np.array([1, 7, 25, 50]) - 1])


@pytest.mark.parametrize("n", [1, 50, 4097])
def test_sorted_select_equals_histogram_search_and_tie_cut(n):
  """The small-tensor XLA path (one sort) gives the histogram search's key and tie_cut's index
  exactly: many ties, keys at 0xFFFFFFFF, k from below 1 to above n."""
  srt = jax.jit(jax.vmap(ref.key_cut_sorted, in_axes=(None, 0)))
  hist = jax.jit(jax.vmap(lambda x, kk: (lambda t: (t, ref.tie_cut(x, t, kk)))(
      ref.kth_largest_key_histogram(x, kk)), in_axes=(None, 0)))
  ks = jnp.array(sorted({-1, 0, 1, 2, n // 3, n // 2, n - 1, n, n + 1}))
  for distinct, top in ((1, 1), (3, 3), (n, n), (6, 65536)):  # 65535 * 65537 = 0xFFFFFFFF
    keys = jnp.asarray(RNG.integers(top - distinct, top, n).astype(np.uint32) * np.uint32(65537))
    got, want = srt(keys, ks), hist(keys, ks)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"{distinct}")


def test_dare_keep_fraction_and_uniforms():
  u = np.asarray(ref.hash_uniform(jnp.uint32(9), jnp.arange(100_000, dtype=jnp.uint32)))
  assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1
  assert abs(np.mean(u < 0.3) - 0.3) < 0.01
  u2 = np.asarray(ref.hash_uniform(jnp.uint32(10), jnp.arange(100_000, dtype=jnp.uint32)))
  assert abs(np.corrcoef(u, u2)[0, 1]) < 0.02


@pytest.mark.parametrize("n", [4095, 12289])
def test_chunked_key_cut_equals_whole_array_search(n):
  """key_cut_chunked (keys made chunk by chunk: whole chunks in a loop + a static tail, a short
  last tie block) gives exactly kth_largest_key_histogram + tie_cut, ties included."""
  of = lambda x, s, size: jax.lax.dynamic_slice(x, (s,), (size,))
  chunked = jax.jit(lambda x, kk: ref.key_cut_chunked(of, x, n, kk, chunk=4096))

  @jax.jit
  def whole(x, kk):
    t = ref.kth_largest_key_histogram(x, kk)
    return t, ref.tie_cut(x, t, kk)

  for distinct, k in ((3, n // 2), (n, n // 3), (5, n), (2, 0), (7, n + 2)):
    keys = jnp.asarray(RNG.integers(0, distinct, n).astype(np.uint32) * np.uint32(65537))
    got, want = chunked(keys, k), whole(keys, k)
    assert [int(v) for v in got] == [int(v) for v in want], (distinct, k)


def test_delta_topk_cuts_equals_topk_cuts_of_the_differences():
  """The chunked search from base and models == topk_cuts of the stacked float32 differences
  (bf16 inputs, many ties), and it holds no n-sized temporaries (XLA memory analysis)."""
  n = 3 * 4096 + 77
  base = jnp.asarray(RNG.standard_normal(n).astype(np.float32)).astype(jnp.bfloat16)
  models = [(base.astype(jnp.float32) + jnp.asarray(
      np.round(RNG.standard_normal(n) * 4) / 64, jnp.float32)).astype(jnp.bfloat16)
            for _ in range(2)]
  k = jnp.array([n // 2, n // 5])
  got = jax.jit(lambda b, ms, kk: api.delta_topk_cuts(b, ms, kk, implementation="xla",
                                                      chunk=4096, sort_max=0))(base, models, k)
  small = jax.jit(lambda b, ms, kk: api.delta_topk_cuts(b, ms, kk, implementation="xla"))(
      base, models, k)  # n <= SORT_MAX: searched whole by sorting
  stacked = jnp.stack([m.astype(jnp.float32) - base.astype(jnp.float32) for m in models])
  want = api.topk_cuts(stacked, k, implementation="xla")
  for g, s, w in zip(got, small, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(w))
  big = jax.ShapeDtypeStruct((1 << 21,), jnp.bfloat16)
  f = jax.jit(lambda b, ms, kk: api.delta_topk_cuts(b, ms, kk, implementation="xla",
                                                    chunk=1 << 16))
  temp = f.lower(big, [big, big], k).compile().memory_analysis().temp_size_in_bytes
  assert temp < (1 << 21) * 4  # below one float32 copy (the whole-array search holds ~13)
