"""BERT masked-LM head (HF BertForMaskedLM): logits vs transformers, HF layout on write."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models as jm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_bert_mlm_logits_match_transformers():
  d = np.load(FIXTURES / "bert_mlm_tiny_logits.npz")
  module, params, config = jm.from_hf(FIXTURES / "bert_mlm_tiny")
  assert config.mlm_head and not config.add_pooling_layer
  logits = module.apply({"params": params}, jnp.asarray(d["input_ids"]),
                        jnp.asarray(d["attention_mask"]))
  valid = d["attention_mask"].astype(bool)
  diff = float(np.abs(np.asarray(logits) - d["logits"])[valid].max())
  assert diff <= 1e-4, diff
  hidden = module.apply({"params": params}, jnp.asarray(d["input_ids"]), return_hidden=True)
  assert hidden.shape == (2, 6, config.hidden_size)


def test_bert_mlm_writes_hf_layout_and_round_trips(tmp_path):
  module, params, config = jm.from_hf(FIXTURES / "bert_mlm_tiny")
  jm.to_hf(params, config, tmp_path / "out")
  with jp.io.open_checkpoint(FIXTURES / "bert_mlm_tiny") as a, \
       jp.io.open_checkpoint(tmp_path / "out") as b:
    assert sorted(a.names()) == sorted(b.names())   # bert.* and cls.predictions.* as HF saves
    for n in a.names():
      np.testing.assert_array_equal(a.read(n), b.read(n), err_msg=n)
  _, params2, config2 = jm.from_hf(tmp_path / "out")
  assert config2 == config
  assert jp.tree.allclose(params, params2, rtol=0, atol=0)


def test_bert_mlm_untied_decoder_rejected():
  cfg = {"vocab_size": 8, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 8, "tie_word_embeddings": False}
  with pytest.raises(ValueError, match="untied decoder"):
    jm.BertConfig.from_hf_dict(cfg, mlm_head=True)
  assert not jm.BertConfig.from_hf_dict(cfg).mlm_head
