"""Token rows of edit requests: the target positions predict the target tokens (not padding)."""

import numpy as np

from jaxparams.edit import facts, requests, targets


def test_target_positions_predict_the_target_tokens():
  fs = facts.load_facts_set()
  tok = facts.build_tokenizer(fs)
  reqs = requests.requests_from_edits(fs)[:5]
  reqs.append(requests.EditRequest("{} plays the", reqs[0].subject, "harp harp"))  # 2 tokens
  b = targets.encode_batch(tok, reqs, ["{}", "Abel plays the harp <s> {}"], ("{} is a",))
  for i, r in enumerate(reqs):
    want = requests.encode_text(tok, r.target_new)
    for j in range(len(b.ids[i])):
      pos = np.flatnonzero(b.tmask[i, j])
      if b.is_kl[i, j]:
        assert pos.size == 0
        continue
      # The loss gathers ids[p + 1] at every marked position p: it must be the target.
      assert b.ids[i, j, pos + 1].tolist() == want
      assert b.mask[i, j, pos + 1].all()


def test_corpus_profile_lines():
  fs = facts.load_facts_set()
  tok = facts.build_tokenizer(fs)
  plain = facts.build_corpus(fs, tok, repeats=1)
  prof = facts.build_corpus(fs, tok, repeats=1, profiles=2)
  bos = tok.token_to_id(facts.BOS)
  n_subj = len({f.subject for f in fs.facts})
  assert int((prof == bos).sum()) == int((plain == bos).sum()) + 2 * n_subj
  # A profile line: <s> subject followed by that subject's objects in some order.
  rows = np.split(prof, np.flatnonzero(prof == bos)[1:])
  s = sorted({f.subject for f in fs.facts})[0]
  ids = requests.encode_text(tok, s)
  objs = sorted(tok.token_to_id(f.object) for f in fs.facts if f.subject == s)
  lines = [r for r in rows if r[1:1 + len(ids)].tolist() == ids
           and sorted(r[1 + len(ids):].tolist()) == objs]
  assert len(lines) == 2
