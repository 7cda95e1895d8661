"""Net2Net: widening/deepening MLPs and the reference Llama keeps outputs (≤1e-6 rel, fp32)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.models.llama import Llama, LlamaConfig
from jaxparams.scale import net2net as n2n


def _mlp_np(params, order, x, act):
  h = np.asarray(x, np.float64)
  for i, name in enumerate(order):
    layer = params[name]
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer.get("bias", 0.0), np.float64)
    if i < len(order) - 1:
      h = act(h)
  return h


def _rand_mlp(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return {f"Dense_{i}": {"kernel": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=(b,)), jnp.float32)}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def _rel(a, b):
  """Relative error ‖a − b‖ / ‖a‖ (Frobenius)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


RELU = lambda h: np.maximum(h, 0.0)
TANH = np.tanh


def test_wider_mapping_counts():
  g, c = n2n.wider_mapping(3, 8, jax.random.PRNGKey(1))
  assert g[:3].tolist() == [0, 1, 2] and g.max() < 3
  np.testing.assert_array_equal(c, np.bincount(g)[g])


@pytest.mark.parametrize("act", [RELU, TANH])
def test_net2wider_mlp_exact(act):
  params = _rand_mlp([5, 7, 6, 3])
  order = ["Dense_0", "Dense_1", "Dense_2"]
  x = np.random.default_rng(0).normal(size=(11, 5))
  wide = n2n.net2wider_mlp(params, layer=0, new_width=12, key=jax.random.PRNGKey(2))
  wide = n2n.net2wider_mlp(wide, layer="Dense_1", new_width=15)
  assert wide["Dense_0"]["kernel"].shape == (5, 12) and wide["Dense_1"]["kernel"].shape == (12, 15)
  assert wide["Dense_2"]["kernel"].shape == (15, 3)
  assert _rel(_mlp_np(params, order, x, act), _mlp_np(wide, order, x, act)) <= 1e-6
  noisy = n2n.net2wider_mlp(params, layer=0, new_width=12, key=jax.random.PRNGKey(2), noise=0.1)
  assert _rel(_mlp_np(params, order, x, act), _mlp_np(noisy, order, x, act)) > 1e-4


def test_net2deeper_mlp_exact_and_errors():
  params = _rand_mlp([4, 6, 2])
  x = np.random.default_rng(1).normal(size=(9, 4))
  deep, order = n2n.net2deeper_mlp(params, after=0, activation="relu")
  assert order == ["Dense_0", "Dense_1", "Dense_2"]
  chex.assert_trees_all_equal(deep["Dense_2"], params["Dense_1"])
  assert _rel(_mlp_np(params, ["Dense_0", "Dense_1"], x, RELU), _mlp_np(deep, order, x, RELU)) == 0.0
  # The same identity layer does not preserve tanh -- hence the error.
  assert _rel(_mlp_np(params, ["Dense_0", "Dense_1"], x, TANH), _mlp_np(deep, order, x, TANH)) > 1e-3
  for act in ("tanh", "sigmoid", "gelu", "silu"):
    with pytest.raises(ValueError, match="idempotent"):
      n2n.net2deeper_mlp(params, after=0, activation=act)
  with pytest.raises(ValueError, match="output layer"):
    n2n.net2deeper_mlp(params, after=1, activation="relu")


def test_net2wider_errors():
  params = _rand_mlp([4, 6, 2])
  with pytest.raises(ValueError, match="cannot shrink"):
    n2n.net2wider_mlp(params, layer=0, new_width=5)
  with pytest.raises(ValueError, match="output layer"):
    n2n.net2wider_mlp(params, layer=1, new_width=8)
  with pytest.raises(ValueError, match="unknown layer"):
    n2n.net2wider_mlp(params, layer="Dense_9", new_width=8)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    n2n.net2wider_mlp(params, layer=0, new_width=8, noise=0.1)


CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)


