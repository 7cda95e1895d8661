"""M2N2 (Abrantes, Lange, Tang; GECCO'25): evolutionary merging with competition and attraction.

An archive of ``P`` models (flat parameter vectors, :func:`jax.flatten_util.ravel_pytree`)
with binary scores ``s[P, N]`` on ``N`` training examples.

* Competition (fitness sharing): ``z_j = (sum_k s_kj)^alpha`` (``z_j = 1`` if 0) and
  ``f_k = sum_j s_kj / z_j``; a child replaces the worst of the ``P + 1`` only if it is not
  itself the worst.
* Attraction: parent 1 ~ ``f / sum f``; parent 2 ~ ``sum_j max(0, s_2j/z_j - s_1j/z_j)``
  (strong where parent 1 is weak).
* Crossover with an evolving split point: ``w_s ~ U{0..D-1}``, ``w_m ~ U(0, 1)``; the child is
  a SLERP of the two whole vectors (global angle; lerp when ``sin`` is tiny) with
  per-coordinate ``t = w_m`` before ``w_s`` and ``1 - w_m`` after.

Example:
  >>> import jax.numpy as jnp
  >>> s = jnp.array([[1., 1., 0.], [1., 0., 0.], [0., 0., 1.]])
  >>> shared_fitness(s).tolist()
  [1.5, 0.5, 1.0]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["crossover", "m2n2_evolve", "select_parents", "shared_fitness", "update_archive"]


def _z(scores: jax.Array, alpha: float) -> jax.Array:
  z = jnp.sum(scores, axis=0) ** alpha
  return jnp.where(z == 0, 1.0, z)


def shared_fitness(scores: jax.Array, alpha: float = 1.0) -> jax.Array:
  """``f_k = sum_j s_kj / z_j`` with ``z_j = (sum_k s_kj)^alpha`` (1 where nobody scores)."""
  return jnp.sum(scores / _z(scores, alpha), axis=1)


def select_parents(key: jax.Array, scores: jax.Array, alpha: float = 1.0
                   ) -> tuple[jax.Array, jax.Array]:
  """Parent 1 by shared fitness, parent 2 by attraction to parent 1's weak examples."""
  k1, k2 = jax.random.split(key)
  z = _z(scores, alpha)
  f = shared_fitness(scores, alpha)
  p1 = jax.random.categorical(k1, jnp.log(jnp.maximum(f, 1e-12)))
  gain = jnp.sum(jnp.maximum(0.0, scores / z - scores[p1] / z), axis=1)
  gain = gain.at[p1].set(0.0)
  logits = jnp.where(jnp.sum(gain) > 0, jnp.log(jnp.maximum(gain, 1e-12)),
                     jnp.zeros_like(gain).at[p1].set(-jnp.inf))
  return p1, jax.random.categorical(k2, logits)


def crossover(key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """SLERP of flat vectors ``a``, ``b`` with a random split point and mixing ratio."""
  ks, km = jax.random.split(key)
  d = a.shape[0]
  split = jax.random.randint(ks, (), 0, d)
  wm = jax.random.uniform(km)
  t = jnp.where(jnp.arange(d) < split, wm, 1.0 - wm)
  cos = jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-30)
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  so = jnp.sin(omega)
  safe = jnp.where(so > 1e-6, so, 1.0)
  slerp = (jnp.sin((1 - t) * omega) * a + jnp.sin(t * omega) * b) / safe
  return jnp.where(so > 1e-6, slerp, (1 - t) * a + t * b)


def update_archive(pop: jax.Array, scores: jax.Array, child: jax.Array, child_scores: jax.Array,
                   alpha: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Appends the child, drops the worst of ``P + 1`` by shared fitness."""
  allp = jnp.concatenate([pop, child[None]])
  alls = jnp.concatenate([scores, child_scores[None]])
  worst = jnp.argmin(shared_fitness(alls, alpha))
  idx = jnp.arange(pop.shape[0])
  keep = jnp.where(idx < worst, idx, idx + 1)
  return allp[keep], alls[keep]


def m2n2_evolve(key: jax.Array, pop: jax.Array, score_fn: Callable[[jax.Array], jax.Array], *,
                steps: int, alpha: float = 1.0, mutation: float = 0.0,
                attraction: bool = True, stats: bool = False
                ) -> tuple[jax.Array, jax.Array, Any]:
  """Runs ``steps`` M2N2 generations (one child each) in one ``lax.scan``.

  Args:
    key: PRNG key (reproducible per key).
    pop: initial archive ``[P, D]`` of flat parameter vectors.
    score_fn: ``f(flat_params[D]) -> {0,1}[N]`` per-example correctness.
    steps: generations.
    alpha: fitness-sharing exponent (0 = no competition: plain fitness).
    mutation: std of Gaussian mutation added to the child (0.01 from scratch in the paper).
    attraction: False picks parent 2 by fitness too (a plain genetic baseline).
    stats: return per step ``{'mean', 'best', 'coverage'}`` (archive mean and best raw
      accuracy, fraction of examples some archive member gets right) instead of the mean.

  Returns:
    ``(archive, scores, mean raw accuracy of the archive per step)`` (or the dict).
  """
  scores = jax.vmap(score_fn)(pop).astype(jnp.float32)

  def step(carry, k):
    pop, scores = carry
    kp, kc, km, k2 = jax.random.split(k, 4)
    p1, p2 = select_parents(kp, scores, alpha)
    if not attraction:
      f = shared_fitness(scores, alpha)
      p2 = jax.random.categorical(k2, jnp.log(jnp.maximum(f, 1e-12)))
    child = crossover(kc, pop[p1], pop[p2])
    child = child + mutation * jax.random.normal(km, child.shape)
    pop, scores = update_archive(pop, scores, child, score_fn(child).astype(jnp.float32), alpha)
    if stats:
      return (pop, scores), {"mean": jnp.mean(scores), "best": jnp.max(jnp.mean(scores, 1)),
                             "coverage": jnp.mean(jnp.max(scores, 0))}
    return (pop, scores), jnp.mean(scores)

  (pop, scores), hist = jax.lax.scan(step, (pop, scores), jax.random.split(key, steps))
  return pop, scores, hist
