"""Exact properties of the merge methods, and jit / vmap / grad / sharding of the tree API."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxparams as jp
import jaxparams.merge  # noqa: F401  (jp.merge)
from jaxparams.merge import get_method, merge_trees, method_names

RNG = np.random.default_rng(3)


def _rand(*shape, scale=1.0):
  return jnp.asarray(scale * RNG.standard_normal(shape).astype(np.float32))


X = {"a": _rand(12, 20), "b": _rand(37)}  # fixture shapes: shared jit caches
BASE = {"a": _rand(12, 20), "b": _rand(37)}
M1 = jax.tree.map(lambda x: x + _rand(*x.shape, scale=0.1), BASE)
M2 = jax.tree.map(lambda x: x + _rand(*x.shape, scale=0.1), BASE)


def _params_for(name, n):
  m = get_method(name)
  mp = {"weight": [1.0] * n} if "weight" in m.model_params else {}
  if "density" in m.model_params:
    mp["density"] = [0.5] * n
  gp = {"t": 0.3} if "t" in m.global_params else {}
  return mp, gp


@pytest.mark.parametrize("name", method_names())
def test_identical_models_give_that_model(name):
  m = get_method(name)
  n = 1 if m.max_models == 1 else 2
  mp, gp = _params_for(name, n)
  base = X if m.base_policy != "ignored" else None
  out = merge_trees(name, base, [X] * n, model_params=mp, global_params=gp,
                    key=jax.random.key(0))
  chex.assert_trees_all_close(out, X, rtol=1e-6, atol=1e-6)


def test_linear_single_weight_is_identity():
  # x * w / w: identity up to one rounding (mergekit divides after summing, too)
  chex.assert_trees_all_close(jp.merge.linear([X], [0.7]), X, rtol=2e-7, atol=0)
  chex.assert_trees_all_equal(jp.merge.linear([X], [1.0]), X)
  chex.assert_trees_all_equal(jp.merge.linear([X, BASE], [1.0, 0.0]), X)


def test_slerp_endpoints():
  chex.assert_trees_all_close(jp.merge.slerp(BASE, X, 0.0), BASE, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(jp.merge.slerp(BASE, X, 1.0), X, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_density_one_single_model_is_task_arithmetic(normalize):
  ties = jp.merge.ties(BASE, [M1], weights=[0.6], density=1.0, normalize=normalize)
  ta = jp.merge.task_arithmetic(BASE, [M1], weights=[0.6], normalize=normalize)
  chex.assert_trees_all_close(ties, ta, rtol=1e-6, atol=1e-7)


def test_ties_trims_to_density():
  out = jp.merge.ties(BASE, [M1], weights=[1.0], density=0.25)
  kept = int(jnp.sum(out["a"] != BASE["a"]))
  assert kept == 60  # max(1, int(0.25 * 240))


def test_random_methods_reproducible_under_key():
  for fn in (jp.merge.dare_ties, jp.merge.dare_linear, jp.merge.della, jp.merge.della_linear):
    a = fn(BASE, [M1, M2], density=0.5, key=jax.random.key(1))
    b = fn(BASE, [M1, M2], density=0.5, key=jax.random.key(1))
    c = fn(BASE, [M1, M2], density=0.5, key=jax.random.key(2))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(np.asarray(a["a"]), np.asarray(c["a"]))


def test_registry_and_tree_api_agree_on_random_methods():
  key = jax.random.key(5)
  tree = jp.merge.dare_ties(BASE, [M1, M2], weights=[0.4, 0.9], density=0.4, key=key)
  m = get_method("dare_ties")
  out = m.merge_tensor(BASE["a"], [M1["a"], M2["a"]],
                       model_params={"weight": [0.4, 0.9], "density": [0.4, 0.4]},
                       key=jp.merge.tensor_key(key, "a"), name="a")
  np.testing.assert_array_equal(np.asarray(out), np.asarray(tree["a"]))


def test_jit_and_vmap_over_weights():
  ws = jnp.array([[1.0, 0.0], [0.3, 0.7], [0.5, -0.2]])
  f = lambda w: jp.merge.task_arithmetic(BASE, [M1, M2], weights=w, lam=0.8)
  grid = jax.jit(jax.vmap(f))(ws)
  for i in range(3):
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], grid), f(ws[i]), rtol=1e-6)
  g = jax.vmap(lambda w: jp.merge.linear([M1, M2], w))(ws[:2])
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], g),
                              jp.merge.linear([M1, M2], [0.3, 0.7]), rtol=1e-6)


def _loss(tree):
  return sum(jnp.sum(jnp.sin(3 * x)) for x in jax.tree.leaves(tree))


def _fd(f, x, eps=1e-3):
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (float(f(jnp.asarray(x + d, jnp.float32))) - float(f(jnp.asarray(x - d, jnp.float32)))
            ) / (2 * eps)
  return g


@pytest.mark.parametrize("which", ["linear", "task_arithmetic", "ties", "dare_ties", "slerp"])
def test_grad_wrt_coefficients(which):
  key = jax.random.key(0)
  fns = {
      "linear": lambda w: _loss(jp.merge.linear([M1, M2], w)),
      "task_arithmetic": lambda w: _loss(jp.merge.task_arithmetic(BASE, [M1, M2], weights=w)),
      "ties": lambda w: _loss(jp.merge.ties(BASE, [M1, M2], weights=w, density=0.5,
                                            normalize=False)),
      "dare_ties": lambda w: _loss(jp.merge.dare_ties(BASE, [M1, M2], weights=w, density=0.5,
                                                      key=key)),
      "slerp": lambda t: _loss(jp.merge.slerp(BASE, X, t[0])),
  }
  f = fns[which]
  x0 = jnp.array([0.45]) if which == "slerp" else jnp.array([0.6, 0.9])
  g = np.asarray(jax.grad(f)(x0))
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  np.testing.assert_allclose(g, _fd(f, x0), rtol=2e-2, atol=2e-3)


def test_sharded_inputs_give_sharded_outputs():
  mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
  sh = NamedSharding(mesh, P("x", None))
  mk = lambda seed: jnp.asarray(np.random.default_rng(seed).standard_normal((16, 8)), jnp.float32)
  base, a, b = mk(0), mk(1), mk(2)
  put = lambda x: {"w": jax.device_put(x, sh)}
  for fn in (lambda bb, ms: jp.merge.ties(bb, ms, density=0.5),
             lambda bb, ms: jp.merge.slerp(bb, ms[0], 0.3),
             lambda bb, ms: jp.merge.linear(ms)):
    out = fn(put(base), [put(a), put(b)])["w"]
    ref = fn({"w": base}, [{"w": a}, {"w": b}])["w"]
    assert out.sharding.is_equivalent_to(sh, 2), out.sharding
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6)


def test_where_merges_only_selected_leaves():
  out = jp.merge.ties(BASE, [M1, M2], density=0.5, where="a")
  np.testing.assert_array_equal(np.asarray(out["b"]), np.asarray(BASE["b"]))
  assert not np.array_equal(np.asarray(out["a"]), np.asarray(BASE["a"]))
  lin = jp.merge.linear([M1, M2], where="b")
  np.testing.assert_array_equal(np.asarray(lin["a"]), np.asarray(M1["a"]))


def test_task_vectors_negation_and_port_patch():
  tv = jp.merge.task_vector(M1, BASE)
  chex.assert_trees_all_close(jp.merge.apply_task_vectors(BASE, [tv]), M1, atol=1e-6)
  forgot = jp.merge.apply_task_vectors(M1, [tv], negate=True)
  chex.assert_trees_all_close(forgot, BASE, atol=1e-6)
  chex.assert_trees_all_close(
      jp.merge.apply_task_vectors(BASE, [tv, jp.merge.task_vector(M2, BASE)], [0.5, 2.0]),
      jp.merge.task_arithmetic(BASE, [M1, M2], weights=[0.5, 2.0]), atol=1e-6)
  new_base = jax.tree.map(lambda x: x + 1.0, BASE)
  chex.assert_trees_all_close(jp.merge.port_patch(new_base, BASE, M1),
                              jax.tree.map(lambda x: x + 1.0, M1), atol=1e-6)
