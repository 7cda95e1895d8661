"""jaxparams.predict: graphs, the low-rank and tiled decoders, prediction and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams import predict
from jaxparams.predict import decoders

M = jp.models
_SMALL = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=2)
FAMILIES = {
    "llama": lambda: M.LlamaConfig(**_SMALL, num_key_value_heads=1),
    "gpt2": lambda: predict.make_config("gpt2", depth=2, width=16, heads=2, ffn=64,
                                        vocab_size=32),
    "mistral": lambda: M.MistralConfig(**_SMALL, sliding_window=4),
    "qwen2": lambda: M.Qwen2Config(**_SMALL),
    "qwen3": lambda: M.Qwen3Config(**_SMALL, head_dim=8),
    "phi3": lambda: M.Phi3Config(**_SMALL),
    "tied": lambda: M.LlamaConfig(**_SMALL, tie_word_embeddings=True),
    "gemma2": lambda: M.Gemma2Config(**_SMALL, head_dim=8, query_pre_attn_scalar=8),
    "gemma3": lambda: M.Gemma3Config(**_SMALL, head_dim=8, query_pre_attn_scalar=8),
    "bert": lambda: M.BertConfig(**_SMALL),
}


def _hn(decoder="logah", **kw):
  cfg = predict.HypernetConfig(decoder=decoder, hid=16, layers=1, heads=2, rank=3,
                               max_width=64, tile=8, **kw)
  return predict.init(jax.random.key(0), cfg)


@pytest.mark.parametrize("decoder", predict.DECODERS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_predicted_tree_matches_the_target_exactly(family, decoder):
  cfg = FAMILIES[family]()
  module = M.model_for_config(cfg)
  ids = jnp.zeros((1, 4), jnp.int32)
  target = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]
  hn = _hn(decoder)
  got = jax.eval_shape(lambda w: predict.params(predict.Hypernet(w, hn.config), cfg), hn.weights)
  assert jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(got)
  for path, t in jp.tree.flatten(target).items():
    g = jp.tree.flatten(got)[path]
    assert (g.shape, g.dtype) == (t.shape, t.dtype), path


def test_predicted_tree_runs_in_the_model_and_differentiates():
  cfg = FAMILIES["qwen3"]()
  module = M.model_for_config(cfg)
  ids = jnp.arange(6, dtype=jnp.int32)[None]
  hn = _hn()
  g = predict.build(cfg)

  def loss(w):
    p = predict.params_from_graph(predict.Hypernet(w, hn.config), g)
    return predict.lm_loss(p, module, ids)
  value, grads = jax.value_and_grad(loss)(hn.weights)
  assert np.isfinite(float(value))
  assert float(jnp.abs(grads["decoder"]["l2"]["w"]).sum()) > 0  # the LM loss reaches the decoder


def test_graph_is_traced_not_typed():
  g = predict.build(FAMILIES["llama"]())
  # every leaf owned by a node; nodes in topological order; one residual sum per sub-block
  assert set(g.leaf_node) == set(g.leaves)
  assert all(i < j for i, j in g.edges)
  assert g.node_types.count("sum") == 2 * 2 and g.node_types.count("linear") == 7 * 2 + 1
  q = g.leaf_node["layers_0/attn/q_proj/kernel"]
  k = g.leaf_node["layers_0/attn/k_proj/kernel"]
  qk = [j for (i, j) in g.edges if i == q and (k, j) in set(g.edges)]
  assert [g.node_types[j] for j in qk] == ["matmul"]
  # deeper and wider configs: same node count per layer, more layers -> more nodes
  g4 = predict.build(M.LlamaConfig(**{**_SMALL, "num_hidden_layers": 4, "hidden_size": 64}))
  assert g4.n_nodes - g.n_nodes == 2 * (g.n_nodes - predict.build(
      M.LlamaConfig(**{**_SMALL, "num_hidden_layers": 1})).n_nodes)


def test_lowrank_decoder_rank_is_bounded_by_r():
  r = 3
  hn = _hn("logah")
  assert hn.config.rank == r
  tree = jp.tree.flatten(predict.params(hn, FAMILIES["llama"]()))
  for path, x in tree.items():
    if x.ndim == 2:
      sv = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
      assert int((sv > 1e-4 * sv[0]).sum()) <= r, path
      assert min(x.shape) > r  # the bound is not trivially met
  # a width beyond the training range still gets rank <= r (no tiling below max_width)
  w = decoders.apply_lowrank(hn.weights["decoder"], jnp.ones((1, 16)), rank=r, ck=64)
  big = decoders.leaf(w, 0, (64, 48), False, "lowrank")
  sv = np.linalg.svd(np.asarray(big, np.float64), compute_uv=False)
  assert big.shape == (64, 48) and int((sv > 1e-4 * sv[0]).sum()) == r


def test_matrices_rescaled_to_init_std_and_vectors_bounded():
  flat = jp.tree.flatten(predict.params(_hn(), FAMILIES["gpt2"]()))
  for path, x in flat.items():
    if x.ndim == 2:
      np.testing.assert_allclose(float(jnp.std(x)), 0.02, rtol=1e-3, err_msg=path)
    elif path.endswith("bias"):
      assert float(jnp.abs(x).max()) < 1.0
    else:
      assert 0.0 < float(x.min()) and float(x.max()) < 2.0


def test_decoder_sizes_follow_the_formulas():
  hid, r, ck, t = 16, 3, 64, 8
  mlp = hid * 4 * hid + 4 * hid + 4 * hid * 8 * hid + 8 * hid
  low = mlp + 8 * hid * 2 * r * r + 2 * r * r + r * ck + ck
  tiled = mlp + 8 * hid * t * t + t * t + hid * 2 * hid + 2 * hid + 2 * hid * 2 * t + 2 * t
  assert predict.decoder_params(_hn("logah")) == low
  assert predict.decoder_params(_hn("tiled")) == tiled
  assert decoders.lowrank_size(hid=hid, rank=r, ck=ck) == low
  assert decoders.tiled_size(hid=hid, tile=t) == tiled


def test_tiling_repeats_the_tile():
  x = jnp.arange(6.0).reshape(2, 3)
  y = decoders.tile(x, (5, 7))
  np.testing.assert_array_equal(np.asarray(y), np.tile(np.arange(6.0).reshape(2, 3), (3, 3))[:5, :7])


def _fit(key):
  cfgs = predict.sample_configs(2, seed=0, depth=(1, 1), width=(8, 8), vocab_size=32)
  toks = np.asarray(jax.random.randint(jax.random.key(7), (500,), 0, 32))
  return predict.fit(_hn(), cfgs, toks, predict.FitConfig(steps=3, batch_size=2, seq_len=8,
                                                           warmup=1), key=key)


def test_training_is_deterministic_under_a_key():
  (a, la), (b, lb) = _fit(jax.random.key(3)), _fit(jax.random.key(3))
  assert la == lb and all(np.isfinite(r["loss"]) for r in la)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda x, y: bool(jnp.array_equal(x, y)), a.weights, b.weights))
  assert not jnp.array_equal(a.weights["decoder"]["l2"]["w"],
                             _hn().weights["decoder"]["l2"]["w"])  # it did train


def test_predicted_tree_writes_with_to_hf(tmp_path):
  cfg = FAMILIES["gpt2"]()
  tree = predict.params(_hn(), cfg)
  M.to_hf(tree, cfg, tmp_path / "out")
  _, back, cfg2 = M.from_hf(tmp_path / "out")
  assert cfg2.hidden_size == cfg.hidden_size and cfg2.attention_bias and cfg2.mlp_bias
  assert jp.tree.allclose(back, tree)


def test_bad_config_names_valid_values():
  with pytest.raises(ValueError, match="valid"):
    predict.HypernetConfig(decoder="ghn2")
  with pytest.raises(ValueError, match="valid"):
    predict.make_config("opt", depth=1, width=8, heads=1, ffn=8)
