"""ROME/MEMIT/AlphaEdit on a Llama: exactness on the model's own keys, deltas, stats."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxparams import tree as jtree
from jaxparams.edit import delta as delta_lib
from jaxparams.edit import facts, fingerprint, methods, probe, requests, stats, targets
from jaxparams.models import Llama, LlamaConfig

# The reference's absolute constants (a threshold of 1e-3 on these tiny models).
ALPHA_ABS = dict(nullspace_mode="absolute", nullspace_threshold=1e-3, l2_mode="absolute",
                 L2=10.0)


@pytest.fixture(scope="module")
def model():
  fs = facts.load_facts_set()
  tok = facts.build_tokenizer(fs)
  cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4)
  m = Llama(cfg)
  p = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  texts = [facts.sentence(pr, f.subject, f.object) for f in fs.facts[:48]
           for pr in fs.relations[f.relation]]
  batches = stats.text_batches(tok, texts, batch_size=32, seq_len=16)
  return m, p, tok, fs, batches


FAST = targets.TargetParams(v_num_grad_steps=4)


@pytest.mark.slow  # default run: test_solve.py::test_rome_exact_and_matches_reference
def test_rome_writes_v_star_exactly(model):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches, layers=(1,))
  req = requests.requests_from_edits(fs)[0]
  tpl = ["{}", "Jorah Wexgrave plays the harp <s> {}"]
  new, d = methods.rome(m, p, tok, req, cov=st[1].gram, where="layers_1/mlp/down_proj/kernel",
                        templates=tpl, hp=methods.RomeParams(target=FAST))
  assert list(d.updates) == ["layers_1/mlp/down_proj/kernel"]
  # k* and v* recomputed independently: the edited kernel maps k* to v*.
  k_star = methods.compute_keys(m, p, tok, [req], 1, [["{}"]])[0]
  batch = targets.encode_batch(tok, [req], tpl, FAST.kl_prompts)
  v_star = targets.optimize_targets(m, p, batch, layer=1, site="mlp", hp=FAST)["target"][0]
  w_new = jtree.flatten(new)["layers_1/mlp/down_proj/kernel"]
  err = jnp.linalg.norm(k_star @ w_new - v_star) / jnp.linalg.norm(v_star)
  assert float(err) <= 1e-5
  # Rank one.
  assert int(jnp.linalg.matrix_rank(d.updates["layers_1/mlp/down_proj/kernel"])) == 1


@pytest.mark.slow  # default run: test_delta.py and test_solve.py (exactness)
def test_delta_reapply_rollback_export_bit_exact(model, tmp_path):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches, layers=(0, 1))
  cov = {l: s.gram + 1e-3 * jnp.eye(64) for l, s in st.items()}
  reqs = requests.requests_from_edits(fs)[:3]
  new, d = methods.memit(m, p, tok, reqs, cov=cov, where=re.compile(r"layers_[01]/mlp/down_proj/kernel"),
                         templates=[["{}"]], hp=methods.MemitParams(target=FAST))
  assert sorted(d.updates) == ["layers_0/mlp/down_proj/kernel", "layers_1/mlp/down_proj/kernel"]
  again = delta_lib.apply_delta(p, d)
  back = delta_lib.rollback(new, d)
  delta_lib.save_delta(d, tmp_path / "delta")
  loaded = delta_lib.load_delta(tmp_path / "delta")
  again2 = delta_lib.apply_delta(p, loaded)
  for path, x in jtree.flatten(p).items():
    np.testing.assert_array_equal(np.asarray(jtree.flatten(back)[path]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(jtree.flatten(again)[path]),
                                  np.asarray(jtree.flatten(new)[path]))
    np.testing.assert_array_equal(np.asarray(jtree.flatten(again2)[path]),
                                  np.asarray(jtree.flatten(new)[path]))
  assert loaded.meta["method"] == "memit"


@pytest.mark.slow  # default run: test_delta.py and test_solve.py (exactness)
def test_alphaedit_keeps_preserved_outputs(model):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches, layers=(1,))
  cov = {1: st[1].gram}
  state = methods.alpha_state(cov, methods.AlphaEditParams(**ALPHA_ABS))
  reqs = requests.requests_from_edits(fs)[:2]
  hp = methods.AlphaEditParams(target=FAST, **ALPHA_ABS)
  new, d, state2 = methods.alphaedit(m, p, tok, reqs, state=state,
                                     where="layers_1/mlp/down_proj/kernel", templates=[["{}"]],
                                     hp=hp)
  # Preserved keys: those the statistics were built from, with P k ~ 0.
  ids, mask = batches[0]
  k0 = probe.run(m, p, jnp.asarray(ids), jnp.asarray(mask), keys=(1,)).keys[1]
  k0 = k0[jnp.asarray(mask, bool)]
  w = p["layers_1"]["mlp"]["down_proj"]["kernel"]
  dk = d.updates["layers_1/mlp/down_proj/kernel"]
  # The update lies in range(P): keys' components outside the null space (what C has seen)
  # map to exactly the old outputs, ||Delta (I - P) K0|| / ||W K0|| <= 1e-6.
  proj = state.projectors[1]
  k0_kept = k0 - k0 @ proj
  ratio = jnp.linalg.norm(k0_kept @ dk) / jnp.linalg.norm(k0 @ w)
  assert float(ratio) <= 1e-6, float(ratio)
  assert float(jnp.abs(state2.cache[1]).sum()) > 0


def test_stats_streamed_equal_one_shot_and_sharded(model):
  m, p, tok, fs, batches = model
  streamed = stats.key_stats(m, p, batches, layers=(2,))[2]
  ids = np.concatenate([b[0] for b in batches])
  mask = np.concatenate([b[1] for b in batches])
  k = np.asarray(probe.run(m, p, jnp.asarray(ids), jnp.asarray(mask), keys=(2,)).keys[2],
                 np.float64)[mask.astype(bool)]
  one_shot = k.T @ k
  np.testing.assert_allclose(np.asarray(streamed.xtx), one_shot, rtol=1e-4, atol=1e-4)
  assert int(streamed.count) == int(mask.sum())
  # Sharded over 8 devices (batch axis) equals unsharded.
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  s = NamedSharding(mesh, P("data"))
  n = (len(ids) // 8) * 8
  sharded = stats.key_stats(m, p, [(jax.device_put(ids[:n], s), jax.device_put(mask[:n], s))],
                            layers=(2,))[2]
  plain = stats.key_stats(m, p, [(ids[:n], mask[:n])], layers=(2,))[2]
  np.testing.assert_allclose(np.asarray(sharded.xtx), np.asarray(plain.xtx), rtol=1e-5, atol=1e-5)


def test_stats_save_load(model, tmp_path):
  m, p, tok, fs, batches = model
  st = stats.key_stats(m, p, batches[:1], layers=(0,))
  fps = {l: fingerprint.stats_fingerprint(p, l) for l in (0, 1)}
  stats.save_stats(st, tmp_path, fps, {"text_sha256": "abc"})
  back = stats.load_stats(tmp_path, fps, [0])
  np.testing.assert_array_equal(np.asarray(back[0].xtx), np.asarray(st[0].xtx))
  assert stats.load_stats(tmp_path, fps, [0], text_sha256="abd") is None   # another text
  with pytest.raises(FileNotFoundError, match="layer 1"):
    stats.load_stats(tmp_path, fps, [1])
  # another model (one weight of layer 0 changed): its statistics are not these
  other = jax.tree_util.tree_map(lambda x: x, p)
  other["layers_0"]["mlp"]["up_proj"]["kernel"] = p["layers_0"]["mlp"]["up_proj"]["kernel"] * 2
  with pytest.raises(FileNotFoundError, match="no key statistics for layer 0 of this model"):
    stats.load_stats(tmp_path, {0: fingerprint.stats_fingerprint(other, 0)}, [0])


def test_where_must_select_mlp_output(model):
  m, p, tok, fs, batches = model
  with pytest.raises(ValueError, match="not an MLP output projection"):
    methods.edited_layers(p, "layers_0/mlp/up_proj/kernel")
  with pytest.raises(ValueError):
    methods.edited_layers(p, "layers_9/mlp/down_proj/kernel")


def test_bad_requests_named(tmp_path):
  tok = facts.build_tokenizer(facts.load_facts_set())
  f = tmp_path / "req.jsonl"
  f.write_text('{"prompt": "{} plays the", "subject": "Jorah Wexgrave", "target_new": "harp"}\n'
               '{"prompt": "X plays the", "subject": "Jorah Wexgrave", "target_new": "harp"}\n')
  with pytest.raises(ValueError, match=r"req.jsonl:2: subject 'Jorah Wexgrave' is not in"):
    requests.read_requests(f, tok)
  f.write_text('{"prompt": "{} plays the", "subject": "Jorah Wexgrave", "target_new": " "}\n')
  with pytest.raises(ValueError, match=r"req.jsonl:1: empty target_new"):
    requests.read_requests(f, tok)
  f.write_text('{"prompt": "{} plays the", "subject": "Jorah Wexgrave", "target_new": "zither"}\n')
  with pytest.raises(ValueError, match=r"req.jsonl:1: .*cannot encode word\(s\) \['zither'\]"):
    requests.read_requests(f, tok)


@pytest.mark.slow
def test_grace_edit_replaces_and_rolls_back(model):
  from jaxparams.edit import evaluate, grace
  m, p, tok, fs, batches = model
  gm = Llama(m.config, dot=grace.dot)
  gp = grace.wrap_params(p, 1, capacity=1)
  reqs = requests.requests_from_edits(fs)[:2]
  hp = grace.GraceParams(n_iter=30, edit_lr=0.5)
  e1 = grace.edit_many(gm, gp, tok, reqs, layer=1, hp=hp)
  assert e1["layers_1"]["mlp"]["down_proj"]["kernel"].n == 2            # grew past capacity 1
  prompts = [r.prompt.replace("{}", r.subject) for r in reqs]
  other = ["The job of Jorah Wexgrave is"]
  before = evaluate.target_logprobs(m, p, tok, prompts, [r.target_new for r in reqs])
  after = evaluate.target_logprobs(gm, e1, tok, prompts, [r.target_new for r in reqs])
  assert bool(jnp.all(after > before + 0.1))   # a random-init model: small logit range
  enc = evaluate.encode_prompts(tok, other)
  np.testing.assert_array_equal(np.asarray(evaluate.next_logits(gm, e1, enc)),
                                np.asarray(evaluate.next_logits(m, p, enc)))   # no key matched
  back = grace.rollback(grace.rollback(e1, 1, 0), 1, 1)
  enc = evaluate.encode_prompts(tok, prompts)
  np.testing.assert_array_equal(np.asarray(evaluate.next_logits(gm, back, enc)),
                                np.asarray(evaluate.next_logits(m, p, enc)))
