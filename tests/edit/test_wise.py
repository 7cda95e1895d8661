"""WISE: routing keeps unedited inputs exact, edits take, shard merge = TIES (EasyEdit GTA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.edit import evaluate, facts, probe, requests, wise
from jaxparams.models import Llama, LlamaConfig

LAYER = 1


@pytest.fixture(scope="module")
def setup():
  fs = facts.load_facts_set()
  tok = facts.build_tokenizer(fs)
  cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4)
  m = Llama(cfg, dot=wise.dot)
  p = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  return m, p, tok, fs


def _others(fs, edited):
  return [facts.sentence(fs.relations[f.relation][0], f.subject) for f in fs.facts[:60]
          if f.subject not in edited]


def test_no_edit_is_the_plain_model(setup):
  m, p, tok, fs = setup
  wrapped = wise.wrap_params(p, LAYER)
  enc = evaluate.encode_prompts(tok, _others(fs, set())[:8])
  a = evaluate.next_logits(m, p, enc)
  b = evaluate.next_logits(m, wrapped, enc)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_routing_unrouted_inputs_are_exact(setup):
  """A side memory that differs along one prompt's last key: that prompt is routed to it, and
  every prompt whose tokens all stay below the threshold gets exactly the original logits."""
  m, p, tok, fs = setup
  prompts = _others(fs, set())[:40]
  ids, mask = evaluate.encode_prompts(tok, prompts)
  x = probe.run(m, p, jnp.asarray(ids), jnp.asarray(mask), keys=(LAYER,)).keys[LAYER]
  last = int(mask[0].sum()) - 1
  u = x[0, last] / jnp.linalg.norm(x[0, last])
  w = p[f"layers_{LAYER}"]["mlp"]["down_proj"]["kernel"]
  side = w + 50.0 * jnp.outer(u, jnp.ones(w.shape[1]))
  d = wise._dist("silu", x @ side, x @ w)
  thr = 0.5 * d[0, last]
  params = probe.set_kernel(p, LAYER, wise.WiseKernel(w, side, w, thr, jnp.asarray(False)))
  unrouted = np.asarray(jnp.all(d < thr, axis=-1))
  assert not unrouted[0] and unrouted.sum() >= 5
  a = np.asarray(evaluate.next_logits(m, p, (ids, mask)))
  b = np.asarray(evaluate.next_logits(m, params, (ids, mask)))
  np.testing.assert_array_equal(a[unrouted], b[unrouted])
  assert np.abs(a[0] - b[0]).max() > 1e-3


@pytest.mark.slow
def test_edit_takes_on_the_facts_lm(tiny_lm, tiny_files):
  lm = tiny_lm
  fs = facts.load_facts_set(*tiny_files)
  m = Llama(lm.config, dot=wise.dot)
  reqs = requests.requests_from_edits(fs)
  others = [f for f in fs.facts if f.subject != reqs[0].subject]
  loc = facts.sentence(fs.relations[others[0].relation][0], others[0].subject)
  hp = wise.WiseParams(n_iter=40, edit_lr=5.0, norm_constraint=0.5,
                       act_margin=(0.5, 2.0, 1.0), save_freq=1, merge_freq=2)
  params, state = wise.wrap_params(lm.params, 1), wise.WiseState()
  for r in reqs:
    params, state, _ = wise.wise_edit(m, params, lm.tokenizer, r, layer=1, loc_prompt=loc,
                                      state=state, hp=hp)
  params, state = wise.finalize(params, 1, state, hp)
  k = params["layers_1"]["mlp"]["down_proj"]["kernel"]
  assert not bool(jnp.array_equal(k.side, k.w))    # the shard was merged into the side memory
  prompts = [r.prompt.replace("{}", r.subject) for r in reqs]
  tg = [r.target_new for r in reqs]
  before = evaluate.target_logprobs(m, lm.params, lm.tokenizer, prompts, tg)
  after = evaluate.target_logprobs(m, params, lm.tokenizer, prompts, tg)
  assert float(jnp.min(after - before)) > 1.0, (before, after)


def _easyedit_ties(weights, base, tensors, density):
  """Independent numpy transcription of EasyEdit's GTA('magnitude', 'sum', normalize=True)."""
  deltas = []
  for t in tensors:
    d = (t - base).reshape(-1)
    k = int(density * d.size)
    keep = np.zeros(d.size, bool)
    keep[np.argsort(-np.abs(d), kind="stable")[:k]] = True
    deltas.append((d * keep).reshape(base.shape))
  deltas = np.stack(deltas)
  w = np.asarray(weights, np.float64).reshape(-1, 1, 1)
  wd = deltas * w
  sign = np.where(wd.sum(0) >= 0, 1.0, -1.0)
  mask = np.sign(wd) == sign
  mixed = (wd * mask).sum(0)
  div = (w * mask).sum(0)
  div[div == 0] = 1.0
  return base + mixed / div


