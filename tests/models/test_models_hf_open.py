"""The one HF opener: the config guard applies to every reader (LoRA extraction included)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from jaxparams.models.hf_open import hf_tokenizer, open_hf

FIX = Path(__file__).parents[1] / "fixtures"


def _copy(tmp_path, name="llama_tiny"):
  d = tmp_path / name
  shutil.copytree(FIX / name, d)
  return d


def test_open_hf_gives_family_names_and_config(tmp_path):
  with open_hf(FIX / "bert_mlm_tiny") as ck:
    assert ck.model_type == "bert"
    cfg = ck.model_config()
    assert cfg.mlm_head and ck.by_norm["cls.predictions.transform.dense.weight"]
    # a reader that leaves the masked-LM head out keeps the config class's default
    assert not ck.model_config(detect=("add_pooling_layer",)).mlm_head


@pytest.mark.parametrize("edit, msg", [
    (lambda c: c.update(num_hidden_layers=10**9), "num_hidden_layers"),
    (lambda c: c.update(intermediate_size=10**6), "intermediate_size is 1000000 but no tensor"),
    (lambda c: c.update(intermediate_size=10**9), r"field 'intermediate_size' must be an integer "
     r"in \[1, 4194304\], found integer 1000000000"),
    (lambda c: c.update(rms_norm_eps="big"), "field 'rms_norm_eps' must be"),
    (lambda c: c.update(model_type="gpt9"), "model_type 'gpt9' is not supported"),
])
def test_hostile_config_refused_by_every_opener(tmp_path, edit, msg):
  d = _copy(tmp_path)
  cfg = json.loads((d / "config.json").read_text())
  edit(cfg)
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=msg):
    with open_hf(d):
      pass
  # LoRA extraction used to skip check_hf_config: it opens through open_hf now
  from jaxparams.adapt.extract import extract_checkpoint
  with pytest.raises(ValueError, match=msg):
    extract_checkpoint(FIX / "llama_tiny", d, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_config_not_an_object(tmp_path):
  d = _copy(tmp_path)
  (d / "config.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"config.json: must be a JSON object, found list"):
    with open_hf(d):
      pass


def test_tokenizer_guards(tmp_path):
  d = _copy(tmp_path)
  with pytest.raises(ValueError, match="no tokenizer.json; calibration"):
    hf_tokenizer(d, purpose="calibration")
  (d / "tokenizer.json").write_text("[]")
  with pytest.raises(ValueError, match=r"tokenizer.json: tokenizer.json must be a JSON object, "
                                       r"found list \[\]"):
    hf_tokenizer(d)
  (d / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
  with pytest.raises(ValueError, match=r"tokenizer.json: not a valid tokenizers tokenizer.json"):
    hf_tokenizer(d)
  (d / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"tokenizer.json: tokenizer.json is not valid JSON"):
    hf_tokenizer(d)
  (d / "tokenizer.json").write_bytes(b"\xff\xfe")
  with pytest.raises(ValueError, match=r"tokenizer.json is not valid UTF-8"):
    hf_tokenizer(d)
  os.remove(d / "tokenizer.json")
  (tmp_path / "outside.json").write_text("{}")
  os.symlink(tmp_path / "outside.json", d / "tokenizer.json")
  with pytest.raises(ValueError, match=r"symlink to .*outside.json, outside its folder"):
    hf_tokenizer(d)
