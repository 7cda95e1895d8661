"""Tree API of all 20 methods vs the independent numpy transcription.

Random methods (DARE, DELLA) use the documented random protocol: per leaf the
key is ``tensor_key(key, path)``, per model ``seeds = random.bits(key, (N,))``
and the uniforms are ``hash_uniform(seed_i, flat_index)``; the reference gets
those uniforms and does the rest of the math itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.merge  # noqa: F401  (jp.merge)
from jaxparams.kernels.merge_sparsify import hash_uniform

def _load_reference():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).with_name("reference_mergekit.py")
  spec = importlib.util.spec_from_file_location("reference_mergekit", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


R = _load_reference()

RNG = np.random.default_rng(7)
SHAPES = {"blk/kernel": (12, 20), "blk/bias": (37,)}  # as the fixtures: shared jit caches
KEY = jax.random.key(42)


def _tree(arrs):
  return {"blk": {"kernel": arrs["blk/kernel"], "bias": arrs["blk/bias"]}}


def _make(n_models, spread=0.1, independent=False):
  base = {p: RNG.standard_normal(s).astype(np.float32) for p, s in SHAPES.items()}
  models = []
  for _ in range(n_models):
    if independent:
      models.append({p: RNG.standard_normal(s).astype(np.float32) for p, s in SHAPES.items()})
    else:
      models.append({p: base[p] + spread * RNG.standard_normal(s).astype(np.float32)
                     for p, s in SHAPES.items()})
  return base, models


BASE, MODELS = _make(3)
IBASE, IMODELS = _make(3, independent=True)


def _flat(tree):
  return jp.tree.flatten(tree)


def _check(out, ref_fn, rtol=2e-6):
  flat = _flat(out)
  for p in SHAPES:
    ref = ref_fn(p)
    got = np.asarray(flat[p], np.float64)
    assert got.shape == ref.shape, p
    err = np.max(np.abs(got - ref)) / max(np.abs(ref).max(), 1e-30)
    assert err <= rtol, (p, err)


def _uniforms(path, n_models):
  seeds = jax.random.bits(jp.merge.tensor_key(KEY, path), (n_models,), jnp.uint32)
  size = int(np.prod(SHAPES[path]))
  return [np.asarray(hash_uniform(seeds[i], jnp.arange(size, dtype=jnp.uint32))).reshape(
      SHAPES[path]) for i in range(n_models)]


T = _tree
W = [0.7, -0.4, 1.1]


def test_linear():
  _check(jp.merge.linear([T(m) for m in MODELS], W),
         lambda p: R.linear([m[p] for m in MODELS], W))


def test_slerp_and_nearswap_and_arcee_fusion():
  _check(jp.merge.slerp(T(IBASE), T(IMODELS[0]), 0.35),
         lambda p: R.slerp(0.35, IBASE[p], IMODELS[0][p]))
  _check(jp.merge.nearswap(T(BASE), T(MODELS[0]), 0.08),
         lambda p: R.nearswap(BASE[p], MODELS[0][p], 0.08))
  _check(jp.merge.arcee_fusion(T(BASE), T(MODELS[1])),
         lambda p: R.arcee_fusion(BASE[p], MODELS[1][p]), rtol=1e-6)


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
def test_nuslerp(flatten, row_wise):
  _check(jp.merge.nuslerp(T(IBASE), [T(m) for m in IMODELS[:2]], weights=[0.25, 0.5],
                          nuslerp_flatten=flatten, nuslerp_row_wise=row_wise),
         lambda p: R.nuslerp(IBASE[p], IMODELS[0][p], IMODELS[1][p], [0.25, 0.5], flatten,
                             row_wise))


def test_multislerp_karcher_model_stock():
  _check(jp.merge.multislerp(T(IBASE), [T(m) for m in IMODELS], weights=[1, 2, 3]),
         lambda p: R.multislerp(IBASE[p], [m[p] for m in IMODELS], [1, 2, 3]))
  _check(jp.merge.karcher([T(m) for m in IMODELS]),
         lambda p: R.karcher([m[p] for m in IMODELS]), rtol=1e-5)
  for fw in (False, True):
    _check(jp.merge.model_stock(T(BASE), [T(m) for m in MODELS], filter_wise=fw),
           lambda p: R.model_stock(BASE[p], [m[p] for m in MODELS], fw))


def test_sce_ram_ramplus():
  _check(jp.merge.sce(T(BASE), [T(m) for m in MODELS], select_topk=0.4),
         lambda p: R.sce(BASE[p], [m[p] for m in MODELS], 0.4))
  zm = [{p: np.where(RNG.random(s) < 0.5, BASE[p], m[p]) for p, s in SHAPES.items()}
        for m in MODELS]
  _check(jp.merge.ram(T(BASE), [T(m) for m in zm]),
         lambda p: R.ram(BASE[p], [m[p] for m in zm]))
  _check(jp.merge.ramplus_tl(T(BASE), [T(m) for m in zm], r=0.3, alpha=0.5),
         lambda p: R.ram(BASE[p], [m[p] for m in zm], r=0.3, alpha=0.5))


def test_passthrough():
  _check(jp.merge.passthrough(T(MODELS[0]), 0.5), lambda p: 0.5 * MODELS[0][p].astype(np.float64))


DENS = [0.3, 0.6, 0.85]


@pytest.mark.parametrize("name,kw,ref_kw", [
    ("task_arithmetic", dict(lam=0.6), dict(lam=0.6)),
    ("ties", dict(density=DENS), dict(sparsify="magnitude", consensus=True, normalize=True,
                                      density=DENS)),
    ("ties", dict(density=DENS, normalize=False, rescale=True, lam=1.5),
     dict(sparsify="magnitude", consensus=True, rescale=True, density=DENS, lam=1.5)),
    ("breadcrumbs", dict(density=DENS, gamma=[0.05, 0.1, 0.2]),
     dict(sparsify="magnitude_outliers", density=DENS, gamma=[0.05, 0.1, 0.2])),
    ("breadcrumbs_ties", dict(density=DENS, gamma=0.1, normalize=True),
     dict(sparsify="magnitude_outliers", consensus=True, normalize=True, density=DENS,
          gamma=[0.1] * 3)),
])
def test_gta_deterministic(name, kw, ref_kw):
  out = getattr(jp.merge, name)(T(BASE), [T(m) for m in MODELS], weights=W, **kw)
  _check(out, lambda p: R.gta(BASE[p], [m[p] for m in MODELS], W, **ref_kw))


@pytest.mark.parametrize("name,kw,ref_kw", [
    ("dare_linear", dict(density=DENS), dict(sparsify="random", rescale=True, density=DENS)),
    ("dare_ties", dict(density=DENS), dict(sparsify="random", consensus=True, rescale=True,
                                           density=DENS)),
    ("dare_ties", dict(density=DENS, rescale="inverse"),
     dict(sparsify="random", consensus=True, rescale="inverse", density=DENS)),
    ("della", dict(density=[0.5, 0.4, 0.7], epsilon=0.1),
     dict(sparsify="della", consensus=True, normalize=True, rescale=True,
          density=[0.5, 0.4, 0.7], epsilon=[0.1] * 3)),
    ("della_linear", dict(density=[0.5, 0.4, 0.7], epsilon=[0.1, 0.2, 0.25], rescale="inverse"),
     dict(sparsify="della", rescale="inverse", density=[0.5, 0.4, 0.7],
          epsilon=[0.1, 0.2, 0.25])),
])
def test_gta_random(name, kw, ref_kw):
  out = getattr(jp.merge, name)(T(BASE), [T(m) for m in MODELS], weights=W, key=KEY, **kw)
  _check(out, lambda p: R.gta(BASE[p], [m[p] for m in MODELS], W, u=_uniforms(p, 3), **ref_kw),
         rtol=1e-5)


def test_ties_whole_model_trim_matches_paper_variant():
  # TIES paper: top-k over each model's whole flattened task vector.
  out = jp.merge.ties(T(BASE), [T(m) for m in MODELS], weights=W, density=DENS,
                      trim_scope="model")
  paths = list(SHAPES)
  sizes = [int(np.prod(SHAPES[p])) for p in paths]
  trimmed = []
  for i, m in enumerate(MODELS):
    flat = np.concatenate([(m[p].astype(np.float64) - BASE[p]).ravel() for p in paths])
    t = R.magnitude(flat, DENS[i])
    trimmed.append(dict(zip(paths, np.split(t, np.cumsum(sizes)[:-1]))))
  # trimmed deltas as "models" with density 1 -> the rest of TIES unchanged
  _check(out, lambda p: R.gta(BASE[p], [BASE[p] + trimmed[i][p].reshape(SHAPES[p])
                                        for i in range(3)], W, consensus=True, normalize=True))


def test_exact_k_with_tied_magnitudes():
  # Quantized deltas (as from bf16 checkpoints) tie massively at the threshold:
  # exactly k values are kept, ties lowest index first (as the reference).
  qbase = {p: np.zeros(s, np.float32) for p, s in SHAPES.items()}
  qmodels = [{p: np.round(RNG.standard_normal(s) * 3).astype(np.float32) / 4
              for p, s in SHAPES.items()} for _ in range(3)]
  out = jp.merge.ties(T(qbase), [T(m) for m in qmodels], weights=W, density=DENS)
  _check(out, lambda p: R.gta(qbase[p], [m[p] for m in qmodels], W, sparsify="magnitude",
                              consensus=True, normalize=True, density=DENS))
  one = jp.merge.ties(T(qbase), [T(qmodels[0])], weights=[1.0], density=0.3)
  assert int(np.sum(np.asarray(one["blk"]["kernel"]) != 0)) == int(0.3 * 240)
  out = jp.merge.breadcrumbs(T(qbase), [T(m) for m in qmodels], weights=W, density=DENS,
                             gamma=0.1)
  _check(out, lambda p: R.gta(qbase[p], [m[p] for m in qmodels], W,
                              sparsify="magnitude_outliers", density=DENS, gamma=[0.1] * 3))
