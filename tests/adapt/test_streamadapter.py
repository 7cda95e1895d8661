"""StreamAdapter: exact properties of the context mapping and the weight absorption."""

import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxparams import tree as jtree
from jaxparams.adapt import streamadapter as sa
from jaxparams.adapt import tree_api
from jaxparams.models import Llama, LlamaConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAM = sa.TaskFamily(n_in=4, n_out=6)
MC = LlamaConfig(vocab_size=FAM.vocab_size, hidden_size=16, intermediate_size=24,
                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=64)
SAC = sa.StreamAdapterConfig(num_queries=3, state_dim=8, chunk_size=4)


def _setup():
  model = Llama(MC)
  base = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  ap = sa.init(jax.random.key(1), MC, base, SAC)
  # P_b starts at zero (an untrained adapter is the identity); make it non-zero so that a
  # non-empty context does change the model and the properties below are not vacuous.
  keys = iter(jax.random.split(jax.random.key(2), 16))
  ap["absorber"] = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape),
                                ap["absorber"])
  return model, base, ap


def _context(n, k, seed=0):
  rng = np.random.default_rng(seed)
  tasks = FAM.sample_tasks(rng, n)
  return tasks, FAM.context_ids(tasks, FAM.sample_demos(rng, n, k))


def _bits(tree):
  return {p: np.asarray(v).view(np.uint32) for p, v in jtree.flatten(tree).items()}


def test_empty_context_leaves_model_bit_identical():
  model, base, ap = _setup()
  empty = jnp.zeros((2, 1), jnp.int32)                      # BOS only: no demonstrations
  ad = sa.adapter_from_context(ap, model, base, empty, SAC)
  for i in range(2):
    merged = tree_api.merge(base, jax.tree.map(lambda x: x[i], ad))
    b0, b1 = _bits(base), _bits(merged)
    assert b0.keys() == b1.keys()
    for p in b0:
      np.testing.assert_array_equal(b0[p], b1[p], err_msg=p)
  q = jnp.asarray(FAM.query_ids(2))
  plain = jax.vmap(lambda ids: model.apply({"params": base}, ids))(q)
  np.testing.assert_array_equal(np.asarray(sa.query_logits(model, base, ad, q)),
                                np.asarray(plain))
  # ...while a real context changes the answer logits (the check above can fail).
  _, ctx = _context(2, 3)
  ad1 = sa.adapter_from_context(ap, model, base, jnp.asarray(ctx), SAC)
  assert float(jnp.abs(sa.query_logits(model, base, ad1, q) - plain).max()) > 1e-3


def test_update_is_exactly_a_sum_of_low_rank_terms():
  model, base, ap = _setup()
  _, ctx = _context(2, 5)
  state = sa.context_state(ap, model, base, jnp.asarray(ctx), SAC)
  ad = sa.absorb(ap, state, SAC)
  flat_base = dict(jtree.flatten(base))
  targets = sa.target_paths(base, SAC)
  assert sorted(targets) == [f"layers_{i}/{m}/kernel" for i in range(2)
                             for m in ("attn/o_proj", "mlp/down_proj")]
  for path, (layer, n_in, n_out) in targets.items():
    p = ap["absorber"][path.replace("/", ".")]
    for i in range(2):
      merged = dict(jtree.flatten(tree_api.merge(base, jax.tree.map(lambda x: x[i], ad))))
      dw = np.asarray(merged[path], np.float64) - np.asarray(flat_base[path], np.float64)
      # The paper's equation, term by term: dW = scale * sum_m (S_m P_a + U_m)^T (S_m P_b).
      s = np.asarray(state[i, layer], np.float64)
      expected = sum(np.outer(s[m] @ np.asarray(p["proj_a"]) + np.asarray(p["key"][m]),
                              s[m] @ np.asarray(p["proj_b"])) for m in range(SAC.num_queries))
      np.testing.assert_allclose(dw, SAC.scale * expected, atol=2e-6, rtol=1e-5)
      assert np.linalg.matrix_rank(dw, tol=1e-5) == SAC.num_queries < min(n_in, n_out)
  # Other weights are untouched.
  merged = dict(jtree.flatten(tree_api.merge(base, jax.tree.map(lambda x: x[0], ad))))
  for path in set(flat_base) - set(targets):
    np.testing.assert_array_equal(np.asarray(merged[path]), np.asarray(flat_base[path]))


