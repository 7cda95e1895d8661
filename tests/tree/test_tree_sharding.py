"""Sharded trees stay sharded through jp.tree.map / cast (8 fake CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxparams as jp


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.fail("tests/conftest.py must give 8 fake CPU devices (XLA_FLAGS).")
  return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))


def test_map_and_cast_keep_sharding(mesh):
  spec = NamedSharding(mesh, P("data", "model"))
  tree = {"layers": [{"kernel": jax.device_put(jnp.arange(64.0).reshape(8, 8), spec),
                      "bias": jax.device_put(jnp.ones(8), NamedSharding(mesh, P("model")))}]}
  out = jp.tree.map(lambda x: x * 2, tree, where="**/kernel")
  out = jp.tree.cast(out, jnp.bfloat16)
  k = out["layers"][0]["kernel"]
  assert k.sharding.is_equivalent_to(spec, 2)
  assert len(k.addressable_shards) == 8 and k.addressable_shards[0].data.shape == (2, 4)
  np.testing.assert_array_equal(np.asarray(k, np.float32), 2 * np.arange(64.0).reshape(8, 8))
  assert out["layers"][0]["bias"].sharding.is_equivalent_to(NamedSharding(mesh, P("model")), 1)

  jitted = jax.jit(lambda t: jp.tree.map(jnp.negative, t, where="**/kernel"))(tree)
  assert jitted["layers"][0]["kernel"].sharding.is_equivalent_to(spec, 2)


def test_summary_of_sharded_tree(mesh):
  x = jax.device_put(jnp.arange(16.0).reshape(4, 4), NamedSharding(mesh, P("data", None)))
  row = jp.tree.summary({"w": x}).rows[0]
  assert row.absmax == 15.0 and row.params == 16
