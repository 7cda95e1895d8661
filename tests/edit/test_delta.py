"""Deltas on their own (cheap, default run): re-apply and export bit-identical, rollback exact.

The end-to-end MEMIT version (target optimisation on a Llama) is in test_edit_model.py (slow).
"""

import numpy as np
import jax.numpy as jnp

from jaxparams import tree as jtree
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import solve


def test_delta_reapply_rollback_export_bit_exact(tmp_path):
  rng = np.random.default_rng(0)
  params = {f"layers_{l}": {"mlp": {"down_proj": {"kernel": jnp.asarray(
      rng.normal(size=(24, 12)), jnp.float32)}}} for l in range(3)}
  updates = {}
  for l in (0, 2):
    keys = jnp.asarray(rng.normal(size=(24, 5)), jnp.float32)
    resid = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
    cov = jnp.asarray(np.cov(rng.normal(size=(24, 200))), jnp.float32)
    updates[f"layers_{l}/mlp/down_proj/kernel"] = solve.memit_delta(keys, resid, cov, 1.0)
  new, d = delta_lib.add_delta(params, updates, {"method": "memit"})
  flat_p, flat_new = jtree.flatten(params), jtree.flatten(new)
  # Floating-point subtraction would not restore the originals: rollback must not rely on it.
  path = "layers_0/mlp/down_proj/kernel"
  assert not np.array_equal(np.asarray(flat_new[path] - updates[path]), np.asarray(flat_p[path]))
  delta_lib.save_delta(d, tmp_path / "delta")
  loaded = delta_lib.load_delta(tmp_path / "delta")
  back = jtree.flatten(delta_lib.rollback(new, d))
  back2 = jtree.flatten(delta_lib.rollback(new, loaded))
  again = jtree.flatten(delta_lib.apply_delta(params, d))
  again2 = jtree.flatten(delta_lib.apply_delta(params, loaded))
  for p, x in flat_p.items():
    np.testing.assert_array_equal(np.asarray(back[p]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(back2[p]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(again[p]), np.asarray(flat_new[p]))
    np.testing.assert_array_equal(np.asarray(again2[p]), np.asarray(flat_new[p]))
  assert sorted(d.updates) == sorted(updates) and loaded.meta["method"] == "memit"
  assert not np.array_equal(np.asarray(flat_new[path]), np.asarray(flat_p[path]))