def test_gradients_reach_only_the_adapter_modules():
  model, base, ap = _setup()
  tasks, ctx = _context(2, 4)
  mask = jnp.ones((2, ctx.shape[1] - 1), bool)
  g_ap, g_base = jax.grad(sa.adapter_loss, argnums=(0, 2))(
      ap, model, base, SAC, FAM, jnp.asarray(ctx), mask, jnp.asarray(tasks))
  for p, g in jtree.flatten(g_base).items():
    assert not np.any(np.asarray(g)), f"gradient reached the frozen base at {p}"
  nonzero = {p: bool(np.any(np.asarray(g))) for p, g in jtree.flatten(g_ap).items()}
  assert all(nonzero.values()), [p for p, v in nonzero.items() if not v]


def test_training_changes_only_the_adapter_and_lowers_the_loss():
  model = Llama(MC)
  base = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  before = _bits(base)
  ap, log = sa.train_adapter(MC, base, FAM, SAC, sa.AdapterTrainConfig(
      steps=30, batch_size=8, max_k=4, lr=1e-2, warmup_steps=1, n_train_tasks=4),
                             log_every=10)
  for p, b in _bits(base).items():
    np.testing.assert_array_equal(b, before[p])
  assert sorted(ap) == ["absorber", "mapper"]
  assert log[-1]["loss"] < log[0]["loss"]


def test_padding_and_chunking_are_exact_and_state_size_is_fixed():
  model, base, ap = _setup()
  _, ctx = _context(2, 6)                                    # 6 demonstration tokens
  short = jnp.asarray(ctx[:, :4])                            # the first 3
  s_short = sa.context_state(ap, model, base, short, SAC)
  mask = jnp.arange(6)[None, :].repeat(2, 0) < 3
  s_pad = sa.context_state(ap, model, base, jnp.asarray(ctx), SAC, token_mask=mask)
  chex.assert_trees_all_close(s_short, s_pad, atol=1e-6)
  s_long = sa.context_state(ap, model, base, jnp.asarray(_context(2, 20)[1]), SAC)
  assert s_short.shape == s_long.shape == (2, 2, SAC.num_queries, SAC.state_dim)
  # Two chunks (4 + 2 tokens): the second one changes the state, and the recurrence is ordered.
  feats = sa.kv_features(model, base, jnp.asarray(ctx))
  chunks, cmask = sa.chunk(feats, SAC.chunk_size)
  assert chunks.shape[2] == 2 and cmask[0].sum(-1).tolist() == [4, 2]
  s1 = sa.state_from_chunks(ap["mapper"], chunks[:, :, :1], cmask[:, :1])
  s2 = sa.state_from_chunks(ap["mapper"], chunks, cmask)
  s2_swapped = sa.state_from_chunks(ap["mapper"], chunks[:, :, ::-1], cmask[:, ::-1])
  assert not np.allclose(np.asarray(s1), np.asarray(s2))
  assert not np.allclose(np.asarray(s2), np.asarray(s2_swapped))


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="config.streamadapter.rank"):
    sa.pipeline.from_config(ml_collections.ConfigDict(dict(streamadapter=dict(rank=3))))
  with pytest.raises(ValueError, match="matches no parameter"):
    model, base, _ = _setup()
    sa.target_paths(base, sa.StreamAdapterConfig(targets=("**/nope/kernel",)))
  with pytest.raises(ValueError, match="num_queries"):
    sa.StreamAdapterConfig(num_queries=0)


@pytest.mark.slow
def test_config_runs_with_the_trainer_on_8_devices(tmp_path, test_compile_cache_env):
  # The trainer process loads its programs from the tests' cache (it is never killed).
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", **test_compile_cache_env)
  out = subprocess.run(
      [sys.executable, "-m", "jaxparams.train",
       f"--config={ROOT / 'configs' / 'streamadapter.py'}:runlocal", f"--workdir={tmp_path}"],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["devices"] == 8 and res["k"] == [1, 2]
  for name in ("icl", "streamadapter", "lora_ttt", "icl_ms_per_query",
               "streamadapter_flops_per_query"):
    assert len(res[name]) == 2, name
  assert (tmp_path / "base" / "model.safetensors").is_file()
  assert (tmp_path / "adapter" / "model.safetensors").is_file()
