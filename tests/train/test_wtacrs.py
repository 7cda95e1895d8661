"""WTA-CRS: unbiased weight gradient, lower variance than CRS, exact forward/input gradient,
k/n of the activations saved, and through the models' dot= injection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.models import MLP
from jaxparams.train import wtacrs


@pytest.fixture(scope="module")
def xg():
  """n = 512 rows with heavy-tailed norms (as activations are), d_in 64, d_out 16."""
  r = np.random.default_rng(0)
  scale = r.pareto(1.5, size=(512, 1)) + 0.1
  x = jnp.asarray(r.normal(size=(512, 64)) * scale, jnp.float32)
  g = jnp.asarray(r.normal(size=(512, 16)) * (r.pareto(1.5, size=(512, 1)) + 0.1), jnp.float32)
  return x, g


def _draws(x, g, n, wta, k=153):
  keys = jax.random.split(jax.random.key(1), n)
  f = lambda key: wtacrs.estimate_weight_grad(x, g, key, k=k, winner_take_all=wta)
  return jax.lax.map(f, keys, batch_size=500)


def test_k_is_the_papers_rule():
  assert wtacrs.num_rows(512, 0.3) == 153 and wtacrs.num_rows(10, 0.01, min_rows=4) == 4
  with pytest.raises(ValueError, match="ratio"):
    wtacrs.num_rows(10, 0.0)


def test_estimate_is_unbiased(xg):
  x, g = xg
  exact = x.T @ g
  draws = _draws(x, g, 4000, wta=True)
  rel = lambda m: float(jnp.linalg.norm(m - exact) / jnp.linalg.norm(exact))
  err_all, err_few = rel(draws.mean(0)), rel(draws[:250].mean(0))
  assert err_all < 0.02, err_all
  assert err_all < 0.6 * err_few  # the error of the mean decays (~1/sqrt(draws): 0.25 expected)


def test_wta_has_lower_variance_than_plain_crs(xg):
  x, g = xg
  exact = x.T @ g
  mse = lambda d: float(jnp.mean(jnp.sum((d - exact) ** 2, axis=(1, 2))))
  wta, crs = mse(_draws(x, g, 1000, True)), mse(_draws(x, g, 1000, False))
  assert wta < 0.7 * crs, (wta, crs)


def test_uniform_probabilities_give_plain_crs():
  idx, w = wtacrs.sampling_plan(jnp.ones(100), 10, jax.random.key(0))
  np.testing.assert_allclose(w, 10.0)  # no winners: every row weighted 1 / (k p) = n / k
  p = jnp.asarray([0.9] + [0.1 / 99] * 99)
  idx, w = wtacrs.sampling_plan(p, 10, jax.random.key(0))
  assert int(idx[0]) == 0 and float(w[0]) == 1.0  # the dominant row is a winner, taken exactly


def test_forward_and_input_gradient_exact_and_only_k_rows_saved(xg):
  x, _ = xg
  x3 = x.reshape(8, 64, 64)
  w = jax.random.normal(jax.random.key(2), (64, 16))
  key = jax.random.key(3)
  y, vjp = jax.vjp(lambda a, b: wtacrs.wtacrs_matmul(a, b, key, 0.3), x3, w)
  y_ref, vjp_ref = jax.vjp(lambda a, b: a @ b, x3, w)
  np.testing.assert_array_equal(y, y_ref)
  ct = jax.random.normal(jax.random.key(4), y.shape)
  np.testing.assert_array_equal(vjp(ct)[0], vjp_ref(ct)[0])
  _, (saved, idx, _) = wtacrs._fwd(x3, w, key, 0.3, 1)  # pylint: disable=protected-access
  assert saved.shape == (153, 64) and idx.shape == (153,)  # 153 / 512 = ratio of the activations
  # The weight gradient is the estimate of the saved rows.
  est = vjp(ct)[1]
  np.testing.assert_allclose(est, saved.T @ ct.reshape(-1, 16)[idx], rtol=1e-5, atol=1e-5)


def test_dot_injection_gives_unbiased_model_gradients():
  x = jax.random.normal(jax.random.key(0), (128, 8))
  params = MLP((16, 4)).init(jax.random.key(0), x)["params"]

  def loss(p, dot):
    return jnp.mean(jnp.square(MLP((16, 4), dot=dot).apply({"params": p}, x) - 1.0))

  exact = jax.grad(loss)(params, None)
  sampled = jax.jit(jax.vmap(lambda k: jax.grad(loss)(params, wtacrs.make_dot(k, ratio=0.25))))(
      jax.random.split(jax.random.key(1), 2000))
  for layer in ("layers_0", "layers_1"):
    one = sampled[layer]["kernel"][0]
    mean = sampled[layer]["kernel"].mean(0)
    ref = exact[layer]["kernel"]
    assert not np.allclose(one, ref, rtol=1e-3)  # a single draw is an estimate...
    assert float(jnp.linalg.norm(mean - ref) / jnp.linalg.norm(ref)) < 0.05  # ...unbiased
    np.testing.assert_allclose(sampled[layer]["bias"][0], exact[layer]["bias"], rtol=1e-5,
                               atol=1e-7)  # biases (not through dot) stay exact
