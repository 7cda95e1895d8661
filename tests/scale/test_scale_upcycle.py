"""Sparse upcycling: MoE from copies equals the dense model; experts from models; extraction."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.models.llama import Llama, LlamaConfig, LlamaMLP
from jaxparams.scale import upcycle as up

CFG = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, mlp_bias=True)


@jax.jit
def _ffn_init(key, shift):
  p = LlamaMLP(CFG).init(key, jnp.ones((1, CFG.hidden_size)))["params"]
  return jax.tree_util.tree_map(lambda w: w + 0.1 * shift, p)


def _ffn(seed):
  return _ffn_init(jax.random.PRNGKey(seed), jnp.float32(seed))


_dense = jax.jit(lambda p, x: LlamaMLP(CFG).apply({"params": p}, x))
_moe = jax.jit(up.moe_ffn, static_argnames=("top_k", "normalize_gates"))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_upcycled_ffn_equals_dense(top_k):
  dense = _ffn(1)
  x = np.random.default_rng(2).normal(size=(3, 7, CFG.hidden_size)).astype(np.float32)
  moe = up.upcycle_ffn(dense, 4, key=jax.random.PRNGKey(3), router_std=1.0)
  assert moe["experts"]["down_proj"]["kernel"].shape == (4, 24, 16)
  want = _dense(dense, x)
  assert _rel(want, _moe(moe, x, top_k=top_k)) <= 1e-6
  if top_k < 4:   # unnormalised top-k gates scale the output by Σ_topk p < 1
    assert _rel(want, _moe(moe, x, top_k=top_k, normalize_gates=False)) > 1e-3


def test_experts_from_models_routing_matches_manual():
  ffns = [_ffn(s) for s in (1, 2, 3)]
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, CFG.hidden_size)).astype(np.float32)
  router = rng.normal(size=(CFG.hidden_size, 3)).astype(np.float32)
  moe = up.experts_from_models(ffns, router=router)
  got = _moe(moe, x, top_k=2)
  logits = x.astype(np.float64) @ router.astype(np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  outs = np.stack([np.asarray(_dense(f, x)) for f in ffns], 1)
  want = np.zeros((5, CFG.hidden_size))
  for t in range(5):
    top = np.argsort(-probs[t])[:2]
    w = probs[t, top] / probs[t, top].sum()
    want[t] = (w[:, None] * outs[t, top]).sum(0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  for i, f in enumerate(ffns):
    chex.assert_trees_all_equal(up.extract_expert(moe, i), f)


def test_router_from_hidden_sends_prompts_to_their_expert():
  ffns = [_ffn(s) for s in (1, 2)]
  centres = 3.0 * np.eye(CFG.hidden_size, dtype=np.float32)[:2]
  rng = np.random.default_rng(0)
  hidden = [c + 0.1 * rng.normal(size=(8, CFG.hidden_size)).astype(np.float32) for c in centres]
  moe = up.experts_from_models(ffns, router=up.router_from_hidden(hidden, scale=10.0))
  for i, h in enumerate(hidden):
    want = _dense(ffns[i], h)
    assert _rel(want, _moe(moe, h, top_k=1)) <= 1e-6


def test_moe_module_and_llama_upcycling():
  ids = np.random.default_rng(6).integers(0, CFG.vocab_size, (2, 9)).astype(np.int32)
  rng = np.random.default_rng(7)
  shapes = jax.eval_shape(Llama(CFG).init, jax.random.PRNGKey(0), ids)["params"]
  params = jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), jnp.float32),
                                  shapes)
  dense = jax.jit(lambda p: Llama(CFG).apply({"params": p}, ids))(params)
  moe_params, mcfg = up.upcycle_llama(params, CFG, 4, top_k=2, key=jax.random.PRNGKey(8),
                                      router_std=1.0)
  moe = jax.jit(lambda p: up.MoELlama(mcfg).apply({"params": p}, ids))(moe_params)
  assert _rel(dense, moe) <= 1e-6
  # Module init gives the same layout as upcycling.
  init = jax.eval_shape(up.MoELlama(mcfg).init, jax.random.PRNGKey(0), ids)["params"]
  chex.assert_trees_all_equal_shapes(init, moe_params)
  back, cfg = up.extract_llama(moe_params, mcfg, 3)
  assert cfg == CFG
  chex.assert_trees_all_equal(back, params)


def test_upcycle_errors():
  ffn = _ffn(1)
  with pytest.raises(ValueError, match="top_k"):
    up.moe_ffn(up.upcycle_ffn(ffn, 2), jnp.ones((1, 16)), top_k=3)
  with pytest.raises(ValueError, match="num_experts"):
    up.upcycle_ffn(ffn, 0)
  with pytest.raises(ValueError, match="out of range"):
    up.extract_expert(up.upcycle_ffn(ffn, 2), 2)
  other = jax.eval_shape(LlamaMLP(LlamaConfig(**{**CFG.__dict__, "intermediate_size": 8})).init,
                         jax.random.PRNGKey(0), jnp.ones((1, 16)))["params"]
  with pytest.raises(ValueError, match="differ"):
    up.experts_from_models([ffn, other])
  with pytest.raises(ValueError, match="router has shape"):
    up.experts_from_models([ffn, ffn], router=jnp.ones((16, 3)))
  with pytest.raises(ValueError, match="gate_proj"):
    up.upcycle_ffn({"w": jnp.ones((2, 2))}, 2)
  with pytest.raises(ValueError, match="top_k"):
    up.MoELlamaConfig(llama=CFG, num_experts=2, top_k=3)


# ----------------------------------------------------------------- the MoE model of models/
def _upcycled_llama():
  import jaxparams as jp
  cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = Llama(cfg).init(jax.random.key(0), ids)["params"]
  mparams, mcfg = up.upcycle_llama(params, cfg, 3, top_k=2, key=jax.random.key(1), router_std=1.0)
  # distinct experts, so routing (and the router's dot) matters
  noise = lambda path, w: (w + 0.05 * jax.random.normal(jax.random.key(len(path)), w.shape)
                           if "experts" in jp.tree.path_str(path) else w)
  mparams = jax.jit(lambda p: jax.tree_util.tree_map_with_path(noise, p))(mparams)
  return mparams, mcfg


def test_moe_llama_is_models_llama_with_dot_and_quantized_experts():
  """An upcycled model runs quantized: every linear (attention, router, experts, head) gets
  a packed QArray through ``dot=``, equal to the model on the dequantized weights."""
  import jaxparams as jp
  from jaxparams.models import MoELlama
  from jaxparams.quant.rtn import RTNConfig, rtn
  assert up.MoELlama is MoELlama and issubclass(MoELlama, Llama)
  mparams, mcfg = _upcycled_llama()
  q = lambda w: rtn(w, RTNConfig(bits=4, group_size=32))

  def quantize(path, w):
    if not jp.tree.path_str(path).endswith("kernel"):
      return w
    if w.ndim == 3:  # experts stacked on axis 0: one QArray per expert, stacked leaf-wise
      return jax.tree.map(lambda *a: jnp.stack(a), *[q(w[e]) for e in range(w.shape[0])])
    return q(w)

  qparams = jax.tree_util.tree_map_with_path(quantize, mparams)
  deq = jax.tree.map(
      lambda x: (jax.vmap(lambda a: a.dequantize())(x) if x.codes.ndim == 3 else x.dequantize())
      if isinstance(x, jp.quant.QArray) else x, qparams,
      is_leaf=lambda x: isinstance(x, jp.quant.QArray))
  ids = jax.random.randint(jax.random.key(2), (2, 6), 0, 48)
  got = jax.jit(MoELlama(mcfg, dot=jp.quant.dot).apply)({"params": qparams}, ids)
  want = jax.jit(MoELlama(mcfg).apply)({"params": deq}, ids)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  calls = []
  counting = lambda x, w: (calls.append(1), x @ w.astype(x.dtype))[1]
  jax.eval_shape(MoELlama(mcfg, dot=counting).apply, {"params": mparams}, ids)
  # per layer: q, k, v, o, router, gate/up/down (vmapped over experts: traced once) + lm_head
  assert len(calls) == 8 + 1


def test_moe_llama_padding_mask_equals_unpadded_run():
  from jaxparams.models import MoELlama
  mparams, mcfg = _upcycled_llama()
  model = MoELlama(mcfg)
  apply = jax.jit(model.apply)
  seq = jax.random.randint(jax.random.key(3), (1, 5), 0, 48)
  pad = 3
  ids = jnp.concatenate([jnp.zeros((1, pad), seq.dtype), seq], axis=1)  # left padding
  mask = jnp.concatenate([jnp.zeros((1, pad)), jnp.ones((1, 5))], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
  want = apply({"params": mparams}, seq)
  got = apply({"params": mparams}, ids, attention_mask=mask, positions=positions)
  np.testing.assert_allclose(np.asarray(got[:, pad:]), np.asarray(want), rtol=1e-5, atol=1e-5)
  unmasked = apply({"params": mparams}, ids, positions=positions)
  assert not np.allclose(np.asarray(unmasked[:, pad:]), np.asarray(want), atol=1e-3)
