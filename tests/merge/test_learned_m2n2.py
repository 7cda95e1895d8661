"""M2N2: fitness sharing, attraction, split-point crossover, archive update, reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.merge import learned


def test_shared_fitness_equation():
  s = jnp.array([[1., 1., 0., 0.], [1., 0., 0., 0.], [0., 0., 1., 0.]])
  z = np.maximum(np.asarray(s).sum(0), 1)  # z_j = 1 where nobody scores
  np.testing.assert_allclose(learned.shared_fitness(s), (np.asarray(s) / z).sum(1))
  np.testing.assert_allclose(learned.shared_fitness(s, alpha=0.0), np.asarray(s).sum(1))


def test_attraction_picks_complementary_partner():
  s = jnp.array([[1., 1., 0., 0.], [1., 1., 0., 0.], [0., 0., 1., 1.]])
  for i in range(20):
    p1, p2 = learned.select_parents(jax.random.key(i), s)
    # only model 2 helps where models 0/1 are weak (and vice versa)
    assert (int(p1) == 2) != (int(p2) == 2)


def test_crossover_split_point_and_lerp_fallback():
  a = jnp.array([1., 0., 0., 0.])
  b = jnp.array([0., 1., 0., 0.])
  c = learned.crossover(jax.random.key(0), a, b)
  assert c.shape == (4,) and bool(jnp.all(jnp.isfinite(c)))
  # parallel vectors: lerp with t = wm before the split and 1 - wm after
  x = jnp.arange(1.0, 7.0)
  c = learned.crossover(jax.random.key(1), x, 2 * x)
  t = c / x - 1.0
  vals = np.unique(np.round(np.asarray(t), 5))
  assert len(vals) <= 2 and (len(vals) == 1 or abs(vals.sum() - 1.0) < 1e-4)


def test_update_archive_drops_worst_keeps_size():
  pop = jnp.arange(6.0).reshape(3, 2)
  s = jnp.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 0.]])
  p, sc = learned.update_archive(pop, s, jnp.array([9., 9.]), jnp.array([0., 0., 1.]))
  assert p.shape == (3, 2)
  np.testing.assert_array_equal(p[-1], [9., 9.])   # the child covers a new example
  assert not bool(jnp.any(jnp.all(p == pop[2], axis=1)))  # the useless model is gone


def test_m2n2_evolve_reproducible_and_improves():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(60, 3)).astype(np.float32))
  y = (x @ jnp.array([1.0, -2.0, 0.5]) > 0).astype(jnp.float32)
  score = lambda w: ((x @ w > 0).astype(jnp.float32) == y).astype(jnp.float32)
  pop = jax.random.normal(jax.random.key(0), (8, 3))
  out1 = learned.m2n2_evolve(jax.random.key(1), pop, score, steps=60, mutation=0.05)
  out2 = learned.m2n2_evolve(jax.random.key(1), pop, score, steps=60, mutation=0.05)
  for a, b in zip(out1, out2):
    np.testing.assert_array_equal(a, b)
  hist = out1[2]
  assert hist[-1] >= hist[0]
  # coverage: the archive together solves more examples than at the start
  cov0 = float(jnp.mean(jnp.max(jax.vmap(score)(pop), 0)))
  assert float(jnp.mean(jnp.max(out1[1], 0))) >= cov0
  # per-step statistics: the same run, mean as above, coverage/best of the final archive
  _, sc, st = learned.m2n2_evolve(jax.random.key(1), pop, score, steps=60, mutation=0.05,
                                  stats=True)
  np.testing.assert_allclose(st["mean"], hist, rtol=1e-6)
  np.testing.assert_allclose(st["coverage"][-1], jnp.mean(jnp.max(sc, 0)), rtol=1e-6)
  np.testing.assert_allclose(st["best"][-1], jnp.max(jnp.mean(sc, 1)), rtol=1e-6)
