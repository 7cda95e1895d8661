"""MergeLock: exact function preservation (BERT, Llama with RoPE + GQA, ReLU MLP), inverse,
and merge collapse on the digits suite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.merge import learned
from jaxparams.merge.learned import mergelock


def test_bert_lock_preserves_outputs_and_unlocks():
  from jaxparams.models import bert
  cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=8)
  m = bert.Bert(cfg)
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 50)
  p = m.init(jax.random.key(0), ids)["params"]
  locked, secret = mergelock.lock_attention(p, jax.random.key(2), num_heads=2,
                                            modules=["layers_0/attn", "layers_1/attn"])
  f = lambda q: m.apply({"params": q}, ids)
  out, ref = jax.tree.leaves(f(locked)), jax.tree.leaves(f(p))
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)
  diff = jnp.abs(locked["layers_0"]["attn"]["query"]["kernel"] - p["layers_0"]["attn"]["query"]["kernel"])
  assert float(diff.max()) > 1e-2
  assert jp.tree.allclose(mergelock.unlock(locked, secret), p, rtol=1e-4, atol=1e-5)


def test_llama_rope_gqa_lock_preserves_logits():
  from jaxparams.models import llama
  cfg = llama.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2)
  m = llama.Llama(cfg)
  ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 50)
  p = m.init(jax.random.key(0), ids)["params"]
  locked, secret = mergelock.lock_attention(p, jax.random.key(3), modules=["layers_0/attn"],
                                            num_heads=4, num_kv_heads=2, rope=True,
                                            names=mergelock.LLAMA_NAMES)
  np.testing.assert_allclose(m.apply({"params": locked}, ids), m.apply({"params": p}, ids),
                             atol=1e-5)
  assert jp.tree.allclose(mergelock.unlock(locked, secret), p, rtol=1e-4, atol=1e-5)


def test_mlp_lock_on_suite_preserves_expert_and_collapses_merge():
  from jaxparams.demo import digits_suite as ds
  s = ds.build_suite(("rotate", "mirror"), hidden=(64, 32), activation="relu", copies=2,
                     pretrain_steps=300, finetune_steps=150)
  locked, secret = mergelock.lock_mlp(s.experts[0], jax.random.key(0),
                                      pairs=[("layers_0", "layers_1")])
  x = jnp.asarray(s.tasks[0].x_test)
  np.testing.assert_allclose(ds.forward(s.module, locked, s.tasks[0].head, x),
                             ds.forward(s.module, s.experts[0], s.tasks[0].head, x),
                             rtol=1e-5, atol=1e-4)
  assert jp.tree.allclose(mergelock.unlock(locked, secret), s.experts[0], rtol=1e-5, atol=1e-6)
  ok = ds.evaluate(s, jp.merge.task_arithmetic(s.pretrained, s.experts, lam=0.5))
  bad = ds.evaluate(s, jp.merge.task_arithmetic(s.pretrained, [locked, s.experts[1]], lam=0.5))
  assert bad[s.names[0]] < ok[s.names[0]] - 0.2, (ok, bad)


@pytest.mark.slow
def test_minilm_lock_preserves_embeddings_and_merge_moves_them():
  from jaxparams.models import minilm
  module, params, config, tok = minilm.load_minilm()
  n = config.num_hidden_layers
  locked, _ = mergelock.lock_attention(params, jax.random.key(0), num_heads=config.num_attention_heads,
                                       modules=[f"layers_{i}/attn" for i in range(n)])
  sents = ["Merging models in weight space.", "A locked model computes the same function."]
  e0 = minilm.embed(sents, model=(module, params, config, tok))
  e1 = minilm.embed(sents, model=(module, locked, config, tok))
  np.testing.assert_allclose(e1, e0, atol=1e-5)
  merged = jp.merge.linear([params, locked])  # a locked copy averaged with the original
  e2 = minilm.embed(sents, model=(module, merged, config, tok))
  assert float(np.min(np.sum(e2 * e0, -1))) < 0.99  # cosine to the original drops