def _random_params(module, *args, seed=0, std=0.2):
  """Random params of a module's shapes (numpy: no init compile); norm scales around 1."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray((1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
                                  + std * rng.normal(size=s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def llama():
  ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 10)).astype(np.int32)
  params = _random_params(Llama(CFG), ids)
  return ids, params, _apply(CFG, params, ids)


def _apply(cfg, params, ids):
  return jax.jit(lambda p: Llama(cfg).apply({"params": p}, ids))(params)


def test_widen_llama_ffn_heads_and_deepen_exact(llama):
  ids, params, logits = llama
  p1, c1 = n2n.widen_llama_ffn(params, CFG, 80, jax.random.PRNGKey(5))
  assert c1.intermediate_size == 80 and p1["layers_1"]["mlp"]["down_proj"]["kernel"].shape == (80, 32)
  p2, c2 = n2n.widen_llama_heads(p1, c1, 8, jax.random.PRNGKey(6))
  assert (c2.num_attention_heads, c2.num_key_value_heads, c2.head_dim_) == (8, 4, 8)
  assert p2["layers_0"]["attn"]["k_proj"]["kernel"].shape == (32, 32)
  p3, c3 = n2n.deepen_llama(p2, c2, [0, 2, 2])
  assert c3.num_hidden_layers == 5
  chex.assert_trees_all_equal(p3["layers_1"], p2["layers_0"])
  for cfg, p in ((c1, p1), (c2, p2), (c3, p3)):
    rel = _rel(logits, _apply(cfg, p, ids))
    assert rel <= 1e-6, (cfg, rel)


def test_widen_llama_hidden_exact_and_neurons_kept(llama):
  """Residual stream 32 -> 96 (biases, GQA): same logits, same FFN pre-activations, HF config."""
  ids, params, logits = llama
  p1, c1 = n2n.widen_llama_hidden(params, CFG, 96)
  assert (c1.hidden_size, c1.head_dim_, c1.num_attention_heads) == (96, 8, 4)
  assert p1["embed_tokens"]["embedding"].shape == (64, 96)
  assert p1["layers_1"]["mlp"]["down_proj"]["kernel"].shape == (48, 96)
  assert p1["lm_head"]["kernel"].shape == (96, 64)
  assert LlamaConfig.from_hf_dict(c1.to_hf_dict()) == c1   # head_dim written out
  assert _rel(logits, _apply(c1, p1, ids)) <= 1e-6
  # Each FFN neuron sees the same input: the stream's copies hold the same value.
  x = np.random.default_rng(3).normal(size=(5, 32)).astype(np.float32)
  gate = lambda p, v: v @ np.asarray(p["layers_0"]["mlp"]["gate_proj"]["kernel"])
  np.testing.assert_allclose(gate(p1, np.tile(x, 3)), gate(params, x), rtol=1e-5, atol=1e-6)
  p2, c2 = n2n.widen_llama_ffn(p1, c1, 96)   # composes with FFN growth
  assert _rel(logits, _apply(c2, p2, ids)) <= 1e-6


def test_widen_llama_hidden_errors(llama):
  _, params, _ = llama
  with pytest.raises(ValueError, match="must be a multiple of hidden_size=32"):
    n2n.widen_llama_hidden(params, CFG, 48)
  tied = LlamaConfig(**{**CFG.__dict__, "tie_word_embeddings": True})
  with pytest.raises(ValueError, match="tied embeddings"):
    n2n.widen_llama_hidden({k: v for k, v in params.items() if k != "lm_head"}, tied, 64)
  odd = {**params, "extra": {"kernel": jnp.zeros((32, 2))}}
  with pytest.raises(ValueError, match="unknown leaf 'extra/kernel'"):
    n2n.widen_llama_hidden(odd, CFG, 64)


def test_widen_llama_noise_breaks_symmetry(llama):
  ids, params, logits = llama
  p1, c1 = n2n.widen_llama_ffn(params, CFG, 64, jax.random.PRNGKey(5), noise=0.05)
  assert _rel(logits, _apply(c1, p1, ids)) > 1e-5


def test_llama_errors(llama):
  _, params, _ = llama
  with pytest.raises(ValueError, match="cannot shrink"):
    n2n.widen_llama_ffn(params, CFG, 32)
  with pytest.raises(ValueError, match="cannot shrink"):
    n2n.widen_llama_heads(params, CFG, 2)
  with pytest.raises(ValueError, match="multiple of the GQA group"):
    n2n.widen_llama_heads(params, CFG, 7)
  # 6 is a multiple of the group size 2 but does not divide hidden_size 32: transformers refuses
  # LlamaConfig(hidden_size=32, num_attention_heads=6, ...) whatever its head_dim.
  with pytest.raises(ValueError, match="does not divide hidden_size=32"):
    n2n.widen_llama_heads(params, CFG, 6)
  with pytest.raises(ValueError, match="out of range"):
    n2n.deepen_llama(params, CFG, [3])
  with pytest.raises(ValueError, match="num_hidden_layers"):
    n2n.deepen_llama(params, LlamaConfig(**{**CFG.__dict__, "num_hidden_layers": 4}), [0])


def test_with_models_mlp():
  from jaxparams.models.mlp import MLP
  x = np.random.default_rng(7).normal(size=(6, 5)).astype(np.float32)
  mlp = MLP(features=(8, 3), activation="relu")
  params = jax.jit(mlp.init)(jax.random.PRNGKey(8), x)["params"]
  want = jax.jit(mlp.apply)({"params": params}, x)
  wide = n2n.net2wider_mlp(params, layer="layers_0", new_width=13, key=jax.random.PRNGKey(9))
  deep, order = n2n.net2deeper_mlp(wide, after=0, activation="relu")
  assert order == ["layers_0", "layers_1", "layers_2"]
  feats = n2n.mlp_features(deep)
  assert feats == (13, 13, 3)
  assert _rel(want, jax.jit(MLP(features=feats).apply)({"params": deep}, x)) <= 1e-6
