"""MACPruning on real data (scikit-learn's digits): maps and the accuracy ordering."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import jaxparams as jp
from jaxparams.prune import macpruning


@pytest.fixture(scope="module")
def digits_model():
  d = load_digits()
  x = jnp.asarray(d.data / 16.0, jnp.float32)
  y = jnp.asarray(d.target)
  xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
  mlp = jp.models.MLP(features=(64, 10))
  params = mlp.init(jax.random.key(0), xtr[:1])["params"]
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(
      mlp.apply({"params": p}, x), y).mean()
  tx = optax.adam(1e-2)
  st = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p, xtr, ytr), s)
    return optax.apply_updates(p, u), s

  for _ in range(300):
    params, st = step(params, st)
  return mlp, params, loss, xtr, ytr, xte, yte


def test_masks_count_and_protect_critical_pixels():
  imp = jax.random.uniform(jax.random.key(1), (64,))
  top = np.argsort(-np.asarray(imp))[:16]
  for i in range(20):
    m = np.asarray(macpruning.pixel_mask(jax.random.key(i), imp, 0.5, protect=0.25))
    assert (~m).sum() == 32
    assert m[top].all()
  a = macpruning.pixel_mask(jax.random.key(0), None, 0.3, n=64)
  b = macpruning.pixel_mask(jax.random.key(1), None, 0.3, n=64)
  assert int((~a).sum()) == 19 and not bool(jnp.array_equal(a, b))   # fresh map per inference
  with pytest.raises(ValueError, match="ratio"):
    macpruning.pixel_mask(jax.random.key(0), None, 1.0, n=4)


def test_importance_aware_map_keeps_accuracy(digits_model):
  mlp, params, loss, xtr, ytr, xte, yte = digits_model
  apply = lambda x: mlp.apply({"params": params}, x)
  acc = lambda logits: float(jnp.mean(jnp.argmax(logits, -1) == yte))
  clean = acc(apply(xte))
  assert clean > 0.9
  imp = macpruning.importance_map(loss, params, xtr, ytr)
  assert acc(macpruning.masked_apply(apply, xte, jax.random.key(0), imp, 0.0)) == clean
  rpam = acc(macpruning.masked_apply(apply, xte, jax.random.key(0), None, 0.5))
  iapam = acc(macpruning.masked_apply(apply, xte, jax.random.key(0), imp, 0.5, protect=0.4))
  # digits' border pixels carry no signal: the importance map switches those off first
  assert iapam > rpam + 0.1
  assert iapam > clean - 0.1
