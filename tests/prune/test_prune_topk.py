"""topk_mask (radix select) equals the mask of a stable argsort, ties, zeros, NaN and inf included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.prune import masks


def _argsort_mask(scores, n_prune):
  """The specification: rank by a stable ascending argsort, prune ranks below n_prune."""
  flat = np.asarray(scores).reshape(-1)
  order = np.asarray(jnp.argsort(jnp.asarray(flat), stable=True))
  ranks = np.empty(flat.size, np.int64)
  ranks[order] = np.arange(flat.size)
  return (ranks >= n_prune).reshape(np.shape(scores))


def _hostile(rng, size, dtype):
  """Few distinct values (many ties), signed zeros, NaN of both signs, infinities."""
  pool = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, np.inf, -np.inf, np.nan, -np.nan, 1e-30,
                   -1e-30, 3.0], np.float64)
  x = rng.choice(pool, size) if rng.random() < 0.5 else rng.standard_normal(size).round(1)
  return jnp.asarray(x.astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_equals_the_stable_argsort_mask(dtype):
  rng = np.random.default_rng(0)
  for size in (1, 5, 257):
    for n_prune in sorted({0, 1, size // 2, size - 1, size, size + 3}):
      f = jax.jit(lambda x, n=n_prune: masks.topk_mask(x, n))  # one compile per (size, n)
      for trial in range(20):
        x = _hostile(rng, size, dtype)
        got = np.asarray(f(x))
        assert got.sum() == size - min(n_prune, size)
        np.testing.assert_array_equal(got, _argsort_mask(x, n_prune),
                                      err_msg=f"size {size}, n_prune {n_prune}, trial {trial}")


def test_row_mask_and_shapes():
  rng = np.random.default_rng(1)
  s = jnp.abs(_hostile(rng, 64 * 12, jnp.float32).reshape(64, 12))
  got = np.asarray(masks.row_mask(s, 0.5))
  want = np.stack([_argsort_mask(s[:, j], 32) for j in range(12)], axis=1)
  np.testing.assert_array_equal(got, want)
  w = jax.random.normal(jax.random.key(0), (96, 40))
  np.testing.assert_array_equal(masks.magnitude_mask(w, 0.7),
                                _argsort_mask(jnp.abs(w), int(96 * 40 * 0.7)))


def test_integer_scores_take_the_argsort():
  x = jnp.array([3, 1, 2, 1, 0, 2], jnp.int32)
  np.testing.assert_array_equal(masks.topk_mask(x, 3), _argsort_mask(x, 3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32])
def test_traced_count_under_jit(dtype):
  # optax pruning passes n_prune from its schedule: a traced integer, any value in or out of range
  rng = np.random.default_rng(2)
  f = jax.jit(masks.topk_mask)
  for _ in range(3):
    x = jnp.asarray(rng.integers(-3, 4, 40)).astype(dtype)
    for n_prune in (-2, 0, 1, 17, 39, 40, 45):
      np.testing.assert_array_equal(f(x, jnp.int32(n_prune)), _argsort_mask(x, n_prune),
                                    err_msg=f"n_prune {n_prune}")
