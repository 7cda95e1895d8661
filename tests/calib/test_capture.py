"""Layer-input capture: statistics collected in the forward pass == statistics of captured rows."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams.calib import block_of, capture_inputs, collect_stats, linear_order


def test_collect_stats_equals_captured_rows_with_padding():
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24,
                              num_hidden_layers=2, num_attention_heads=2)
  model = jp.models.Llama(cfg)
  ids = jax.random.randint(jax.random.key(0), (3, 9), 0, 32)
  params = model.init(jax.random.key(1), ids)["params"]
  mask = np.ones((3, 9), np.int32)
  mask[1, 5:] = 0
  batch = {"input_ids": ids, "attention_mask": jnp.asarray(mask)}
  xs = capture_inputs(model, params, **batch)
  stats = collect_stats(model, params, [batch, batch])
  order = linear_order(model, params, batch)
  assert list(xs) == order and set(stats) == set(order)
  assert [block_of(p) for p in order[:7]] == ["layers_0"] * 7
  for path, x in xs.items():
    x = np.asarray(x, np.float64)
    assert x.shape[0] == mask.sum()
    s = stats[path]
    assert s.n == 2 * mask.sum()
    np.testing.assert_allclose(np.asarray(s.xtx), 2 * x.T @ x, rtol=1e-4,
                               atol=1e-4 * np.abs(x).max() ** 2)
