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


def test_deepshape_penalty_is_the_gradient_of_the_target_nll():
  params = {"a": {"kernel": gg.gg_sample(jax.random.key(2), (64, 32), nu=1.5, beta=0.05)},
            "a_bias": jnp.ones(32)}
  lam = 0.3
  tx = deepshape.deepshape_penalty(lam)
  state = jax.jit(tx.init)(params)
  nu, beta = gg.fit_gg(params["a"]["kernel"])                  # the host estimator
  nu_t, beta_t = np.asarray(state["a/kernel"])
  assert nu_t == pytest.approx(0.8 * nu, abs=1e-6) and beta_t == pytest.approx(0.6 * beta, rel=1e-4)
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd, _ = jax.jit(tx.update)(zeros, state, params)
  auto = jax.grad(lambda p: deepshape.penalty_value(p, state, lam))(params)  # autodiff of lam R
  w = np.asarray(params["a"]["kernel"])
  ok = np.abs(w) / beta_t >= 1e-2                                       # outside the eps clamp
  np.testing.assert_allclose(np.asarray(upd["a"]["kernel"])[ok],
                             np.asarray(auto["a"]["kernel"])[ok], rtol=1e-4)
  assert ok.mean() > 0.9
  assert float(jnp.abs(upd["a_bias"]).max()) == 0.0
  # A Gaussian target is weight decay lam * theta.
  gauss = {"a/kernel": jnp.array([2.0, beta_t], jnp.float32)}
  upd2, _ = tx.update(zeros, gauss, params)
  np.testing.assert_allclose(np.asarray(upd2["a"]["kernel"])[ok], lam * w[ok], rtol=1e-5)
  with pytest.raises(ValueError, match="params"):
    tx.update(zeros, state)


def test_deepshape_penalty_steps_make_codes_cheaper():
  params = {"w": gg.gg_sample(jax.random.key(3), (128, 128), nu=2.0, beta=0.05)}
  tx = optax.chain(deepshape.deepshape_penalty(1.0), optax.sgd(0.02))
  state = tx.init(params)
  step = jax.jit(lambda p, s: (lambda u: (optax.apply_updates(p, u[0]), u[1]))(
      tx.update(jax.tree.map(jnp.zeros_like, p), s, p)))
  p = params
  for _ in range(30):
    p, state = step(p, state)
  nu0, _ = gg.fit_gg(params["w"])
  nu1, _ = gg.fit_gg(p["w"])
  assert nu1 < nu0 - 0.2                                               # toward 0.8 nu
  assert deepshape.code_entropy(p["w"]) < deepshape.code_entropy(params["w"]) - 0.3
