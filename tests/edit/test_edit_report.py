"""``jaxparams.edit.report``: before/after scores equal exp of the summed target log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.edit import evaluate, facts, report
from jaxparams.edit import requests as req_lib
from jaxparams.models import Llama, LlamaConfig


@pytest.fixture(scope="module")
def lm():
  tok = facts.build_tokenizer(facts.load_facts_set())
  m = Llama(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32,
                        num_hidden_layers=1, num_attention_heads=2))
  p = m.init(jax.random.key(0), jnp.zeros((1, 2), int))["params"]
  q = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), p)
  return m, p, q, tok


def test_scores_are_the_model_probabilities(lm):
  m, p, q, tok = lm
  r = req_lib.EditRequest("{} plays the", "Jorah Wexgrave", "harp")
  rows = report.before_after(m, p, q, tok, [r], paraphrases=["The instrument of {} is the"])
  assert [x.kind for x in rows] == ["prompt", "paraphrase"]
  # the old answer is the unedited model's argmax after the prompt
  logits = evaluate.next_logits(m, p, evaluate.encode_prompts(tok, ["Jorah Wexgrave plays the"]))
  assert rows[0].old == tok.id_to_token(int(np.argmax(np.asarray(logits[0]))))
  # P(old) before is the softmax probability of that argmax: the largest of the vocabulary
  np.testing.assert_allclose(rows[0].p_old_before,
                             float(jax.nn.softmax(logits[0]).max()), rtol=1e-5)
  for row, text in zip(rows, ["Jorah Wexgrave plays the", "The instrument of Jorah Wexgrave is the"]):
    for params, got in ((p, row.p_new_before), (q, row.p_new_after)):
      logits = evaluate.next_logits(m, params, evaluate.encode_prompts(tok, [text]))
      want = float(jax.nn.softmax(logits[0])[tok.token_to_id("harp")])
      np.testing.assert_allclose(got, want, rtol=1e-4)
  assert "request 1: new 'harp'" in report.format_rows(rows)


def test_paraphrase_without_subject_slot_is_refused(lm):
  m, p, q, tok = lm
  r = req_lib.EditRequest("{} plays the", "Jorah Wexgrave", "harp")
  with pytest.raises(ValueError, match="exactly once"):
    report.before_after(m, p, q, tok, [r], paraphrases=["no slot"], old=["harp"])


def test_requests_file_rephrase_and_ground_truth_are_scored(lm, tmp_path):
  """A request's rephrase_prompt (subject written out or {}) and ground_truth reach the table:
  the paraphrase row scores the rephrased sentence, P(old) is the file's old answer."""
  m, p, q, tok = lm
  f = tmp_path / "r.jsonl"
  f.write_text('{"prompt": "{} plays the", "subject": "Jorah Wexgrave", "target_new": "harp", '
               '"rephrase_prompt": "The instrument of Jorah Wexgrave is the", '
               '"ground_truth": "cello"}\n')
  (r,) = req_lib.read_requests(f, tok)
  assert (r.rephrase, r.ground_truth) == ("The instrument of {} is the", "cello")
  rows = report.before_after(m, p, q, tok, [r], paraphrases=[r.rephrase])
  assert [(x.kind, x.text, x.old) for x in rows] == [
      ("prompt", "Jorah Wexgrave plays the", "cello"),
      ("paraphrase", "The instrument of Jorah Wexgrave is the", "cello")]
  lp = evaluate.target_logprobs(m, q, tok, ["The instrument of Jorah Wexgrave is the"], ["cello"])
  np.testing.assert_allclose(rows[1].p_old_after, float(np.exp(np.asarray(lp)[0])), rtol=1e-4)
  f.write_text('{"prompt": "{} plays the", "subject": "Jorah Wexgrave", "target_new": "harp", '
               '"rephrase_prompt": "Someone else plays the"}\n')
  with pytest.raises(ValueError, match=r"r.jsonl:1: subject 'Jorah Wexgrave' is not in the "
                                       r"rephrase_prompt"):
    req_lib.read_requests(f, tok)
