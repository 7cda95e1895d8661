"""Mixed precision under a budget: the allocation meets the target and is the brute-force
optimum on convex error curves; layer errors are the relative output errors they claim."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.calib import InputStats
from jaxparams.quant.mixed import allocate_bits, layer_errors, mean_bits, mixed_rules
from jaxparams.quant.rtn import RTNConfig, rtn


def test_allocation_meets_budget_and_matches_brute_force_on_convex_curves():
  rng = np.random.default_rng(0)
  for trial in range(20):
    paths = [f"l{i}" for i in range(5)]
    sizes = {p: int(rng.choice([64, 128, 256])) for p in paths}
    errors = {p: {b: float(rng.uniform(0.1, 10)) * 4.0 ** -b * rng.uniform(0.5, 2)
                  for b in (2, 3, 4)} for p in paths}
    for target in (2.5, 3.0, 3.5):
      got = allocate_bits(errors, sizes, target)
      assert mean_bits(got, sizes) <= target + 1e-9
      best = min((sum(errors[p][b] for p, b in zip(paths, combo)), combo)
                 for combo in itertools.product((2, 3, 4), repeat=5)
                 if mean_bits(dict(zip(paths, combo)), sizes) <= target + 1e-9)
      mine = sum(errors[p][got[p]] for p in paths)
      np.testing.assert_allclose(mine, best[0], rtol=1e-12)   # the exact optimum
  with pytest.raises(ValueError, match="below the narrowest"):
    allocate_bits({"a": {2: 1.0, 3: 0.5}}, {"a": 10}, 1.5)


def test_layer_errors_are_relative_output_errors():
  x = jax.random.normal(jax.random.key(0), (256, 64))
  w = jax.random.normal(jax.random.key(1), (64, 16))
  st = InputStats.from_inputs(x)
  e = layer_errors({"a": w}, {"a": st}, "rtn", {"group_size": 32}, bits=(2, 4))
  d = rtn(w, RTNConfig(bits=2, group_size=32)).dequantize(jnp.float32) - w
  want = float(jnp.sum((x @ d) ** 2) / jnp.sum((x @ w) ** 2))
  np.testing.assert_allclose(e["a"][2], want, rtol=1e-4)
  assert e["a"][4] < e["a"][2]
  assert mixed_rules({"a": 3}, "gptq", {"group_size": 64}) == [
      ("a", ("gptq", {"group_size": 64, "bits": 3}))]
