"""The facts LM: formats, corpus, training to recall, HF export."""

import json

import numpy as np
import pytest

from jaxparams.edit import facts, facts_lm


def test_default_set_formats():
  fs = facts.load_facts_set()
  assert len(fs.facts) >= 300 and len({f.subject for f in fs.facts}) >= 50
  assert all(len(p) >= 2 for p in fs.relations.values())   # edit prompt + paraphrases
  tok = facts.build_tokenizer(fs)
  for e in fs.edits:
    assert len(facts.encode_words(tok, e.target_new)) == 1


def test_bad_files_named(tmp_path):
  f, r, e = facts.default_paths()
  bad = tmp_path / "facts.jsonl"
  bad.write_text('{"subject": "A", "relation": "city", "object": "X"}\n{"subject": "B"}\n')
  with pytest.raises(ValueError, match=r"facts.jsonl:2: expected an object with keys"):
    facts.load_facts_set(bad, r, e)
  bad.write_text('{"subject": "A", "relation": "moon", "object": "X"}\n')
  with pytest.raises(ValueError, match=r"facts.jsonl:1: relation 'moon'"):
    facts.load_facts_set(bad, r, e)


def test_stats_sentences_sources():
  fs = facts.load_facts_set()
  edits = fs.edits[:40]
  subjects = {e.subject for e in edits}
  other = facts.stats_sentences(fs, "other_subjects", edits)
  kept = [f for f in fs.facts if f.subject not in subjects]
  assert len(other) == sum(len(fs.relations[f.relation]) for f in kept) > 0
  assert not any(s in t for t in other for s in subjects)   # no edited subject's sentence
  une = facts.stats_sentences(fs, "unedited", edits)
  assert len(une) == sum(len(fs.relations[f.relation]) for f in fs.facts) - 4 * len(edits)
  e0 = edits[0]
  edited = facts.sentence(fs.relations[e0.relation][0], e0.subject, fs.object_of(e0.subject,
                                                                                  e0.relation))
  assert edited not in une and edited in facts.stats_sentences(fs, "all", edits)
  with pytest.raises(ValueError, match="valid: other_subjects"):
    facts.stats_sentences(fs, "wikipedia")
  with pytest.raises(ValueError, match="no fact is left"):
    facts.stats_sentences(fs, "other_subjects", [facts.Edit(s, "city", "x")
                                                 for s in {f.subject for f in fs.facts}])


def test_corpus_holds_every_phrasing():
  fs = facts.load_facts_set()
  tok = facts.build_tokenizer(fs)
  stream = facts.build_corpus(fs, tok, repeats=1)
  n_sent = sum(len(fs.relations[f.relation]) for f in fs.facts)
  assert int((stream == tok.token_to_id(facts.BOS)).sum()) == n_sent


@pytest.mark.slow
def test_tiny_lm_learns_and_exports(tiny_lm):
  assert facts_lm.recall(tiny_lm)["accuracy"] >= 0.9
  hf = tiny_lm.hf_dir
  cfg = json.loads((hf / "config.json").read_text())
  assert cfg["model_type"] == "llama" and (hf / "tokenizer.json").is_file()
  again = facts_lm.load_facts_lm(hf, hf.parent / "data")
  np.testing.assert_array_equal(np.asarray(again.params["lm_head"]["kernel"]),
                                np.asarray(tiny_lm.params["lm_head"]["kernel"]))
