"""Layer-input capture: statistics collected in the forward pass == statistics of captured rows."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams.calib import block_of, capture_inputs, collect_stats, linear_order
from jaxparams.calib.capture import capture_calls, intercept


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


def _tiny_llama():
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24,
                              num_hidden_layers=2, num_attention_heads=2)
  model = jp.models.Llama(cfg)
  ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 32)
  return model, model.init(jax.random.key(1), ids)["params"], ids


def test_capture_calls_reads_what_capture_inputs_reads_and_steers_inside_jit():
  model, params, ids = _tiny_llama()
  down = "layers_1/mlp/down_proj"
  _, ins, outs = capture_calls(model, params, ids, inputs=[down], outputs=["layers_0"])
  rows = capture_inputs(model, params, ids, paths=[down + "/kernel"])[down + "/kernel"]
  # (capture_inputs is jit-compiled, capture_calls here eager: equal up to fusion rounding)
  np.testing.assert_allclose(np.asarray(ins[down]).reshape(rows.shape), np.asarray(rows),
                             rtol=1e-4, atol=1e-6)
  assert outs["layers_0"].shape == (2, 7, 16)

  # Steering the block output of layer 0 (adding v to the residual stream) under jit and grad:
  # v = 0 gives the plain model, the read output is the block's own (before the steering),
  # and the loss depends on v.
  def loss(v):
    logits, _, o = capture_calls(model, params, ids, outputs=["layers_0"],
                                 steer_outputs={"layers_0": lambda h: h + v})
    return jnp.sum(logits ** 2), o["layers_0"]

  (val, h0), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.zeros(16))
  np.testing.assert_allclose(np.asarray(h0), np.asarray(outs["layers_0"]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(val), float(jnp.sum(model.apply({"params": params}, ids) ** 2)),
                             rtol=1e-5)
  assert float(jnp.abs(g).sum()) > 0


def test_capture_calls_patterns_kinds_and_missing_paths():
  model, params, ids = _tiny_llama()
  _, ins, _ = capture_calls(model, params, ids, inputs=[re.compile(r"layers_\d+/mlp/down_proj")])
  assert list(ins) == ["layers_0/mlp/down_proj", "layers_1/mlp/down_proj"]
  # A kind filter that does not fit, and a path the model lacks: nothing read.
  _, ins, outs = capture_calls(model, params, ids, inputs=["layers_0/mlp/down_proj"],
                               outputs=["layers_9"],
                               kinds={"layers_0/mlp/down_proj": jp.models.LayerNorm})
  assert ins == {} and outs == {}


def test_intercept_hooks_and_bad_keys():
  model, params, ids = _tiny_llama()
  seen = []

  def hook(path, next_fun, a, kw):
    seen.append(path)
    return next_fun(*a, **kw)

  with intercept({re.compile(r".*/q_proj"): hook, "layers_1": hook}):
    model.apply({"params": params}, ids)
  assert seen == ["layers_0/attn/q_proj", "layers_1", "layers_1/attn/q_proj"]
  with pytest.raises(ValueError, match="module paths"):
    with intercept({3: hook}):
      pass
