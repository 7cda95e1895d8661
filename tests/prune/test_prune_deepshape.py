"""DeepShape histogram specification and BackSlash steps against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxparams.prune import gg
from jaxparams.prune import shaping as deepshape


def test_deepshape_keeps_rank_order_and_reaches_target_shape():
  w = np.asarray(gg.gg_sample(jax.random.key(0), (200_000,), nu=2.0, beta=0.01))
  out = np.asarray(deepshape.deepshape(w, adj_minnum=50))
  grid = 2.0 ** -13
  q = np.round(w / grid)
  mags, counts = np.unique(np.abs(q[q != 0]), return_counts=True)
  p_max = mags[counts <= 50].min()
  core = np.abs(q) <= p_max
  np.testing.assert_array_equal(out[~core], w[~core])                  # tails untouched
  order = np.argsort(q[core], kind="stable")               # ranks of the gridded values
  assert np.all(np.diff(out[core][order]) >= 0)                         # rank order kept
  assert np.allclose(out[core] / grid, np.round(out[core] / grid))      # on the grid
  nu0, _ = gg.fit_gg(q[core] * grid)
  nu1, _ = gg.fit_gg(out[core])
  assert nu1 == pytest.approx(0.8 * nu0, abs=0.1)
  assert deepshape.code_entropy(out) < deepshape.code_entropy(w)


def test_code_entropy_values():
  assert deepshape.code_entropy(np.zeros(5)) == 0.0
  x = np.repeat(np.linspace(-1, 1, 255), 3)
  assert deepshape.code_entropy(x) == pytest.approx(np.log2(255), abs=1e-9)


def test_backslash_step_is_the_formula():
  params = {"a": {"kernel": jax.random.laplace(jax.random.key(1), (64, 64)) * 0.1},
            "a_bias": jnp.ones(64)}
  lam = 50.0
  tx = optax.chain(optax.sgd(0.0), deepshape.backslash(lam))
  state = tx.init(params)
  upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  w = np.asarray(params["a"]["kernel"], np.float64)
  nu, _ = gg.fit_gg(w)
  expect = -(lam * nu / w.size) * np.sign(w) * (np.abs(w) + 1) ** (nu - 1)
  np.testing.assert_allclose(np.asarray(upd["a"]["kernel"]), expect, rtol=1e-5, atol=1e-9)
  assert float(jnp.abs(upd["a_bias"]).max()) == 0.0                    # 1-D leaves untouched
  with pytest.raises(ValueError, match="params"):
    deepshape.backslash().update(params, optax.EmptyState())
