"""Fisher merging and RegMean against their papers' equations (tiny inputs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.merge import learned


def _trees(seed, n=3):
  ks = jax.random.split(jax.random.key(seed), n)
  return [{"a": {"kernel": jax.random.normal(k, (4, 3))}, "b": jax.random.normal(k, (3,)) + i}
          for i, k in enumerate(ks)]


def test_fisher_equal_fishers_is_average():
  ms = _trees(0)
  f = {"a": {"kernel": jnp.full((4, 3), 0.7)}, "b": jnp.full((3,), 0.7)}
  out = learned.fisher_merge(ms, [f] * 3)
  ref = jax.tree.map(lambda *x: sum(x) / 3, *ms)
  np.testing.assert_allclose(out["a"]["kernel"], ref["a"]["kernel"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["b"], ref["b"], rtol=1e-6, atol=1e-6)


def test_fisher_merge_elementwise_equation():
  ms = _trees(1, 2)
  fs = [jax.tree.map(lambda x, s=s: jnp.abs(x) * s + 0.1, m) for s, m in zip((1.0, 3.0), ms)]
  out = learned.fisher_merge(ms, fs, weights=[2.0, 1.0], normalize=False)
  num = 2 * fs[0]["b"] * ms[0]["b"] + fs[1]["b"] * ms[1]["b"]
  np.testing.assert_allclose(out["b"], num / (2 * fs[0]["b"] + fs[1]["b"]), rtol=1e-6)


def test_fisher_diagonal_is_mean_squared_per_example_gradient():
  w = {"w": jnp.array([0.5, -1.0])}
  x = jnp.array([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
  y = jnp.array([1, 0, 1])

  def loglik(p, xi, yi):  # logistic model
    z = xi @ p["w"]
    return jnp.where(yi == 1, jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z))

  got = learned.fisher_diagonal(loglik, w, x, y, batch_size=2)["w"]
  # d/dw log p = (y - sigmoid(z)) x, by hand
  g = (y - jax.nn.sigmoid(x @ w["w"]))[:, None] * x
  np.testing.assert_allclose(got, jnp.mean(g ** 2, 0), rtol=1e-5)


def test_fisher_errors():
  with pytest.raises(ValueError, match="one Fisher per model"):
    learned.fisher_merge(_trees(0, 2), [{}])


def _stacked_problem(seed=0, n=3, k=5, m=4):
  rng = np.random.default_rng(seed)
  xs = [rng.normal(size=(20, k)).astype(np.float32) for _ in range(n)]
  ws = [rng.normal(size=(k, m)).astype(np.float32) for _ in range(n)]
  return xs, ws


def test_regmean_alpha1_is_stacked_least_squares():
  xs, ws = _stacked_problem()
  models = [{"l": {"kernel": jnp.asarray(w), "bias": jnp.full(4, float(i))}}
            for i, w in enumerate(ws)]
  grams = [{"l/kernel": jnp.asarray(x.T @ x)} for x in xs]
  out = learned.regmean(models, grams, alpha=1.0, eps=0.0)
  a = np.concatenate(xs)
  b = np.concatenate([x @ w for x, w in zip(xs, ws)])
  ref = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]
  np.testing.assert_allclose(out["l"]["kernel"], ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["l"]["bias"], np.full(4, 1.0))  # non-linear leaves averaged


def test_regmean_one_model_returns_it_and_alpha0_is_diagonal():
  xs, ws = _stacked_problem(1)
  m = {"l": {"kernel": jnp.asarray(ws[0])}}
  g = {"l/kernel": jnp.asarray(xs[0].T @ xs[0])}
  np.testing.assert_allclose(learned.regmean([m], [g])["l"]["kernel"], ws[0], rtol=1e-4, atol=1e-4)
  out = learned.regmean([{"l": {"kernel": jnp.asarray(w)}} for w in ws[:2]],
                        [{"l/kernel": jnp.asarray(x.T @ x)} for x in xs[:2]], alpha=0.0, eps=0.0)
  d = [np.diag(x.T @ x)[:, None] for x in xs[:2]]
  ref = (d[0] * ws[0] + d[1] * ws[1]) / (d[0] + d[1])
  np.testing.assert_allclose(out["l"]["kernel"], ref, rtol=1e-4)


def test_regmean_grams_from_calibration_layer():
  from jaxparams.models import MLP
  mod = MLP(features=(6, 3))
  p = mod.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
  x = jax.random.normal(jax.random.key(1), (9, 5))
  g = learned.regmean_grams(mod, p, x)
  np.testing.assert_allclose(g["layers_0/kernel"], x.T @ x, rtol=1e-5)
  h = jax.nn.relu(x @ p["layers_0"]["kernel"] + p["layers_0"]["bias"])
  np.testing.assert_allclose(g["layers_1/kernel"], h.T @ h, rtol=1e-4, atol=1e-5)


def test_regmean_errors():
  m = {"l": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match="alpha"):
    learned.regmean([m], [{"l/kernel": jnp.eye(2)}], alpha=1.5)
  with pytest.raises(ValueError, match="not a 2-D leaf"):
    learned.regmean([m], [{"x/kernel": jnp.eye(2)}])
  with pytest.raises(ValueError, match="expected"):
    learned.regmean([m], [{"l/kernel": jnp.eye(3)}])