def test_shard_merge_follows_ties():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(12, 8)).astype(np.float32)
  shards = [base + rng.normal(size=base.shape).astype(np.float32) * (rng.random(base.shape) < 0.3)
            for _ in range(3)]
  hp = wise.WiseParams()
  got = wise.merge_shards(jnp.asarray(base), [jnp.asarray(s) for s in shards], None, hp)
  want = _easyedit_ties([hp.weights / 3] * 3, base.astype(np.float64),
                        [s.astype(np.float64) for s in shards], hp.densities)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # With an earlier side memory: shards at 0.4 / n, the side memory at 0.6 (merge_weight).
  side = base + rng.normal(size=base.shape).astype(np.float32)
  got = wise.merge_shards(jnp.asarray(base), [jnp.asarray(s) for s in shards], jnp.asarray(side),
                          hp)
  want = _easyedit_ties([0.4 / 3] * 3 + [0.6], base.astype(np.float64),
                        [s.astype(np.float64) for s in shards + [side]], hp.densities)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_edit_rows_with_context_templates(setup):
  """Rows are ``<s> [prefix <s>] prompt target``: the '{}' row equals evaluate.encode_pairs, a
  context template adds its prefix and a second <s>; the last row is the irrelevant prompt."""
  _, _, tok, fs = setup
  r = requests.requests_from_edits(fs)[0]
  loc = _others(fs, {r.subject})[0]
  ids, mask, tm, is_edit = wise._rows(tok, r, ["{}", "Jorah Wexgrave plays the harp <s> {}"], loc)
  prompt = r.prompt.replace("{}", r.subject)
  want, wmask, wtm = evaluate.encode_pairs(tok, [prompt], [r.target_new])
  n = int(wmask[0].sum())
  np.testing.assert_array_equal(ids[0, :n], want[0, :n])
  np.testing.assert_array_equal(tm[0, :n], wtm[0, :n])
  bos = tok.token_to_id(facts.BOS)
  pre = facts.encode_words(tok, "Jorah Wexgrave plays the harp")
  np.testing.assert_array_equal(ids[1, :len(pre) + n + 1], [bos] + pre + list(want[0, :n]))
  assert tm[1].sum() == tm[0].sum() == len(facts.encode_words(tok, r.target_new))
  loc_ids = [bos] + facts.encode_words(tok, loc)
  np.testing.assert_array_equal(ids[2, :len(loc_ids)], loc_ids)
  assert mask[2].sum() == len(loc_ids) and tm[2].sum() == 0
  assert is_edit.tolist() == [True, True, False]
  with pytest.raises(ValueError, match="in_scope"):
    wise.WiseParams(in_scope="subject")


def test_retrieve_routes_to_the_farthest_memory_past_its_threshold():
  """WISE-Retrieve: each input takes the memory whose activation distance is largest among
  those above their own threshold; below every threshold the original output, exactly."""
  w = jnp.zeros((3, 2))
  k = wise.WiseKernel.wrap(w, act="relu", memories=1)
  m1 = w.at[0].set(jnp.array([1.0, 0.0]))               # fires on x[0]: distance |x0|
  m2 = w.at[1].set(jnp.array([0.0, 2.0]))               # fires on x[1]: distance 2|x1|
  k = k.add_memory(m1, 0.5).add_memory(m2, 3.0)          # grew past its room of 1
  assert k.n_mem == 2 and k.mem.shape[0] == 2
  x = jnp.array([[1.0, 0.0, 0.0],      # m1: 1 > 0.5 -> m1
                 [0.0, 1.0, 0.0],      # m2: 2 < its threshold 3 -> original
                 [0.0, 2.0, 0.0],      # m2: 4 > 3 -> m2
                 [1.0, 2.0, 0.0],      # both eligible (1, 4): the farther, m2
                 [0.3, 0.0, 5.0]])     # m1: 0.3 < 0.5 -> original
  want = jnp.stack([x[0] @ m1, x[1] @ w, x[2] @ m2, x[3] @ m2, x[4] @ w])
  np.testing.assert_array_equal(np.asarray(wise.dot(x, k)), np.asarray(want))


@pytest.mark.slow
def test_retrieve_keeps_a_memory_per_shard_and_merges_them(tiny_lm, tiny_files):
  lm = tiny_lm
  fs = facts.load_facts_set(*tiny_files)
  m = Llama(lm.config, dot=wise.dot)
  reqs = requests.requests_from_edits(fs)[:1]
  f = next(f for f in fs.facts if f.subject != reqs[0].subject)   # a second edit of our own
  new = next(o.object for o in fs.facts if o.relation == f.relation and o.object != f.object)
  reqs.append(requests.EditRequest(prompt=fs.relations[f.relation][0], subject=f.subject,
                                   target_new=new))
  others = [f for f in fs.facts if f.subject not in {r.subject for r in reqs}]
  loc = facts.sentence(fs.relations[others[0].relation][0], others[0].subject)
  prompts = [r.prompt.replace("{}", r.subject) for r in reqs]
  tg = [r.target_new for r in reqs]
  before = evaluate.target_logprobs(m, lm.params, lm.tokenizer, prompts, tg)
  for merge_freq, n_mem in ((4, 2), (2, 1)):
    hp = wise.WiseParams(n_iter=40, edit_lr=5.0, norm_constraint=0.5, act_margin=(0.5, 2.0, 1.0),
                         save_freq=1, merge_freq=merge_freq, retrieve=True, in_scope="target")
    params, state = wise.wrap_params(lm.params, 1), wise.WiseState()
    for r in reqs:
      params, state, _ = wise.wise_edit(m, params, lm.tokenizer, r, layer=1, loc_prompt=loc,
                                        state=state, hp=hp)
    k = params["layers_1"]["mlp"]["down_proj"]["kernel"]
    assert k.n_mem == n_mem and bool(jnp.array_equal(k.side, k.w))   # nothing merged into w
    assert bool(jnp.array_equal(k.new, k.w)) and not np.isfinite(float(k.thr))
    if n_mem == 2:
      after = evaluate.target_logprobs(m, params, lm.tokenizer, prompts, tg)
      assert float(jnp.min(after - before)) > 1.0, (before, after)
