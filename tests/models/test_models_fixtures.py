"""Reference models vs outputs of the peer libraries (fixtures made by tests/fixtures/make_*.py)."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models as jm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def llama_npz():
  return np.load(FIXTURES / "llama_tiny_logits.npz")


@pytest.mark.parametrize("name,key", [("llama_tiny", "logits"), ("llama_tiny_tied", "logits_tied")])
def test_llama_logits_match_transformers(llama_npz, name, key):
  module, params, config = jm.from_hf(FIXTURES / name)
  assert config.tie_word_embeddings == (name == "llama_tiny_tied")
  logits = module.apply({"params": params}, jnp.asarray(llama_npz["input_ids"]),
                        jnp.asarray(llama_npz["attention_mask"]))
  diff = float(np.abs(np.asarray(logits) - llama_npz[key]).max())
  assert diff <= 1e-4, diff


def test_llama_tied_has_no_head_and_uses_embedding(llama_npz):
  module, params, config = jm.from_hf(FIXTURES / "llama_tiny_tied")
  assert "lm_head" not in params
  assert config.rope_scaling_dict["rope_type"] == "llama3"
  ids = jnp.asarray(llama_npz["input_ids"])
  hidden = module.apply({"params": params}, ids, return_hidden=True)
  logits = module.apply({"params": params}, ids)
  np.testing.assert_allclose(logits, hidden @ params["embed_tokens"]["embedding"].T, atol=1e-5)


def test_minilm_sentence_embeddings_match_sentence_transformers():
  ref = json.loads((FIXTURES / "minilm_embeddings.json").read_text())
  model = jm.load_minilm()
  got = jm.embed(ref["sentences"], model=model)
  want = np.asarray(ref["embeddings"], np.float32)
  assert got.shape == want.shape == (8, 384)
  diff = float(np.abs(got - want).max())
  assert diff <= 1e-4, diff
  # The same through the functional API, one sentence at a time (no padding at all).
  module, params, _, tok = model
  b = jm.minilm.tokenize(tok, ref["sentences"][:1])
  one = jm.sentence_embeddings(module, params, b["input_ids"], b["attention_mask"])
  np.testing.assert_allclose(one[0], want[0], atol=1e-4)


def test_minilm_truncates_to_256_tokens():
  _, _, _, tok = jm.load_minilm()
  ref = json.loads((FIXTURES / "minilm_embeddings.json").read_text())
  b = jm.minilm.tokenize(tok, ref["sentences"])
  assert b["input_ids"].shape[1] == 256
  assert b["attention_mask"][-1].sum() == 256 and b["attention_mask"][0].sum() < 16
  assert jm.minilm_path().joinpath("model.safetensors").is_file()
