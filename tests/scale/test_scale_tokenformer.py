"""TokenFormer: Pattention formula, exact growth with frozen τ, the √n_new variant, errors."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.scale import tokenformer as tf

CFG = tf.TokenFormerConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, qkv_tokens=16,
                           out_tokens=12, ffn_tokens=64, max_len=16)


def _gelu_np(x):
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _pattention_np(x, keys, values, tau, eps=1e-5):
  a = x.astype(np.float64) @ keys.astype(np.float64).T
  norm = np.sqrt((a ** 2).sum(-1, keepdims=True) + eps)
  return _gelu_np(a * tau / norm) @ values.astype(np.float64)


def _apply(cfg, params, ids):
  return jax.jit(lambda p, i: tf.TokenFormer(cfg).apply({"params": p}, i))(params, ids)


@pytest.fixture(scope="module")
def model_and_params():
  ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)
  shapes = jax.eval_shape(tf.TokenFormer(CFG).init, jax.random.PRNGKey(0), ids)["params"]
  rng = np.random.default_rng(0)
  # Trained-like scales (std 0.2, norm scales around 1) rather than the 0.02 init: numpy, no compile.
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray((1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
                                  + 0.2 * rng.normal(size=s.shape), jnp.float32), shapes)
  logits = _apply(CFG, params, ids)
  return ids, params, logits


def test_pattention_matches_formula():
  layer = tf.Pattention(num_tokens=6, features=5, tau=2.5, init_std=1.0)
  x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
  p = jax.jit(layer.init)(jax.random.PRNGKey(3), x)
  got = jax.jit(layer.apply)(p, x)
  want = _pattention_np(np.asarray(x), np.asarray(p["params"]["key_tokens"]),
                        np.asarray(p["params"]["value_tokens"]), 2.5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert p["params"]["key_tokens"].shape == (6, 4)
  assert p["params"]["value_tokens"].shape == (6, 5)


def test_default_tau_is_sqrt_n():
  assert CFG.tau("ffn") == 8.0 and CFG.tau("qkv") == 4.0
  assert dataclasses.replace(CFG, ffn_tau=3.0).tau("ffn") == 3.0


def test_grow_is_exact(model_and_params):
  ids, params, logits = model_and_params
  new_params, new_cfg = tf.grow(params, CFG, {"qkv": 16, "out": 4, "ffn": 64})
  assert (new_cfg.qkv_tokens, new_cfg.out_tokens, new_cfg.ffn_tokens) == (32, 16, 128)
  assert new_cfg.tau("ffn") == CFG.tau("ffn") == 8.0          # τ frozen at √64, not √128
  blk = new_params["blocks_1"]
  assert blk["ffn"]["key_tokens"].shape == (128, 32)
  np.testing.assert_array_equal(np.asarray(blk["ffn"]["key_tokens"][64:]), 0.0)
  assert float(jnp.abs(blk["ffn"]["value_tokens"][64:]).max()) > 0.0   # trainable values
  chex.assert_trees_all_equal(blk["ffn"]["key_tokens"][:64], params["blocks_1"]["ffn"]["key_tokens"])
  grown = _apply(new_cfg, new_params, ids)
  rel = float(jnp.abs(grown - logits).max() / jnp.abs(logits).max())
  assert rel <= 1e-6, rel
  # Grow again (τ stays at the first model's value): still the same function.
  p2, c2 = tf.grow(new_params, new_cfg, 8, key=jax.random.PRNGKey(4))
  assert c2.tau("qkv") == 4.0 and c2.qkv_tokens == 40
  again = _apply(c2, p2, ids)
  assert float(jnp.abs(again - logits).max() / jnp.abs(logits).max()) <= 1e-6


def test_rescale_tau_variant_changes_function(model_and_params):
  ids, params, logits = model_and_params
  new_params, new_cfg = tf.grow(params, CFG, {"qkv": 16, "out": 12, "ffn": 64}, rescale_tau=True)
  assert new_cfg.tau("ffn") == math.sqrt(128)
  grown = _apply(new_cfg, new_params, ids)
  rel = float(jnp.abs(grown - logits).max() / jnp.abs(logits).max())
  assert rel > 0.05, rel


def test_rescale_tau_single_layer_matches_formula():
  """Reference PyTorch path: τ = √n_new; one layer n 128 -> 192 changes the output by ~24%."""
  n, m = 128, 64
  rng = np.random.default_rng(5)
  x, keys, values = (rng.normal(size=s).astype(np.float32) for s in ((64, 32), (n, 32), (n, 32)))
  keys2 = np.concatenate([keys, np.zeros((m, 32), np.float32)])
  values2 = np.concatenate([values, rng.normal(size=(m, 32)).astype(np.float32)])
  run = lambda layer, k, v: jax.jit(layer.apply)({"params": {"key_tokens": k, "value_tokens": v}}, x)
  old = run(tf.Pattention(num_tokens=n, features=32), keys, values)
  frozen = run(tf.Pattention(num_tokens=n + m, features=32, tau=math.sqrt(n)), keys2, values2)
  rescaled = run(tf.Pattention(num_tokens=n + m, features=32), keys2, values2)
  np.testing.assert_allclose(np.asarray(frozen), np.asarray(old), rtol=1e-5, atol=1e-5)
  rel = float(np.linalg.norm(rescaled - old) / np.linalg.norm(old))
  assert 0.15 < rel < 0.35, rel
  want = _pattention_np(np.asarray(x), np.asarray(keys2), np.asarray(values2), math.sqrt(n + m))
  np.testing.assert_allclose(np.asarray(rescaled), want, rtol=1e-4, atol=1e-4)


def test_zero_values_are_a_saddle_normal_values_train():
  """New zero keys with zero values get zero gradients; with normal values the keys train."""
  layer = tf.Pattention(num_tokens=8, features=6, tau=math.sqrt(8), init_std=1.0)
  x = np.random.default_rng(9).normal(size=(5, 4)).astype(np.float32)
  params = jax.jit(layer.init)(jax.random.PRNGKey(10), x)["params"]
  pcfg = dataclasses.replace(CFG, qkv_tokens=8, qkv_tau=math.sqrt(8))
  for value_init, expect_zero in (("zeros", True), ("normal", False)):
    grown, _ = tf.grow({"query": params}, pcfg, {"qkv": 4}, value_init=value_init, value_std=1.0)
    big = tf.Pattention(num_tokens=12, features=6, tau=math.sqrt(8))
    g = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(big.apply({"params": p}, x)))))(grown["query"])
    new_grad = float(jnp.abs(g["key_tokens"][8:]).max())
    assert (new_grad == 0.0) == expect_zero, (value_init, new_grad)


def test_grow_errors(model_and_params):
  _, params, _ = model_and_params
  with pytest.raises(ValueError, match="unknown Pattention kinds"):
    tf.grow(params, CFG, {"mlp": 3})
  with pytest.raises(ValueError, match=">= 0"):
    tf.grow(params, CFG, -1)
  with pytest.raises(ValueError, match="config.ffn_tokens"):
    tf.grow(params, dataclasses.replace(CFG, ffn_tokens=32), 4)
  with pytest.raises(ValueError, match="value_init"):
    tf.grow(params, CFG, 4, value_init="ones")
  with pytest.raises(ValueError, match="no Pattention"):
    tf.grow({"a": {"kernel": jnp.ones(2)}}, CFG, 4)
  with pytest.raises(ValueError, match="divisible"):
    tf.TokenFormerConfig(d_model=30, n_heads=4)


def test_grow_optimizer_state(model_and_params):
  import optax
  _, params, _ = model_and_params
  opt = optax.adam(1e-3)
  state = opt.init(params)
  state = jax.jit(lambda st: jax.tree_util.tree_map(lambda x: x + 1 if x.ndim else x, st))(state)
  new_params, _ = tf.grow(params, CFG, {"ffn": 8})
  new_state = tf.grow_optimizer_state(state, CFG, {"ffn": 8})
  chex.assert_trees_all_equal_shapes(opt.init(new_params), new_state)
  mu = new_state[0].mu["blocks_1"]["ffn"]["value_tokens"]
  np.testing.assert_array_equal(np.asarray(mu[64:]), 0.0)
  np.testing.assert_array_equal(np.asarray(mu[:64]), np.asarray(state[0].mu["blocks_1"]["ffn"]["value_tokens"]))
  assert int(new_state[0].count) == int(state[0].count)


def test_tokenformer_attention_mask_hides_padded_keys():
  """A masked (padding) token never influences the other positions; unmasked, it does."""
  from jaxparams.models import TokenFormer, TokenFormerConfig
  cfg = TokenFormerConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, qkv_tokens=8,
                          out_tokens=8, ffn_tokens=16, max_len=8)
  model = TokenFormer(cfg)
  ids = jax.random.randint(jax.random.PRNGKey(0), (1, 6), 1, 32)
  other = ids.at[0, 0].set(0)  # change only the padded position
  params = model.init(jax.random.PRNGKey(1), ids)
  mask = jnp.ones((1, 6)).at[0, 0].set(0)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(np.asarray(apply(params, ids, mask)[:, 1:]),
                             np.asarray(apply(params, other, mask)[:, 1:]), rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(apply(params, ids)[:, 1:]), np.asarray(apply(params, other)[:, 1:]),
                         atol=1e-4)
  np.testing.assert_array_equal(np.asarray(apply(params, ids, jnp.ones((1, 6)))),
                                np.asarray(apply(params, ids)))
