"""tokenizer_source: embedding / LM-head rows aligned to the output vocabulary."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers.models import WordLevel

from jaxparams.io import load_safetensors
from jaxparams.merge.stream import merge_checkpoints
from jaxparams.demo.tiny_llama import llama_config, llama_tensors, write_llama

BASE_TOKENS = [f"t{i}" for i in range(16)]
A_TOKENS = BASE_TOKENS + ["new1"]                   # base + new1
B_TOKENS = BASE_TOKENS[:15] + ["new1", "new2"]      # no t15; new1, new2


def _model(path, tokens, seed):
  cfg = llama_config(vocab_size=len(tokens), hidden_size=16, intermediate_size=16,
                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
  t = llama_tensors(cfg, seed)
  write_llama(path, cfg=cfg, tensors=t)
  tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(tokens)}, unk_token="t0"))
  tok.save(str(path / "tokenizer.json"))
  return t


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  out = {}
  for name, toks, seed in (("base", BASE_TOKENS, 0), ("a", A_TOKENS, 1), ("b", B_TOKENS, 2)):
    out[name] = (d / name, _model(d / name, toks, seed), toks)
  return out


def _recipe(models, source):
  return {"merge_method": "linear", "base_model": str(models["base"][0]),
          "models": [{"model": str(models[k][0]), "parameters": {"weight": 1.0}}
                     for k in ("base", "a", "b")],
          "tokenizer_source": source, "dtype": "float32"}


def _row(models, name, tok, tensor):
  _, t, toks = models[name]
  return t[tensor][toks.index(tok)] if tok in toks else None


@pytest.mark.parametrize("tensor", ["model.embed_tokens.weight", "lm_head.weight"])
def test_union_rows_base_else_donor_else_mean(models, tmp_path, tensor):
  out = tmp_path / "u"
  merge_checkpoints(_recipe(models, "union"), out, progress=False)
  got = load_safetensors(out)[tensor]
  vocab = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab()
  assert len(vocab) == 18 and got.shape == (18, 16)
  assert json.loads((out / "config.json").read_text())["vocab_size"] == 18
  r = lambda m, tok: _row(models, m, tok, tensor)  # noqa: E731
  # t3: everyone has it -> plain mean of the three rows.
  np.testing.assert_allclose(got[vocab["t3"]], (r("base", "t3") + r("a", "t3") + r("b", "t3")) / 3,
                             atol=1e-6)
  # t15: b lacks it -> b contributes the base's row.
  np.testing.assert_allclose(got[vocab["t15"]],
                             (2 * r("base", "t15") + r("a", "t15")) / 3, atol=1e-6)
  # new1: the base lacks it, a and b have it -> the base contributes their mean.
  m1 = (r("a", "new1") + r("b", "new1")) / 2
  np.testing.assert_allclose(got[vocab["new1"]], (m1 + r("a", "new1") + r("b", "new1")) / 3,
                             atol=1e-6)
  # new2: only b has it -> everyone contributes b's row.
  np.testing.assert_allclose(got[vocab["new2"]], r("b", "new2"), atol=1e-6)


def test_base_and_model_sources(models, tmp_path):
  tensor = "model.embed_tokens.weight"
  merge_checkpoints(_recipe(models, "base"), tmp_path / "base", progress=False)
  got = load_safetensors(tmp_path / "base")[tensor]
  assert got.shape == (16, 16)
  r = lambda m, tok: _row(models, m, tok, tensor)  # noqa: E731
  np.testing.assert_allclose(got[15], (2 * r("base", "t15") + r("a", "t15")) / 3, atol=1e-6)
  # tokenizer_source: <model b>: b's vocabulary order, tokenizer.json copied from b.
  merge_checkpoints(_recipe(models, str(models["b"][0])), tmp_path / "b", progress=False)
  got = load_safetensors(tmp_path / "b")[tensor]
  assert got.shape == (17, 16)
  vocab = tokenizers.Tokenizer.from_file(str(tmp_path / "b" / "tokenizer.json")).get_vocab()
  assert vocab == {w: i for i, w in enumerate(B_TOKENS)}
  np.testing.assert_allclose(got[vocab["new2"]], r("b", "new2"), atol=1e-6)


def test_tokenizer_block_pad_to_multiple_of(models, tmp_path):
  recipe = _recipe(models, None)
  del recipe["tokenizer_source"]
  recipe["tokenizer"] = {"source": "union", "pad_to_multiple_of": 8}
  merge_checkpoints(recipe, tmp_path / "p", progress=False)
  got = load_safetensors(tmp_path / "p")["lm_head.weight"]
  assert got.shape == (24, 16)  # 18 tokens padded to 24 rows
  assert json.loads((tmp_path / "p" / "config.json").read_text())["vocab_size"] == 24
  # every input's padding rows are its mean row, so the merged padding is the merged mean
  np.testing.assert_allclose(got[18:], np.broadcast_to(got[:18].mean(0), (6, 16)), atol=1e-6)
