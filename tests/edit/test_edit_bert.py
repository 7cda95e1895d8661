"""ROME/MEMIT/AlphaEdit on a BERT masked LM (tiny random BERT): exactness, deltas, statistics,
the probe's sites, ``where=`` errors and ``jaxparams edit`` on a BertForMaskedLM checkpoint."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import tree as jtree
from jaxparams.cli.main import main as cli_main
from jaxparams.edit import arch, facts, facts_mlm, methods, probe, requests, stats, targets
from jaxparams.edit import delta as delta_lib
from jaxparams.models import Bert, BertConfig, LayerNorm, from_hf, to_hf

FAST = targets.TargetParams(v_num_grad_steps=4)
K1 = "layers_1/mlp/output/kernel"

# The reference's absolute constants (a threshold of 1e-3 on these tiny models).
ALPHA_ABS = dict(nullspace_mode="absolute", nullspace_threshold=1e-3, l2_mode="absolute",
                 L2=10.0)


@pytest.fixture(scope="module")
def model():
  fs = facts.load_facts_set()
  tok = facts_mlm.build_tokenizer(fs)
  cfg = BertConfig(vocab_size=-(-tok.get_vocab_size() // 8) * 8, hidden_size=32,
                   intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=64, mlm_head=True, add_pooling_layer=False)
  m = Bert(cfg)
  p = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  # Non-zero biases, as a trained BERT has (ROME must subtract the output dense's bias).
  flat = jtree.flatten(p)
  key = jax.random.key(1)
  for path in [q for q in flat if q.endswith("/bias")]:
    key, sub = jax.random.split(key)
    flat[path] = 0.1 * jax.random.normal(sub, flat[path].shape)
  p = jtree.unflatten(flat)
  texts = [facts.sentence(pr, f.subject, f.object) for f in fs.facts[:48]
           for pr in fs.relations[f.relation]]
  batches = arch.text_batches_mlm(tok, texts, batch_size=32, seq_len=16)
  return m, p, tok, fs, batches


def test_rome_writes_v_star_exactly_and_delta_round_trips(model, tmp_path):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches, layers=(1,))
  req = requests.requests_from_edits(fs)[0]
  tpl = ["{}", "Jorah Wexgrave plays the harp <s> {}"]
  new, d = methods.rome(m, p, tok, req, cov=st[1].gram, where=K1, templates=tpl,
                        hp=methods.RomeParams(target=FAST))
  assert list(d.updates) == [K1]
  k_star = methods.compute_keys(m, p, tok, [req], 1, [["{}"]])[0]
  batch = targets.encode_batch(tok, [req], tpl, FAST.kl_prompts, masked=True)
  v_star = targets.optimize_targets(m, p, batch, layer=1, site="mlp", hp=FAST)["target"][0]
  w_new = jtree.flatten(new)[K1]
  b = p["layers_1"]["mlp"]["output"]["bias"]
  err = jnp.linalg.norm(k_star @ w_new + b - v_star) / jnp.linalg.norm(v_star)
  assert float(err) <= 1e-5, float(err)
  assert int(jnp.linalg.matrix_rank(d.updates[K1])) == 1
  # The edited layer really outputs v* at the subject's last token of the edit prompt.
  out = probe.run(m, new, jnp.asarray(batch.ids[0, :1]), jnp.asarray(batch.mask[0, :1]),
                  mlp_out=(1,))
  got = out.mlp_out[1][0, batch.lookup[0, 0]]
  assert float(jnp.linalg.norm(got - v_star) / jnp.linalg.norm(v_star)) <= 1e-5
  _assert_delta_round_trips(p, new, d, tmp_path)


def _assert_delta_round_trips(p, new, d, tmp_path):
  """Re-applied (in memory and from disk) bit-identical; rollback bit-exact."""
  again = delta_lib.apply_delta(p, d)
  back = delta_lib.rollback(new, d)
  delta_lib.save_delta(d, tmp_path / "delta")
  again2 = delta_lib.apply_delta(p, delta_lib.load_delta(tmp_path / "delta"))
  fn, fa, fa2, fb = (jtree.flatten(x) for x in (new, again, again2, back))
  for path, x in jtree.flatten(p).items():
    np.testing.assert_array_equal(np.asarray(fb[path]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fn[path]))
    np.testing.assert_array_equal(np.asarray(fa2[path]), np.asarray(fn[path]))


def test_cloze_rows(model):
  m, p, tok, fs, batches = model
  req = requests.EditRequest("{} plays the", "Jorah Wexgrave", "harp")
  b = targets.encode_batch(tok, [req], ["{}"], ("{} is a",), masked=True)
  row = [tok.id_to_token(int(i)) for i in b.ids[0, 0] if i]
  assert row == ["[CLS]", "Jorah", "Wexgrave", "plays", "the", "[MASK]", "[SEP]"]
  assert b.lookup[0, 0] == 2 and b.labels[0, 0, 5] == tok.token_to_id("harp")
  assert b.tmask[0, 0].tolist().index(1.0) == 5 and b.tmask[0, 0].sum() == 1
  kl_row = [tok.id_to_token(int(i)) for i in b.ids[0, 1] if i]
  assert kl_row == ["[CLS]", "Jorah", "Wexgrave", "is", "a", "[MASK]", "[SEP]"]
  assert b.kl_pos[0, 1] == 5


@pytest.mark.slow
def test_masked_target_loss_is_mask_nll(model):
  m, p, tok, fs, batches = model
  req = requests.EditRequest("{} plays the", "Jorah Wexgrave", "harp")
  # With a zero delta and no KL weight, the first loss is -log P(harp) at the mask.
  hp = targets.TargetParams(v_num_grad_steps=2, kl_factor=0.0, v_weight_decay=0.0,
                            stop_loss=-1.0)
  loss = targets.optimize_targets(m, p, targets.encode_batch(tok, [req], ["{}"], (),
                                                             masked=True),
                                  layer=0, site="mlp", hp=hp)["loss"][0]
  ref = arch.mlm_target_logprobs(m, p, tok, ["Jorah Wexgrave plays the"], ["harp"])[0]
  np.testing.assert_allclose(float(loss), -float(ref), rtol=1e-5)


def test_probe_sites(model):
  m, p, tok, fs, batches = model
  ids, mask = (jnp.asarray(a[:4]) for a in batches[0])
  out = probe.run(m, p, ids, mask, keys=(1,), hidden=(1,), mlp_out=(1,))
  # hidden[l] is the pre-LayerNorm sum: its LayerNorm is the encoder's output (last layer).
  ln = LayerNorm(m.config.layer_norm_eps)
  last = ln.apply({"params": p["layers_1"]["mlp_norm"]}, out.hidden[1])
  ref = m.apply({"params": p}, ids, attention_mask=mask, return_hidden=True)
  np.testing.assert_allclose(np.asarray(last), np.asarray(ref), rtol=1e-5, atol=1e-5)
  # keys are the GELU activations of `intermediate` and map to mlp_out through the kernel.
  w, b = p["layers_1"]["mlp"]["output"]["kernel"], p["layers_1"]["mlp"]["output"]["bias"]
  np.testing.assert_allclose(np.asarray(out.keys[1] @ w + b), np.asarray(out.mlp_out[1]),
                             rtol=1e-5, atol=1e-5)
  # add_block adds exactly at the given position of the pre-LayerNorm sum.
  v = jnp.arange(32.0) / 32
  pos = jnp.asarray([1, 2, 3, 1])
  out2 = probe.run(m, p, ids, mask, hidden=(1,), add_block=(1, v, pos))
  diff = out2.hidden[1] - out.hidden[1]
  np.testing.assert_allclose(np.asarray(diff[jnp.arange(4), pos]), np.tile(v, (4, 1)),
                             atol=1e-6)
  assert float(jnp.abs(diff).sum() - jnp.abs(diff[jnp.arange(4), pos]).sum()) < 1e-5


def test_alphaedit_keeps_preserved_outputs(model):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches, layers=(1,))
  state = methods.alpha_state({1: st[1].gram}, methods.AlphaEditParams(**ALPHA_ABS))
  reqs = requests.requests_from_edits(fs)[:2]
  hp = methods.AlphaEditParams(target=FAST, **ALPHA_ABS)
  new, d, state2 = methods.alphaedit(m, p, tok, reqs, state=state, where=K1,
                                     templates=[["{}"]], hp=hp)
  ids, mask = batches[0]
  k0 = probe.run(m, p, jnp.asarray(ids), jnp.asarray(mask), keys=(1,)).keys[1]
  k0 = k0[jnp.asarray(mask, bool)]
  w = p["layers_1"]["mlp"]["output"]["kernel"]
  k0_kept = k0 - k0 @ state.projectors[1]
  ratio = jnp.linalg.norm(k0_kept @ d.updates[K1]) / jnp.linalg.norm(k0 @ w)
  assert float(ratio) <= 1e-6, float(ratio)
  assert float(jnp.abs(d.updates[K1]).sum()) > 0
  assert float(jnp.abs(state2.cache[1]).sum()) > 0


@pytest.mark.slow
def test_memit_two_layers_delta_bit_exact(model, tmp_path):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches, layers=(0, 1))
  cov = {l: s.gram + 1e-3 * jnp.eye(64) for l, s in st.items()}
  reqs = requests.requests_from_edits(fs)[:3]
  new, d = methods.memit(m, p, tok, reqs, cov=cov,
                         where=re.compile(r"layers_[01]/mlp/output/kernel"),
                         templates=[["{}"]], hp=methods.MemitParams(
                             target=FAST, lambda_mode="absolute", mom2_update_weight=1.0))
  assert sorted(d.updates) == ["layers_0/mlp/output/kernel", K1]
  _assert_delta_round_trips(p, new, d, tmp_path)


def test_stats_streamed_equal_one_shot(model):
  m, p, tok, fs, batches = model
  streamed = stats.key_stats(m, p, batches, layers=(1,))[1]
  ids = np.concatenate([b[0] for b in batches])
  mask = np.concatenate([b[1] for b in batches])
  k = np.asarray(probe.run(m, p, jnp.asarray(ids), jnp.asarray(mask), keys=(1,)).keys[1],
                 np.float64)[mask.astype(bool)]
  np.testing.assert_allclose(np.asarray(streamed.xtx), k.T @ k, rtol=1e-4, atol=1e-4)
  assert int(streamed.count) == int(mask.sum())


def test_where_selects_bert_output_dense(model):
  m, p, tok, fs, batches = model
  assert methods.edited_layers(p, re.compile(r"layers_[01]/mlp/output/kernel")) == [0, 1]
  with pytest.raises(ValueError, match="not an MLP output projection"):
    methods.edited_layers(p, "layers_0/mlp/intermediate/kernel")
  with pytest.raises(ValueError, match=r"valid layers.*layers_1/mlp/output/kernel"):
    methods.edited_layers(p, "layers_9/mlp/output/kernel")


def test_bert_without_head_gives_stats_not_targets(model):
  m, p, tok, fs, batches = model
  with pytest.raises(ValueError, match="masked-LM head"):
    arch.context_templates_mlm(Bert(BertConfig(**{**m.config.__dict__, "mlm_head": False})),
                               p, tok)


@pytest.mark.slow
def test_cli_edits_bert_mlm_and_rolls_back(model, tmp_path):
  m, p, tok, fs, batches = model
  d = tmp_path / "hf"
  to_hf(p, m.config, d)
  tok.save(str(d / "tokenizer.json"))
  (tmp_path / "stats.txt").write_text("\n".join(
      facts.sentence(pr, f.subject, f.object) for f in fs.facts[:30]
      for pr in fs.relations[f.relation]))
  req = tmp_path / "req.jsonl"
  req.write_text(json.dumps({"prompt": "{} plays the", "subject": "Jorah Wexgrave",
                             "target_new": "harp"}) + "\n")
  out, back = tmp_path / "out", tmp_path / "back"
  assert cli_main(["edit", str(d), str(req), str(out), "--method", "rome", "--layers", "1",
                   "--stats-text", str(tmp_path / "stats.txt")]) == 0
  _, p_out, cfg_out = from_hf(out)
  assert cfg_out.mlm_head
  changed = [k for k, v in jtree.flatten(p_out).items()
             if not np.array_equal(np.asarray(v), np.asarray(jtree.flatten(p)[k]))]
  assert changed == [K1]
  assert cli_main(["edit", str(out), str(back), "--rollback", str(out / "delta")]) == 0
  _, p_back, _ = from_hf(back)
  for k, v in jtree.flatten(p).items():
    np.testing.assert_array_equal(np.asarray(jtree.flatten(p_back)[k]), np.asarray(v))


@pytest.mark.slow
def test_minilm_key_stats_streamed_equal_one_shot():
  from jaxparams.models import minilm
  m, p, cfg, tok = minilm.load_minilm()
  texts = ["A man is eating food.", "The girl is carrying a baby.",
           "A man is riding a white horse on an enclosed ground.",
           "Someone in a gorilla costume is playing a set of drums.",
           "A monkey is playing drums.", "The quick brown fox jumps over the lazy dog."]
  batches = arch.text_batches_mlm(tok, texts, batch_size=4, seq_len=16)
  assert len(batches) == 2
  st = stats.key_stats(m, p, batches, layers=(3,))[3]
  ids = np.concatenate([b[0] for b in batches])
  mask = np.concatenate([b[1] for b in batches])
  k = np.asarray(probe.run(m, p, jnp.asarray(ids), jnp.asarray(mask), keys=(3,)).keys[3],
                 np.float64)[mask.astype(bool)]
  assert k.shape[1] == cfg.intermediate_size == 1536
  xtx = k.T @ k
  np.testing.assert_allclose(np.asarray(st.xtx), xtx, rtol=1e-4, atol=1e-4 * np.abs(xtx).max())
  assert int(st.count) == int(mask.sum())


@pytest.mark.slow
def test_facts_mlm_trains_and_exports_bert_for_masked_lm(tmp_path):
  from jaxparams import io as jio
  lm = facts_mlm.train_facts_mlm(tmp_path / "w", size="tiny", steps=30, log_every=0)
  cfg = json.loads((lm.hf_dir / "config.json").read_text())
  assert cfg["architectures"] == ["BertForMaskedLM"] and lm.config.mlm_head
  with jio.open_checkpoint(lm.hf_dir) as r:
    names = set(r.names())
  assert "cls.predictions.transform.dense.weight" in names and "cls.predictions.bias" in names
  assert all(n.startswith(("bert.", "cls.")) for n in names)   # HF BertForMaskedLM layout
  assert lm.tokenizer.encode("Jorah Wexgrave plays the [MASK]").tokens[-2] == "[MASK]"
  rec = facts_mlm.recall(lm)
  assert rec["n"] == 2400   # every fact (all single-token objects) in every phrasing
