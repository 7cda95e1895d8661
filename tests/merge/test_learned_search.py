"""AdaMerging (gradient through the merge), CMA-ES (evosax) and MAP surrogates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.merge import learned


def _setup():
  ks = jax.random.split(jax.random.key(0), 4)
  base = {"l0": {"kernel": jax.random.normal(ks[0], (5, 4)) * 0.5, "bias": jnp.zeros(4)},
          "l1": {"kernel": jax.random.normal(ks[1], (4, 3)) * 0.5}}
  models = [jax.tree.map(lambda b, k=k: b + 0.3 * jax.random.normal(k, b.shape), base)
            for k in ks[2:]]
  x = jax.random.normal(jax.random.key(9), (16, 5))

  def logits(p):
    return jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"]) @ p["l1"]["kernel"]
  return base, models, lambda p: learned.entropy(logits(p))


def test_taskwise_and_layerwise_merges_are_task_arithmetic():
  base, models, _ = _setup()
  lam = jnp.array([0.3, 0.7])
  got = learned.taskwise_merge(base, models, lam)
  ref = jax.tree.map(lambda b, m0, m1: b + 0.3 * (m0 - b) + 0.7 * (m1 - b), base, *models)
  assert jp.tree.allclose(got, ref, rtol=1e-6)
  n = len(jax.tree.leaves(base))
  lw = jnp.tile(lam[:, None], (1, n))
  assert jp.tree.allclose(learned.layerwise_merge(base, models, lw), ref, rtol=1e-6)


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_gradient_matches_finite_differences(granularity):
  base, models, obj = _setup()
  merge = learned.taskwise_merge if granularity == "task" else learned.layerwise_merge
  shape = (2,) if granularity == "task" else (2, len(jax.tree.leaves(base)))
  lam = jnp.full(shape, 0.3) + 0.1 * jax.random.normal(jax.random.key(3), shape)
  f = lambda l: obj(merge(base, models, l))
  g = jax.grad(f)(lam)
  eps = 1e-3
  for idx in [(0,), (1,)] if granularity == "task" else [(0, 0), (1, 2)]:
    e = jnp.zeros(shape).at[idx].set(eps)
    fd = (f(lam + e) - f(lam - e)) / (2 * eps)
    np.testing.assert_allclose(g[idx], fd, rtol=2e-2, atol=1e-4)


def test_adamerging_lowers_entropy_and_clamps():
  base, models, obj = _setup()
  merged, lam, hist = learned.adamerging(base, models, obj, granularity="layer", steps=30,
                                         lr=1e-2)
  assert hist[-1] < hist[0]
  assert bool(jnp.all((lam >= 0) & (lam <= 1)))
  assert jp.tree.allclose(merged, learned.layerwise_merge(base, models, lam))
  with pytest.raises(ValueError, match="granularity"):
    learned.adamerging(base, models, obj, granularity="row")


def test_ties_vectors_with_one_coefficient_equal_ties_sum():
  base, models, _ = _setup()
  tv = learned.ties_vectors(base, models, density=0.4)
  for lam in (0.3, 1.0):
    got = learned.taskwise_merge(base, tv, jnp.full(2, lam))
    want = jp.merge.ties(base, models, density=0.4, lam=lam, normalize=False)
    assert jp.tree.allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="density"):
    learned.ties_vectors(base, models, density=0.0)


def test_adamerging_over_ties_masks_and_traced_steps():
  base, models, obj = _setup()
  seen = []
  merged, lam, hist = learned.adamerging(
      base, models, obj, granularity="task", steps=25, lr=1e-2, ties_density=0.5,
      callback_every=10, callback=lambda step, l, m: seen.append((step, obj(m))))
  _, lam2, hist2 = learned.adamerging(base, models, obj, granularity="task", steps=25, lr=1e-2,
                                      ties_density=0.5)
  np.testing.assert_allclose(lam, lam2, rtol=1e-5)  # chunked scan == one scan
  np.testing.assert_allclose(hist, hist2, rtol=1e-5)
  assert [s for s, _ in seen] == [0, 10, 20, 25] and hist.shape == (25,)
  np.testing.assert_allclose(seen[0][1], hist[0], rtol=1e-5)  # the loss at the start
  tv = learned.ties_vectors(base, models, density=0.5)
  assert jp.tree.allclose(merged, learned.taskwise_merge(base, tv, lam), atol=1e-6)
  assert not jp.tree.allclose(merged, learned.taskwise_merge(base, models, lam), atol=1e-3)


def test_cmaes_finds_known_optimum_and_is_reproducible():
  pytest.importorskip("evosax")
  base = {"w": jnp.zeros(3)}
  models = [{"w": jnp.array([1.0, 0.0, 0.0])}, {"w": jnp.array([0.0, 1.0, 1.0])}]
  target = jnp.array([0.6, 0.25, 0.25])  # = 0.6 m0 + 0.25 m1
  fit = lambda p: jnp.sum((p["w"] - target) ** 2)
  _, lam, hist = learned.cmaes_search(base, models, fit, generations=40, population=8, seed=1)
  np.testing.assert_allclose(lam, [0.6, 0.25], atol=2e-2)
  assert bool(jnp.all(jnp.diff(hist) <= 0))  # best-so-far is monotone
  _, lam2, hist2 = learned.cmaes_search(base, models, fit, generations=40, population=8, seed=1)
  np.testing.assert_array_equal(lam, lam2)
  np.testing.assert_array_equal(hist, hist2)


def test_map_surrogate_recovers_quadratic_and_pareto_front():
  rng = np.random.default_rng(0)
  c = rng.uniform(0, 1, (12, 2)).astype(np.float32)
  a = np.array([[-2.0, 0.5], [0.5, -1.0]])
  z = np.stack([0.5 * np.einsum("si,ij,sj->s", c, a, c) + c @ [1.0, -0.5] + 0.2,
                -c[:, 0] ** 2 + 2 * c[:, 1] - 0.3], 1)
  m = 1 / (1 + np.exp(-z))
  s = learned.fit_surrogate(c, m)
  cq = rng.uniform(0, 1, (50, 2)).astype(np.float32)
  zq = np.stack([0.5 * np.einsum("si,ij,sj->s", cq, a, cq) + cq @ [1.0, -0.5] + 0.2,
                 -cq[:, 0] ** 2 + 2 * cq[:, 1] - 0.3], 1)
  np.testing.assert_allclose(learned.predict_surrogate(s, cq), 1 / (1 + np.exp(-zq)), atol=1e-4)
  assert learned.quadratic_features(jnp.ones((7, 3))).shape == (7, 10)
  # Pareto mask vs brute force
  pts = rng.uniform(size=(40, 2))
  mask = np.asarray(learned.pareto_mask(pts))
  ref = [not any((q >= p).all() and (q > p).any() for q in pts) for p in pts]
  np.testing.assert_array_equal(mask, ref)
  assert learned.hypervolume_2d(np.array([[1.0, 0.5], [0.5, 1.0]])) == pytest.approx(0.75)
